"""Side-effect-free analysis of one input: unpack → detect → extract → normalize → validate.

Shared by ``mailingest extract`` (no database) and the daemon's runner (which then stores and
emits). Each document's outcome is recorded; one failing document never stops its siblings.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from mailingest import mime
from mailingest.documents import Document
from mailingest.errors import (
    ConfigError,
    DocumentTooLarge,
    EncryptedDocument,
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
from mailingest.pipeline.extractors.ocr import OCR_LANGUAGES
from mailingest.pipeline.extractors.pdf_parties import apply_sender_name
from mailingest.pipeline.extractors.pdf_text import unlock_pdf
from mailingest.pipeline.extractors.templates import TEMPLATES, templates_for
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


def extract_one(doc: Document, *, max_bytes: int, passwords: Sequence[Any] = ()) -> DocumentOutcome:
    """One document's outcome. ``passwords`` (strings or ``Secret``s, read only when needed) are
    tried on an encrypted PDF; the extractors then see its decrypted copy, the outcome and the
    invoices' source the original file."""
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
        readable = doc
        if kind == "pdf":
            plain = unlock_pdf(doc.data, _revealed(passwords, doc.label), doc.label)
            if plain is not doc.data:
                readable = Document(plain, doc.filename, doc.content_type, doc.path, doc.charset)
        outcome.extractor, outcome.invoices = extract_document(readable)
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
    ``context["ocr_languages"]`` (``"deu+eng"`` or a list) picks the OCR languages for this input;
    the daemon fills it from the source's ``ocr_languages`` (``config_sources.ocr_languages_for``).
    ``context["pdf_passwords"]`` (strings or ``Secret``s, ``config_sources.pdf_passwords_for``)
    open encrypted PDFs; ``context["templates_dir"]`` is ``[extraction] templates_dir``.
    """
    context = context or {}
    unpacked = load_input(data, filename)
    outcomes = []
    # The mailbox's OCR languages and the templates reach the extractors without widening the
    # Extractor protocol.
    templates_dir = context.get("templates_dir")
    chosen = templates_for(templates_dir) if templates_dir else None  # ConfigError: template broken
    languages = OCR_LANGUAGES.set(_languages(context.get("ocr_languages")))
    templates = TEMPLATES.set(chosen)
    try:
        for doc in unpacked.documents:
            outcomes.append(_analyse_document(doc, context, unpacked, max_bytes))
    finally:
        TEMPLATES.reset(templates)
        OCR_LANGUAGES.reset(languages)
    return Analysis(
        meta=unpacked.meta, documents=outcomes, problems=list(unpacked.problems), links=list(unpacked.links)
    )


def _revealed(passwords: Sequence[Any], label: str) -> Iterator[str]:
    """Each password in turn, a ``Secret`` resolved only when the one before did not fit."""
    for password in passwords:
        if isinstance(password, str):
            yield password
            continue
        try:
            yield password.get()
        except ConfigError as exc:  # names the variable or file, never a value
            detail = f"{label}: a configured PDF password cannot be read: {exc.detail}"
            raise EncryptedDocument(detail) from None


def _languages(value: Any) -> str | None:
    """``"deu+eng"``, ``["deu", "eng"]`` or nothing, as Tesseract's ``deu+eng``."""
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value) or None
    return str(value) if value else None


def _analyse_document(
    doc: Document, context: dict[str, Any], unpacked: mime.Unpacked, max_bytes: int
) -> DocumentOutcome:
    outcome = extract_one(doc, max_bytes=max_bytes, passwords=context.get("pdf_passwords") or ())
    meta = unpacked.meta if unpacked.meta.message_id or unpacked.meta.from_ else None
    for inv in outcome.invoices:
        apply_sender_name(inv, meta.from_ if meta else None)
    outcome.invoices = [_finish(inv, _source_for(doc, context, meta)) for inv in outcome.invoices]
    return outcome


def _finish(invoice: Invoice, source: Source) -> Invoice:
    if invoice.source is not None and invoice.source.format:
        source.format = invoice.source.format
    invoice = normalize(invoice.model_copy(update={"source": source}))
    invoice.validation = validate(invoice)
    return invoice
