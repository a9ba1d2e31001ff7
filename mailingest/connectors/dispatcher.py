"""The outbox dispatcher: drives pending deliveries to their connectors.

Events and their deliveries were committed together with the change they report, so nothing is
lost if the process dies: on restart the pending deliveries are simply still pending. A
delivery is marked delivered only after the destination acknowledged it, so a crash between the
acknowledgement and our commit can cause one repeat — with the same ``webhook-id``, which
receivers use to de-duplicate (Standard Webhooks' at-least-once contract).

Several dispatchers may share one PostgreSQL database (several daemons): each delivery is
*leased* (``claimed_by``/``claimed_until``) before it is sent, by a conditional UPDATE, so no two
send it at the same time; the lease of a dispatcher that died runs out and another takes over,
and a restarted one drops its own stale leases at once. Each connector has its own slots
(``concurrency``) and its own circuit breaker: after ``circuit_failures`` consecutive failures
it is left alone for ``circuit_cooldown`` (its deliveries stay pending, spending no attempts),
then one probe decides; a slow or dead destination never holds up the others.

Webhook endpoints managed through the API (``webhook_endpoints``) join without a restart: each
round reads a one-row fingerprint of that small table (count, sum of versions, last update), and
when it changed — or every ``endpoint_refresh`` seconds, for rotation overlaps that ended — the
dispatcher builds, rebuilds (the row's ``version`` changed) or drops their connectors. Connectors from the
config file always win a name clash (the API refuses one anyway).
"""

from __future__ import annotations

import hashlib
import os
import queue
import random
import secrets
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import func, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailingest.connectors.base import Connector
from mailingest.connectors.registry import endpoint_connector, endpoint_secrets
from mailingest.errors import (
    DeliveryError,
    DestinationGone,
    MailingestError,
    PermanentDeliveryError,
    StorageError,
)
from mailingest.storage import repo, tables
from mailingest.storage.db import is_postgres, session_scope
from mailingest.storage.tables import utcnow
from mailingest.storage.tables_endpoints import WebhookEndpoint

log = structlog.get_logger("mailingest.outbox")

MAX_RETRY_AFTER = 24 * 3600.0
DEFAULT_LEASE = 30.0  # seconds; a dispatcher that dies mid-send holds its deliveries this long
CIRCUIT_FAILURES, CIRCUIT_COOLDOWN = 5, 60.0  # defaults when a connector's config says nothing
ENDPOINT_REFRESH = 10.0  # seconds between full reads of the API-managed webhook endpoints


def default_owner() -> str:
    """This host and working directory: a restarted daemon recognises its own leases by it."""
    place = hashlib.sha256(os.getcwd().encode()).hexdigest()[:8]
    return f"{socket.gethostname()[:60]}:{place}"


def circuit_cap(state: tables.ConnectorState | None, threshold: int, slots: int, now: datetime) -> int:
    """How many deliveries a connector may have in flight: none while its circuit is open, one
    probe once the cool-down is over (half-open), else all its slots."""
    if state is None:
        return slots
    if state.circuit_open_until is not None and state.circuit_open_until > now:
        return 0
    if state.consecutive_failures >= threshold:
        return 1
    return slots


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


@dataclass(frozen=True)
class _Work:
    delivery_id: str
    connector: str
    event_id: str
    payload: dict[str, Any]


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
    gone: bool = False  # DestinationGone: disable the connector
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
        lease: float | None = None,
        owner: str | None = None,
        endpoint_refresh: float = ENDPOINT_REFRESH,
    ) -> None:
        self.engine = engine
        self.connectors = dict(connectors)
        self._config_names = frozenset(self.connectors)
        self.endpoint_refresh = endpoint_refresh
        self._endpoint_marks: dict[str, tuple[str, int, int]] = {}  # name → (id, version, secrets)
        self._next_refresh = 0.0
        self._endpoints_seen: tuple[Any, ...] | None = None  # the table's last fingerprint
        self._retired: list[Connector] = []  # replaced endpoint connectors, closed at close()
        self.schedule = list(schedule)
        self.poll_interval = poll_interval
        self.concurrency = concurrency  # per connector
        # by default a lease outlives the slowest attempt (a NATS attempt may take 3 timeouts),
        # so that only a dead dispatcher's deliveries are ever taken over
        slowest = max(
            (float(getattr(getattr(c, "config", None), "timeout", 0)) for c in connectors.values()),
            default=0.0,
        )
        self.lease = lease if lease is not None else max(DEFAULT_LEASE, 3 * slowest + 5)
        self.owner = owner or default_owner()
        self.token = f"{self.owner}#{os.getpid()}-{secrets.token_hex(4)}"
        self._postgres = is_postgres(engine)
        workers = min(64, concurrency * max(2, len(self.connectors) + 1))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deliver")
        self._inflight: dict[str, int] = {name: 0 for name in self.connectors}
        self._finished: queue.Queue[_Result] = queue.Queue()
        self._busy: set[str] = set()  # delivery ids being attempted right now
        self._lock = threading.Lock()
        self.wake = wake if wake is not None else threading.Event()  # set when there is new work
        self._stop = threading.Event()
        self._prepare()

    def _policy(self, name: str) -> tuple[int, float]:
        config = getattr(self.connectors.get(name), "config", None)
        return (
            int(getattr(config, "circuit_failures", CIRCUIT_FAILURES)),
            float(getattr(config, "circuit_cooldown", CIRCUIT_COOLDOWN)),
        )

    def _prepare(self) -> None:
        """Forget disabled connectors, make sure each has a state row, drop our stale leases."""
        try:
            self._prepare_once()
        except StorageError:  # another dispatcher starting at the same moment added a state row
            self._prepare_once()

    def _prepare_once(self) -> None:
        with session_scope(self.engine) as session:
            released = repo.release_leases(session, f"{self.owner}#")
            known = {state.name: state for state in session.exec(select(tables.ConnectorState))}
            for name in list(self.connectors):
                state = known.get(name)
                if state is None:
                    session.add(tables.ConnectorState(name=name))
                elif state.disabled_at is not None:
                    log.warning("connector disabled", connector=name, reason=state.disabled_reason)
                    self.connectors.pop(name)
        if released:
            log.warning("resuming deliveries interrupted by the last stop", count=released)

    def refresh_endpoints(self, *, force: bool = False) -> None:
        """Bring the API-managed webhook endpoints' connectors up to date with their table: when
        its fingerprint changed, every ``endpoint_refresh`` seconds, or when ``force``d."""
        now_m = time.monotonic()
        try:
            with session_scope(self.engine) as session:
                seen = tuple(
                    session.exec(
                        select(
                            func.count(),
                            func.sum(WebhookEndpoint.version),
                            func.max(WebhookEndpoint.updated_at),
                        )
                    ).one()
                )
            if not force and seen == self._endpoints_seen and now_m < self._next_refresh:
                return
            self._next_refresh = now_m + self.endpoint_refresh
            wanted = self._wanted_endpoints()
            self._endpoints_seen = seen
        except MailingestError as exc:  # e.g. two dispatchers adding one state row: next time
            log.error("reading webhook endpoints failed", error=exc.detail)
            return
        for name in list(self._endpoint_marks):
            entry = wanted.get(name)
            if entry is None or entry[0] != self._endpoint_marks[name] or name not in self.connectors:
                del self._endpoint_marks[name]
                old = self.connectors.pop(name, None)
                if old is not None:
                    self._retired.append(old)  # a delivery thread may still be using it
                    log.info("webhook endpoint connector dropped", connector=name)
        for name, (mark, connector) in wanted.items():
            if name in self._endpoint_marks:
                continue  # unchanged: ``connector`` is the one already in use
            self.connectors[name] = connector
            self._endpoint_marks[name] = mark
            log.info("webhook endpoint connector ready", connector=name, endpoint=mark[0])

    def _wanted_endpoints(self) -> dict[str, tuple[tuple[str, int, int], Connector]]:
        """Connectors for the enabled, not disabled (410) endpoints; adds their state rows."""
        now = utcnow()
        out: dict[str, tuple[tuple[str, int, int], Connector]] = {}
        with session_scope(self.engine) as session:
            rows = [r for r in session.exec(select(WebhookEndpoint)) if r.name not in self._config_names]
            states = {
                st.name: st
                for st in session.exec(
                    select(tables.ConnectorState).where(
                        col(tables.ConnectorState.name).in_([r.name for r in rows])
                    )
                )
            }
            for row in rows:
                state = states.get(row.name)
                if state is None:
                    session.add(tables.ConnectorState(name=row.name))
                if not row.enabled or (state is not None and state.disabled_at is not None):
                    continue
                mark = (row.id, row.version, len(endpoint_secrets(row, now)))
                if self._endpoint_marks.get(row.name) == mark and row.name in self.connectors:
                    out[row.name] = (mark, self.connectors[row.name])
                    continue
                try:
                    out[row.name] = (mark, endpoint_connector(row, now))
                except MailingestError as exc:
                    log.error("webhook endpoint unusable", connector=row.name, error=exc.detail)
        return out

    def _states(self) -> dict[str, tables.ConnectorState]:
        """Current circuit and disabled state (another dispatcher may have changed it)."""
        with session_scope(self.engine) as session:
            states = {
                s.name: s
                for s in session.exec(
                    select(tables.ConnectorState).where(
                        col(tables.ConnectorState.name).in_(list(self.connectors))
                    )
                )
            }
        for name, state in states.items():
            if state.disabled_at is not None and name in self.connectors:
                log.warning("connector disabled", connector=name, reason=state.disabled_reason)
                self.connectors.pop(name, None)
        return states

    def circuits(self) -> dict[str, str]:
        """``closed``, ``open`` or ``half_open`` per connector (for health and logs)."""
        now, out = utcnow(), {}
        for name, state in self._states().items():
            threshold, _ = self._policy(name)
            cap = circuit_cap(state, threshold, 2, now)
            out[name] = "open" if cap == 0 else "half_open" if cap == 1 else "closed"
        return out

    def _claim(self) -> list[_Work]:
        self.refresh_endpoints()
        if not self.connectors:
            return []
        states, now = self._states(), utcnow()
        work: list[_Work] = []
        with session_scope(self.engine) as session:
            for name in list(self.connectors):
                threshold, _ = self._policy(name)
                with self._lock:
                    room = circuit_cap(
                        states.get(name), threshold, self.concurrency, now
                    ) - self._inflight.get(name, 0)
                if room <= 0:
                    continue
                rows = repo.claim_deliveries(
                    session,
                    connector=name,
                    limit=room,
                    token=self.token,
                    lease=self.lease,
                    postgres=self._postgres,
                )
                work.extend(_Work(d.id, d.connector, e.id, e.payload) for d, e in rows)
        with self._lock:
            work = [item for item in work if item.delivery_id not in self._busy]  # never twice at once
            for item in work:
                self._inflight[item.connector] = self._inflight.get(item.connector, 0) + 1
                self._busy.add(item.delivery_id)
        return work

    def run_once(self, *, wait: bool = True) -> int:
        """Record finished attempts, then lease every due delivery there are slots for and start
        an attempt on each, in parallel; returns how many were started (``wait=True``, the
        default) or started plus recorded (``wait=False``, the daemon's loop, which returns
        without waiting for the attempts: a slow destination holds only its own slots)."""
        recorded = self._flush()
        work = self._claim()
        futures: list[Future[None]] = [self._pool.submit(self._run, item) for item in work]
        if wait:
            if futures:
                wait_all(futures)
                self._flush()
            return len(work)
        return len(work) + recorded

    def _run(self, item: _Work) -> None:
        try:
            result = self._attempt(item.delivery_id, item.connector, item.event_id, item.payload)
        except BaseException:  # never leave a slot taken
            result = _Result(item.delivery_id, item.connector, item.event_id, utcnow(), outcome="skipped")
            raise
        finally:
            self._finished.put(result)
            self.wake.set()  # an outcome to record, and a slot about to be free

    def _flush(self) -> int:
        """Record every finished attempt in one transaction (one writer, few commits: SQLite's
        single write lock is not fought over by the delivery threads)."""
        results: list[_Result] = []
        while True:
            try:
                results.append(self._finished.get_nowait())
            except queue.Empty:
                break
        if not results:
            return 0
        try:
            with session_scope(self.engine) as session:
                for result in results:
                    self._record(session, result)
        except MailingestError as exc:  # the leases run out and the deliveries are tried again
            log.error("recording deliveries failed", count=len(results), error=exc.detail)
        finally:
            with self._lock:
                for result in results:
                    self._inflight[result.connector] = self._inflight.get(result.connector, 1) - 1
                    self._busy.discard(result.delivery_id)
        for r in results:
            if r.outcome != "skipped":
                log.info(
                    "delivery",
                    connector=r.connector,
                    event_id=r.event_id,
                    outcome=r.outcome,
                    status=r.status_code,
                    ms=r.duration_ms,
                    error=r.error,
                )
        return len(results)

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
            result.gone = isinstance(exc, DestinationGone)
            result.outcome = "dead" if result.permanent else "retry"
        except MailingestError as exc:
            result.error, result.outcome = exc.detail, "retry"
        except Exception as exc:
            log.exception("connector crashed", connector=connector_name, event_id=event_id)
            result.error, result.outcome = f"internal error: {type(exc).__name__}: {exc}", "retry"
        result.duration_ms = round((time.perf_counter() - t0) * 1000, 2)
        return result

    def _record(self, session: Session, r: _Result) -> None:
        delivery = session.get(tables.Delivery, r.delivery_id, with_for_update=self._postgres)
        if delivery is None or delivery.status != "pending" or delivery.claimed_by != self.token:
            if r.outcome != "skipped":  # our lease ran out and another dispatcher took it over
                log.warning("delivery lease lost", delivery_id=r.delivery_id, outcome=r.outcome)
            return
        if r.outcome == "skipped":
            delivery.claimed_by, delivery.claimed_until = None, None
            session.add(delivery)
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
        if r.gone and r.connector in self.connectors:
            self._disable(session, r.connector, r.error or "destination gone")
        elif r.permanent:
            pass  # this event is dead-lettered; the destination answered, so the circuit is untouched
        elif r.outcome == "delivered":
            self._succeeded(session, r.connector)
        else:
            self._failed(session, r.connector)

    def _succeeded(self, session: Session, name: str) -> None:
        state = tables.ConnectorState
        now = utcnow()
        closed = session.execute(
            update(state)
            .where(col(state.name) == name, col(state.consecutive_failures) > 0)
            .values(consecutive_failures=0, circuit_open_until=None, last_success_at=now)
        )
        if closed.rowcount:  # type: ignore[attr-defined]
            log.info("connector recovered; circuit closed", connector=name)

    def _failed(self, session: Session, name: str) -> None:
        state = tables.ConnectorState
        threshold, cooldown = self._policy(name)
        now = utcnow()
        session.execute(
            update(state)
            .where(col(state.name) == name)
            .values(consecutive_failures=state.consecutive_failures + 1, last_failure_at=now)
        )
        opened = session.execute(
            update(state)
            .where(
                col(state.name) == name,
                col(state.consecutive_failures) >= threshold,
                (col(state.circuit_open_until).is_(None)) | (col(state.circuit_open_until) <= now),
            )
            .values(circuit_open_until=now + timedelta(seconds=cooldown))
        )
        if opened.rowcount:  # type: ignore[attr-defined]
            log.warning("circuit opened", connector=name, cooldown_s=cooldown, failures_at_least=threshold)

    def _disable(self, session: Session, name: str, reason: str) -> None:
        state = session.get(tables.ConnectorState, name) or tables.ConnectorState(name=name)
        state.disabled_at, state.disabled_reason = utcnow(), reason[:500]
        session.add(state)
        self.connectors.pop(name, None)
        session.execute(  # an API-managed endpoint shows the 410 as enabled = false
            update(WebhookEndpoint)
            .where(col(WebhookEndpoint.name) == name)
            .values(enabled=False, version=WebhookEndpoint.version + 1, updated_at=utcnow())
        )
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
                started = self.run_once(wait=False)
            except MailingestError as exc:
                log.error("dispatcher round failed", error=exc.detail)
                started = 0
            except Exception:
                log.exception("dispatcher round crashed")
                started = 0
            if not started:
                self.wake.wait(self.poll_interval)
                self.wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._flush()
        for connector in [*self.connectors.values(), *self._retired]:
            connector.close()
