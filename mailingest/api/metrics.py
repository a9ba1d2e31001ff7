"""Prometheus metrics, read from the database at scrape time.

The counts come from the database rather than in-process counters because the pipeline may run
in several processes (``[pipeline] workers``) and counters would restart at zero with the
daemon; four GROUP BY queries on indexed status columns per scrape are cheap.

Source gauges (``mailingest_source_up``, ``mailingest_oauth_token_ok``,
``mailingest_oauth_refresh_token_expires_seconds``) come from the daemon's in-memory source
status instead, read through a callback at scrape time: only this process knows its connections.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, func, select

from mailingest.storage import tables

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
        for name, by_status in counts.items():
            family = GaugeMetricFamily(
                f"mailingest_{name}", f"{name.capitalize()} by status", labels=["status"]
            )
            for status, count in sorted(by_status.items()):
                family.add_metric([status], count)
            yield family


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


def build_registry(engine: Engine, sources_status: SourcesStatus | None = None) -> CollectorRegistry:
    """A registry per app (not the global one), so several apps in one process do not collide."""
    registry = CollectorRegistry()
    registry.register(_DatabaseCollector(engine))
    if sources_status is not None:
        registry.register(_SourcesCollector(sources_status))
    ProcessCollector(registry=registry)
    return registry
