"""``mailingest eval``: score extraction against ``*.truth.json`` files (DESIGN.md section 4).

Accuracy is a number we track, not a test that passes or fails, so everything here reports and
nothing asserts. The truth schema is ../shared/corpus/README.md: keys whose truth is unknown are
omitted, so only keys present in a truth file are scored. Comparison is deliberately forgiving
only where the difference carries no meaning (amount padding, spaces inside VAT ids and IBANs,
runs of whitespace); names are compared exactly, with a looser figure beside them so a casing or
punctuation slip is visible without being counted as correct.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NamedTuple

AMOUNT, TEXT, IDENT, NAME = "amount", "text", "ident", "name"

# Scored invoice fields -> how they compare. `payment.iban` and `line_count` are read from the
# canonical invoice's first credit transfer and its lines (see `_extracted`).
FIELDS: dict[str, str] = {
    "number": TEXT,
    "issue_date": TEXT,
    "due_date": TEXT,
    "type": TEXT,
    "currency": TEXT,
    "seller.name": NAME,
    "seller.vat_id": IDENT,
    "buyer.name": NAME,
    "totals.tax_exclusive": AMOUNT,
    "totals.tax_total": AMOUNT,
    "totals.tax_inclusive": AMOUNT,
    "totals.amount_due": AMOUNT,
    "payment.iban": IDENT,
    "line_count": AMOUNT,  # a count compares as a number as well
}
ROBUSTNESS = "robustness"
# The corpus' kinds in its README's order, so tables read the same way as the corpus description.
KIND_ORDER = ["ubl", "cii", "facturx_pdf", "pdf", "image", "eml_invoice", "eml", "msg", "tnef"]


class Check(NamedTuple):
    """One scored value: the truth, what extraction produced (None = nothing) and the verdict."""

    field: str
    expected: Any
    got: Any
    ok: bool


def _dig(data: dict[str, Any] | None, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _squash(value: Any) -> str:
    return " ".join(str(value).split())


def _extracted(invoice: dict[str, Any], field: str) -> Any:
    if field == "payment.iban":
        transfers = _dig(invoice, "payment.credit_transfers") or []
        return transfers[0].get("iban") if transfers else None
    if field == "line_count":
        return len(invoice.get("lines") or [])
    return _dig(invoice, field)


def same(how: str, expected: Any, got: Any) -> bool:
    """Whether `got` matches `expected` under the field's comparison rule."""
    if got is None:
        return False
    if how == AMOUNT:
        try:
            return Decimal(str(expected)) == Decimal(str(got))
        except InvalidOperation:
            return False
    if how == IDENT:
        return "".join(str(expected).split()).upper() == "".join(str(got).split()).upper()
    return _squash(expected) == _squash(got)


def loosely_same_name(expected: Any, got: Any) -> bool:
    """Names equal once case and punctuation are ignored: the "loose" figure beside exact names."""

    def fold(value: Any) -> str:
        return " ".join(re.sub(r"[\W_]+", " ", str(value).casefold()).split())

    return got is not None and fold(expected) == fold(got)


def compare(invoice: dict[str, Any] | None, truth: dict[str, Any]) -> list[Check]:
    """Field-by-field checks of one extracted invoice (None = none came out) against one truth."""
    checks = []
    for field, how in FIELDS.items():
        expected = _dig(truth, field)
        if expected is None:
            continue
        got = _extracted(invoice, field) if invoice is not None else None
        checks.append(Check(field, expected, got, same(how, expected, got)))
    return checks


def pick_invoice(invoices: list[dict[str, Any]], truth: dict[str, Any]) -> dict[str, Any] | None:
    """The invoice a truth describes: the one with its number, else the first one found."""
    number = truth.get("number")
    matching = [inv for inv in invoices if number is not None and same(TEXT, number, inv.get("number"))]
    return next(iter(matching or invoices), None)


def score(invoices: list[dict[str, Any]], truth: dict[str, Any], crash: str | None = None) -> list[Check]:
    """All checks for one corpus file: robustness expectation, invoice count and invoice fields."""
    expect = truth.get("expect")
    if expect is not None:
        got = f"crash: {crash}" if crash else f"{len(invoices)} invoice(s)"
        ok = crash is None and (expect == "parse" or not invoices)
        return [Check(ROBUSTNESS, expect, got, ok)]
    checks = []
    if "invoice_count" in truth:
        count = truth["invoice_count"]
        checks.append(Check("invoice_count", count, len(invoices), count == len(invoices)))
    return checks + compare(pick_invoice(invoices, truth), truth)


@dataclass
class Case:
    """A corpus file with its truth; `kind` comes from the corpus index or is inferred."""

    path: Path
    truth: dict[str, Any]
    kind: str


def _index_kinds(directory: Path) -> dict[Path, str]:
    """Kinds from the nearest `index.jsonl` at or above `directory` (the corpus root has one)."""
    for folder in (directory.resolve(), *directory.resolve().parents):
        index = folder / "index.jsonl"
        if index.is_file():
            rows = (json.loads(line) for line in index.read_text().splitlines() if line.strip())
            return {(folder / row["path"]).resolve(): row["kind"] for row in rows}
    return {}


def _infer_kind(path: Path, truth: dict[str, Any]) -> str:
    """The corpus kind a file would have, from its bytes and truth shape, when no index says."""
    ext = path.suffix.lower().lstrip(".")
    data = path.read_bytes()
    if ext == "xml":
        kind = "cii" if b"CrossIndustry" in data else "ubl"
    elif ext == "pdf":
        kind = "facturx_pdf" if b"/EmbeddedFile" in data else "pdf"
    elif ext in ("jpg", "jpeg", "png", "tif", "tiff", "gif", "webp"):
        kind = "image"
    elif ext == "eml":
        kind = "eml_invoice" if any(_dig(truth, key) is not None for key in FIELDS) else "eml"
    else:
        kind = ext or "other"
    return f"robust_{ext}" if "expect" in truth else kind


def find_cases(dirs: Iterable[Path]) -> list[Case]:
    """Every file under `dirs` with a sibling `X.ext.truth.json` (or `X.truth.json`), once each.

    Raises ValueError naming the truth file when one is not JSON: a broken answer key is a usage
    error, not a score.
    """
    cases: dict[Path, Case] = {}
    for directory in dirs:
        kinds = _index_kinds(directory)
        for path in sorted(directory.rglob("*")):
            if not path.is_file() or path.name.endswith(".truth.json") or path.resolve() in cases:
                continue
            names = (path.name + ".truth.json", path.stem + ".truth.json")
            truth_file = next((t for n in names if (t := path.with_name(n)).is_file()), None)
            if truth_file is None:
                continue
            try:
                truth = json.loads(truth_file.read_text())
                if not isinstance(truth, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                raise ValueError(f"{truth_file}: {exc}") from exc
            kind = kinds.get(path.resolve()) or _infer_kind(path, truth)
            cases[path.resolve()] = Case(path, truth, kind)
    return list(cases.values())


def _run_one(path: Path) -> tuple[list[dict[str, Any]], str | None, str | None]:
    """Extract like `mailingest extract`: (invoices, recorded error type, crash) for one file.

    A recorded error is the pipeline working as designed (bad input, told apart); a crash is an
    exception that escaped it, which the daemon must never see.
    """
    from mailingest.errors import InputError
    from mailingest.pipeline.analyse import analyse

    try:
        result = analyse(path.read_bytes(), filename=path.name, context={"channel": "eval"})
    except InputError as exc:
        return [], exc.type, None
    except Exception as exc:  # noqa: BLE001 - a crash is a finding to report, not a reason to stop
        return [], None, f"{type(exc).__name__}: {exc}"
    invoices = [inv.to_json_dict() for inv in result.invoices]
    failures = [o.error for o in result.documents if o.error and o.status in ("failed", "unsupported")]
    return invoices, None if invoices or not failures else failures[0]["type"], None


@dataclass
class Tally:
    """Correct out of scored; `loose` counts names that match once case and punctuation are ignored."""

    correct: int = 0
    scored: int = 0
    loose: int = 0

    def add(self, ok: bool, loose: bool = False) -> None:
        self.correct += ok
        self.scored += 1
        self.loose += loose

    def as_dict(self) -> dict[str, Any]:
        accuracy = round(self.correct / self.scored, 4) if self.scored else None
        return {"correct": self.correct, "scored": self.scored, "accuracy": accuracy}


def evaluate(
    cases: list[Case], *, show_misses: int = 0, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Run extraction over `cases` and aggregate the checks into one JSON-able report."""
    started = time.perf_counter()
    fields = {name: Tally() for name in [*FIELDS, "invoice_count"]}
    overall = Tally()
    kinds: dict[str, Counter[str]] = {}
    kind_fields: dict[str, Tally] = {}
    robustness: dict[str, Tally] = {}
    timings: list[float] = []
    misses: list[dict[str, Any]] = []
    worst: list[dict[str, Any]] = []
    for done, case in enumerate(cases, 1):
        t0 = time.perf_counter()
        invoices, error, crash = _run_one(case.path)
        timings.append((time.perf_counter() - t0) * 1000)
        checks = score(invoices, case.truth, crash)
        bad = [c for c in checks if not c.ok]
        kinds.setdefault(case.kind, Counter()).update(
            files=1,
            errors=bool(error or crash),
            scored_files=bool(checks),
            fully_correct=bool(checks and not bad),
        )
        for c in checks:
            if c.field == ROBUSTNESS:
                robustness.setdefault(c.expected, Tally()).add(c.ok)
                continue
            loose = FIELDS.get(c.field) == NAME and loosely_same_name(c.expected, c.got)
            fields[c.field].add(c.ok, loose)
            kind_fields.setdefault(case.kind, Tally()).add(c.ok)
            overall.add(c.ok)
        misses += [
            {"file": str(case.path), "field": c.field, "expected": c.expected, "got": c.got} for c in bad
        ]
        if bad:
            worst.append(
                {"file": str(case.path), "kind": case.kind, "misses": len(bad), "scored": len(checks)}
            )
        if progress:
            progress(done, len(cases))
    timings.sort()
    rank = {k: i for i, k in enumerate(KIND_ORDER)}
    return {
        "files": len(cases),
        "seconds": round(time.perf_counter() - started, 2),
        "ms_per_file": {
            "mean": round(sum(timings) / len(timings), 1) if timings else None,
            "p95": round(timings[math.ceil(0.95 * len(timings)) - 1], 1) if timings else None,
        },
        "overall": overall.as_dict(),
        "fields": {
            name: {**t.as_dict(), **({"loose_correct": t.loose} if FIELDS.get(name) == NAME else {})}
            for name, t in fields.items()
            if t.scored
        },
        "kinds": {
            name: {**kinds[name], "fields": kind_fields.get(name, Tally()).as_dict()}
            for name in sorted(kinds, key=lambda k: (rank.get(k, len(rank)), k))
        },
        "robustness": {expect: t.as_dict() for expect, t in robustness.items()},
        "worst": sorted(worst, key=lambda w: (-w["misses"], w["file"]))[:10],
        "misses": misses[:show_misses],
    }


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def format_report(report: dict[str, Any]) -> str:
    """The report as the plain-text tables `mailingest eval` prints by default."""

    def pct(figure: dict[str, Any]) -> str:
        return "-" if figure["accuracy"] is None else f"{100 * figure['accuracy']:.1f}%"

    out = [f"{'field':<22} {'correct':>7} {'scored':>6} {'acc':>7}  loose"]
    for name, f in report["fields"].items():
        loose = f"{100 * f['loose_correct'] / f['scored']:.1f}%" if "loose_correct" in f else ""
        out.append(f"{name:<22} {f['correct']:>7} {f['scored']:>6} {pct(f):>7}  {loose}")
    overall = report["overall"]
    out.append(f"{'overall':<22} {overall['correct']:>7} {overall['scored']:>6} {pct(overall):>7}")
    out += [
        "",
        f"{'kind':<12} {'files':>5} {'scored':>6} {'fully ok':>8} {'errors':>6} {'fields':>13} {'acc':>7}",
    ]
    for name, k in report["kinds"].items():
        f = k["fields"]
        out.append(
            f"{name:<12} {k['files']:>5} {k['scored_files']:>6} {k['fully_correct']:>8} {k['errors']:>6}"
            f" {f['correct']:>6}/{f['scored']:<6} {pct(f):>7}"
        )
    for expect, tally in report["robustness"].items():
        out.append(f"robustness {expect}: {tally['correct']}/{tally['scored']} passed")
    ms = report["ms_per_file"]
    out.append(
        f"\n{report['files']} files in {report['seconds']} s; ms per file: mean {ms['mean']}, p95 {ms['p95']}"
    )
    if report["worst"]:
        out.append("\nworst files (misses/scored):")
        out += [f"  {w['misses']:>2}/{w['scored']:<2} {w['kind']:<12} {w['file']}" for w in report["worst"]]
    if report["misses"]:
        out.append("\nmisses:")
        out += [
            f"  {m['file']}: {m['field']} expected={_show(m['expected'])} got={_show(m['got'])}"
            for m in report["misses"]
        ]
    return "\n".join(out)
