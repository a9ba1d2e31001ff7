"""Extraction benchmark: per-field accuracy, speed and memory, with invoice2data side by side.

    python bench/extraction.py DIR [DIR ...] [--no-invoice2data] [--limit N]

Each DIR is scored on its own (files with a ``.truth.json``: a bench/gen_invoices.py set, its
held-out folder, or ../shared/corpus/pdf). Printed per set: per-field accuracy, ms per text
page, s per OCR page, and peak RSS of this process. invoice2data runs on the same PDFs with its
bundled templates (its pdfminer input module, since ``pdftotext`` is not installed here); it only
reads invoices it has a template for, which is the comparison the issue asks for.
"""

from __future__ import annotations

import argparse
import logging
import resource
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium

from mailingest.evaluate import FIELDS, compare, pick_invoice
from mailingest.pipeline.analyse import analyse


def _pages(path: Path) -> int:
    if path.suffix.lower() != ".pdf":
        return 1
    pdf = pdfium.PdfDocument(path)
    try:
        return len(pdf)
    finally:
        pdf.close()


def _i2d(path: Path) -> dict[str, Any] | None:
    """invoice2data's result mapped onto our truth keys (``None`` when no template matched)."""
    from invoice2data import extract_data
    from invoice2data.input import pdfminer_wrapper

    try:
        got = extract_data(str(path), input_module=pdfminer_wrapper)
    except Exception:  # noqa: BLE001 - a third-party tool on arbitrary files; counted as no result
        return None
    if not got:
        return None
    issued: Any = got.get("date")
    return {
        "number": got.get("invoice_number"),
        "issue_date": issued.date().isoformat() if hasattr(issued, "date") else issued,
        "currency": got.get("currency"),
        "seller": {"name": got.get("issuer")},
        "totals": {"tax_inclusive": got.get("amount"), "amount_due": got.get("amount")},
    }


def run(folder: Path, use_i2d: bool, limit: int | None) -> None:
    import json

    files = sorted(p for p in folder.rglob("*") if p.is_file() and Path(f"{p}.truth.json").exists())[:limit]
    ours: Counter[str] = Counter()
    theirs: Counter[str] = Counter()
    scored: Counter[str] = Counter()
    text_s = ocr_s = 0.0
    text_pages = ocr_pages = i2d_hits = 0
    for path in files:
        truth = json.loads(Path(f"{path}.truth.json").read_text(encoding="utf-8"))
        started = time.perf_counter()
        result = analyse(path.read_bytes(), filename=path.name, context={"channel": "bench"})
        spent = time.perf_counter() - started
        invoices = [inv.model_dump(mode="json", by_alias=True) for inv in result.invoices]
        ocr = any(outcome.extractor == "ocr" for outcome in result.documents)
        if ocr:
            ocr_s, ocr_pages = ocr_s + spent, ocr_pages + _pages(path)
        else:
            text_s, text_pages = text_s + spent, text_pages + _pages(path)
        for check in compare(pick_invoice(invoices, truth), truth):
            scored[check.field] += 1
            ours[check.field] += check.ok
        if use_i2d and path.suffix.lower() == ".pdf":
            got = _i2d(path)
            i2d_hits += got is not None
            for check in compare(got, truth):
                theirs[check.field] += check.ok
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n== {folder}  ({len(files)} files)")
    print(
        f"{'field':22} {'mailingest':>11} {'invoice2data':>13}"
        if use_i2d
        else f"{'field':22} {'mailingest':>11}"
    )
    for field in FIELDS:
        if scored[field]:
            mine, other = ours[field] / scored[field], theirs[field] / scored[field]
            print(f"{field:22} {mine:10.1%} {other:12.1%}" if use_i2d else f"{field:22} {mine:10.1%}")
    total = sum(scored.values())
    overall = f"{'overall':22} {sum(ours.values()) / total:10.1%}"
    print(f"{overall} {sum(theirs.values()) / total:12.1%}" if use_i2d else overall)
    if text_pages:
        print(f"text: {1000 * text_s / text_pages:.1f} ms/page ({text_pages / text_s:.1f} pages/s, one core)")
    if ocr_pages:
        print(f"ocr:  {ocr_s / ocr_pages:.2f} s/page over {ocr_pages} pages")
    if use_i2d:
        print(f"invoice2data: a template matched {i2d_hits} of {len(files)} files")
    print(f"peak RSS: {peak_mb:.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--no-invoice2data", action="store_true")
    ap.add_argument("--limit", type=int, default=None, help="at most N files per set")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    for folder in args.dirs:
        run(folder, not args.no_invoice2data, args.limit)


if __name__ == "__main__":
    main()
