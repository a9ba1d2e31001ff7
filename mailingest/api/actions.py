"""State-changing API actions: approve and reject an invoice, honouring ``Idempotency-Key``.

The status change, its audit entry, its outbox event (with deliveries) and the stored
idempotent response commit in one transaction, so a crash never leaves an approval without its
event, and a retried request either replays the stored response or finds nothing done.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi import HTTPException
from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from mailingest.storage import repo
from mailingest.storage.tables import IdempotencyRecord, Invoice, utcnow

IDEMPOTENCY_TTL = timedelta(hours=24)
ACTIONABLE = ("validated", "needs_review", "extracted")
TRANSITIONS = {"approve": "approved", "reject": "rejected"}


@dataclass(frozen=True)
class Outcome:
    status_code: int
    body: dict[str, Any]
    replayed: bool = False


def fingerprint(method: str, path: str, body: dict[str, Any] | None) -> str:
    """What a key was first used for; the same key on a different request is a client bug."""
    raw = json.dumps([method, path, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


def _stored(session: Session, actor: str, key: str) -> IdempotencyRecord | None:
    return session.exec(
        select(IdempotencyRecord).where(IdempotencyRecord.actor == actor, IdempotencyRecord.key == key)
    ).first()


def _replay(record: IdempotencyRecord, print_: str) -> Outcome:
    if record.fingerprint != print_:
        raise HTTPException(422, "this Idempotency-Key was already used for a different request")
    return Outcome(record.status_code, record.body, replayed=True)


def _transition(
    session: Session,
    *,
    invoice_id: str,
    action: str,
    actor: str,
    comment: str | None,
    connectors: Sequence[tuple[str, Sequence[str]]],
) -> dict[str, Any]:
    row = session.get(Invoice, invoice_id)
    if row is None:
        raise HTTPException(404, f"no invoice {invoice_id}")
    new_status, old_status = TRANSITIONS[action], row.status  # the UPDATE below refreshes ``row``
    if old_status not in ACTIONABLE:
        raise HTTPException(
            409,
            f"invoice {invoice_id} is {old_status}; "
            f"only {', '.join(ACTIONABLE)} invoices can be {new_status}",
        )
    data = {**row.data, "status": new_status}
    # conditional on the status read above: a concurrent approve/reject makes this one a 409
    changed = session.execute(
        update(Invoice)
        .where(col(Invoice.id) == invoice_id, col(Invoice.status) == old_status)
        .values(status=new_status, data=data, updated_at=utcnow())
    )
    if not changed.rowcount:  # type: ignore[attr-defined]
        raise HTTPException(409, f"invoice {invoice_id} was changed concurrently; fetch it and retry")
    repo.audit(
        session,
        actor=actor,
        action=f"invoice.{new_status}",
        subject_type="invoice",
        subject_id=invoice_id,
        detail={"from": old_status, "to": new_status, "comment": comment},
    )
    repo.add_event(
        session, type=f"invoice.{new_status}", subject_id=invoice_id, data=data, connectors=connectors
    )
    return data


def change_status(
    engine: Engine,
    *,
    invoice_id: str,
    action: str,
    actor: str,
    comment: str | None,
    connectors: Sequence[tuple[str, Sequence[str]]],
    idempotency_key: str | None,
    request_print: str,
) -> Outcome:
    """Approve or reject; with an idempotency key a repeat returns the first success unchanged.

    Only successful responses are stored: an error (404, 409) changed nothing, so a retry simply
    re-evaluates. Two concurrent requests with one key both try to insert the record; the
    unique constraint lets one commit and the other, rolled back, replays what it stored.
    """
    for attempt in (1, 2):
        with Session(engine, expire_on_commit=False) as session:
            if idempotency_key is not None:
                session.execute(
                    delete(IdempotencyRecord).where(
                        col(IdempotencyRecord.created_at) < utcnow() - IDEMPOTENCY_TTL
                    )
                )
                record = _stored(session, actor, idempotency_key)
                if record is not None:
                    return _replay(record, request_print)
            data = _transition(
                session,
                invoice_id=invoice_id,
                action=action,
                actor=actor,
                comment=comment,
                connectors=connectors,
            )
            if idempotency_key is not None:
                session.add(
                    IdempotencyRecord(
                        actor=actor,
                        key=idempotency_key,
                        fingerprint=request_print,
                        status_code=200,
                        body=data,
                    )
                )
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                if idempotency_key is None or attempt == 2:
                    raise
                continue
            return Outcome(200, data)
    raise AssertionError("unreachable: the second attempt returns or raises")
