"""Structured e-invoices: UBL and CII XML, alone or embedded in a Factur-X / ZUGFeRD PDF.

This extractor runs first because a structured invoice is exact: every value is read, not
inferred, so confidence is 1.0 and each key field records the XPath it came from. A PDF is only
accepted when it carries an embedded invoice XML; otherwise the PDF-text extractor gets it.

Recognition goes by root element *and* namespace: an ``Invoice`` root in some ERP's private
namespace (or a pre-1.0 ZUGFeRD draft) is not UBL, and mapping it as UBL would produce a
confident, wrong invoice.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from decimal import Decimal
from typing import Literal

import pypdfium2 as pdfium
from lxml import etree

from mailingest.documents import Document
from mailingest.errors import EncryptedDocument, InputError, MalformedDocument, UnsupportedDocument
from mailingest.models import Extraction, Invoice, Source, SourceFile, Validation, ValidationMessage
from mailingest.pdfium import LOCK as pdfium_lock
from mailingest.pipeline import schematron
from mailingest.pipeline.detect import Kind, detect
from mailingest.pipeline.extractors import cii, ubl
from mailingest.pipeline.extractors.xmlfields import Element, Reader
from mailingest.xmlsafe import parse_xml

Syntax = Literal["ubl", "cii", "zugferd1"]

PREFERRED_ATTACHMENTS = ("factur-x.xml", "zugferd-invoice.xml", "xrechnung.xml")
"""Names the Factur-X, ZUGFeRD and XRechnung specifications give the embedded XML (any case)."""

_ROOTS: tuple[tuple[str, frozenset[str], Syntax], ...] = (
    ("urn:oasis:names:specification:ubl:schema:xsd:", frozenset({"Invoice", "CreditNote"}), "ubl"),
    ("urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:", frozenset({"CrossIndustryInvoice"}), "cii"),
    ("urn:ferd:CrossIndustryDocument:invoice:", frozenset({"CrossIndustryDocument"}), "zugferd1"),
)
"""(namespace prefix, root local names, syntax); prefixes so minor version bumps still match."""

_PDFIUM_PASSWORD_ERROR = 4  # FPDF_ERR_PASSWORD
VISIBLE_TEXT_PAGES = 10
"""Pages read for the visible-text cross-check; of longer PDFs the first and the last half of it."""

# PDFium is not thread-safe, not even across documents; serialise this module's calls into it.


class EInvoiceExtractor:
    """Extracts exactly one invoice from a UBL/CII XML document or from a PDF's embedded XML.

    ``accepts`` has to open a PDF to know whether it carries an invoice; what it found is kept
    (per document sha256, a few documents at most) so that ``extract`` does not do it again.
    """

    name = "einvoice"

    def __init__(self, *, cache_size: int = 8) -> None:
        self._cache_size = cache_size
        self._found: OrderedDict[str, _Embedded | None] = OrderedDict()
        self._lock = threading.Lock()

    def accepts(self, doc: Document, kind: Kind) -> bool:
        """Every XML document (``extract`` says why one is unusable); PDFs with an invoice inside."""
        if kind == "xml":
            return True
        if kind != "pdf":
            return False
        with self._lock:
            if doc.sha256 in self._found:
                self._found.move_to_end(doc.sha256)
                return self._found[doc.sha256] is not None
        try:
            embedded = _find_embedded(doc.data)
        except InputError:
            embedded = None  # a PDF that cannot be opened is the PDF-text extractor's to report
        with self._lock:
            self._found[doc.sha256] = embedded
            while len(self._found) > self._cache_size:
                self._found.popitem(last=False)
        return embedded is not None

    def extract(self, doc: Document) -> list[Invoice]:
        if detect(doc) != "pdf":
            root = parse_xml(doc.data)
            return [_with_schematron(to_invoice(root, doc, embedded=False), root, [])]
        with self._lock:
            known = doc.sha256 in self._found
            embedded = self._found.pop(doc.sha256, None)
        if not known:
            embedded = _find_embedded(doc.data)
        if embedded is None:
            raise UnsupportedDocument(f"{doc.label}: the PDF carries no embedded e-invoice XML")
        root, visible_text = embedded
        invoice = to_invoice(root, doc, embedded=True)
        return [_with_schematron(invoice, root, visible_text_warnings(invoice, visible_text))]


def _with_schematron(invoice: Invoice, root: Element, messages: list[ValidationMessage]) -> Invoice:
    """Attach the extractor's messages plus, when ``[validation] schematron`` is on, the official
    Schematron's (``pipeline.schematron``: never raises; the pipeline's own rules run later)."""
    syntax = syntax_of(root)
    if syntax in ("ubl", "cii"):
        messages = messages + schematron.check(invoice, root, syntax)
    if messages:
        valid = not any(m.severity == "error" for m in messages)
        invoice.validation = Validation(valid=valid, messages=messages)
    return invoice


def find_embedded_invoice(pdf_data: bytes) -> Element | None:
    """The root of the invoice XML attached to a PDF: standard name first, else any ``*.xml`` that is one.

    Attachments that are broken, hostile or not invoices are passed over, not fatal: a PDF may
    carry other XML (delivery notes, signatures) beside or instead of an invoice. Raises
    ``EncryptedDocument`` / ``MalformedDocument`` when the PDF itself cannot be opened.
    """
    embedded = _find_embedded(pdf_data)
    return embedded[0] if embedded else None


_Embedded = tuple[Element, str]
"""The invoice root found in a PDF and the PDF's visible text (for the cross-check)."""


def _find_embedded(pdf_data: bytes) -> _Embedded | None:
    attachments, visible_text = _xml_attachments(pdf_data)
    for data in attachments:
        try:
            root = parse_xml(data)
        except InputError:
            continue
        if syntax_of(root) is not None:
            return root, visible_text
    return None


def _xml_attachments(pdf_data: bytes) -> tuple[list[bytes], str]:
    """``*.xml`` attachments of the PDF (standard invoice names first, then document order) and,
    when there are any, the text of its first pages: the PDF is opened once for both."""
    found: list[tuple[str, bytes]] = []
    visible_text = ""
    with pdfium_lock:
        try:
            pdf = pdfium.PdfDocument(pdf_data)
        except pdfium.PdfiumError as exc:
            if exc.err_code == _PDFIUM_PASSWORD_ERROR:
                raise EncryptedDocument(f"PDF is password-protected: {exc}") from exc
            raise MalformedDocument(f"PDF cannot be opened: {exc}") from exc
        try:
            for index in range(pdf.count_attachments()):
                attachment = pdf.get_attachment(index)
                name = attachment.get_name()
                if not name.lower().endswith(".xml"):
                    continue
                try:
                    found.append((name, bytes(attachment.get_data())))
                except pdfium.PdfiumError:
                    continue  # an empty or undecodable attachment holds no invoice
            if found:
                visible_text = _page_text(pdf)
        finally:
            pdf.close()
    rank = {name: position for position, name in enumerate(PREFERRED_ATTACHMENTS)}
    found.sort(key=lambda item: rank.get(item[0].lower(), len(rank)))
    return [data for _, data in found], visible_text


def _page_text(pdf: pdfium.PdfDocument) -> str:
    """Text of the first ``VISIBLE_TEXT_PAGES`` pages; empty when the PDF has none (a scan)."""
    count = len(pdf)
    half = VISIBLE_TEXT_PAGES // 2
    pages = range(count) if count <= VISIBLE_TEXT_PAGES else [*range(half), *range(count - half, count)]
    texts = []
    for index in pages:
        try:
            page = pdf[index]
            textpage = page.get_textpage()
            texts.append(textpage.get_text_range())
            textpage.close()
            page.close()
        except pdfium.PdfiumError:
            continue
    return "\n".join(texts)


def syntax_of(root: Element) -> Syntax | None:
    """Which supported e-invoice syntax the root element belongs to, if any."""
    qname = etree.QName(root)
    for namespace_prefix, local_names, syntax in _ROOTS:
        if qname.localname in local_names and (qname.namespace or "").startswith(namespace_prefix):
            return syntax
    return None


def to_invoice(root: Element, doc: Document, *, embedded: bool) -> Invoice:
    """Map a parsed e-invoice root to the canonical invoice, with source and provenance filled in.

    Raises ``UnsupportedDocument`` for well-formed XML that is not a supported invoice.
    """
    syntax = syntax_of(root)
    if syntax is None:
        qname = etree.QName(root)
        raise UnsupportedDocument(
            f"{doc.label}: XML root {qname.localname!r} in namespace {qname.namespace!r} "
            "is not a UBL, CII or ZUGFeRD invoice"
        )
    reader = Reader()
    if syntax == "ubl":
        invoice, profile = ubl.to_invoice(root, reader), ubl.profile(root)
    else:
        invoice, profile = cii.to_invoice(root, reader), cii.profile(root)
    invoice.source = Source(
        file=SourceFile(name=doc.filename, sha256=doc.sha256, content_type=doc.content_type, size=doc.size),
        format=source_format(syntax, profile, embedded=embedded),
    )
    invoice.extraction = Extraction(extractor="einvoice", confidence=1.0, fields=reader.fields)
    return invoice


def source_format(syntax: Syntax, profile: str | None, *, embedded: bool) -> str:
    """``source.format``: the syntax for bare XML; for XML out of a PDF, the hybrid's name."""
    if syntax == "zugferd1" or not embedded:
        return syntax
    if "xrechnung" in (profile or "").lower():
        return "xrechnung"
    return "facturx" if syntax == "cii" else syntax


_INVISIBLE = re.compile(r"[\s\u00a0\u202f\u2009]+")


def _squeezed(text: str) -> str:
    """Text without any whitespace, so that layout line breaks and thousands spaces do not count."""
    return _INVISIBLE.sub("", text)


def amount_renderings(amount: Decimal) -> set[str]:
    """Common printings of a total: ``1234.56``, ``1234,56``, ``1,234.56``, ``1.234,56``, ``1'234.56``."""
    fixed = format(abs(amount).quantize(Decimal("0.01")), "f")
    whole, cents = fixed.split(".")
    grouped = f"{int(whole):,}"
    return {
        f"{whole}.{cents}",
        f"{whole},{cents}",
        f"{grouped}.{cents}",
        f"{grouped.replace(',', '.')},{cents}",
        f"{grouped.replace(',', chr(39))}.{cents}",
    }


def visible_text_warnings(invoice: Invoice, visible_text: str) -> list[ValidationMessage]:
    """Warnings where the PDF's printed text does not show what its embedded XML says.

    ``MI-PDF-NUMBER``: the XML's invoice number is nowhere in the text. ``MI-PDF-TOTAL``: neither
    the XML's grand total (BT-112) nor its amount due (BT-115) is, in any common rendering. A PDF
    without a text layer (a scan) is not compared: absence of text is not disagreement.
    """
    text = _squeezed(visible_text)
    if not text:
        return []
    messages = []
    number = _squeezed(invoice.number or "")
    if number and number not in text:
        messages.append(
            ValidationMessage(
                rule="MI-PDF-NUMBER",
                severity="warning",
                text=f"the embedded XML's invoice number {invoice.number!r} is not in the PDF's visible text",
                path="/number",
            )
        )
    totals = [t for t in (invoice.totals.tax_inclusive, invoice.totals.amount_due) if t is not None]
    if totals and not any(r in text for total in totals for r in amount_renderings(total)):
        shown = " / ".join(format(t, "f") for t in totals)
        messages.append(
            ValidationMessage(
                rule="MI-PDF-TOTAL",
                severity="warning",
                text=f"the embedded XML's total ({shown}) is not in the PDF's visible text",
                path="/totals/tax_inclusive",
            )
        )
    return messages
