"""Rendering the canonical invoice as UBL 2.1 (Peppol BIS 3) and CII (Factur-X EN 16931).

Every e-invoice in fixtures/einvoice and in the shared corpus goes parse → canonical → render →
parse and must come back the same (the documented exceptions are normalised in ``_comparable``),
and the rendered XML must pass the official XSD whenever the source carries the data EN 16931
makes mandatory. See docs/einvoices.md for the exceptions.
"""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from mailingest.documents import Document
from mailingest.models import Invoice
from mailingest.models.invoice import Party, Payment, Totals
from mailingest.pipeline.detect import detect
from mailingest.pipeline.extractors.einvoice import EInvoiceExtractor
from mailingest.render import RenderError, render, validate_schema
from mailingest.render.ubl import CUSTOMIZATION_ID, PROFILE_ID
from tests.conftest import SHARED_CORPUS

ROOT = Path(__file__).parent.parent
FIXTURES = ROOT / "fixtures" / "einvoice"
UBL_INVOICE = FIXTURES / "en16931__testfiles__Invoice-Max_content.xml"
UBL_CREDIT_NOTE = FIXTURES / "en16931__testfiles__CreditNote-Max_content.xml"
CII_INVOICE = FIXTURES / "xrechnung-testsuite__business-cases__standard__01.01a-INVOICE_uncefact.xml"


def _sources() -> list[Path]:
    found = [p for p in FIXTURES.iterdir() if p.suffix.lower() in (".xml", ".pdf")]
    for kind in ("einvoice", "facturx"):
        folder = SHARED_CORPUS / kind
        if folder.is_dir():
            found += [p for p in folder.rglob("*") if p.suffix.lower() in (".xml", ".pdf")]
    return sorted(found)


SOURCES = _sources()


def _extract(data: bytes, name: str) -> Invoice | None:
    doc = Document(data, filename=name)
    extractor = EInvoiceExtractor()
    if not extractor.accepts(doc, detect(doc)):
        return None
    return extractor.extract(doc)[0]


def _prune(value: Any) -> Any:
    """Drop what carries no information: None, empty strings, lists and objects."""
    if isinstance(value, dict):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def _comparable(invoice: Invoice) -> dict[str, Any]:
    """The canonical fields both syntaxes carry, with the documented exceptions normalised:

    * a line without an id (BT-126 is mandatory in both syntaxes) is rendered with its position;
    * where a payment-means element is needed but the code (BT-81) is unknown, ``1`` is written;
    * BT-115 missing from the source is derived by BR-CO-16 (tax_inclusive - prepaid + rounding);
    * empty objects (an item, price or VAT category with no known value) equal absent ones.
    """
    data = invoice.model_dump(mode="json", exclude={"source", "extraction", "validation", "id", "status"})
    for position, line in enumerate(data["lines"], start=1):
        line["id"] = line["id"] or str(position)
    payment = data.get("payment") or {}
    if payment.get("means_code") == "1":
        payment["means_code"] = None
    totals = data["totals"]
    if totals["amount_due"] is None and totals["tax_inclusive"] is not None:
        due = (
            Decimal(totals["tax_inclusive"])
            - Decimal(totals["prepaid"] or 0)
            + Decimal(totals["rounding"] or 0)
        )
        totals["amount_due"] = format(due, "f")
    pruned: dict[str, Any] = _prune(data)
    return pruned


def _complete(invoice: Invoice) -> bool:
    """Whether the source carries what both schemas make mandatory (lines with amounts, currency)."""
    return bool(
        invoice.currency
        and invoice.lines
        and all(
            line.quantity is not None
            and line.net_amount is not None
            and line.price is not None
            and line.price.net is not None
            and line.vat is not None
            for line in invoice.lines
        )
    )


@pytest.mark.parametrize("fmt", ["ubl", "cii"])
@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name[:70])
def test_round_trip(path: Path, fmt: Any) -> None:
    original = _extract(path.read_bytes(), path.name)
    assert original is not None
    xml = render(original, fmt)
    back = _extract(xml, f"rendered.{fmt}.xml")
    assert back is not None, "the rendered document must be recognised as an e-invoice"
    assert back.source is not None and back.source.format == fmt
    assert _comparable(back) == _comparable(original)
    errors = validate_schema(xml, fmt)
    if _complete(original):
        assert errors == []
    else:  # EN 16931 MINIMUM / BASIC WL or ZUGFeRD 1.0 note lines: the data is not there to write
        assert all("Missing child" in e or "not expected" in e or "required" in e for e in errors)


def test_the_corpus_is_exercised() -> None:
    complete = [p for p in SOURCES if (inv := _extract(p.read_bytes(), p.name)) and _complete(inv)]
    assert len(SOURCES) >= 20 and len(complete) >= 15


def test_ubl_invoice_header_follows_peppol_bis3() -> None:
    invoice = _extract(UBL_INVOICE.read_bytes(), UBL_INVOICE.name)
    assert invoice is not None
    root = etree.fromstring(render(invoice, "ubl"))
    ns = {"cbc": "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"}
    assert etree.QName(root).localname == "Invoice"
    assert root.findtext("cbc:CustomizationID", namespaces=ns) == CUSTOMIZATION_ID
    assert root.findtext("cbc:ProfileID", namespaces=ns) == PROFILE_ID
    assert root.findtext("cbc:InvoiceTypeCode", namespaces=ns) == invoice.type_code
    payable = root.find(".//cbc:PayableAmount", namespaces=ns)
    assert payable.get("currencyID") == invoice.currency
    assert Decimal(payable.text) == invoice.totals.amount_due
    assert payable.text == format(invoice.totals.amount_due, "f")  # as written, a decimal string


def test_credit_note_becomes_a_ubl_credit_note_and_a_cii_381() -> None:
    invoice = _extract(UBL_CREDIT_NOTE.read_bytes(), UBL_CREDIT_NOTE.name)
    assert invoice is not None and invoice.type == "credit_note"
    ubl_root = etree.fromstring(render(invoice, "ubl"))
    assert etree.QName(ubl_root).localname == "CreditNote"
    assert ubl_root.find("{*}CreditNoteLine") is not None and ubl_root.find("{*}InvoiceLine") is None
    cii_root = etree.fromstring(render(invoice, "cii"))
    assert cii_root.findtext("{*}ExchangedDocument/{*}TypeCode") == (invoice.type_code or "381")
    bare = invoice.model_copy(update={"type_code": None})
    assert etree.fromstring(render(bare, "cii")).findtext("{*}ExchangedDocument/{*}TypeCode") == "381"


def test_cii_dates_use_format_102() -> None:
    invoice = _extract(CII_INVOICE.read_bytes(), CII_INVOICE.name)
    assert invoice is not None and invoice.issue_date
    root = etree.fromstring(render(invoice, "cii"))
    issued = root.find("{*}ExchangedDocument/{*}IssueDateTime/{*}DateTimeString")
    assert issued.get("format") == "102" and issued.text == invoice.issue_date.replace("-", "")


def test_absent_values_are_omitted_not_invented() -> None:
    invoice = Invoice(
        number="R-1",
        issue_date="2024-05-01",
        currency="EUR",
        seller=Party(name="Seller AG"),
        buyer=Party(name="Buyer SA"),
        totals=Totals(tax_inclusive=Decimal("10.00")),
        payment=Payment(terms="30 days"),
    )
    ubl = render(invoice, "ubl")
    for absent in (b"DueDate", b"TaxTotal", b"OrderReference", b"PaymentMeans", b"PostalAddress", b"None"):
        assert absent not in ubl
    back = _extract(ubl, "r.xml")
    assert back is not None and back.payment is not None and back.payment.terms == "30 days"
    cii = render(invoice, "cii")
    assert b"DueDateDateTime" not in cii and b"None" not in cii


def test_validate_schema_reports_violations() -> None:
    invoice = _extract(UBL_INVOICE.read_bytes(), UBL_INVOICE.name)
    assert invoice is not None
    good = render(invoice, "ubl")
    assert validate_schema(good, "ubl") == []
    tampered = good.replace(b"<cbc:IssueDate>", b"<cbc:IssueDate>not-a-date", 1)
    assert any("IssueDate" in e for e in validate_schema(tampered, "ubl"))
    assert validate_schema(good, "cii") == ["root element 'Invoice' is not CrossIndustryInvoice"]
    assert validate_schema(b"<broken", "ubl")[0].startswith("not well-formed")
    assert validate_schema(render(invoice, "cii"), "cii") == []


def test_unknown_format_is_a_render_error() -> None:
    with pytest.raises(RenderError):
        render(Invoice(), "pdf")  # type: ignore[arg-type]


def _cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "mailingest", *args], capture_output=True, timeout=60, check=False, cwd=ROOT
    )


def test_cli_convert_writes_a_file_or_stdout(tmp_path: Path) -> None:
    out = tmp_path / "out.xml"
    done = _cli("convert", str(CII_INVOICE), "--to", "ubl", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert validate_schema(out.read_bytes(), "ubl") == []
    stdout = _cli("convert", str(UBL_INVOICE), "--to", "cii")
    assert stdout.returncode == 0 and validate_schema(stdout.stdout, "cii") == []
    original = _extract(UBL_INVOICE.read_bytes(), UBL_INVOICE.name)
    back = _extract(stdout.stdout, "x.xml")  # convert normalises text (notes) like extract does
    assert original is not None and back is not None
    assert (back.number, back.totals, back.vat_breakdown) == (
        original.number,
        original.totals,
        original.vat_breakdown,
    )
    assert len(back.lines) == len(original.lines)


def test_cli_convert_fails_cleanly(tmp_path: Path) -> None:
    text = tmp_path / "note.txt"
    text.write_text("no invoice in here")
    done = _cli("convert", str(text), "--to", "cii")
    assert (
        done.returncode == 1
        and b"Traceback" not in done.stderr
        and done.stderr.startswith(b"mailingest convert:")
    )
    missing = _cli("convert", str(tmp_path / "nope.xml"), "--to", "ubl")
    assert missing.returncode == 1 and b"Traceback" not in missing.stderr
    usage = _cli("convert", str(text), "--to", "pdf")
    assert usage.returncode == 2


def test_cli_convert_writes_each_invoice_of_a_mail(tmp_path: Path) -> None:
    from email.message import EmailMessage

    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "billing@seller.example", "ap@buyer.example", "Two invoices"
    mail.set_content("Please find our invoices attached.")
    for path in (UBL_INVOICE, CII_INVOICE):
        mail.add_attachment(path.read_bytes(), maintype="application", subtype="xml", filename=path.name)
    source = tmp_path / "two.eml"
    source.write_bytes(mail.as_bytes())
    refused = _cli("convert", str(source), "--to", "ubl")
    assert refused.returncode == 1 and b"-o" in refused.stderr and not refused.stdout
    done = _cli("convert", str(source), "--to", "ubl", "-o", str(tmp_path / "out.xml"))
    assert done.returncode == 0, done.stderr
    written = sorted(p.name for p in tmp_path.glob("out*.xml"))
    assert written == ["out-1.xml", "out-2.xml"]
    numbers = {_extract((tmp_path / name).read_bytes(), name).number for name in written}  # type: ignore[union-attr]
    expected = {_extract(p.read_bytes(), p.name).number for p in (UBL_INVOICE, CII_INVOICE)}  # type: ignore[union-attr]
    assert numbers == expected
