"""FastAPI application: ``/healthz`` plus read endpoints for messages, documents and invoices.

Errors are RFC 9457 ``application/problem+json``. Lists use cursor pagination
(``limit``, ``starting_after``, ``has_more``) as DESIGN.md 3.4 asks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from mailingest import __version__
from mailingest.pipeline.runner import document_view
from mailingest.storage import tables

PROBLEM = "application/problem+json"


def _problem(status: int, title: str, detail: str, type_: str = "about:blank") -> JSONResponse:
    return JSONResponse(
        {"type": type_, "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type=PROBLEM,
    )


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
        "status": msg.status,
        "duplicate_of": msg.duplicate_of,
        "error": msg.error,
        "received_at": msg.received_at.isoformat(),
        "processed_at": msg.processed_at.isoformat() if msg.processed_at else None,
        "documents": [document_view(d) for d in documents],
    }


def create_app(engine: Engine, health: Callable[[], dict[str, Any]] | None = None) -> FastAPI:
    app = FastAPI(
        title="mailingest",
        version=__version__,
        description="Invoices out of mailboxes, into structured, routed data.",
    )

    @app.exception_handler(HTTPException)
    async def http_problem(_request: Request, exc: HTTPException) -> JSONResponse:
        return _problem(exc.status_code, str(exc.detail), str(exc.detail))

    def session() -> Session:
        return Session(engine)

    @app.get("/healthz", tags=["monitoring"])
    def healthz() -> JSONResponse:
        checks: dict[str, Any] = {}
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # noqa: BLE001 - health reports any database failure, never raises
            checks["database"] = f"error: {type(exc).__name__}"
        if health is not None:
            checks.update(health())
        ok = all(v == "ok" for v in checks.values() if isinstance(v, str))
        body = {"status": "ok" if ok else "degraded", "version": __version__, "checks": checks}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/v1/messages/{message_id}", tags=["messages"])
    def get_message(message_id: str) -> dict[str, Any]:
        with session() as s:
            msg = s.get(tables.Message, message_id)
            if msg is None:
                raise HTTPException(404, f"no message {message_id}")
            docs = s.exec(
                select(tables.Document)
                .where(tables.Document.message_id == message_id)
                .order_by(col(tables.Document.path))
            ).all()
            return message_view(msg, list(docs))

    @app.get("/v1/documents/{document_id}", tags=["documents"])
    def get_document(document_id: str) -> dict[str, Any]:
        with session() as s:
            doc = s.get(tables.Document, document_id)
            if doc is None:
                raise HTTPException(404, f"no document {document_id}")
            return document_view(doc)

    @app.get("/v1/invoices", tags=["invoices"])
    def list_invoices(
        limit: int = Query(20, ge=1, le=200),
        starting_after: str | None = None,
        status: str | None = None,
        number: str | None = None,
    ) -> dict[str, Any]:
        query = select(tables.Invoice).order_by(col(tables.Invoice.id).desc())
        if starting_after:
            query = query.where(col(tables.Invoice.id) < starting_after)
        if status:
            query = query.where(tables.Invoice.status == status)
        if number:
            query = query.where(tables.Invoice.number == number)
        with session() as s:
            rows = s.exec(query.limit(limit + 1)).all()
        return {"data": [r.data for r in rows[:limit]], "has_more": len(rows) > limit}

    @app.get("/v1/invoices/{invoice_id}", tags=["invoices"])
    def get_invoice(invoice_id: str) -> dict[str, Any]:
        with session() as s:
            row = s.get(tables.Invoice, invoice_id)
            if row is None:
                raise HTTPException(404, f"no invoice {invoice_id}")
            return row.data

    @app.get("/v1/stats", tags=["monitoring"])
    def stats() -> dict[str, Any]:
        with session() as s:

            def counts(model: Any, column: Any) -> dict[str, int]:
                return dict(s.exec(select(column, func.count()).select_from(model).group_by(column)).all())

            return {
                "messages": counts(tables.Message, tables.Message.status),
                "documents": counts(tables.Document, tables.Document.status),
                "invoices": counts(tables.Invoice, tables.Invoice.status),
                "deliveries": counts(tables.Delivery, tables.Delivery.status),
            }

    return app
