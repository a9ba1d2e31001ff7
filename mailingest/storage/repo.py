"""Queries and state transitions on the ledger, documents, invoices and the outbox.

Each function takes an open session and leaves committing to the caller
(``storage.db.session_scope``), so that a whole stage commits atomically.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

from sqlalchemy import and_, exists, or_, update
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


def add_event(
    session: Session,
    *,
    type: str,
    subject_id: str | None,
    data: dict[str, Any],
    connectors: Sequence[tuple[str, Sequence[str]]],
) -> Event:
    """Write one outbox event and a pending delivery for every connector subscribed to it."""
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
    for name, patterns in connectors:
        if subscribed(type, patterns):
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


def subscribed(event_type: str, patterns: Sequence[str]) -> bool:
    """``"*"`` matches all, ``"invoice.*"`` a family, else exact names."""
    for pattern in patterns:
        if pattern == "*" or pattern == event_type:
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


def due_deliveries(
    session: Session, *, connectors: Sequence[str], limit: int
) -> list[tuple[Delivery, Event]]:
    """Pending deliveries whose time has come, oldest first, holding back any delivery while an
    earlier event about the same subject is still pending for that connector (order per invoice)."""
    if not connectors:
        return []
    now = utcnow()
    earlier = aliased(Delivery)
    blocked = exists().where(
        col(earlier.connector) == col(Delivery.connector),
        col(earlier.subject_id) == col(Delivery.subject_id),
        col(earlier.status) == "pending",
        col(earlier.event_seq) < col(Delivery.event_seq),
    )
    rows = session.exec(
        select(Delivery, Event)
        .join(Event, col(Event.id) == col(Delivery.event_id))
        .where(
            col(Delivery.status) == "pending",
            col(Delivery.next_attempt_at) <= now,
            col(Delivery.connector).in_(connectors),
            ~blocked,
        )
        .order_by(col(Delivery.event_seq))
        .limit(limit)
    ).all()
    return [(d, e) for d, e in rows]


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
    """Store one attempt and move the delivery on (delivered, retry later, or dead)."""
    delivery.attempts += 1
    session.add(
        DeliveryAttempt(
            delivery_id=delivery.id,
            number=delivery.attempts,
            started_at=started_at,
            duration_ms=duration_ms,
            status_code=status_code,
            outcome=outcome,
            error=error[:2000] if error else None,
            response_excerpt=response_excerpt[:1000] if response_excerpt else None,
        )
    )
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
