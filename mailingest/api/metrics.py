"""Prometheus metrics, read from the database at scrape time.

The counts come from the database rather than in-process counters because the pipeline may run
in several processes (``[pipeline] workers``) and counters would restart at zero with the
daemon; four GROUP BY queries on indexed status columns per scrape are cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
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


def build_registry(engine: Engine) -> CollectorRegistry:
    """A registry per app (not the global one), so several apps in one process do not collide."""
    registry = CollectorRegistry()
    registry.register(_DatabaseCollector(engine))
    ProcessCollector(registry=registry)
    return registry
