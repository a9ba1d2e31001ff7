"""Side-effect-free analysis of one input: unpack → detect → extract → normalize → validate.

Shared by ``mailingest extract`` (no database) and the daemon's runner (which then stores and
emits). Each document's outcome is recorded; one failing document never stops its siblings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from mailingest import mime
from mailingest.documents import Document
from mailingest.errors import (
    DocumentTooLarge,
    InputError,
    MailingestError,
    MalformedDocument,
    MimeError,
    UnsupportedDocument,
    error_dict,
)
from mailingest.models import Invoice, Source, SourceFile
from mailingest.pipeline.detect import detect
from mailingest.pipeline.extractors import extract_document
from mailingest.pipeline.normalize import normalize
from mailingest.pipeline.validate import validate

log = structlog.get_logger("mailingest.pipeline")

# Kinds that are never invoices by themselves: recorded as "skipped", not as failures.
_NOT_INVOICES = {"html", "text", "other"}


@dataclass
class DocumentOutcome:
    doc: Document
    kind: str
    status: str  # extracted | no_invoice | skipped | unsupported | failed
    extractor: str | None = None
    invoices: list[Invoice] = field(default_factory=list)
    error: dict[str, str] | None = None
    duration_ms: float = 0.0


@dataclass
class Analysis:
    meta: mime.MessageMeta | None
    documents: list[DocumentOutcome]
    problems: list[dict[str, str]]
    links: list[dict[str, str]] = field(default_factory=list)

    @property
    def invoices(self) -> list[Invoice]:
        return [inv for outcome in self.documents for inv in outcome.invoices]


def load_input(data: bytes, filename: str | None) -> mime.Unpacked:
    """A mail (.eml or anything that looks like one) is unpacked; any other file is one document."""
    name = (filename or "").lower()
    try:
        if name.endswith(".eml") or (not name.endswith((".pdf", ".xml")) and mime.looks_like_message(data)):
            return mime.unpack_message(data)
        return mime.wrap_file(data, filename or "document")
    except MailingestError:
        raise
    except Exception as exc:
        log.exception("unpacking crashed", filename=filename)
        raise MimeError(f"the message could not be unpacked ({type(exc).__name__}: {exc})") from exc


def _source_for(doc: Document, context: dict[str, Any], meta: mime.MessageMeta | None) -> Source:
    source = Source(
        channel=context.get("channel"),
        mailbox=context.get("mailbox"),
        received_at=context.get("received_at"),
        message_id=meta.message_id if meta else None,
        subject=meta.subject if meta else None,
        file=SourceFile(name=doc.filename, sha256=doc.sha256, content_type=doc.content_type, size=doc.size),
    )
    source.from_ = meta.from_ if meta else None
    return source


def declared_kind(doc: Document) -> str | None:
    """What the name or content type claims the document is (mail clients lie; bytes decide)."""
    name = (doc.filename or "").lower()
    ctype = (doc.content_type or "").lower()
    if name.endswith(".pdf") or ctype in ("application/pdf", "application/x-pdf"):
        return "pdf"
    if name.endswith(".xml") or ctype in ("application/xml", "text/xml"):
        return "xml"
    return None


def extract_one(doc: Document, *, max_bytes: int) -> DocumentOutcome:
    kind = detect(doc)
    started = time.perf_counter()
    outcome = DocumentOutcome(doc=doc, kind=kind, status="failed")
    try:
        if doc.size == 0:
            raise MalformedDocument(f"{doc.label}: the file is empty (0 bytes)")
        if doc.size > max_bytes:
            raise DocumentTooLarge(f"{doc.label}: {doc.size} bytes exceeds the limit of {max_bytes}")
        claimed = declared_kind(doc)
        if claimed in ("pdf", "xml") and kind != claimed:
            raise MalformedDocument(
                f"{doc.label}: named or typed as {claimed.upper()} but its content is not"
            )
        outcome.extractor, outcome.invoices = extract_document(doc)
        outcome.status = "extracted" if outcome.invoices else "no_invoice"
    except UnsupportedDocument as exc:
        outcome.status = "skipped" if kind in _NOT_INVOICES else "unsupported"
        outcome.error = exc.as_dict()
    except InputError as exc:
        outcome.error = exc.as_dict()
    except Exception as exc:
        log.exception("extractor crashed", document=doc.label, kind=kind)
        outcome.error = error_dict(exc)
    outcome.duration_ms = round((time.perf_counter() - started) * 1000, 2)
    return outcome


def analyse(
    data: bytes,
    *,
    filename: str | None = None,
    context: dict[str, Any] | None = None,
    max_bytes: int = 50 * 2**20,
) -> Analysis:
    """Everything the pipeline learns from one input, without storing anything.

    Raises ``MimeError`` only when the input is not usable at all (e.g. 0 bytes of mail).
    """
    context = context or {}
    unpacked = load_input(data, filename)
    outcomes = []
    for doc in unpacked.documents:
        outcome = extract_one(doc, max_bytes=max_bytes)
        outcome.invoices = [
            _finish(
                inv,
                _source_for(
                    doc, context, unpacked.meta if unpacked.meta.message_id or unpacked.meta.from_ else None
                ),
            )
            for inv in outcome.invoices
        ]
        outcomes.append(outcome)
    return Analysis(
        meta=unpacked.meta, documents=outcomes, problems=list(unpacked.problems), links=list(unpacked.links)
    )


def _finish(invoice: Invoice, source: Source) -> Invoice:
    if invoice.source is not None and invoice.source.format:
        source.format = invoice.source.format
    invoice = normalize(invoice.model_copy(update={"source": source}))
    invoice.validation = validate(invoice)
    return invoice
