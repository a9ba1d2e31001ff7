"""``/v1/batches``: many actions in one call (approve 500 invoices), polled per item.

Each item runs in its own transaction with the same functions as the single-invoice endpoints,
so one failure (a 409 on an already approved invoice) does not undo the others. Its outcome
(``succeeded``, or ``failed`` with the problem) is stored per item; ``POST .../retry`` runs the
failed items again and never touches the succeeded ones, so retrying is safe to repeat.
Small batches run inside the request; larger ones in a background thread (poll the batch).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import func, update
from sqlmodel import Session, col, select

from mailingest.api import actions
from mailingest.api.actions import Context
from mailingest.api.auth import Principal
from mailingest.models import new_id
from mailingest.storage import repo
from mailingest.storage.tables import utcnow
from mailingest.storage.tables_api import Batch, BatchItem

INLINE_ITEMS = 50  # batches up to this size finish before the response
STALLED = timedelta(minutes=10)  # a running batch with no item moving this long was interrupted
Action = Literal["approve", "reject", "assign", "tag"]
SCOPES: dict[str, str] = {
    "approve": "invoices:approve",
    "reject": "invoices:approve",
    "assign": "invoices:approve",
    "tag": "invoices:write",
}


class ItemIn(BaseModel):
    invoice_id: str = Field(min_length=1, max_length=40)
    comment: str | None = Field(default=None, max_length=2000)
    approvers: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, max_length=50
    )
    add_tags: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=50
    )
    remove_tags: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=50
    )


class BatchIn(BaseModel):
    action: Action
    items: list[ItemIn] = Field(min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _params_fit(self) -> BatchIn:
        for i, item in enumerate(self.items):
            if self.action == "assign" and item.approvers is None:
                raise ValueError(f"items.{i}.approvers: required for assign")
            if self.action == "tag" and not (item.add_tags or item.remove_tags):
                raise ValueError(f"items.{i}: add_tags or remove_tags required for tag")
        return self


def _apply(ctx: Context, action: str, actor: str, item: BatchItem) -> None:
    """One item in its own transaction; its outcome is stored whatever happens."""
    p = item.params
    error: dict[str, Any] | None = None
    try:
        with Session(ctx.engine) as s:
            if action in actions.TRANSITIONS:
                actions.transition(
                    s,
                    invoice_id=item.invoice_id,
                    action=action,
                    actor=actor,
                    comment=p.get("comment"),
                    connectors=ctx.connectors,
                )
            elif action == "assign":
                actions.assign(
                    s,
                    invoice_id=item.invoice_id,
                    approvers=p["approvers"],
                    actor=actor,
                    connectors=ctx.connectors,
                )
            else:
                actions.tag(
                    s,
                    invoice_id=item.invoice_id,
                    add=p.get("add_tags", []),
                    remove=p.get("remove_tags", []),
                    actor=actor,
                    connectors=ctx.connectors,
                )
            s.commit()
    except HTTPException as exc:
        error = actions.error_of(exc)
    except Exception as exc:  # noqa: BLE001 - one broken item must not stop the batch; it is recorded
        error = {
            "type": "about:blank",
            "title": "Internal Server Error",
            "status": 500,
            "detail": f"{type(exc).__name__}: {str(exc)[:500]}",
        }
    with Session(ctx.engine) as s:
        s.execute(
            update(BatchItem)
            .where(col(BatchItem.id) == item.id)
            .values(
                status="failed" if error else "succeeded",
                error=error,
                attempts=BatchItem.attempts + 1,
                updated_at=utcnow(),
            )
        )
        s.commit()


def run(ctx: Context, batch_id: str) -> None:
    """Apply every pending item of the batch, then mark it done."""
    with Session(ctx.engine, expire_on_commit=False) as s:
        batch = s.get(Batch, batch_id)
        assert batch is not None
        items = s.exec(
            select(BatchItem)
            .where(BatchItem.batch_id == batch_id, BatchItem.status == "pending")
            .order_by(col(BatchItem.position))
        ).all()
    for item in items:
        _apply(ctx, batch.action, batch.actor, item)
    with Session(ctx.engine) as s:
        s.execute(update(Batch).where(col(Batch.id) == batch_id).values(status="done", finished_at=utcnow()))
        s.commit()


def batch_view(session: Session, batch: Batch) -> dict[str, Any]:
    items = session.exec(
        select(BatchItem).where(BatchItem.batch_id == batch.id).order_by(col(BatchItem.position))
    ).all()
    counts = dict.fromkeys(("pending", "succeeded", "failed"), 0)
    for item in items:
        counts[item.status] += 1
    return {
        "id": batch.id,
        "action": batch.action,
        "status": batch.status,
        "created_at": batch.created_at.isoformat(),
        "finished_at": batch.finished_at.isoformat() if batch.finished_at else None,
        "counts": counts,
        "items": [
            {"invoice_id": i.invoice_id, "status": i.status, "attempts": i.attempts, "error": i.error}
            for i in items
        ],
    }


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite's MAX() loses the type


def _start(ctx: Context, batch_id: str, size: int) -> None:
    if size <= INLINE_ITEMS:
        run(ctx, batch_id)
    else:
        threading.Thread(target=run, args=(ctx, batch_id), name=f"batch-{batch_id}", daemon=True).start()


def router(ctx: Context) -> APIRouter:
    api = APIRouter(prefix="/v1/batches", tags=["batches"])
    anyone = ctx.scope("invoices:read")

    def check(principal: Principal, action: str) -> None:
        needed = SCOPES[action]
        if not principal.allows(needed):
            raise HTTPException(403, f"credential {principal.key_id} lacks the scope {needed}")

    @api.post("", status_code=202)
    def create_batch(
        body: BatchIn,
        request: Request,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        principal: Principal = anyone,
    ) -> JSONResponse:
        """Submit up to 1000 actions of one kind (scopes: invoices:read and that of the action:
        invoices:approve for approve, reject and assign, invoices:write for tag). 202 with the batch
        (``bat_...``); poll ``GET /v1/batches/{id}`` until ``status`` is ``done``."""
        check(principal, body.action)

        def work(s: Session) -> tuple[int, dict[str, Any]]:
            batch = Batch(id=new_id("bat"), action=body.action, actor=principal.actor)
            s.add(batch)
            s.flush()
            for position, item in enumerate(body.items):
                params = item.model_dump(exclude={"invoice_id"}, exclude_none=True)
                s.add(
                    BatchItem(batch_id=batch.id, position=position, invoice_id=item.invoice_id, params=params)
                )
            repo.audit(
                s,
                actor=principal.actor,
                action="batch.created",
                subject_type="batch",
                subject_id=batch.id,
                detail={"action": body.action, "items": len(body.items)},
            )
            s.flush()
            return 202, {"id": batch.id}

        outcome = actions.idempotent(
            ctx.engine,
            actor=principal.actor,
            idempotency_key=idempotency_key,
            request_print=actions.request_print(request, body.model_dump()),
            work=work,
        )
        batch_id = outcome.body["id"]
        if not outcome.replayed:
            _start(ctx, batch_id, len(body.items))
        with Session(ctx.engine) as s:
            batch = s.get(Batch, batch_id)
            assert batch is not None
            view = batch_view(s, batch)
        headers = {"Location": f"/v1/batches/{batch_id}"}
        if outcome.replayed:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(view, status_code=202, headers=headers)

    @api.get("/{batch_id}", dependencies=[anyone])
    def get_batch(batch_id: str) -> dict[str, Any]:
        """The batch and every item's outcome."""
        with Session(ctx.engine) as s:
            batch = s.get(Batch, batch_id)
            if batch is None:
                raise HTTPException(404, f"no batch {batch_id}")
            return batch_view(s, batch)

    @api.post("/{batch_id}/retry", status_code=202)
    def retry_batch(
        batch_id: str,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        principal: Principal = anyone,
    ) -> JSONResponse:
        """Run the failed items again. Succeeded items are never re-run, so a retry is
        idempotent by itself (``Idempotency-Key`` is accepted and not needed): with nothing
        failed it changes nothing. 409 while the batch is running; a batch whose run stopped
        (the server restarted mid-batch: no item moved for ``STALLED``) is resumed, its pending
        items included."""
        del idempotency_key
        with Session(ctx.engine, expire_on_commit=False) as s:
            batch = s.get(Batch, batch_id)
            if batch is None:
                raise HTTPException(404, f"no batch {batch_id}")
            check(principal, batch.action)
            stalled = False
            if batch.status != "done":
                moved = s.exec(
                    select(func.max(BatchItem.updated_at)).where(BatchItem.batch_id == batch_id)
                ).one()
                stalled = moved is None or _aware(moved) < utcnow() - STALLED
                if not stalled:
                    raise HTTPException(409, f"batch {batch_id} is still running")
            failed = s.execute(
                update(BatchItem)
                .where(col(BatchItem.batch_id) == batch_id, col(BatchItem.status) == "failed")
                .values(status="pending", updated_at=utcnow())
            ).rowcount  # type: ignore[attr-defined]
            if stalled:
                failed += (
                    len(
                        s.exec(
                            select(BatchItem.id).where(
                                BatchItem.batch_id == batch_id, BatchItem.status == "pending"
                            )
                        ).all()
                    )
                    - failed
                )
            if failed:
                s.execute(
                    update(Batch).where(col(Batch.id) == batch_id).values(status="running", finished_at=None)
                )
                repo.audit(
                    s,
                    actor=principal.actor,
                    action="batch.retried",
                    subject_type="batch",
                    subject_id=batch_id,
                    detail={"items": failed},
                )
            s.commit()
        if failed:
            _start(ctx, batch_id, failed)
        with Session(ctx.engine) as s:
            batch = s.get(Batch, batch_id)
            assert batch is not None
            return JSONResponse(batch_view(s, batch), status_code=202)

    return api
