"""The extractor registry: turn one document into zero or more canonical invoices.

Extractors are tried in registration order (structured XML first, then PDF text, later OCR);
the first one that ``accepts`` a document extracts it. Third parties register more through the
``mailingest.extractors`` entry-point group (a callable returning an ``Extractor``).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Protocol, runtime_checkable

from mailingest.documents import Document
from mailingest.errors import UnsupportedDocument
from mailingest.models import Invoice
from mailingest.pipeline.detect import Kind, detect


@runtime_checkable
class Extractor(Protocol):
    name: str

    def accepts(self, doc: Document, kind: Kind) -> bool: ...

    def extract(self, doc: Document) -> list[Invoice]:
        """Invoices found in ``doc``; raises ``InputError`` subclasses for unusable input."""
        ...


_REGISTRY: list[Extractor] = []


def register(extractor: Extractor) -> Extractor:
    _REGISTRY.append(extractor)
    return extractor


def registry() -> list[Extractor]:
    if not _REGISTRY:
        _load_builtin()
    return list(_REGISTRY)


def _load_builtin() -> None:
    from mailingest.pipeline.extractors import einvoice, ocr, pdf_text

    register(einvoice.EInvoiceExtractor())
    register(pdf_text.PdfTextExtractor())
    register(ocr.OcrExtractor())
    for ep in entry_points(group="mailingest.extractors"):
        register(ep.load()())


def extract_document(doc: Document) -> tuple[str, list[Invoice]]:
    """Run the first accepting extractor; returns (extractor name, invoices)."""
    kind = detect(doc)
    for extractor in registry():
        if extractor.accepts(doc, kind):
            return extractor.name, extractor.extract(doc)
    raise UnsupportedDocument(f"{doc.label}: no extractor for a document of kind {kind!r}")
