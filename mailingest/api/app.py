"""FastAPI application: ``/healthz``, ``/metrics``, read endpoints for messages, documents,
invoices and events, and the approve/reject actions.

Errors are RFC 9457 ``application/problem+json``. Lists use cursor pagination
(``limit``, ``starting_after``, ``has_more``) as DESIGN.md 3.4 asks. Every ``/v1`` endpoint needs
an API key with the scope it names (``mailingest.api.auth``); ``/healthz`` and ``/metrics`` are
open, for probes and scrapers, and reachable only where the API listens (loopback by default).
Every call made with a key is written to the audit log.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from mailingest import __version__
from mailingest.api import actions
from mailingest.api.auth import Authenticator, AuthMode, Principal, effective_mode
from mailingest.api.metrics import SourcesStatus, build_registry, status_counts
from mailingest.config import Config
from mailingest.connectors.registry import subscriptions
from mailingest.pipeline.runner import document_view
from mailingest.storage import db, repo, tables

PROBLEM = "application/problem+json"


def _problem(
    status: int,
    title: str,
    detail: str,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    return JSONResponse(
        {"type": type_, "title": title, "status": status, "detail": detail, **extra},
        status_code=status,
        media_type=PROBLEM,
        headers=headers,
    )


class ActionBody(BaseModel):
    comment: str | None = Field(default=None, max_length=2000)


def event_view(event: tables.Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "subject_id": event.subject_id,
        "created_at": event.payload.get("timestamp"),
        "data": event.payload.get("data"),
    }


def _audit_call(engine: Engine, principal: Principal, action: str, status: int, duration_ms: float) -> None:
    with db.session_scope(engine) as session:
        repo.audit(
            session,
            actor=principal.actor,
            action=action[:100],
            detail={"status": status, "duration_ms": round(duration_ms, 1)},
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
        "links": msg.links or [],
        "status": msg.status,
        "duplicate_of": msg.duplicate_of,
        "error": msg.error,
        "received_at": msg.received_at.isoformat(),
        "processed_at": msg.processed_at.isoformat() if msg.processed_at else None,
        "documents": [document_view(d) for d in documents],
    }


def create_app(
    engine: Engine,
    health: Callable[[], dict[str, Any]] | None = None,
    *,
    config: Config | None = None,
    auth_mode: AuthMode | None = None,
    sources_status: SourcesStatus | None = None,
) -> FastAPI:
    """The API over ``engine``. ``config`` supplies the connectors that approvals notify and the
    auth mode (``[api] auth``, narrowed by ``effective_mode``); ``auth_mode`` overrides it.
    ``sources_status`` (the daemon's mailbox connections) feeds ``/healthz`` and the source
    gauges of ``/metrics``; without it both leave sources out."""
    config = config or Config()
    connectors = subscriptions(config)
    authenticator = Authenticator(engine, auth_mode or effective_mode(config.api))
    registry = build_registry(engine, sources_status)
    app = FastAPI(
        title="mailingest",
        version=__version__,
        description="Invoices out of mailboxes, into structured, routed data.",
    )

    def scope(name: str) -> Any:
        return Depends(authenticator.require(name))

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _problem(
            exc.status_code, HTTPStatus(exc.status_code).phrase, str(exc.detail), headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_problem(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _problem(
            422, "Unprocessable Content", "the request is not valid", errors=jsonable_encoder(exc.errors())
        )

    @app.middleware("http")
    async def audit_calls(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Audit every call made with an API key (anonymous loopback reads are not audited:
        pollers would fill the log). One small insert, run off the event loop."""
        started = time.perf_counter()
        response = await call_next(request)
        principal: Principal | None = getattr(request.state, "principal", None)
        if principal is not None and principal.key_id is not None:
            route = request.scope.get("route")
            action = f"{request.method} {getattr(route, 'path', request.url.path)}"
            duration_ms = (time.perf_counter() - started) * 1000
            await run_in_threadpool(_audit_call, engine, principal, action, response.status_code, duration_ms)
        return response

    def session() -> Session:
        return Session(engine)

    @app.get("/healthz", tags=["monitoring"])
    def healthz() -> JSONResponse:
        """503 "degraded" when a check fails, a mailbox connection has been failing for longer
        than its grace period, or an OAuth2 token was refused (a person must re-authorise).
        Shorter connection trouble shows in ``sources`` without failing the probe, so a network
        blip does not flap it."""
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
        body: dict[str, Any] = {"status": "ok", "version": __version__, "checks": checks}
        if sources_status is not None:
            sources = sources_status()
            body["sources"] = sources
            ok = ok and all(s["healthy"] and s.get("token_ok") is not False for s in sources.values())
        body["status"] = "ok" if ok else "degraded"
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["monitoring"])
    def metrics() -> Response:
        """Prometheus text format: rows by status (read at scrape time), source connection and
        OAuth2 token gauges, and process metrics."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/messages/{message_id}", tags=["messages"], dependencies=[scope("invoices:read")])
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

    @app.get("/v1/documents/{document_id}", tags=["documents"], dependencies=[scope("invoices:read")])
    def get_document(document_id: str) -> dict[str, Any]:
        with session() as s:
            doc = s.get(tables.Document, document_id)
            if doc is None:
                raise HTTPException(404, f"no document {document_id}")
            return document_view(doc)

    @app.get("/v1/invoices", tags=["invoices"], dependencies=[scope("invoices:read")])
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

    @app.get("/v1/invoices/{invoice_id}", tags=["invoices"], dependencies=[scope("invoices:read")])
    def get_invoice(invoice_id: str) -> dict[str, Any]:
        with session() as s:
            row = s.get(tables.Invoice, invoice_id)
            if row is None:
                raise HTTPException(404, f"no invoice {invoice_id}")
            return row.data

    @app.get("/v1/stats", tags=["monitoring"], dependencies=[scope("analytics:read")])
    def stats() -> dict[str, Any]:
        return status_counts(engine)

    approver = scope("invoices:approve")

    def _action(action: str) -> Callable[..., Response]:
        def endpoint(
            invoice_id: str,
            request: Request,
            body: Annotated[ActionBody | None, Body()] = None,
            idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
            # a default, not Annotated: string annotations cannot see this closure's names
            principal: Principal = approver,
        ) -> Response:
            outcome = actions.change_status(
                engine,
                invoice_id=invoice_id,
                action=action,
                actor=principal.actor,
                comment=body.comment if body else None,
                connectors=connectors,
                idempotency_key=idempotency_key,
                request_print=actions.fingerprint(
                    request.method, request.url.path, body.model_dump() if body else None
                ),
            )
            headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
            return JSONResponse(outcome.body, status_code=outcome.status_code, headers=headers)

        endpoint.__doc__ = (
            f"{action.capitalize()} an invoice that is validated, needs_review or extracted (else 409). "
            "Writes the audit entry and the outbox event in one transaction. "
            "A repeat with the same Idempotency-Key (24 h) returns the first response, changing nothing."
        )
        return endpoint

    for name in actions.TRANSITIONS:
        app.post(f"/v1/invoices/{{invoice_id}}/{name}", tags=["invoices"], name=f"{name}_invoice")(
            _action(name)
        )

    @app.get("/v1/events", tags=["events"], dependencies=[scope("invoices:read")])
    def list_events(
        limit: int = Query(20, ge=1, le=200), starting_after: str | None = None
    ) -> dict[str, Any]:
        """The change feed: outbox events oldest first; pass the last id seen as ``starting_after``."""
        with session() as s:
            query = select(tables.Event).order_by(col(tables.Event.seq))
            if starting_after:
                after = s.exec(select(tables.Event.seq).where(tables.Event.id == starting_after)).first()
                if after is None:
                    raise HTTPException(404, f"no event {starting_after}")
                query = query.where(col(tables.Event.seq) > after)
            rows = s.exec(query.limit(limit + 1)).all()
        return {"data": [event_view(r) for r in rows[:limit]], "has_more": len(rows) > limit}

    return app
