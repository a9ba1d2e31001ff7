"""The extractor registry: turn one document into zero or more canonical invoices.

Extractors are tried in order of ``priority`` (lowest first); the first one that ``accepts`` a
document extracts it. Built-in: e-invoice XML (0, always first: its values are exact), PDF text
(100), OCR (200). Third-party extractors come from the ``mailingest.extractors`` entry-point
group, but only those named in ``[extraction.plugins.<name>]`` run (``configure``), at the
priority the config or the plugin declares (default 50: after e-invoice XML, before PDF text).

A plugin's invoices are treated like any other extractor's: converted to the canonical model,
``extraction.extractor`` set to the plugin's name (provenance). When a plugin raises, the next
accepting extractor gets the document and the failure is noted on its invoices (validation
message ``extractor_failed``); when no other extractor accepts it, the plugin's error is the
document's recorded error. See docs/plugins.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import structlog

from mailingest.documents import Document
from mailingest.errors import ConfigError, MalformedDocument, UnsupportedDocument, error_dict
from mailingest.models import Extraction, Invoice, Source, Validation, ValidationMessage
from mailingest.pipeline.detect import Kind, detect

log = structlog.get_logger("mailingest.extractors")

DEFAULT_PLUGIN_PRIORITY = 50
BUILTIN_PRIORITIES = {"einvoice": 0, "pdf_text": 100, "ocr": 200}


@runtime_checkable
class Extractor(Protocol):
    name: str

    def accepts(self, doc: Document, kind: Kind) -> bool: ...

    def extract(self, doc: Document) -> list[Invoice]:
        """Invoices found in ``doc``; raises ``InputError`` subclasses for unusable input."""
        ...


@dataclass(frozen=True)
class _Entry:
    priority: int
    extractor: Extractor
    plugin: bool  # third-party: output checked, failures fall through to the next extractor


_BUILTIN: list[_Entry] = []
_REGISTERED: list[_Entry] = []  # register(): in-process additions
_PLUGINS: list[_Entry] = []  # configure(): the configured entry-point plugins


def register(extractor: Extractor, priority: int = 300) -> Extractor:
    """Add an extractor in-process (default: after the built-in ones)."""
    _REGISTERED.append(_Entry(priority, extractor, plugin=False))
    return extractor


def configure(extraction: Any) -> None:
    """Use exactly the plugins ``extraction.plugins`` (an ``ExtractionConfig``) enables; called
    once per process when the pipeline is built. Nothing configured: no plugin runs."""
    from mailingest import plugins

    entries = []
    for name, config in getattr(extraction, "plugins", {}).items():
        if not config.enabled:
            continue
        try:
            extractor = plugins.load_factory(plugins.EXTRACTORS_GROUP, name)(config)
        except Exception as exc:  # third-party set-up failing is a start-up configuration error
            raise ConfigError(f"extraction.plugins.{name}: the plugin cannot start: {exc}") from exc
        extractor.name = getattr(extractor, "name", None) or name
        priority = config.priority or getattr(extractor, "priority", None) or DEFAULT_PLUGIN_PRIORITY
        entries.append(_Entry(int(priority), extractor, plugin=True))
        log.info("extractor plugin enabled", plugin=name, priority=priority)
    _PLUGINS[:] = entries


def registry() -> list[Extractor]:
    """Every extractor in the order they are tried."""
    return [entry.extractor for entry in _ordered()]


def _ordered() -> list[_Entry]:
    if not _BUILTIN:
        _load_builtin()
    entries = _BUILTIN + _REGISTERED + _PLUGINS
    return sorted(entries, key=lambda e: e.priority)  # stable: ties keep built-in, then config order


def _load_builtin() -> None:
    from mailingest.pipeline.extractors import einvoice, ocr, pdf_text

    for extractor in (einvoice.EInvoiceExtractor(), pdf_text.PdfTextExtractor(), ocr.OcrExtractor()):
        _BUILTIN.append(_Entry(BUILTIN_PRIORITIES[extractor.name], extractor, plugin=False))


def _canonical(name: str, found: Any) -> list[Invoice]:
    """A plugin's result as canonical invoices whose provenance names the plugin."""
    if not isinstance(found, list):
        raise MalformedDocument(f"extractor plugin {name!r} returned {type(found).__name__}, not a list")
    invoices = []
    for item in found:
        invoice = item if isinstance(item, Invoice) else Invoice.model_validate(item)
        extraction = invoice.extraction or Extraction(extractor=name)
        invoice.extraction = extraction.model_copy(update={"extractor": name})
        if invoice.source is None or not invoice.source.format:
            invoice.source = (invoice.source or Source()).model_copy(update={"format": name})
        invoices.append(invoice)
    return invoices


def _noted(invoices: list[Invoice], failures: list[tuple[str, BaseException]]) -> list[Invoice]:
    """Record on each invoice which plugins failed before the extractor that produced it."""
    if not failures:
        return invoices
    notes = [
        ValidationMessage(
            rule="extractor_failed",
            severity="warning",
            text=f"extractor {name} failed: {error_dict(exc)['detail']}"[:500],
            source=name,
        )
        for name, exc in failures
    ]
    for invoice in invoices:
        old = invoice.validation.messages if invoice.validation else []
        invoice.validation = Validation(messages=[*notes, *old])
    return invoices


def extract_document(doc: Document) -> tuple[str, list[Invoice]]:
    """Run the first accepting extractor; returns (extractor name, invoices)."""
    kind = detect(doc)
    failures: list[tuple[str, BaseException]] = []
    for entry in _ordered():
        extractor = entry.extractor
        if not entry.plugin:
            if extractor.accepts(doc, kind):
                return extractor.name, _noted(extractor.extract(doc), failures)
            continue
        try:
            if not extractor.accepts(doc, kind):
                continue
            invoices = _canonical(extractor.name, extractor.extract(doc))
        except Exception as exc:  # noqa: BLE001 - third-party code: its failure must not stop the others
            log.warning("extractor plugin failed", plugin=extractor.name, document=doc.label, error=str(exc))
            failures.append((extractor.name, exc))
            continue
        return extractor.name, _noted(invoices, failures)
    if failures:  # nothing else could read it: the plugin's error is the document's error
        raise failures[-1][1]  # InputError: recorded as such; anything else as an internal error
    raise UnsupportedDocument(f"{doc.label}: no extractor for a document of kind {kind!r}")
