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


class Dispatcher:
    def __init__(
        self,
        engine: Engine,
        connectors: Mapping[str, Connector],
        *,
        schedule: Sequence[float],
        concurrency: int = 8,
        poll_interval: float = 1.0,
    ) -> None:
        self.engine = engine
        self.connectors = dict(connectors)
        self.schedule = list(schedule)
        self.poll_interval = poll_interval
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="deliver")
        self._batch = concurrency * 4
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._load_disabled()

    def _load_disabled(self) -> None:
        with session_scope(self.engine) as session:
            for state in session.exec(select(tables.ConnectorState)):
                if state.disabled_at is not None and state.name in self.connectors:
                    log.warning("connector disabled", connector=state.name, reason=state.disabled_reason)
                    self.connectors.pop(state.name)

    def run_once(self) -> int:
        """Attempt every due delivery once; returns how many were attempted."""
        with session_scope(self.engine) as session:
            due = repo.due_deliveries(session, connectors=list(self.connectors), limit=self._batch)
            work = [(d.id, d.connector, e.id, e.payload) for d, e in due]
        futures = [self._pool.submit(self._attempt, *item) for item in work]
        for future in futures:
            future.result()
        return len(work)

    def _attempt(self, delivery_id: str, connector_name: str, event_id: str, payload: dict[str, Any]) -> None:
        connector = self.connectors.get(connector_name)
        if connector is None:
            return
        started_at: datetime = utcnow()
        t0 = time.perf_counter()
        status_code: int | None = None
        excerpt: str | None = None
        error: str | None = None
        retry_after: float | None = None
        permanent = False
        try:
            result = connector.deliver(event_id, payload)
            status_code, excerpt, outcome = result.status_code, result.response_excerpt, "delivered"
        except DeliveryError as exc:
            status_code = exc.context.get("status_code")
            excerpt = exc.context.get("response")
            retry_after = exc.context.get("retry_after")
            error = exc.detail
            permanent = isinstance(exc, PermanentDeliveryError)
            outcome = "dead" if permanent else "retry"
        except MailingestError as exc:
            error, outcome = exc.detail, "retry"
        except Exception as exc:
            log.exception("connector crashed", connector=connector_name, event_id=event_id)
            error, outcome = f"internal error: {type(exc).__name__}: {exc}", "retry"
        duration_ms = round((time.perf_counter() - t0) * 1000, 2)
        with session_scope(self.engine) as session:
            delivery = session.get(tables.Delivery, delivery_id)
            if delivery is None or delivery.status != "pending":
                return
            next_at = None
            if outcome == "retry":
                delay = next_delay(self.schedule, delivery.attempts + 1, retry_after)
                if delay is None:
                    outcome = "dead"
                else:
                    next_at = utcnow() + timedelta(seconds=delay)
            repo.record_attempt(
                session,
                delivery,
                outcome=outcome,
                started_at=started_at,
                duration_ms=duration_ms,
                status_code=status_code,
                error=error,
                response_excerpt=excerpt,
                next_attempt_at=next_at,
            )
            if permanent:
                self._disable(session, connector_name, error or "permanent failure")
        log.info(
            "delivery",
            connector=connector_name,
            event_id=event_id,
            outcome=outcome,
            status=status_code,
            ms=duration_ms,
            error=error,
        )

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
