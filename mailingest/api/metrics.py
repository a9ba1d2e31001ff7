"""Prometheus metrics, read from the database at scrape time.

The counts come from the database rather than in-process counters because the pipeline may run
in several processes (``[pipeline] workers``) and counters would restart at zero with the
daemon; four GROUP BY queries on indexed status columns per scrape are cheap.

Source gauges (``mailingest_source_up``, ``mailingest_oauth_token_ok``,
``mailingest_oauth_refresh_token_expires_seconds``) come from the daemon's in-memory source
status instead, read through a callback at scrape time: only this process knows its connections.

Also here: ``mailingest_outbox_lag_seconds`` (age of the oldest pending delivery),
``mailingest_extraction_duration_seconds`` (a histogram built at scrape time from the stored
per-document durations, one aggregate query), ``mailingest_api_credential_expires_seconds``
(active keys and clients with an expiry), the in-process
``mailingest_api_request_duration_seconds`` histogram by method, route and status (observed by
the middleware in ``mailingest.api.ratelimit``), and the ``/livez`` and ``/readyz`` probes.

Per connector (config file and API-managed webhook endpoints alike, from ``connector_state``):
``mailingest_connector_circuit_open`` (1 while its circuit is open, i.e. deliveries wait out the
cool-down), ``mailingest_connector_consecutive_failures`` and ``mailingest_connector_disabled``
(1 after a ``410 Gone``, until re-enabled).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, func, select

from mailingest.storage import tables
from mailingest.storage.tables import utcnow
from mailingest.storage.tables_auth import ApiClient

EXTRACTION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# (name in /v1/stats and in the metric, table, status column)
COUNTED: tuple[tuple[str, Any, Any], ...] = (
    ("messages", tables.Message, tables.Message.status),
    ("documents", tables.Document, tables.Document.status),
    ("invoices", tables.Invoice, tables.Invoice.status),
    ("deliveries", tables.Delivery, tables.Delivery.status),
)


def status_counts(engine: Engine) -> dict[str, dict[str, int]]:
    """Rows per status for messages, documents, invoices and deliveries (one read transaction)."""
    with Session(engine) as session:
        return {
            name: dict(session.exec(select(column, func.count()).select_from(model).group_by(column)).all())
            for name, model, column in COUNTED
        }


class _DatabaseCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("mailingest_database_up", "1 if the last scrape could read the database")
        try:
            counts = status_counts(self.engine)
        except SQLAlchemyError:  # a scrape must still answer, saying the database is unreachable
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        # e.g. a table of a newer schema is missing: keep the counts
        with contextlib.suppress(SQLAlchemyError):
            yield from _extra_families(self.engine)
        with contextlib.suppress(SQLAlchemyError):
            yield from connector_families(self.engine)
        for name, by_status in counts.items():
            family = GaugeMetricFamily(
                f"mailingest_{name}", f"{name.capitalize()} by status", labels=["status"]
            )
            for status, count in sorted(by_status.items()):
                family.add_metric([status], count)
            yield family


def _extra_families(engine: Engine) -> Iterator[Any]:
    now = utcnow()
    with Session(engine) as session:
        oldest = session.exec(
            select(func.min(tables.Delivery.created_at)).where(tables.Delivery.status == "pending")
        ).first()
        seconds = col(tables.Document.duration_ms) / 1000.0
        sums = [func.sum(case((seconds <= b, 1), else_=0)) for b in EXTRACTION_BUCKETS]
        row = session.exec(
            select(func.count(col(tables.Document.duration_ms)), func.sum(seconds), *sums).where(
                col(tables.Document.duration_ms).is_not(None)
            )
        ).one()
        expiring = [
            (kind, id_, expires)
            for kind, model in (("key", tables.ApiKey), ("client", ApiClient))
            for id_, expires in session.exec(
                select(model.id, model.expires_at).where(
                    col(model.expires_at).is_not(None), col(model.revoked_at).is_(None)
                )
            ).all()
        ]
    lag = GaugeMetricFamily(
        "mailingest_outbox_lag_seconds", "Age of the oldest pending webhook/connector delivery (0 if none)"
    )
    if isinstance(oldest, str):  # SQLite aggregates come back as text
        from datetime import UTC, datetime

        oldest = datetime.fromisoformat(oldest).replace(tzinfo=UTC)
    if oldest is not None and oldest.tzinfo is None:
        from datetime import UTC

        oldest = oldest.replace(tzinfo=UTC)
    lag.add_metric([], max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
    yield lag
    count, total = row[0], row[1]
    cumulative: list[Any] = list(row[2:])
    extraction = HistogramMetricFamily(
        "mailingest_extraction_duration_seconds", "Time to extract one document (stored per document)"
    )
    buckets = [(str(b), int(c or 0)) for b, c in zip(EXTRACTION_BUCKETS, cumulative, strict=True)]
    extraction.add_metric([], [*buckets, ("+Inf", int(count or 0))], float(total or 0.0))
    yield extraction
    expires = GaugeMetricFamily(
        "mailingest_api_credential_expires_seconds",
        "Seconds until an active API key or OAuth2 client expires",
        labels=["kind", "id"],
    )
    for kind, id_, at in expiring:
        if at is not None:
            expires.add_metric([kind, id_], (at - now).total_seconds())
    yield expires


def connector_families(engine: Engine) -> Iterator[GaugeMetricFamily]:
    """Circuit breaker and disabled state per connector, as the dispatchers left it."""
    now = utcnow()
    with Session(engine) as session:
        states = list(session.exec(select(tables.ConnectorState).order_by(col(tables.ConnectorState.name))))
    circuit = GaugeMetricFamily(
        "mailingest_connector_circuit_open",
        "1 while the connector's circuit is open (its deliveries wait for the cool-down)",
        labels=["connector"],
    )
    failures = GaugeMetricFamily(
        "mailingest_connector_consecutive_failures",
        "Failed delivery attempts in a row (0 after a success)",
        labels=["connector"],
    )
    disabled = GaugeMetricFamily(
        "mailingest_connector_disabled", "1 if a 410 Gone disabled the connector", labels=["connector"]
    )
    for state in states:
        until = state.circuit_open_until
        circuit.add_metric([state.name], 1 if until is not None and until > now else 0)
        failures.add_metric([state.name], state.consecutive_failures)
        disabled.add_metric([state.name], 1 if state.disabled_at is not None else 0)
    yield circuit
    yield failures
    yield disabled


# ``<source>:<account>/<folder>`` → that connection's status (``ImapSource.status()`` entries)
SourcesStatus = Callable[[], dict[str, dict[str, Any]]]


class _SourcesCollector(Collector):
    def __init__(self, sources_status: SourcesStatus) -> None:
        self.sources_status = sources_status

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "mailingest_source_up",
            "1 while the mailbox connection works",
            labels=["source", "account", "folder"],
        )
        token_ok = GaugeMetricFamily(
            "mailingest_oauth_token_ok",
            "1 if the account's last token request succeeded, 0 if its refresh token or client was refused",
            labels=["account"],
        )
        expires = GaugeMetricFamily(
            "mailingest_oauth_refresh_token_expires_seconds",
            "Seconds until the account's refresh token expires (only when the token endpoint says)",
            labels=["account"],
        )
        accounts: set[str] = set()  # folders of one account share its token: one sample each
        now = time.time()
        for entry in self.sources_status().values():
            account = entry["account"]
            up.add_metric([entry["source"], account, entry["folder"]], 1 if entry["connected"] else 0)
            if account in accounts:
                continue
            accounts.add(account)
            if entry.get("token_ok") is not None:
                token_ok.add_metric([account], 1 if entry["token_ok"] else 0)
            if entry.get("refresh_token_expires_at") is not None:
                expires.add_metric([account], entry["refresh_token_expires_at"] - now)
        yield up
        yield token_ok
        yield expires


class MailingestRegistry(CollectorRegistry):
    """The app's registry, holding the API latency histogram the middleware observes."""

    def __init__(self) -> None:
        super().__init__()
        self.api_requests = Histogram(
            "mailingest_api_request_duration_seconds",
            "API request latency by method, route template and status",
            ["method", "route", "status"],
            registry=self,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )


def build_registry(engine: Engine, sources_status: SourcesStatus | None = None) -> CollectorRegistry:
    """A registry per app (not the global one), so several apps in one process do not collide."""
    registry = MailingestRegistry()
    registry.register(_DatabaseCollector(engine))
    if sources_status is not None:
        registry.register(_SourcesCollector(sources_status))
    ProcessCollector(registry=registry)
    return registry


def probe_router(engine: Engine) -> APIRouter:
    """``/livez``: the process answers. ``/readyz``: the database answers and its schema is at
    the newest migration(s) — what a load balancer should wait for before sending traffic."""
    router = APIRouter(tags=["monitoring"])

    @router.get("/livez")
    def livez() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    def readyz() -> JSONResponse:
        from alembic.script import ScriptDirectory

        from mailingest.storage import db

        try:
            current = set((db.current_revision(engine) or "").split(",")) - {""}
        except SQLAlchemyError as exc:
            return JSONResponse(
                {"status": "unavailable", "database": f"error: {type(exc).__name__}"}, status_code=503
            )
        heads = set(ScriptDirectory.from_config(db.alembic_config(engine)).get_heads())
        ready = current == heads
        body = {
            "status": "ok" if ready else "unavailable",
            "database": "ok",
            "schema": {"current": sorted(current), "heads": sorted(heads)},
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    return router
