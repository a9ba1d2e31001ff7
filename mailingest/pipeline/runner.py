"""The daemon's side of the pipeline: claim a message from the ledger, analyse it, then store
documents, invoices and outbox events in **one** transaction and mark the message processed.

Crash anywhere before that commit and the message is still ``received``/``processing`` and will
be analysed again (analysis has no side effects); crash after it and the outbox carries on. So
each message's results are stored exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import structlog
from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailingest.errors import MailingestError, error_dict
from mailingest.models import Invoice, Validation, new_id
from mailingest.models.invoice import Duplicate, ValidationMessage
from mailingest.pipeline.analyse import Analysis, DocumentOutcome, analyse
from mailingest.pipeline.dedupe import find_duplicates, number_key
from mailingest.pipeline.validate import STRUCTURED_FORMATS, validate
from mailingest.storage import repo, tables
from mailingest.storage.blobs import BlobStore
from mailingest.storage.db import is_postgres, session_scope
from mailingest.vendors.history import enrichment, load_history, vendor_facts
from mailingest.vendors.match import match_vendor
from mailingest.vendors.profile import apply_profile

log = structlog.get_logger("mailingest.pipeline")

MAX_ATTEMPTS = 5  # a message that crashed the worker this often is parked as failed (poison message)


class Router(Protocol):
    """Routing rules: ``facts`` are namespaces (vendor, duplicate, enrichment) conditions see."""

    def __call__(
        self, invoice: Invoice, context: dict[str, Any], facts: dict[str, Any] | None = None
    ) -> Invoice: ...


@dataclass
class Runtime:
    """What the runner needs from the daemon, passed explicitly (no globals)."""

    engine: Engine
    blobs: BlobStore
    connectors: Sequence[tuple[str, Sequence[str]]]  # (name, event patterns)
    max_document_bytes: int = 50 * 2**20
    lease: float = 300.0
    worker: str = "worker-1"
    router: Router | None = None
    # (channel, mailbox) → Tesseract languages for OCR ("deu+eng"); None: all installed
    ocr_languages: Callable[[str | None, str | None], str | None] | None = None
    # (channel, mailbox) → PDF password secrets, resolved only for an encrypted PDF
    pdf_passwords: Callable[[str | None, str | None], Sequence[Any]] | None = None
    templates_dir: str | None = None  # [extraction] templates_dir (invoice2data templates)
    review_below_confidence: float = 0.5  # [pipeline]: key fields read less surely go to review


# Key fields whose confidence decides review; a seller counts as read when its name or VAT id is.
KEY_FIELDS = ("/number", "/issue_date", "/currency", "/totals/amount_due")
SELLER_FIELDS = ("/seller/name", "/seller/vat_id")
LOW_CONFIDENCE = "MI-LOW-CONFIDENCE"


def low_confidence_fields(invoice: Invoice, threshold: float) -> list[str]:
    """Key fields read with a confidence below ``threshold`` (never for XML: those are exact)."""
    fields = invoice.extraction.fields if invoice.extraction else {}
    if not fields or threshold <= 0:
        return []
    low = [p for p in KEY_FIELDS if p in fields and fields[p].confidence < threshold]
    seller = [fields[p].confidence for p in SELLER_FIELDS if p in fields]
    if seller and max(seller) < threshold:
        low.append("/seller/name")
    return low


def flag_low_confidence(invoice: Invoice, threshold: float) -> Invoice:
    """Add a ``MI-LOW-CONFIDENCE`` warning naming the key fields a person should check."""
    low = low_confidence_fields(invoice, threshold)
    if low and invoice.validation is not None:
        text = f"read with low confidence (< {threshold:g}), please check: {', '.join(low)}"
        invoice.validation.messages.append(
            ValidationMessage(rule=LOW_CONFIDENCE, severity="warning", text=text, path=low[0])
        )
    return invoice


def analysis_context(rt: Runtime, channel: str, mailbox: str | None, received_at: datetime) -> dict[str, Any]:
    """What ``analyse`` needs to know about where a message came from: the source's OCR
    languages, PDF passwords and the templates directory."""
    return {
        "channel": channel,
        "mailbox": mailbox,
        "received_at": received_at.isoformat().replace("+00:00", "Z"),
        "ocr_languages": rt.ocr_languages(channel, mailbox) if rt.ocr_languages else None,
        "pdf_passwords": rt.pdf_passwords(channel, mailbox) if rt.pdf_passwords else (),
        "templates_dir": rt.templates_dir,
    }


def initial_status(invoice: Invoice) -> str:
    """Status before routing rules: review when invalid, a duplicate or a key field was read with
    low confidence (``MI-LOW-CONFIDENCE``), else validated."""
    if invoice.duplicate_of or (invoice.validation and not invoice.validation.valid):
        return "needs_review"
    if invoice.validation and any(m.rule == LOW_CONFIDENCE for m in invoice.validation.messages):
        return "needs_review"
    return "validated"


def _events_for(invoice: Invoice) -> list[str]:
    events = ["invoice.extracted"]
    events.append(
        "invoice.validated"
        if invoice.validation and invoice.validation.valid
        else "invoice.validation_failed"
    )
    if invoice.duplicate_of:
        events.append("invoice.duplicate_detected")
    if invoice.status == "needs_review":
        events.append("invoice.needs_review")
    elif invoice.status in ("approved", "rejected"):
        events.append(f"invoice.{invoice.status}")
    return events


def _fit(value: str | None, size: int) -> str | None:
    """Index columns have fixed widths; the full value always stays in the JSON ``data``."""
    return value[:size] if value else value


def _amount_column(value: Decimal | None) -> Decimal | None:
    """NUMERIC(18, 4) holds up to 10^14; anything larger is nonsense from a document, kept in JSON only."""
    return value if value is not None and abs(value) < Decimal(10) ** 14 else None


def _document_row(msg: tables.Message, outcome: DocumentOutcome) -> tables.Document:
    err = outcome.error or {}
    return tables.Document(
        id=new_id("doc"),
        message_id=msg.id,
        path=outcome.doc.path,
        filename=outcome.doc.filename,
        content_type=outcome.doc.content_type,
        kind=outcome.kind,
        size=outcome.doc.size,
        sha256=outcome.doc.sha256,
        status=outcome.status,
        extractor=outcome.extractor,
        error_type=err.get("type"),
        error_title=err.get("title"),
        error_detail=(err.get("detail") or "")[:4000] or None,
        duration_ms=outcome.duration_ms,
    )


def document_view(row: tables.Document) -> dict[str, object]:
    """The JSON shape of a document in events and the API."""
    view: dict[str, object] = {
        "id": row.id,
        "message_id": row.message_id,
        "path": row.path,
        "filename": row.filename,
        "content_type": row.content_type,
        "kind": row.kind,
        "size": row.size,
        "sha256": row.sha256,
        "status": row.status,
        "extractor": row.extractor,
    }
    if row.error_type:
        view["error"] = {"type": row.error_type, "title": row.error_title, "detail": row.error_detail}
    return view


def _is_structured(invoice: Invoice) -> bool:
    fmt = invoice.source.format if invoice.source else None
    return fmt in STRUCTURED_FORMATS


def _with_profile(invoice: Invoice, profile: dict[str, Any], default_gl: str | None) -> Invoice:
    """Apply the vendor's learned profile (PDF/OCR only) and re-validate what it changed."""
    if _is_structured(invoice) or not (profile or default_gl):
        return invoice
    try:
        improved = apply_profile(invoice, profile, default_gl)
    except (ValueError, TypeError, ArithmeticError) as exc:  # a profile must never stop the pipeline
        log.warning("vendor profile not applied", error=str(exc).splitlines()[0])
        return invoice
    if improved is invoice:
        return invoice
    old = invoice.validation.messages if invoice.validation else []
    computed = validate(invoice.model_copy(update={"validation": None})).messages
    notes = [m for m in old if m not in computed]  # what the extractor itself noted
    improved.validation = validate(improved.model_copy(update={"validation": Validation(messages=notes)}))
    return improved


def _vendor_and_facts(
    session: Session, msg: tables.Message, doc_row: tables.Document, invoice: Invoice
) -> tuple[Invoice, dict[str, Any]]:
    """Match the vendor, apply its profile, find duplicates, enrich: the invoice and its facts."""
    facts: dict[str, Any] = {}
    matched = match_vendor(session, invoice, msg.from_addr)
    if matched is not None:
        vendor, how = matched
        invoice = _with_profile(invoice, vendor.profile, vendor.default_gl_account)
        invoice.vendor_id = vendor.id
        hist = load_history(session, vendor.id, invoice.currency)
        facts["vendor"] = {**vendor_facts(vendor, hist, invoice, datetime.now(UTC).date()), "matched_by": how}
        extra, warnings = enrichment(hist, invoice)
        invoice.enrichment = extra
        facts["enrichment"] = extra
        if warnings:
            messages = [*(invoice.validation.messages if invoice.validation else []), *warnings]
            valid = invoice.validation.valid if invoice.validation else True
            invoice.validation = Validation(valid=valid, messages=messages)
    dup = find_duplicates(session, invoice, doc_row.sha256, invoice.vendor_id)
    if dup is not None:
        invoice.duplicate_of = dup.of
        invoice.duplicate = Duplicate(of=dup.of, score=dup.score, reasons=dup.reasons, reason=dup.reason)
        facts["duplicate"] = {"of": dup.of, "score": dup.score, "reasons": dup.reasons}
    else:
        facts["duplicate"] = {"of": None, "score": 0.0, "reasons": []}
    return invoice, facts


def _prepare_invoice(
    session: Session, rt: Runtime, msg: tables.Message, doc_row: tables.Document, invoice: Invoice
) -> Invoice:
    """Vendor, profile, duplicates, review flags and routing: reads (and hooks' or lookups' HTTP
    calls), no writes except a vendor seen for the first time."""
    invoice.id = new_id("inv")
    invoice, facts = _vendor_and_facts(session, msg, doc_row, invoice)
    invoice = flag_low_confidence(invoice, rt.review_below_confidence)
    invoice.status = initial_status(invoice)  # type: ignore[assignment]
    if rt.router is not None:
        context = {"mailbox": msg.mailbox, "from": msg.from_addr, "subject": msg.subject}
        invoice = rt.router(invoice, context, facts=facts)
    return invoice


def _store_invoice(
    session: Session, rt: Runtime, msg: tables.Message, doc_row: tables.Document, invoice: Invoice
) -> None:
    """Write a prepared invoice with its audit entry and outbox events."""
    assert invoice.id is not None
    invoice_id = invoice.id
    data = invoice.to_json_dict()
    seller = invoice.seller
    session.add(
        tables.Invoice(
            id=invoice_id,
            document_id=doc_row.id,
            message_id=msg.id,
            number=_fit(invoice.number, 200),
            number_key=_fit(number_key(invoice.number), 200) if invoice.number else None,
            type=invoice.type,
            seller_name=_fit(seller.name, 500) if seller else None,
            seller_vat_id=_fit(seller.vat_id, 50) if seller else None,
            issue_date=_fit(invoice.issue_date, 10),
            currency=_fit(invoice.currency, 3),
            amount_due=_amount_column(invoice.totals.amount_due),
            status=invoice.status,
            valid=invoice.validation.valid if invoice.validation else None,
            duplicate_of=invoice.duplicate_of,
            vendor_id=invoice.vendor_id,
            data=data,
        )
    )
    session.flush()  # later invoices of the same message see this one as a possible original
    repo.audit(
        session,
        actor="pipeline",
        action="invoice.created",
        subject_type="invoice",
        subject_id=invoice_id,
        detail={
            "status": invoice.status,
            "routing": invoice.routing,
            "duplicate_of": invoice.duplicate_of,
            "vendor_id": invoice.vendor_id,
        },
    )
    for event_type in _events_for(invoice):
        repo.add_event(session, type=event_type, subject_id=invoice.id, data=data, connectors=rt.connectors)


def store_analysis(session: Session, rt: Runtime, msg: tables.Message, analysis: Analysis, token: str) -> int:
    """Write everything learnt from one message; returns the number of invoices stored."""
    count = 0
    rows = [_document_row(msg, outcome) for outcome in analysis.documents]
    first = next(((d, 0) for d, outcome in enumerate(analysis.documents) if outcome.invoices), None)
    early: Invoice | None = None
    if first is not None:
        # Most messages hold one invoice: prepare it before this transaction writes anything, so
        # SQLite's write lock is not held through vendor matching, history, duplicates and routing
        # (intake and the dispatcher wait for that lock). Later invoices of the message are
        # prepared after the earlier ones are flushed, so they see them as possible originals.
        d, _ = first
        early = _prepare_invoice(session, rt, msg, rows[d], analysis.documents[d].invoices[0])
    for d, (outcome, doc_row) in enumerate(zip(analysis.documents, rows, strict=True)):
        rt.blobs.put(session, outcome.doc.data, durable=False)
        session.add(doc_row)
        session.flush()
        repo.add_event(
            session,
            type="document.received",
            subject_id=doc_row.id,
            data=document_view(doc_row),
            connectors=rt.connectors,
        )
        if outcome.status in ("failed", "unsupported"):
            repo.add_event(
                session,
                type="document.rejected",
                subject_id=doc_row.id,
                data=document_view(doc_row),
                connectors=rt.connectors,
            )
        for i, invoice in enumerate(outcome.invoices):
            ready = early if (d, i) == first else _prepare_invoice(session, rt, msg, doc_row, invoice)
            assert ready is not None
            _store_invoice(session, rt, msg, doc_row, ready)
            count += 1
    problems = {"problems": analysis.problems} if analysis.problems else None
    if analysis.links:
        msg.links = analysis.links  # recorded, not fetched: following mailed links is the user's call
        session.add(msg)
        session.flush()
    repo.finish_claim(session, msg.id, token, status="processed", error=problems)
    repo.audit(
        session,
        actor="pipeline",
        action="message.processed",
        subject_type="message",
        subject_id=msg.id,
        detail={"documents": len(analysis.documents), "invoices": count},
    )
    return count


def _fail_message(rt: Runtime, msg_id: str, token: str, error: dict[str, str]) -> None:
    with session_scope(rt.engine) as session:
        msg = session.get(tables.Message, msg_id)
        if msg is None:
            return
        repo.finish_claim(session, msg_id, token, status="failed", error=error)
        repo.audit(
            session,
            actor="pipeline",
            action="message.failed",
            subject_type="message",
            subject_id=msg_id,
            detail=error,
        )
        view = {"message_id": msg.id, "filename": msg.filename, "subject": msg.subject, "error": error}
        repo.add_event(
            session, type="document.rejected", subject_id=msg.id, data=view, connectors=rt.connectors
        )


def process_next(rt: Runtime) -> bool:
    """Process one waiting message; False when there was nothing to do."""
    with session_scope(rt.engine) as session:
        msg = repo.claim_next_message(
            session, lease=rt.lease, worker=rt.worker, postgres=is_postgres(rt.engine)
        )
        if msg is None:
            return False
        msg_id, sha, filename, token, attempts = (
            msg.id,
            msg.sha256,
            msg.filename,
            msg.claim_token,
            msg.attempts,
        )
        context = analysis_context(rt, msg.source, msg.mailbox, msg.received_at)
        raw = rt.blobs.get(session, sha)
    assert token is not None
    started = time.perf_counter()
    bound = log.bind(message=msg_id, source=context["channel"])
    if attempts > MAX_ATTEMPTS:
        detail = f"abandoned after {MAX_ATTEMPTS} attempts that did not finish; see the logs"
        _fail_message(
            rt, msg_id, token, {"type": "gave_up", "title": "Processing kept failing", "detail": detail}
        )
        bound.error("message abandoned", error=detail)
        return True
    try:
        analysis = analyse(raw, filename=filename, context=context, max_bytes=rt.max_document_bytes)
    except MailingestError as exc:
        _fail_message(rt, msg_id, token, exc.as_dict())
        bound.warning("message rejected", error=exc.detail)
        return True
    for outcome in analysis.documents:
        bound.info(
            "document",
            path=outcome.doc.path,
            filename=outcome.doc.filename,
            kind=outcome.kind,
            status=outcome.status,
            invoices=len(outcome.invoices),
            ms=outcome.duration_ms,
            error=(outcome.error or {}).get("detail"),
        )
    try:
        with session_scope(rt.engine) as session:
            msg = session.get(tables.Message, msg_id)
            assert msg is not None
            count = store_analysis(session, rt, msg, analysis, token)
    except MailingestError as exc:
        bound.error("storing results failed; will retry", error=exc.detail)
        raise
    except Exception as exc:
        bound.exception("storing results crashed", error=error_dict(exc)["detail"])
        raise
    bound.info(
        "message processed",
        documents=len(analysis.documents),
        invoices=count,
        ms=round((time.perf_counter() - started) * 1000, 1),
    )
    return True
