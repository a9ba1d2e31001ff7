"""Queries and state transitions on the ledger, documents, invoices and the outbox.

Each function takes an open session and leaves committing to the caller
(``storage.db.session_scope``), so that a whole stage commits atomically.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

from sqlalchemy import and_, exists, func, or_, update
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from mailingest.errors import StorageError
from mailingest.models import new_id
from mailingest.storage.tables import AuditLog, Delivery, DeliveryAttempt, Event, Message, utcnow


def _ledger_headers(raw: bytes) -> dict[str, str | None]:
    """Best-effort Message-ID, From and Subject for the ledger; unpacking proper is mime.py's job."""
    out: dict[str, str | None] = {"Message-ID": None, "From": None, "Subject": None}
    try:
        headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:65536])
        for name in out:
            value = headers.get(name)
            out[name] = (str(value).strip()[:900] or None) if value is not None else None
    except Exception:  # noqa: BLE001 - malformed headers leave the ledger columns empty
        pass
    return out


def find_message(
    session: Session, *, source: str, mailbox: str | None, uidvalidity: int | None, uid: int | None
) -> Message | None:
    if uid is None:
        return None
    return session.exec(
        select(Message).where(
            Message.source == source,
            Message.mailbox == mailbox,
            Message.uidvalidity == uidvalidity,
            Message.uid == uid,
        )
    ).first()


def record_message(
    session: Session,
    *,
    source: str,
    raw: bytes,
    mailbox: str | None = None,
    uidvalidity: int | None = None,
    uid: int | None = None,
    envelope_from: str | None = None,
    filename: str | None = None,
) -> Message:
    """Add a received message to the ledger (idempotent per source UID; duplicates by sha256 kept
    as ``duplicate`` rows so every arrival is visible, but processed once)."""
    existing = find_message(session, source=source, mailbox=mailbox, uidvalidity=uidvalidity, uid=uid)
    if existing is not None:
        return existing
    sha256 = hashlib.sha256(raw).hexdigest()
    headers = _ledger_headers(raw) if filename is None else {}
    msg = Message(
        id=new_id("msg"),
        source=source,
        mailbox=mailbox,
        uidvalidity=uidvalidity,
        uid=uid,
        sha256=sha256,
        size=len(raw),
        filename=filename,
        envelope_from=envelope_from,
        message_id=headers.get("Message-ID"),
        from_addr=headers.get("From"),
        subject=headers.get("Subject"),
    )
    original = session.exec(
        select(Message.id).where(Message.sha256 == sha256, Message.status != "duplicate").limit(1)
    ).first()
    if original is not None:
        msg.status = "duplicate"
        msg.duplicate_of = original
    session.add(msg)
    return msg


def claim_next_message(session: Session, *, lease: float, worker: str, postgres: bool) -> Message | None:
    """Take the oldest message that needs processing and lease it to this worker.

    A message left in ``processing`` by a crashed worker becomes claimable again once its lease
    runs out. The claim is a conditional UPDATE, so two workers (threads, processes, machines)
    never both win it; PostgreSQL also skips rows another claimer holds locked. The returned
    message carries a fresh ``claim_token``: only the holder of the current token may store the
    results (``finish_claim``), so a worker whose lease ran out cannot store them a second time.
    """
    now = utcnow()
    claimable = or_(
        col(Message.status) == "received",
        and_(col(Message.status) == "processing", col(Message.claimed_until) < now),
    )
    query = select(Message).where(claimable).order_by(col(Message.received_at)).limit(1)
    if postgres:
        query = query.with_for_update(skip_locked=True)
    msg = session.exec(query).first()
    if msg is None:
        return None
    token = f"{worker}:{secrets.token_hex(8)}"
    won = session.execute(
        update(Message)
        .where(col(Message.id) == msg.id, claimable)
        .values(
            status="processing",
            attempts=Message.attempts + 1,
            claim_token=token,
            claimed_until=now + timedelta(seconds=lease),
        )
    )
    if not won.rowcount:  # type: ignore[attr-defined]
        return None
    session.refresh(msg)
    return msg


def finish_claim(
    session: Session, msg_id: str, token: str, *, status: str, error: dict[str, Any] | None
) -> None:
    """Mark the claimed message done — only if this worker still holds the claim, else roll back."""
    done = session.execute(
        update(Message)
        .where(
            col(Message.id) == msg_id, col(Message.claim_token) == token, col(Message.status) == "processing"
        )
        .values(status=status, error=error, claimed_until=None, processed_at=utcnow())
    )
    if not done.rowcount:  # type: ignore[attr-defined]
        raise StorageError(f"message {msg_id}: the claim was lost (lease expired and another worker took it)")


def release_stale_claims(session: Session) -> int:
    """At start-up in single-process mode nothing can still be working: reclaim at once."""
    result = session.execute(
        update(Message)
        .where(col(Message.status) == "processing")
        .values(status="received", claimed_until=None, claim_token=None)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


class Subscription(tuple[str, Sequence[str]]):
    """(connector name, event patterns) plus ``routed_only`` — still a plain pair for callers
    that only unpack name and patterns."""

    routed_only: bool

    def __new__(cls, name: str, events: Sequence[str], routed_only: bool = False) -> Subscription:
        self = super().__new__(cls, (name, events))
        self.routed_only = routed_only
        return self

    def __getnewargs__(self) -> tuple[str, Sequence[str], bool]:
        return (self[0], self[1], self.routed_only)


def routed_to(name: str, event_type: str, data: dict[str, Any]) -> bool:
    """A ``routed_only`` connector gets an ``invoice.*`` event only when the invoice's canonical
    ``deliver_to`` list names it; other events follow the ordinary event filter."""
    if not event_type.startswith("invoice."):
        return True
    targets = data.get("deliver_to") or []
    return isinstance(targets, list) and name in targets


def add_event(
    session: Session,
    *,
    type: str,
    subject_id: str | None,
    data: dict[str, Any],
    connectors: Sequence[tuple[str, Sequence[str]]],
    endpoints: bool = True,
) -> Event:
    """Write one outbox event and a pending delivery for every connector subscribed to it
    (``routed_only`` subscriptions also need the invoice routed to them, see ``routed_to``).
    With ``endpoints`` (the default) the enabled webhook endpoints managed through the API are
    read in this same transaction and subscribed too (``endpoint_subscriptions``)."""
    now = utcnow()
    event = Event(
        id=new_id("evt"),
        type=type,
        subject_id=subject_id,
        payload={"type": type, "timestamp": now.isoformat().replace("+00:00", "Z"), "data": data},
        created_at=now,
    )
    session.add(event)
    session.flush()  # assigns seq
    assert event.seq is not None
    subs = list(connectors)
    if endpoints:
        named = {sub[0] for sub in subs}
        subs += [sub for sub in endpoint_subscriptions(session) if sub[0] not in named]
    for sub in subs:
        name, patterns = sub
        if not subscribed(type, patterns):
            continue
        if getattr(sub, "routed_only", False) and not routed_to(name, type, data):
            continue
        session.add(
            Delivery(
                id=new_id("dlv"),
                event_id=event.id,
                event_seq=event.seq,
                subject_id=subject_id,
                connector=name,
                next_attempt_at=now,
            )
        )
    return event


def endpoint_subscriptions(session: Session) -> list[Subscription]:
    """(name, event patterns) of every enabled webhook endpoint managed through the API: one
    small query on a small table, in the caller's transaction, so an endpoint created a moment
    ago gets the next event and a disabled or deleted one gets none."""
    from mailingest.storage.tables_endpoints import WebhookEndpoint

    rows = session.exec(
        select(WebhookEndpoint.name, WebhookEndpoint.events).where(col(WebhookEndpoint.enabled).is_(True))
    ).all()
    return [Subscription(name, list(events)) for name, events in rows]


def subscribed(event_type: str, patterns: Sequence[str]) -> bool:
    """``"*"`` matches all, ``"invoice.*"`` a family, else exact names."""
    for pattern in patterns:
        if pattern == "*" or pattern == event_type:
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


def _due(now: datetime) -> Any:
    """Pending, due, not leased by a live dispatcher, and not waiting behind an earlier event about
    the same subject for the same connector (order per invoice)."""
    earlier = aliased(Delivery)
    blocked = exists().where(
        col(earlier.connector) == col(Delivery.connector),
        col(earlier.subject_id) == col(Delivery.subject_id),
        col(earlier.status) == "pending",
        col(earlier.event_seq) < col(Delivery.event_seq),
    )
    return and_(
        col(Delivery.status) == "pending",
        col(Delivery.next_attempt_at) <= now,
        or_(col(Delivery.claimed_until).is_(None), col(Delivery.claimed_until) < now),
        ~blocked,
    )


def due_deliveries(
    session: Session, *, connectors: Sequence[str], limit: int
) -> list[tuple[Delivery, Event]]:
    """Pending deliveries whose time has come, oldest first (see ``_due``); claims nothing."""
    if not connectors:
        return []
    rows = session.exec(
        select(Delivery, Event)
        .join(Event, col(Event.id) == col(Delivery.event_id))
        .where(_due(utcnow()), col(Delivery.connector).in_(connectors))
        .order_by(col(Delivery.event_seq))
        .limit(limit)
    ).all()
    return [(d, e) for d, e in rows]


def claim_deliveries(
    session: Session, *, connector: str, limit: int, token: str, lease: float, postgres: bool
) -> list[tuple[Delivery, Event]]:
    """Lease up to ``limit`` due deliveries of one connector to the dispatcher holding ``token``.

    The claim is a conditional UPDATE (re-checked under the row lock on PostgreSQL, where the
    candidate SELECT also skips rows another dispatcher holds locked), so two dispatchers never
    both win a delivery. A crashed dispatcher's lease simply runs out.
    """
    now = utcnow()
    query = (
        select(Delivery.id)
        .where(_due(now), col(Delivery.connector) == connector)
        .order_by(col(Delivery.event_seq))
        .limit(limit)
    )
    if postgres:
        query = query.with_for_update(skip_locked=True)
    ids = list(session.exec(query).all())
    if not ids:
        return []
    session.execute(
        update(Delivery)
        .where(col(Delivery.id).in_(ids), _due(now))
        .values(claimed_by=token, claimed_until=now + timedelta(seconds=lease))
        .execution_options(synchronize_session=False)
    )
    rows = session.exec(
        select(Delivery, Event)
        .join(Event, col(Event.id) == col(Delivery.event_id))
        .where(col(Delivery.id).in_(ids), col(Delivery.claimed_by) == token)
        .order_by(col(Delivery.event_seq))
    ).all()
    return [(d, e) for d, e in rows]


def release_leases(session: Session, owner_prefix: str) -> int:
    """Drop the leases an earlier run of this dispatcher left behind (it was killed mid-send)."""
    result = session.execute(
        update(Delivery)
        .where(col(Delivery.claimed_by).startswith(owner_prefix, autoescape=True))
        .values(claimed_by=None, claimed_until=None)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def record_attempt(
    session: Session,
    delivery: Delivery,
    *,
    outcome: str,
    started_at: datetime,
    duration_ms: float,
    status_code: int | None,
    error: str | None,
    response_excerpt: str | None,
    next_attempt_at: datetime | None,
) -> None:
    """Store one attempt and move the delivery on (delivered, retry later, or dead); the lease
    ends with it."""
    delivery.attempts += 1
    number = session.exec(
        select(func.count()).select_from(DeliveryAttempt).where(DeliveryAttempt.delivery_id == delivery.id)
    ).one()
    session.add(
        DeliveryAttempt(
            delivery_id=delivery.id,
            number=int(number) + 1,
            started_at=started_at,
            duration_ms=duration_ms,
            status_code=status_code,
            outcome=outcome,
            error=error[:2000] if error else None,
            response_excerpt=response_excerpt[:1000] if response_excerpt else None,
        )
    )
    delivery.claimed_by, delivery.claimed_until = None, None
    if outcome == "delivered":
        delivery.status = "delivered"
        delivery.delivered_at = utcnow()
        delivery.last_error = None
    elif outcome == "retry" and next_attempt_at is not None:
        delivery.next_attempt_at = next_attempt_at
        delivery.last_error = error[:2000] if error else None
    else:
        delivery.status = "dead"
        delivery.last_error = error[:2000] if error else None
    session.add(delivery)


def find_deliveries(
    session: Session,
    *,
    status: str | None = None,
    connector: str | None = None,
    invoice: str | None = None,
    event: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    starting_after: str | None = None,
) -> list[tuple[Delivery, Event]]:
    """Deliveries with their events, newest event first, filtered as given (``invoice`` matches
    the event's subject; ``since``/``until`` the event's creation time, until exclusive)."""
    query = select(Delivery, Event).join(Event, col(Event.id) == col(Delivery.event_id))
    if status:
        query = query.where(col(Delivery.status) == status)
    if connector:
        query = query.where(col(Delivery.connector) == connector)
    if invoice:
        query = query.where(col(Delivery.subject_id) == invoice)
    if event:
        query = query.where(col(Delivery.event_id) == event)
    if since is not None:
        query = query.where(col(Event.created_at) >= since.astimezone(UTC))
    if until is not None:
        query = query.where(col(Event.created_at) < until.astimezone(UTC))
    if starting_after:
        query = query.where(col(Delivery.id) < starting_after)
    query = query.order_by(col(Delivery.id).desc())
    if limit is not None:
        query = query.limit(limit)
    return [(d, e) for d, e in session.exec(query).all()]


def replay_deliveries(session: Session, deliveries: Sequence[Delivery], *, actor: str) -> list[Delivery]:
    """Send these deliveries again: each goes back to ``pending`` (due now, a fresh retry schedule,
    ``replays`` + 1) on the same row, so the new attempts join its history and the request carries
    the same ``webhook-id`` (the event id) — receivers that already have it can de-duplicate.
    A delivery a dispatcher is sending right now is left alone; the others are returned."""
    now = utcnow()
    done: list[Delivery] = []
    for delivery in deliveries:
        if (
            delivery.status == "pending"
            and delivery.claimed_until is not None
            and delivery.claimed_until > now
        ):
            continue
        delivery.status, delivery.attempts, delivery.replays = "pending", 0, delivery.replays + 1
        delivery.next_attempt_at, delivery.delivered_at = now, None
        delivery.claimed_by, delivery.claimed_until = None, None
        session.add(delivery)
        done.append(delivery)
    if done:
        audit(
            session,
            actor=actor,
            action="deliveries.replayed",
            subject_type="delivery",
            detail={"deliveries": [d.id for d in done][:500], "count": len(done)},
        )
    return done


def select_for_replay(
    session: Session,
    *,
    event: str | None = None,
    invoice: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    connector: str | None = None,
    status: str | None = None,
) -> list[Delivery]:
    """The deliveries a replay request names: by event, by invoice or by time range (of the
    events), optionally narrowed to one connector and one status."""
    if event is None and invoice is None and since is None:
        raise ValueError("name what to replay: an event, an invoice or a time range (since)")
    rows = find_deliveries(
        session, status=status, connector=connector, invoice=invoice, event=event, since=since, until=until
    )
    return sorted((d for d, _ in rows), key=lambda d: d.event_seq)


TEST_EVENT = "connector.test"


def add_test_event(session: Session, connector: str) -> tuple[Event, Delivery]:
    """A ``connector.test`` event owed to this one connector only, whatever its event filter."""
    event = add_event(
        session,
        type=TEST_EVENT,
        subject_id=None,
        data={"connector": connector, "message": "test event sent by mailingest on request"},
        connectors=[(connector, ["*"])],
        endpoints=False,
    )
    session.flush()
    delivery = session.exec(select(Delivery).where(Delivery.event_id == event.id)).one()
    return event, delivery


def disabled_connectors(session: Session, names: Sequence[str]) -> list[str]:
    """Which of these connectors a ``410 Gone`` disabled (their deliveries wait until re-enabled)."""
    from mailingest.storage.tables import ConnectorState

    rows = session.exec(
        select(ConnectorState.name).where(
            col(ConnectorState.name).in_(list(names)), col(ConnectorState.disabled_at).is_not(None)
        )
    ).all()
    return sorted(rows)


def enable_connector(session: Session, name: str, *, actor: str) -> bool:
    """Clear a connector's disabled state (after a 410 was fixed); False when it was not disabled.
    A running daemon takes it up again at its next start."""
    from mailingest.storage.tables import ConnectorState

    state = session.get(ConnectorState, name)
    if state is None or state.disabled_at is None:
        return False
    state.disabled_at, state.disabled_reason = None, None
    state.consecutive_failures, state.circuit_open_until = 0, None
    session.add(state)
    audit(session, actor=actor, action="connector.enabled", subject_type="connector", subject_id=name[:40])
    return True


def dead_letter_pending(session: Session, connector: str, reason: str) -> int:
    """Mark every pending delivery of ``connector`` dead with ``reason`` (its endpoint was
    deleted); replay can still send them elsewhere by event once an endpoint exists again."""
    result = session.execute(
        update(Delivery)
        .where(col(Delivery.connector) == connector, col(Delivery.status) == "pending")
        .values(status="dead", last_error=reason[:2000], claimed_by=None, claimed_until=None)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def attempts_of(session: Session, delivery_id: str) -> list[DeliveryAttempt]:
    return list(
        session.exec(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.delivery_id == delivery_id)
            .order_by(col(DeliveryAttempt.number))
        ).all()
    )


def delivery_view(delivery: Delivery, event: Event) -> dict[str, Any]:
    """A delivery as the CLI and the API show it."""

    def iso(value: datetime | None) -> str | None:
        return value.isoformat().replace("+00:00", "Z") if value else None

    return {
        "id": delivery.id,
        "event_id": event.id,
        "event_type": event.type,
        "subject_id": delivery.subject_id,
        "connector": delivery.connector,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "replays": delivery.replays,
        "next_attempt_at": iso(delivery.next_attempt_at) if delivery.status == "pending" else None,
        "last_error": delivery.last_error,
        "delivered_at": iso(delivery.delivered_at),
        "created_at": iso(event.created_at),
        "claimed_by": delivery.claimed_by
        if delivery.claimed_until and delivery.claimed_until > utcnow()
        else None,
    }


def attempt_view(attempt: DeliveryAttempt) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "started_at": attempt.started_at.isoformat().replace("+00:00", "Z"),
        "duration_ms": attempt.duration_ms,
        "outcome": attempt.outcome,
        "status_code": attempt.status_code,
        "error": attempt.error,
        "response_excerpt": attempt.response_excerpt,
    }


def audit(
    session: Session,
    *,
    actor: str,
    action: str,
    subject_type: str | None = None,
    subject_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditLog(actor=actor, action=action, subject_type=subject_type, subject_id=subject_id, detail=detail)
    )
