"""The audit log through the API.

``GET /v1/audit`` (scope ``admin``): who did what to which object, newest first, filtered by
``actor``, ``action`` (exact, or a family with a trailing ``*``: ``webhook_endpoint.*``),
``subject_type``, ``subject_id`` and a time range (``from`` inclusive, ``to`` exclusive); pages
with ``limit`` / ``starting_after`` (the last ``id`` seen) / ``has_more``.

``GET /v1/invoices/{id}/history`` (scope ``invoices:read``): the invoice's audit entries and
its outbox events, oldest first, in one list (``kind`` = ``audit`` or ``event``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import AwareDatetime
from sqlmodel import Session, col, select

from mailingest.api.actions import Context
from mailingest.storage import tables

PREFIX = "aud_"


def audit_id(row: tables.AuditLog) -> str:
    return f"{PREFIX}{row.id}"


def _number(value: str, field: str) -> int:
    raw = value.removeprefix(PREFIX)
    if not raw.isdigit():
        raise HTTPException(422, f"{field}: not an audit entry id (aud_<number>)")
    return int(raw)


def audit_view(row: tables.AuditLog) -> dict[str, Any]:
    return {
        "id": audit_id(row),
        "at": row.at.isoformat().replace("+00:00", "Z"),
        "actor": row.actor,
        "action": row.action,
        "subject_type": row.subject_type,
        "subject_id": row.subject_id,
        "detail": row.detail,
    }


def event_view(row: tables.Event) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.created_at.isoformat().replace("+00:00", "Z"),
        "type": row.type,
        "subject_id": row.subject_id,
    }


def router(ctx: Context) -> APIRouter:
    api = APIRouter(tags=["audit"])

    @api.get("/v1/audit", dependencies=[ctx.scope("admin")])
    def list_audit(
        limit: int = Query(50, ge=1, le=500),
        starting_after: Annotated[str | None, Query(max_length=40)] = None,
        actor: Annotated[str | None, Query(max_length=200)] = None,
        action: Annotated[str | None, Query(max_length=100)] = None,
        subject_type: Annotated[str | None, Query(max_length=40)] = None,
        subject_id: Annotated[str | None, Query(max_length=40)] = None,
        from_: Annotated[AwareDatetime | None, Query(alias="from")] = None,
        to: AwareDatetime | None = None,
    ) -> dict[str, Any]:
        """Audit entries newest first (ids only grow, so pages are stable under new entries)."""
        log = tables.AuditLog
        query = select(log)
        if actor is not None:
            query = query.where(col(log.actor) == actor)
        if action is not None:
            if action.endswith("*"):
                query = query.where(col(log.action).startswith(action[:-1], autoescape=True))
            else:
                query = query.where(col(log.action) == action)
        if subject_type is not None:
            query = query.where(col(log.subject_type) == subject_type)
        if subject_id is not None:
            query = query.where(col(log.subject_id) == subject_id)
        if from_ is not None:
            query = query.where(col(log.at) >= from_.astimezone(UTC))
        if to is not None:
            query = query.where(col(log.at) < to.astimezone(UTC))
        if starting_after is not None:
            query = query.where(col(log.id) < _number(starting_after, "starting_after"))
        with Session(ctx.engine) as s:
            rows = list(s.exec(query.order_by(col(log.id).desc()).limit(limit + 1)).all())
        return {"data": [audit_view(r) for r in rows[:limit]], "has_more": len(rows) > limit}

    @api.get("/v1/invoices/{invoice_id}/history", dependencies=[ctx.scope("invoices:read")])
    def invoice_history(invoice_id: str) -> dict[str, Any]:
        """What happened to one invoice: audit entries (approvals, corrections, comments, …) and
        outbox events, oldest first."""
        with Session(ctx.engine) as s:
            if s.get(tables.Invoice, invoice_id) is None:
                raise HTTPException(404, f"no invoice {invoice_id}")
            entries = s.exec(
                select(tables.AuditLog)
                .where(col(tables.AuditLog.subject_id) == invoice_id)
                .order_by(col(tables.AuditLog.id))
            ).all()
            events = s.exec(
                select(tables.Event)
                .where(col(tables.Event.subject_id) == invoice_id)
                .order_by(col(tables.Event.seq))
            ).all()
            items: list[tuple[datetime, int, dict[str, Any]]] = [
                (e.at, 0, {"kind": "audit", **audit_view(e)}) for e in entries
            ]
            items += [(ev.created_at, 1, {"kind": "event", **event_view(ev)}) for ev in events]
        items.sort(key=lambda item: (item[0], item[1]))
        return {"invoice_id": invoice_id, "data": [item[2] for item in items]}

    return api
