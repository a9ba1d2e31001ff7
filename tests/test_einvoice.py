"""EInvoiceExtractor against real UBL / CII / ZUGFeRD / Factur-X files and their truth files."""

from __future__ import annotations

import io
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pytest

from mailingest.documents import Document
from mailingest.errors import MalformedDocument, UnsupportedDocument
from mailingest.models import Invoice
from mailingest.pipeline.detect import detect
from mailingest.pipeline.extractors import einvoice
from mailingest.pipeline.extractors.einvoice import EInvoiceExtractor
from mailingest.pipeline.extractors.xmlfields import date_of
from mailingest.xmlsafe import parse_xml
from tests.conftest import SHARED_CORPUS

FIXTURES = Path(__file__).parent.parent / "fixtures" / "einvoice"
GOLDEN = sorted(path for path in FIXTURES.iterdir() if path.suffix.lower() in (".xml", ".pdf"))
IBAN = re.compile(r"^[A-Z]{2}\d{2}[A-Z0-9]{11,30}$")

UBL_INVOICE = FIXTURES / "en16931__testfiles__Invoice-Max_content.xml"
UBL_CREDIT_NOTE = FIXTURES / "en16931__testfiles__CreditNote-Max_content.xml"
XRECHNUNG_CII = FIXTURES / "xrechnung-testsuite__business-cases__standard__01.01a-INVOICE_uncefact.xml"
ZUGFERD1_XML = FIXTURES / "akretion-facturx__xml__zugferd-extended.xml"
ZUGFERD1_PDF = FIXTURES / "zugferd-corpus__ZUGFeRDv1__correct__Intarsys__ZUGFeRD_1p0_BASIC_Einfach.pdf"
FACTURX_PDF = FIXTURES / (
    "zugferd-corpus__ZUGFeRDv2__correct__Mustangproject__MustangGnuaccountingBeispielRE-20201121_508.pdf"
)


def _doc(path: Path) -> Document:
    return Document(path.read_bytes(), filename=path.name)


def _extract_one(doc: Document) -> Invoice:
    extractor = EInvoiceExtractor()
    assert extractor.accepts(doc, detect(doc))
    invoices = extractor.extract(doc)
    assert len(invoices) == 1
    return invoices[0]


def _pdf_with_attachments(*attachments: tuple[str, bytes]) -> bytes:
    pdf = pdfium.PdfDocument.new()
    pdf.new_page(595, 842)
    for name, data in attachments:
        pdf.new_attachment(name).set_data(data)
    buffer = io.BytesIO()
    pdf.save(buffer)
    pdf.close()
    return buffer.getvalue()


def _comparable(invoice: Invoice) -> dict[str, Any]:
    """The invoice in the truth files' vocabulary (see the corpus README)."""
    data = invoice.to_json_dict()
    ibans = [transfer.get("iban") or "" for transfer in data.get("payment", {}).get("credit_transfers", [])]
    return {
        **{key: data.get(key) for key in ("number", "issue_date", "due_date", "type", "currency")},
        "seller": {key: data.get("seller", {}).get(key) for key in ("name", "vat_id")},
        "buyer": {"name": data.get("buyer", {}).get("name")},
        "totals": data["totals"],
        "payment": {"iban": next((iban for iban in ibans if IBAN.match(iban)), None)},
        "line_count": len(data["lines"]),
    }


@pytest.mark.parametrize("path", GOLDEN, ids=lambda path: path.name[:80])
def test_golden(path: Path) -> None:
    truth = json.loads(path.with_name(path.name + ".truth.json").read_text())
    got = _comparable(_extract_one(_doc(path)))
    for key in ("number", "issue_date", "due_date", "type", "currency", "line_count"):
        if key in truth:
            assert got[key] == truth[key], key
    for group in ("seller", "buyer", "payment"):
        for key, expected in truth.get(group, {}).items():
            assert got[group][key] == expected, f"{group}.{key}"
    for key, expected in truth.get("totals", {}).items():
        # Truth pads amounts to two decimals; the extractor keeps them as written.
        assert Decimal(got["totals"][key]) == Decimal(expected), f"totals.{key}"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (UBL_INVOICE, "ubl"),
        (XRECHNUNG_CII, "cii"),
        (ZUGFERD1_XML, "zugferd1"),
        (ZUGFERD1_PDF, "zugferd1"),
        (FACTURX_PDF, "facturx"),
    ],
    ids=lambda value: value.name[:40] if isinstance(value, Path) else value,
)
def test_source_format(path: Path, expected: str) -> None:
    invoice = _extract_one(_doc(path))
    assert invoice.source is not None
    assert invoice.source.format == expected
    assert invoice.source.file is not None
    assert invoice.source.file.sha256 == _doc(path).sha256


def test_xrechnung_inside_a_pdf_is_labelled_xrechnung() -> None:
    pdf = _pdf_with_attachments(("xrechnung.xml", XRECHNUNG_CII.read_bytes()))
    invoice = _extract_one(Document(pdf, filename="x.pdf"))
    assert invoice.source is not None and invoice.source.format == "xrechnung"
    assert invoice.number == "123456XX"


def test_full_ubl_mapping_keeps_amounts_as_written_and_records_provenance() -> None:
    invoice = _extract_one(_doc(UBL_INVOICE))
    data = invoice.to_json_dict()
    assert data["totals"]["amount_due"] == "12500"  # as written, not padded or floated
    assert data["currency"] == "SEK" and data["tax_currency"] == "EUR"
    assert data["totals"]["tax_total"] == "2500"  # the SEK TaxTotal, not the EUR one
    assert data["seller"]["trading_name"] == "Global Trade Chain"
    assert data["seller"]["tax_id"] == "Godkänd för F-skatt"
    assert data["seller"]["address"]["lines"] == ["Streetname-line1", "AddStreetname-line2", "Address-line3"]
    assert data["preceding_invoice"] == "Preceding invoice no.1"
    assert [t["iban"] for t in data["payment"]["credit_transfers"]][:2] == [
        "SE1212341234123412341234",
        "12341234567",
    ]
    line = data["lines"][0]
    assert (line["quantity"], line["unit_code"], line["net_amount"]) == ("500", "MTR", "10000")
    assert line["price"] == {"net": "20", "gross": "20.50", "base_quantity": "1"}
    assert line["item"]["attributes"] == {"Surface grade": "A11", "Density": "2.33"}
    assert invoice.extraction is not None
    assert invoice.extraction.extractor == "einvoice" and invoice.extraction.confidence == 1.0
    assert invoice.extraction.fields["/number"].xpath == "/Invoice/cbc:ID"
    assert invoice.extraction.fields["/totals/amount_due"].raw == "12500"
    for key in (
        "/issue_date",
        "/due_date",
        "/currency",
        "/seller/name",
        "/seller/vat_id",
        "/buyer/name",
        "/totals/tax_total",
        "/payment/credit_transfers/0/iban",
    ):
        assert key in invoice.extraction.fields, key


def test_ubl_credit_note() -> None:
    invoice = _extract_one(_doc(UBL_CREDIT_NOTE))
    assert (invoice.type, invoice.type_code) == ("credit_note", "381")
    assert invoice.lines and all(line.quantity is not None for line in invoice.lines)


def test_cii_credit_note_type_codes_are_credit_notes() -> None:
    data = XRECHNUNG_CII.read_bytes().replace(b"<ram:TypeCode>380</", b"<ram:TypeCode>381</", 1)
    invoice = _extract_one(Document(data, filename="credit.xml"))
    assert (invoice.type, invoice.type_code) == ("credit_note", "381")


def test_zugferd1_mapping() -> None:
    invoice = _extract_one(_doc(ZUGFERD1_XML))
    assert invoice.number == "KR87654321012"
    assert invoice.issue_date == "2013-10-06"
    assert invoice.contract == "V88456789"
    assert invoice.seller is not None and invoice.seller.tax_id == "5133081508159"
    assert invoice.totals.tax_total == Decimal("200.65")
    assert invoice.period_start is None  # written as 2013-91-02: not a date, so unknown
    freight = [charge for charge in invoice.allowance_charges if charge.charge]
    assert [charge.amount for charge in freight] == [Decimal("15.00")]


def test_embedded_invoice_is_found_whatever_its_name() -> None:
    other = b'<Order xmlns="urn:example:order"><ID>1</ID></Order>'
    pdf = _pdf_with_attachments(("factur-x.xml", other), ("rechnung-2024.xml", XRECHNUNG_CII.read_bytes()))
    invoice = _extract_one(Document(pdf, filename="x.pdf"))
    assert invoice.number == "123456XX"


def test_pdf_with_only_a_hostile_attachment_is_left_to_other_extractors() -> None:
    hostile = b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>'
    doc = Document(_pdf_with_attachments(("factur-x.xml", hostile)), filename="x.pdf")
    extractor = EInvoiceExtractor()
    assert not extractor.accepts(doc, "pdf")
    with pytest.raises(UnsupportedDocument):
        extractor.extract(doc)


def test_plain_pdf_is_not_accepted() -> None:
    doc = Document(_pdf_with_attachments(), filename="plain.pdf")
    assert not EInvoiceExtractor().accepts(doc, "pdf")


def test_broken_pdf_is_not_accepted_but_extract_says_why() -> None:
    doc = Document(b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\ntrailer garbage", filename="broken.pdf")
    extractor = EInvoiceExtractor()
    assert not extractor.accepts(doc, "pdf")
    with pytest.raises(MalformedDocument):
        EInvoiceExtractor().extract(doc)


def test_other_kinds_are_not_accepted() -> None:
    assert not EInvoiceExtractor().accepts(Document(b"hello", filename="a.txt"), "text")


def test_accepts_and_extract_open_a_pdf_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = einvoice._find_embedded

    def counting(data: bytes) -> Any:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(einvoice, "_find_embedded", counting)
    doc = _doc(FACTURX_PDF)
    extractor = EInvoiceExtractor()
    assert extractor.accepts(doc, "pdf")
    assert extractor.accepts(doc, "pdf")
    assert extractor.extract(doc)[0].number
    assert len(calls) == 1


@pytest.mark.parametrize(
    "data",
    [
        b"<html><body>not an invoice</body></html>",
        b'<Invoice xmlns="urn:example:erp-export"><ID>1</ID></Invoice>',
        # a pre-1.0 ZUGFeRD draft, as found in the wild: CII-like but no supported profile
        b'<rsm:Invoice xmlns:rsm="urn:un:unece:uncefact:data:standard:CBFBUY:5"/>',
    ],
    ids=["html", "foreign-invoice-namespace", "zugferd-draft"],
)
def test_xml_that_is_not_a_supported_invoice_is_unsupported(data: bytes) -> None:
    doc = Document(data, filename="x.xml")
    extractor = EInvoiceExtractor()
    assert extractor.accepts(doc, "xml")
    with pytest.raises(UnsupportedDocument):
        extractor.extract(doc)


def test_syntax_recognition() -> None:
    assert einvoice.syntax_of(parse_xml(UBL_CREDIT_NOTE.read_bytes())) == "ubl"
    assert einvoice.syntax_of(parse_xml(XRECHNUNG_CII.read_bytes())) == "cii"
    assert einvoice.syntax_of(parse_xml(ZUGFERD1_XML.read_bytes())) == "zugferd1"


@pytest.mark.parametrize(
    ("xml", "bound", "expected"),
    [
        ('<d><s format="102">20240229</s></d>', None, "2024-02-29"),
        ('<d><s format="102">20230229</s></d>', None, None),
        ('<d><s format="610">202402</s></d>', "start", "2024-02-01"),
        ('<d><s format="610">202402</s></d>', "end", "2024-02-29"),
        ('<d><s format="610">202412</s></d>', "end", "2024-12-31"),
        ('<d><s format="610">202402</s></d>', None, None),
        ('<d><s format="616">202401</s></d>', "start", "2024-01-01"),
        ('<d><s format="616">202401</s></d>', "end", "2024-01-07"),
        ("<d>2018-04-13</d>", None, "2018-04-13"),
        ("<d>2013-04-01T00:00:00</d>", None, "2013-04-01"),
        ("<d>13.04.2018</d>", None, None),
    ],
)
def test_dates(xml: str, bound: Any, expected: str | None) -> None:
    assert date_of(parse_xml(xml.encode()), bound) == expected


# ----------------------------------------------------------------- e-invoice gaps (issue 5)


def _rules(invoice: Invoice) -> list[str]:
    return [m.rule for m in (invoice.validation.messages if invoice.validation else [])]


FACTURX_CORPUS = sorted((SHARED_CORPUS / "facturx").glob("*.pdf"))


@pytest.mark.parametrize("path", FACTURX_CORPUS, ids=lambda p: p.name[:70])
def test_pdf_text_and_embedded_xml_disagreeing_is_a_warning(path: Path) -> None:
    truth = json.loads(path.with_name(path.name + ".truth.json").read_text())
    invoice = _extract_one(_doc(path))
    warnings = [r for r in _rules(invoice) if r.startswith("MI-PDF-")]
    # The corpus truth says (via pdftotext) whether number and total are printed on the page.
    assert bool(warnings) == (truth["visible_in_pdf_text"] is False)


def _pdf_showing(text: str, attachment: bytes) -> bytes:
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    page = canvas.Canvas(buffer)
    for row, line in enumerate(text.splitlines()):
        page.drawString(72, 760 - 14 * row, line)
    page.save()
    pdf = pdfium.PdfDocument(buffer.getvalue())
    pdf.new_attachment("factur-x.xml").set_data(attachment)
    out = io.BytesIO()
    pdf.save(out)
    pdf.close()
    return out.getvalue()


def test_visible_text_check_names_number_and_total_and_survives_validation() -> None:
    from mailingest.pipeline.analyse import analyse

    xml = XRECHNUNG_CII.read_bytes()
    bare = _extract_one(_doc(XRECHNUNG_CII))
    assert bare.number and bare.totals.tax_inclusive is not None
    total = bare.totals.tax_inclusive
    whole, cents = format(total, "f").split(".")
    german = f"{int(whole):,}".replace(",", ".") + "," + cents[:2].ljust(2, "0")
    agreeing = _pdf_showing(f"Rechnung Nr. {bare.number}\nGesamtbetrag {german} EUR", xml)
    assert not [
        r for r in _rules(_extract_one(Document(agreeing, filename="a.pdf"))) if r.startswith("MI-PDF")
    ]
    disagreeing = _pdf_showing("Rechnung Nr. 999-OTHER\nGesamtbetrag 1,00 EUR", xml)
    invoice = _extract_one(Document(disagreeing, filename="b.pdf"))
    assert _rules(invoice) == ["MI-PDF-NUMBER", "MI-PDF-TOTAL"]
    assert all(m.severity == "warning" for m in invoice.validation.messages)  # type: ignore[union-attr]
    analysed = analyse(disagreeing, filename="b.pdf").invoices[0]  # the pipeline keeps them
    assert {"MI-PDF-NUMBER", "MI-PDF-TOTAL"} <= set(_rules(analysed))


def test_zugferd1_negative_allowances_are_normalised_so_br_co_11_holds() -> None:
    from mailingest.pipeline.validate import validate

    source = ZUGFERD1_XML.read_text(encoding="utf-8")
    assert (
        '<ram:ActualAmount currencyID="EUR">-21.55</ram:ActualAmount>' in source
    )  # as the generator wrote it
    invoice = _extract_one(_doc(ZUGFERD1_XML))
    allowances = [ac for ac in invoice.allowance_charges if not ac.charge]
    assert allowances and all(ac.amount is not None and ac.amount > 0 for ac in allowances)
    assert sum(ac.amount for ac in allowances if ac.amount) == invoice.totals.allowances
    assert "BR-CO-11" not in [m.rule for m in validate(invoice).messages]


@pytest.mark.parametrize(
    ("path", "code"),
    [
        (ZUGFERD1_XML, rb"<ram:InvoiceCurrencyCode>\w+</ram:InvoiceCurrencyCode>"),
        (UBL_INVOICE, rb"<cbc:DocumentCurrencyCode>\w+</cbc:DocumentCurrencyCode>"),
    ],
)
def test_currency_is_read_from_the_amounts_when_the_code_is_missing(path: Path, code: bytes) -> None:
    data = path.read_bytes()
    stripped = re.sub(code, b"", data)
    assert stripped != data
    expected = _extract_one(_doc(path)).currency
    invoice = _extract_one(Document(stripped, filename="x.xml"))
    assert expected and invoice.currency == expected
    assert invoice.extraction is not None and invoice.extraction.fields["/currency"].xpath.endswith(
        "/@currencyID"
    )


def test_peppol_na_order_reference_and_bt29_fallback() -> None:
    data = UBL_INVOICE.read_bytes()
    with_na = data.replace(b"<cbc:ID>20180117</cbc:ID>", b"<cbc:ID>NA</cbc:ID>", 1)
    invoice = _extract_one(Document(with_na, filename="x.xml"))
    assert invoice.purchase_order is None and invoice.sales_order == "INK/0117/JM"
    original = _extract_one(_doc(UBL_INVOICE))
    assert original.seller and original.seller.legal_id  # BT-30 stated: it wins
    no_bt30 = re.sub(rb"<cac:PartyLegalEntity>.*?</cac:PartyLegalEntity>", b"", data, count=1, flags=re.S)
    seller = _extract_one(Document(no_bt30, filename="y.xml")).seller
    assert seller is not None and seller.legal_id == "7350000001204"  # BT-29 kept instead
