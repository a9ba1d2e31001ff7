#!/usr/bin/env python3
"""Benchmark: e-invoice extraction and rendering speed (issue 5 targets).

    python bench/einvoice_speed.py [--repeat 200]

Prints the median milliseconds to extract a UBL XML invoice, a CII XML invoice and a Factur-X
PDF (EInvoiceExtractor: accepts + extract on a fresh document, as the pipeline does), and to
render the canonical invoice as UBL and as CII. Targets: XML < 5 ms, Factur-X PDF < 20 ms.
Inputs are the project's own fixtures (fixtures/einvoice); nothing is written.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from mailingest.documents import Document
from mailingest.models import Invoice
from mailingest.pipeline.detect import detect
from mailingest.pipeline.extractors.einvoice import EInvoiceExtractor
from mailingest.render import render

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "einvoice"
CASES = {
    "UBL XML (EN 16931 max content)": FIXTURES / "en16931__testfiles__Invoice-Max_content.xml",
    "CII XML (XRechnung 01.01a)": FIXTURES
    / "xrechnung-testsuite__business-cases__standard__01.01a-INVOICE_uncefact.xml",
    "Factur-X PDF (ZUGFeRD 2.1 EN16931)": FIXTURES
    / "zugferd-corpus__ZUGFeRDv2__correct__symtrax__Beispiele__EN16931__zugferd_2p1_EN16931_2_Teilrechnung.pdf",
}
TARGETS = {"XML": 5.0, "PDF": 20.0}


def extract(data: bytes, name: str) -> Invoice:
    doc = Document(data, filename=name)  # a new Document: no cached sha256 or embedded XML
    extractor = EInvoiceExtractor()
    assert extractor.accepts(doc, detect(doc))
    return extractor.extract(doc)[0]


def median_ms(action: Callable[[], object], repeat: int) -> float:
    action()  # warm-up: imports, schema of lxml's parser, pdfium init
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=200, help="timed runs per case (default 200)")
    args = parser.parse_args()
    print(f"{'case':48} {'median ms':>10}  target")
    invoice = None
    for label, path in CASES.items():
        data = path.read_bytes()
        ms = median_ms(lambda d=data, n=path.name: extract(d, n), args.repeat)  # type: ignore[misc]
        target = TARGETS["PDF" if path.suffix == ".pdf" else "XML"]
        verdict = "ok" if ms < target else "MISSED"
        print(f"extract {label:40} {ms:10.2f}  < {target:.0f} ms {verdict}")
        if invoice is None:
            invoice = extract(data, path.name)
    assert invoice is not None
    for fmt in ("ubl", "cii"):
        ms = median_ms(lambda f=fmt: render(invoice, f), args.repeat)  # type: ignore[misc]
        print(f"render  {fmt.upper() + ' (from the UBL max-content invoice)':40} {ms:10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
