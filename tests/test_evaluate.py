"""`mailingest eval`: the scoring rules on their own, then the command over real fixture files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from mailingest.evaluate import Check, compare, loosely_same_name, pick_invoice, score
from tests.conftest import FIXTURES, ROOT

UBL = FIXTURES / "einvoice" / "xrechnung-testsuite__business-cases__standard__01.01a-INVOICE_ubl.xml"


def run_eval(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailingest", "eval", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def by_field(checks: list[Check]) -> dict[str, Check]:
    return {c.field: c for c in checks}


INVOICE: dict[str, Any] = {
    "number": "INV-1",
    "type": "invoice",
    "seller": {"name": "ACME  Trading\nGmbH", "vat_id": "DE123456789"},
    "totals": {"tax_inclusive": "336.9", "amount_due": "336.90"},
    "payment": {"credit_transfers": [{"iban": "DE02120300000000202051"}, {"iban": "OTHER"}]},
    "lines": [{}, {}, {}],
}


def test_amounts_compare_as_decimals_and_ids_ignore_spaces() -> None:
    truth = {
        "seller": {"name": "ACME Trading GmbH", "vat_id": "de 123 456 789"},
        "totals": {"tax_inclusive": "336.90", "amount_due": "336.91"},
        "payment": {"iban": "DE02 1203 0000 0000 2020 51"},
        "line_count": 3,
    }
    checks = by_field(compare(INVOICE, truth))
    assert checks["totals.tax_inclusive"].ok  # "336.9" == "336.90"
    assert not checks["totals.amount_due"].ok
    assert checks["seller.vat_id"].ok
    assert checks["seller.name"].ok  # whitespace runs collapse
    assert checks["payment.iban"].ok  # the first credit transfer
    assert checks["line_count"] == Check("line_count", 3, 3, True)


def test_absent_truth_keys_are_not_scored() -> None:
    checks = compare(INVOICE, {"number": "INV-1", "source": "x", "notes": "y"})
    assert checks == [Check("number", "INV-1", "INV-1", True)]
    # nothing extracted: every known truth key is a miss with got=None
    assert compare(None, {"currency": "EUR"}) == [Check("currency", "EUR", None, False)]


def test_names_are_exact_with_a_loose_figure_beside_them() -> None:
    checks = by_field(compare(INVOICE, {"seller": {"name": "acme trading gmbh"}}))
    assert not checks["seller.name"].ok
    assert loosely_same_name("ACME Trading, GmbH.", "acme trading gmbh")
    assert not loosely_same_name("ACME", None)


def test_several_invoices_the_one_with_the_truths_number_is_scored() -> None:
    first, second = {**INVOICE, "number": "A-1"}, {**INVOICE, "number": "B 2"}
    assert pick_invoice([first, second], {"number": "B  2"}) is second
    assert pick_invoice([first, second], {"number": "Z-9"}) is first
    assert pick_invoice([], {"number": "Z-9"}) is None


def test_mail_and_robustness_truths() -> None:
    mail = {"attachments": [{"filename": "a.pdf"}], "invoice_count": 1}
    assert score([INVOICE], mail) == [Check("invoice_count", 1, 1, True)]
    assert score([], {"attachments": []}) == []
    assert score([], {"expect": "reject"})[0].ok
    assert not score([INVOICE], {"expect": "reject"})[0].ok
    assert score([], {"expect": "parse"})[0].ok  # a recorded error is fine
    assert not score([], {"expect": "parse"}, crash="RecursionError: boom")[0].ok


def test_eval_over_the_fixtures_prints_one_json_report() -> None:
    result = run_eval("fixtures/einvoice", "fixtures/pdf", "--json", "--show-misses", "3")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["files"] == 19  # files with a .truth.json; not-a-pdf.pdf & co. have none
    assert set(report) >= {"overall", "fields", "kinds", "ms_per_file", "robustness", "worst", "misses"}
    assert report["fields"]["totals.amount_due"]["scored"] > 0
    assert "loose_correct" in report["fields"]["seller.name"]
    assert len(report["misses"]) <= 3
    einvoice = [report["kinds"][k]["fields"] for k in ("ubl", "cii", "facturx_pdf")]
    correct, scored = sum(f["correct"] for f in einvoice), sum(f["scored"] for f in einvoice)
    assert scored > 100 and correct / scored >= 0.95
    assert report["ms_per_file"]["p95"] >= report["ms_per_file"]["mean"] > 0


def test_a_disagreeing_truth_is_reported_with_expected_and_got(tmp_path: Path) -> None:
    shutil.copy(UBL, tmp_path / "invoice.xml")
    truth = json.loads((UBL.parent / (UBL.name + ".truth.json")).read_text())
    real_number = truth["number"]
    truth["number"] = "NOT-THE-NUMBER"
    (tmp_path / "invoice.truth.json").write_text(json.dumps(truth))  # the X.truth.json spelling
    result = run_eval(str(tmp_path), "--show-misses", "5")
    assert result.returncode == 0, result.stderr
    assert f'invoice.xml: number expected="NOT-THE-NUMBER" got="{real_number}"' in result.stdout
    report = json.loads(run_eval(str(tmp_path), "--json", "--show-misses", "5").stdout)
    assert report["kinds"]["ubl"]["fully_correct"] == 0
    assert report["misses"] == [
        {
            "file": str(tmp_path / "invoice.xml"),
            "field": "number",
            "expected": "NOT-THE-NUMBER",
            "got": real_number,
        }
    ]


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    empty = run_eval(str(tmp_path))
    assert empty.returncode == 2 and "truth" in empty.stderr
    missing = run_eval(str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such directory" in missing.stderr
    no_kind = run_eval("fixtures/einvoice", "--kinds", "tnef")
    assert no_kind.returncode == 2
    assert "Traceback" not in empty.stderr + missing.stderr + no_kind.stderr
