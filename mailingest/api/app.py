"""FastAPI application: monitoring routes here, resources in routers (``mailingest.api.*``).

Errors are RFC 9457 ``application/problem+json``. Lists use cursor pagination
(``limit``, ``starting_after``, ``has_more``) as DESIGN.md 3.4 asks. Every ``/v1`` endpoint needs
an API key with the scope it names (``mailingest.api.auth``); ``/healthz`` and ``/metrics`` are
open, for probes and scrapers, and reachable only where the API listens (loopback by default).
Every call made with a key is written to the audit log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from mailingest import __version__
from mailingest.api import (
    analytics,
    audit,  # /v1/audit and /v1/invoices/{id}/history
    batches,
    deliveries,
    documents,
    endpoints,  # /v1/webhook-endpoints (docs/webhooks.md)
    exports,
    invoices,
    oauth2,
    portal,
    rules,  # routing rules: list, validate a draft, dry run (docs/api.md)
    uploads,
    vendors,  # vendor profiles and history (docs/vendors.md)
    warehouse,  # /v1/analytics/export: month-partitioned CSV in a ZIP (docs/api.md)
)
from mailingest.api.actions import Context, problem
from mailingest.api.auth import Authenticator, AuthMode, Principal, effective_mode
from mailingest.api.metrics import SourcesStatus, build_registry, probe_router, status_counts
from mailingest.api.ratelimit import install_rate_limits
from mailingest.config import Config
from mailingest.connectors.registry import subscriptions
from mailingest.routing.live import status as rules_status
from mailingest.storage import db, repo
from mailingest.storage.blobs import BlobStore


def _field_of(error: dict[str, Any]) -> str:
    """``body.seller.vat_id`` style name of the field a validation error is about."""
    return ".".join(str(p) for p in error.get("loc", ()))


def _audit_call(engine: Engine, principal: Principal, action: str, status: int, duration_ms: float) -> None:
    with db.session_scope(engine) as session:
        repo.audit(
            session,
            actor=principal.actor,
            action=action[:100],
            detail={"status": status, "duration_ms": round(duration_ms, 1)},
        )


def create_app(
    engine: Engine,
    health: Callable[[], dict[str, Any]] | None = None,
    *,
    config: Config | None = None,
    auth_mode: AuthMode | None = None,
    sources_status: SourcesStatus | None = None,
    wake: threading.Event | None = None,
) -> FastAPI:
    """The API over ``engine``. ``config`` supplies the connectors that approvals notify, where
    original bytes are kept, and the auth mode (``[api] auth``, narrowed by ``effective_mode``);
    ``auth_mode`` overrides it. ``sources_status`` (the daemon's mailbox connections) feeds
    ``/healthz`` and the source gauges of ``/metrics``; without it both leave sources out.
    ``wake`` (the daemon's pipeline event) is rung when uploads or reprocessing queue messages."""
    config = config or Config()
    authenticator = Authenticator(engine, auth_mode or effective_mode(config.api))
    ctx = Context(
        engine=engine,
        config=config,
        connectors=subscriptions(config),
        authenticator=authenticator,
        blobs=BlobStore(config.data_dir / "blobs", in_database=config.storage.documents == "database"),
        wake=wake,
    )
    registry = build_registry(engine, sources_status)
    app = FastAPI(
        title="mailingest",
        version=__version__,
        description="Invoices out of mailboxes, into structured, routed data.",
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(
            exc.status_code, str(exc.detail), title=HTTPStatus(exc.status_code).phrase, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_problem(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(exc.errors())
        fields = "; ".join(dict.fromkeys(f"{_field_of(e)}: {e.get('msg', 'invalid')}" for e in errors))
        return problem(422, f"the request is not valid: {fields}"[:2000], errors=errors)

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
        if (rules := rules_status()) is not None:
            body["rules"] = rules  # active routing rule set; "error" = a broken edit (last good set kept)
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

    @app.get("/v1/stats", tags=["monitoring"], dependencies=[ctx.scope("analytics:read")])
    def stats() -> dict[str, Any]:
        return status_counts(engine)

    # exports first: /v1/invoices/export must win over /v1/invoices/{invoice_id}
    app.include_router(exports.router(ctx))
    app.include_router(invoices.router(ctx))
    app.include_router(documents.router(ctx))
    app.include_router(uploads.router(ctx))
    app.include_router(batches.router(ctx))
    app.include_router(oauth2.router(ctx))
    app.include_router(portal.router(ctx))
    app.include_router(analytics.router(ctx))
    app.include_router(deliveries.router(ctx))
    app.include_router(endpoints.router(ctx))
    app.include_router(audit.router(ctx))
    app.include_router(vendors.router(ctx))
    app.include_router(rules.router(ctx))
    app.include_router(warehouse.router(ctx))
    app.include_router(probe_router(engine))
    install_rate_limits(app, authenticator, config.api, registry)
    return app
