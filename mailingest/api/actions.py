"""State-changing API actions and what every router shares.

``idempotent`` runs a change and stores its response under the caller's ``Idempotency-Key`` in
the *same* transaction, so a crash never leaves a change without its record, and a retried
request either replays the stored response or finds nothing done. Approve, reject, assign and
tag are plain functions on an open session (``transition``, ``assign``, ``tag``) so that single
calls and batch items share them.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from http import HTTPStatus
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from mailingest.api.auth import Authenticator
from mailingest.config import Config
from mailingest.models import Invoice as CanonicalInvoice
from mailingest.storage import repo
from mailingest.storage.blobs import BlobStore
from mailingest.storage.tables import IdempotencyRecord, Invoice, utcnow
from mailingest.vendors.corrections import record_approval

IDEMPOTENCY_TTL = timedelta(hours=24)
ACTIONABLE = ("validated", "needs_review", "extracted")
TRANSITIONS = {"approve": "approved", "reject": "rejected"}
PROBLEM = "application/problem+json"
Connectors = Sequence[tuple[str, Sequence[str]]]


@dataclass
class Context:
    """What the routers need, built once by ``create_app``."""

    engine: Engine
    config: Config
    connectors: Connectors
    authenticator: Authenticator
    blobs: BlobStore
    wake: threading.Event | None = None  # the daemon's pipeline wake-up, rung after queueing work

    def queued(self) -> None:
        """Tell the pipeline that messages wait (else it finds them at its next poll)."""
        if self.wake is not None:
            self.wake.set()

    def scope(self, name: str) -> Any:
        """A FastAPI dependency: the caller's ``Principal``, with ``name`` among its scopes."""
        return Depends(self.authenticator.require(name))

    def respond(
        self,
        request: Request,
        body: Any,
        idempotency_key: str | None,
        actor: str,
        work: Callable[[Session], tuple[int, dict[str, Any]]],
    ) -> JSONResponse:
        """Run ``work`` under ``Idempotency-Key`` rules (``idempotent``) and answer with its outcome;
        ``body`` is the request's JSON, part of what a reused key must match."""
        return idempotent(
            self.engine,
            actor=actor,
            idempotency_key=idempotency_key,
            request_print=request_print(request, body),
            work=work,
        ).response()


@dataclass(frozen=True)
class Outcome:
    status_code: int
    body: dict[str, Any]
    replayed: bool = False

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        extra = dict(headers or {})
        if self.replayed:
            extra["Idempotent-Replayed"] = "true"
        return JSONResponse(self.body, status_code=self.status_code, headers=extra or None)


def problem(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """An RFC 9457 ``application/problem+json`` response."""
    return JSONResponse(
        {
            "type": type_,
            "title": title or HTTPStatus(status).phrase,
            "status": status,
            "detail": detail,
            **extra,
        },
        status_code=status,
        media_type=PROBLEM,
        headers=headers,
    )


def error_of(exc: HTTPException) -> dict[str, Any]:
    """An HTTPException as the problem body stored with a failed batch item."""
    return {
        "type": "about:blank",
        "title": HTTPStatus(exc.status_code).phrase,
        "status": exc.status_code,
        "detail": str(exc.detail),
    }


def fingerprint(method: str, path: str, body: Any) -> str:
    """What a key was first used for; the same key on a different request is a client bug."""
    raw = json.dumps([method, path, body], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


def request_print(request: Request, body: Any) -> str:
    return fingerprint(request.method, request.url.path, body)


def _stored(session: Session, actor: str, key: str) -> IdempotencyRecord | None:
    return session.exec(
        select(IdempotencyRecord).where(IdempotencyRecord.actor == actor, IdempotencyRecord.key == key)
    ).first()


def _replay(record: IdempotencyRecord, print_: str) -> Outcome:
    if record.fingerprint != print_:
        raise HTTPException(422, "this Idempotency-Key was already used for a different request")
    return Outcome(record.status_code, record.body, replayed=True)


def stored_response(session: Session, actor: str, key: str | None, print_: str) -> Outcome | None:
    """The stored response to replay for ``key`` (422 when it answered another request), if any."""
    if key is None:
        return None
    record = _stored(session, actor, key)
    if record is None or record.created_at < utcnow() - IDEMPOTENCY_TTL:
        return None
    return _replay(record, print_)


def idempotent(
    engine: Engine,
    *,
    actor: str,
    idempotency_key: str | None,
    request_print: str,
    work: Callable[[Session], tuple[int, dict[str, Any]]],
) -> Outcome:
    """Run ``work`` in one transaction; with a key, a repeat returns the first success unchanged.

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
            status_code, body = work(session)
            if idempotency_key is not None:
                session.add(
                    IdempotencyRecord(
                        actor=actor,
                        key=idempotency_key,
                        fingerprint=request_print,
                        status_code=status_code,
                        body=body,
                    )
                )
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                if idempotency_key is None or attempt == 2:
                    raise
                continue
            return Outcome(status_code, body)
    raise AssertionError("unreachable: the second attempt returns or raises")


def get_invoice(session: Session, invoice_id: str) -> Invoice:
    row = session.get(Invoice, invoice_id)
    if row is None:
        raise HTTPException(404, f"no invoice {invoice_id}")
    return row


def _store(
    session: Session,
    row: Invoice,
    *,
    old_status: str,
    data: dict[str, Any],
    actor: str,
    event: str,
    detail: dict[str, Any],
    connectors: Connectors,
) -> dict[str, Any]:
    """Write ``data`` (conditional on the status read before: a concurrent change makes this a
    409), its audit entry and its outbox event, all in the caller's transaction."""
    invoice_id = row.id
    changed = session.execute(
        update(Invoice)
        .where(col(Invoice.id) == invoice_id, col(Invoice.status) == old_status)
        .values(status=data.get("status", old_status), data=data, updated_at=utcnow())
    )
    if not changed.rowcount:  # type: ignore[attr-defined]
        raise HTTPException(409, f"invoice {invoice_id} was changed concurrently; fetch it and retry")
    repo.audit(
        session, actor=actor, action=event, subject_type="invoice", subject_id=invoice_id, detail=detail
    )
    repo.add_event(session, type=event, subject_id=invoice_id, data=data, connectors=connectors)
    return data


def transition(
    session: Session, *, invoice_id: str, action: str, actor: str, comment: str | None, connectors: Connectors
) -> dict[str, Any]:
    """Approve or reject an invoice that is validated, needs_review or extracted (else 409)."""
    row = get_invoice(session, invoice_id)
    new_status, old_status = TRANSITIONS[action], row.status
    if old_status not in ACTIONABLE:
        raise HTTPException(
            409,
            f"invoice {invoice_id} is {old_status}; "
            f"only {', '.join(ACTIONABLE)} invoices can be {new_status}",
        )
    if new_status == "approved":
        # An approval without edits confirms what was extracted: the vendor's profile learns
        # its GL coding and currency from it (same transaction).
        record_approval(session, row, CanonicalInvoice.model_validate(row.data))
    return _store(
        session,
        row,
        old_status=old_status,
        data={**row.data, "status": new_status},
        actor=actor,
        event=f"invoice.{new_status}",
        detail={"from": old_status, "to": new_status, "comment": comment},
        connectors=connectors,
    )


def assign(
    session: Session, *, invoice_id: str, approvers: list[str], actor: str, connectors: Connectors
) -> dict[str, Any]:
    """Set the invoice's approvers (replacing the list); event ``invoice.assigned``."""
    row = get_invoice(session, invoice_id)
    return _store(
        session,
        row,
        old_status=row.status,
        data={**row.data, "approvers": approvers},
        actor=actor,
        event="invoice.assigned",
        detail={"approvers": approvers},
        connectors=connectors,
    )


def tag(
    session: Session,
    *,
    invoice_id: str,
    add: list[str],
    remove: list[str],
    actor: str,
    connectors: Connectors,
) -> dict[str, Any]:
    """Add and remove tags (order kept, no repeats); event ``invoice.updated``."""
    row = get_invoice(session, invoice_id)
    tags = [t for t in row.data.get("tags", []) if t not in remove]
    tags += [t for t in dict.fromkeys(add) if t not in tags]
    return _store(
        session,
        row,
        old_status=row.status,
        data={**row.data, "tags": tags},
        actor=actor,
        event="invoice.updated",
        detail={"tags_added": add, "tags_removed": remove},
        connectors=connectors,
    )


def change_status(
    engine: Engine,
    *,
    invoice_id: str,
    action: str,
    actor: str,
    comment: str | None,
    connectors: Connectors,
    idempotency_key: str | None,
    request_print: str,
) -> Outcome:
    """Approve or reject; with an idempotency key a repeat returns the first success unchanged."""

    def work(session: Session) -> tuple[int, dict[str, Any]]:
        data = transition(
            session, invoice_id=invoice_id, action=action, actor=actor, comment=comment, connectors=connectors
        )
        return 200, data

    return idempotent(
        engine, actor=actor, idempotency_key=idempotency_key, request_print=request_print, work=work
    )
