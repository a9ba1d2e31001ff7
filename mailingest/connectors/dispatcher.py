"""The outbox dispatcher: drives pending deliveries to their connectors.

Events and their deliveries were committed together with the change they report, so nothing is
lost if the process dies: on restart the pending deliveries are simply still pending. A
delivery is marked delivered only after the destination acknowledged it, so a crash between the
acknowledgement and our commit can cause one repeat — with the same ``webhook-id``, which
receivers use to de-duplicate (Standard Webhooks' at-least-once contract).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mailingest.connectors.base import Connector
from mailingest.errors import DeliveryError, MailingestError, PermanentDeliveryError
from mailingest.storage import repo, tables
from mailingest.storage.db import session_scope
from mailingest.storage.tables import utcnow

log = structlog.get_logger("mailingest.outbox")

MAX_RETRY_AFTER = 24 * 3600.0


def next_delay(schedule: Sequence[float], failures: int, retry_after: float | None) -> float | None:
    """Seconds until the next attempt after ``failures`` failed ones, or None when out of tries.

    ``schedule[0]`` is the first attempt (immediately); ``schedule[n]`` the wait after the n-th
    failure; ±10 % jitter spreads retries of many deliveries; Retry-After wins when it is later.
    """
    if failures >= len(schedule):
        return None
    delay = schedule[failures] * random.uniform(0.9, 1.1)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


@dataclass
class _Result:
    """One attempt's outcome, carried from the delivery thread to the bookkeeping transaction."""

    delivery_id: str
    connector: str
    event_id: str
    started_at: datetime
    outcome: str = "retry"  # delivered | retry | dead | skipped
    status_code: int | None = None
    excerpt: str | None = None
    error: str | None = None
    retry_after: float | None = None
    permanent: bool = False
    duration_ms: float = 0.0


class Dispatcher:
    def __init__(
        self,
        engine: Engine,
        connectors: Mapping[str, Connector],
        *,
        schedule: Sequence[float],
        concurrency: int = 8,
        poll_interval: float = 1.0,
        wake: Any = None,
    ) -> None:
        self.engine = engine
        self.connectors = dict(connectors)
        self.schedule = list(schedule)
        self.poll_interval = poll_interval
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="deliver")
        self._batch = concurrency * 4
        self.wake = wake if wake is not None else threading.Event()  # set when there is new work
        self._stop = threading.Event()
        self._load_disabled()

    def _load_disabled(self) -> None:
        with session_scope(self.engine) as session:
            for state in session.exec(select(tables.ConnectorState)):
                if state.disabled_at is not None and state.name in self.connectors:
                    log.warning("connector disabled", connector=state.name, reason=state.disabled_reason)
                    self.connectors.pop(state.name)

    def run_once(self) -> int:
        """Attempt every due delivery once; returns how many were attempted.

        Attempts run in parallel; their outcomes are then recorded in one transaction (a crash
        in between re-sends that batch with the same webhook-ids, which receivers de-duplicate).
        """
        with session_scope(self.engine) as session:
            due = repo.due_deliveries(session, connectors=list(self.connectors), limit=self._batch)
            work = [(d.id, d.connector, e.id, e.payload) for d, e in due]
        if not work:
            return 0
        results = list(self._pool.map(lambda item: self._attempt(*item), work))
        with session_scope(self.engine) as session:
            for result in results:
                self._record(session, result)
        for r in results:
            log.info(
                "delivery",
                connector=r.connector,
                event_id=r.event_id,
                outcome=r.outcome,
                status=r.status_code,
                ms=r.duration_ms,
                error=r.error,
            )
        return len(work)

    def _attempt(
        self, delivery_id: str, connector_name: str, event_id: str, payload: dict[str, Any]
    ) -> _Result:
        result = _Result(
            delivery_id=delivery_id, connector=connector_name, event_id=event_id, started_at=utcnow()
        )
        connector = self.connectors.get(connector_name)
        if connector is None:
            result.outcome, result.error = "skipped", "connector disabled"
            return result
        t0 = time.perf_counter()
        try:
            done = connector.deliver(event_id, payload)
            result.status_code, result.excerpt, result.outcome = (
                done.status_code,
                done.response_excerpt,
                "delivered",
            )
        except DeliveryError as exc:
            result.status_code = exc.context.get("status_code")
            result.excerpt = exc.context.get("response")
            result.retry_after = exc.context.get("retry_after")
            result.error = exc.detail
            result.permanent = isinstance(exc, PermanentDeliveryError)
            result.outcome = "dead" if result.permanent else "retry"
        except MailingestError as exc:
            result.error, result.outcome = exc.detail, "retry"
        except Exception as exc:
            log.exception("connector crashed", connector=connector_name, event_id=event_id)
            result.error, result.outcome = f"internal error: {type(exc).__name__}: {exc}", "retry"
        result.duration_ms = round((time.perf_counter() - t0) * 1000, 2)
        return result

    def _record(self, session: Session, r: _Result) -> None:
        delivery = session.get(tables.Delivery, r.delivery_id)
        if r.outcome == "skipped" or delivery is None or delivery.status != "pending":
            return
        next_at = None
        if r.outcome == "retry":
            delay = next_delay(self.schedule, delivery.attempts + 1, r.retry_after)
            if delay is None:
                r.outcome = "dead"
            else:
                next_at = utcnow() + timedelta(seconds=delay)
        repo.record_attempt(
            session,
            delivery,
            outcome=r.outcome,
            started_at=r.started_at,
            duration_ms=r.duration_ms,
            status_code=r.status_code,
            error=r.error,
            response_excerpt=r.excerpt,
            next_attempt_at=next_at,
        )
        if r.permanent and r.connector in self.connectors:
            self._disable(session, r.connector, r.error or "permanent failure")

    def _disable(self, session: Session, name: str, reason: str) -> None:
        state = session.get(tables.ConnectorState, name) or tables.ConnectorState(name=name)
        state.disabled_at, state.disabled_reason = utcnow(), reason[:500]
        session.add(state)
        self.connectors.pop(name, None)
        repo.audit(
            session,
            actor="dispatcher",
            action="connector.disabled",
            subject_type="connector",
            subject_id=name[:40],
            detail={"reason": reason},
        )
        repo.add_event(
            session,
            type="webhook_endpoint.disabled",
            subject_id=None,
            data={"connector": name, "reason": reason},
            connectors=[(n, c.events) for n, c in self.connectors.items()],
        )
        log.warning("connector disabled", connector=name, reason=reason)

    def run_forever(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except MailingestError as exc:
                log.error("dispatcher round failed", error=exc.detail)
                busy = 0
            except Exception:
                log.exception("dispatcher round crashed")
                busy = 0
            if not busy:
                self.wake.wait(self.poll_interval)
                self.wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for connector in self.connectors.values():
            connector.close()
