"""``/v1/messages`` and ``/v1/documents``: the ledger and the files taken out of it, their
original bytes, and reprocessing (the message goes back to ``received`` and the running
pipeline claims it again, exactly as it claims new mail)."""

from __future__ import annotations

import mimetypes
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import and_, delete, or_, update
from sqlmodel import Session, col, select

from mailingest.api import actions
from mailingest.api.actions import Context
from mailingest.api.auth import Principal
from mailingest.errors import StorageError
from mailingest.pipeline.runner import document_view
from mailingest.storage import repo, tables
from mailingest.storage.tables_vendors import Correction

FINAL = ("approved", "rejected", "exported")


def message_view(msg: tables.Message, documents: list[tables.Document]) -> dict[str, Any]:
    return {
        "id": msg.id,
        "source": msg.source,
        "mailbox": msg.mailbox,
        "message_id": msg.message_id,
        "from": msg.from_addr,
        "subject": msg.subject,
        "filename": msg.filename,
        "size": msg.size,
        "sha256": msg.sha256,
        "links": msg.links or [],
        "status": msg.status,
        "duplicate_of": msg.duplicate_of,
        "error": msg.error,
        "received_at": msg.received_at.isoformat(),
        "processed_at": msg.processed_at.isoformat() if msg.processed_at else None,
        "documents": [document_view(d) for d in documents],
    }


def requeue(session: Session, ctx: Context, message_id: str, actor: str) -> dict[str, Any]:
    """Put a processed or failed message back in the queue, removing what it produced before
    (its documents and invoices) so the new extraction replaces them rather than duplicating.
    409 while it is still queued, for a duplicate, or when one of its invoices was decided."""
    msg = session.get(tables.Message, message_id)
    if msg is None:
        raise HTTPException(404, f"no message {message_id}")
    if msg.status == "duplicate":
        raise HTTPException(409, f"message {message_id} duplicates {msg.duplicate_of}; reprocess that one")
    if msg.status in ("received", "processing"):
        raise HTTPException(409, f"message {message_id} is {msg.status} already")
    invoices = session.exec(select(tables.Invoice).where(tables.Invoice.message_id == message_id)).all()
    decided = [i.id for i in invoices if i.status in FINAL]
    if decided:
        raise HTTPException(409, f"invoice(s) {', '.join(decided)} of message {message_id} were decided")
    removed = [i.id for i in invoices]
    corrected = session.exec(
        select(Correction.invoice_id).where(col(Correction.invoice_id).in_(removed)).limit(1)
    ).first()
    if corrected:
        raise HTTPException(
            409, f"invoice {corrected} was corrected by hand; reprocessing would discard the corrections"
        )
    session.execute(delete(tables.Invoice).where(col(tables.Invoice.message_id) == message_id))
    session.execute(delete(tables.Document).where(col(tables.Document.message_id) == message_id))
    session.execute(
        update(tables.Message)
        .where(col(tables.Message.id) == message_id, col(tables.Message.status) == msg.status)
        .values(
            status="received", claim_token=None, claimed_until=None, error=None, processed_at=None, attempts=0
        )
    )
    repo.audit(
        session,
        actor=actor,
        action="message.reprocess",
        subject_type="message",
        subject_id=message_id,
        detail={"previous_status": msg.status, "removed_invoices": removed},
    )
    return {"message_id": message_id, "status": "received", "removed_invoices": removed}


def _utc(value: datetime) -> datetime:
    """Naive times are UTC; aware ones are converted (SQLite compares the stored text)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def disposition(filename: str) -> str:
    printable = "".join(c if c.isprintable() else "_" for c in filename)[:200] or "download"
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in printable)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(printable)}"


def _bytes(session: Session, ctx: Context, sha256: str) -> bytes:
    try:
        return ctx.blobs.get(session, sha256)
    except StorageError as exc:
        raise HTTPException(410, f"the original bytes are gone: {exc.detail}") from exc


def router(ctx: Context) -> APIRouter:
    api = APIRouter(prefix="/v1")
    reader, writer = ctx.scope("invoices:read"), ctx.scope("invoices:write")

    @api.get("/messages", tags=["messages"], dependencies=[reader])
    def list_messages(
        status: Annotated[str | None, Query(max_length=200)] = None,
        source: Annotated[str | None, Query(max_length=20)] = None,
        received_from: datetime | None = None,
        received_to: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 20,
        starting_after: Annotated[str | None, Query(max_length=40)] = None,
    ) -> dict[str, Any]:
        """The ledger, newest first; paged on (received_at, id)."""
        m = tables.Message
        with Session(ctx.engine) as s:
            query = select(m)
            if status:
                query = query.where(col(m.status).in_(status.split(",")))
            if source:
                query = query.where(m.source == source)
            if received_from:
                query = query.where(col(m.received_at) >= _utc(received_from))
            if received_to:
                query = query.where(col(m.received_at) <= _utc(received_to))
            if starting_after:
                anchor = s.get(m, starting_after)
                if anchor is None:
                    raise HTTPException(404, f"no message {starting_after} (starting_after)")
                at = anchor.received_at
                query = query.where(
                    or_(col(m.received_at) < at, and_(col(m.received_at) == at, col(m.id) < anchor.id))
                )
            query = query.order_by(col(m.received_at).desc(), col(m.id).desc()).limit(limit + 1)
            rows = s.exec(query).all()
            data = [message_view(r, []) for r in rows[:limit]]
        for view in data:
            del view["documents"]
        return {"data": data, "has_more": len(rows) > limit}

    @api.get("/messages/{message_id}", tags=["messages"], dependencies=[reader])
    def get_message(message_id: str) -> dict[str, Any]:
        with Session(ctx.engine) as s:
            msg = s.get(tables.Message, message_id)
            if msg is None:
                raise HTTPException(404, f"no message {message_id}")
            docs = s.exec(
                select(tables.Document)
                .where(tables.Document.message_id == message_id)
                .order_by(col(tables.Document.path))
            ).all()
            return message_view(msg, list(docs))

    @api.get("/messages/{message_id}/raw", tags=["messages"], dependencies=[reader])
    def message_raw(message_id: str) -> Response:
        """The message exactly as received (``message/rfc822``), or the lone file as uploaded."""
        with Session(ctx.engine) as s:
            msg = s.get(tables.Message, message_id)
            if msg is None:
                raise HTTPException(404, f"no message {message_id}")
            raw = _bytes(s, ctx, msg.sha256)
        if msg.filename:
            media = mimetypes.guess_type(msg.filename)[0] or "application/octet-stream"
            name = msg.filename
        else:
            media, name = "message/rfc822", f"{msg.id}.eml"
        return Response(raw, media_type=media, headers={"Content-Disposition": disposition(name)})

    @api.post("/messages/{message_id}/reprocess", tags=["messages"], status_code=202)
    def reprocess_message(
        message_id: str,
        request: Request,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        principal: Principal = writer,
    ) -> JSONResponse:
        """Extract the message again: its documents and invoices are replaced by the new results
        when the pipeline has claimed it (poll the message until ``processed``)."""
        outcome = actions.idempotent(
            ctx.engine,
            actor=principal.actor,
            idempotency_key=idempotency_key,
            request_print=actions.request_print(request, None),
            work=lambda s: (202, requeue(s, ctx, message_id, principal.actor)),
        )
        ctx.queued()
        return outcome.response()

    @api.get("/documents", tags=["documents"], dependencies=[reader])
    def list_documents(
        message_id: Annotated[str | None, Query(max_length=40)] = None,
        status: Annotated[str | None, Query(max_length=20)] = None,
        kind: Annotated[str | None, Query(max_length=20)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 20,
        starting_after: Annotated[str | None, Query(max_length=40)] = None,
    ) -> dict[str, Any]:
        """Documents newest first (ids sort by creation time)."""
        d = tables.Document
        query = select(d).order_by(col(d.id).desc())
        if message_id:
            query = query.where(d.message_id == message_id)
        if status:
            query = query.where(d.status == status)
        if kind:
            query = query.where(d.kind == kind)
        if starting_after:
            query = query.where(col(d.id) < starting_after)
        with Session(ctx.engine) as s:
            rows = s.exec(query.limit(limit + 1)).all()
        return {"data": [document_view(r) for r in rows[:limit]], "has_more": len(rows) > limit}

    @api.get("/documents/{document_id}", tags=["documents"], dependencies=[reader])
    def get_document(document_id: str) -> dict[str, Any]:
        with Session(ctx.engine) as s:
            doc = s.get(tables.Document, document_id)
            if doc is None:
                raise HTTPException(404, f"no document {document_id}")
            return document_view(doc)

    @api.get("/documents/{document_id}/content", tags=["documents"], dependencies=[reader])
    def document_content(document_id: str) -> Response:
        """The document's original bytes with its content type and file name."""
        with Session(ctx.engine) as s:
            doc = s.get(tables.Document, document_id)
            if doc is None:
                raise HTTPException(404, f"no document {document_id}")
            data = _bytes(s, ctx, doc.sha256)
        name = doc.filename or f"{doc.id}"
        media = doc.content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Response(
            data,
            media_type=media,
            headers={"Content-Disposition": disposition(name), "X-Content-SHA256": doc.sha256},
        )

    return api
