"""``/v1/invoices``: list with filters, get, PATCH corrections (merge-patch + If-Match), approve,
reject, assign, comments and reprocess.

The list is ordered by ``created_at`` (newest first unless ``sort=created_at``) and paged on the
pair (``created_at``, ``id``), so rows inserted while a client pages never shift the pages it
has not read yet. The ETag of an invoice is a hash of its stored canonical data and status.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import and_, func, or_, text
from sqlalchemy.sql import Select
from sqlmodel import Session, col, select

from mailingest import models
from mailingest.api import actions
from mailingest.api.actions import Context
from mailingest.api.auth import Principal
from mailingest.models import Invoice, Validation, new_id
from mailingest.pipeline.dedupe import number_key
from mailingest.pipeline.validate import validate
from mailingest.storage import repo, tables
from mailingest.storage.tables_api import Comment

IdempotencyKey = Annotated[str | None, Header(max_length=200)]
# what a PATCH may not touch: identity, the pipeline's findings and the workflow (its own actions)
AMOUNT_FIELDS = frozenset(
    name
    for model in (
        models.Totals,
        models.VatBreakdown,
        models.AllowanceCharge,
        models.Price,
        models.LineVat,
        models.Line,
    )
    for name, info in model.model_fields.items()
    if models.Amount in (info.annotation, *get_args(info.annotation))
)
LIMIT = Decimal(10) ** 14  # NUMERIC(18, 4); larger amounts stay in the JSON only
MODEL_KEYS = frozenset(info.alias or name for name, info in Invoice.model_fields.items())
READ_ONLY = (
    "id",
    "status",
    "source",
    "extraction",
    "validation",
    "duplicate_of",
    "duplicate",
    "routing",
    "approvers",
    "enrichment",
)


@dataclass
class InvoiceFilters:
    """The list filters, shared by the list and the bulk export."""

    status: str | None = None
    vendor: str | None = None
    vat_id: str | None = None
    issue_date_from: date | None = None
    issue_date_to: date | None = None
    amount_min: Decimal | None = None
    amount_max: Decimal | None = None
    currency: str | None = None
    tag: str | None = None
    type: Literal["invoice", "credit_note"] | None = None
    q: str | None = None
    number: str | None = None

    def apply(self, query: Select[Any], dialect: str) -> Select[Any]:
        inv = tables.Invoice
        conditions: list[Any] = []
        if self.status:
            conditions.append(col(inv.status).in_(self.status.split(",")))
        if self.vendor:
            conditions.append(func.lower(col(inv.seller_name)).contains(self.vendor.lower(), autoescape=True))
        if self.vat_id:
            conditions.append(col(inv.seller_vat_id) == self.vat_id)
        if self.issue_date_from:
            conditions.append(col(inv.issue_date) >= self.issue_date_from.isoformat())
        if self.issue_date_to:
            conditions.append(col(inv.issue_date) <= self.issue_date_to.isoformat())
        if self.amount_min is not None:
            conditions.append(col(inv.amount_due) >= self.amount_min)
        if self.amount_max is not None:
            conditions.append(col(inv.amount_due) <= self.amount_max)
        if self.currency:
            conditions.append(col(inv.currency) == self.currency.upper())
        if self.type:
            conditions.append(col(inv.type) == self.type)
        if self.number:
            conditions.append(col(inv.number) == self.number)
        if self.q:
            needle = self.q.lower()
            conditions.append(
                or_(
                    func.lower(col(inv.number)).contains(needle, autoescape=True),
                    func.lower(col(inv.seller_name)).contains(needle, autoescape=True),
                )
            )
        if self.tag:
            if dialect == "postgresql":
                conditions.append(
                    text(
                        "EXISTS (SELECT 1 FROM json_array_elements_text(invoices.data -> 'tags') AS t"
                        " WHERE t = :tag)"
                    ).bindparams(tag=self.tag)
                )
            else:
                conditions.append(
                    text(
                        "EXISTS (SELECT 1 FROM json_each(invoices.data, '$.tags') AS t WHERE t.value = :tag)"
                    ).bindparams(tag=self.tag)
                )
        return query.where(*conditions) if conditions else query


def filters(
    status: Annotated[str | None, Query(description="one status or several, comma separated")] = None,
    vendor: Annotated[str | None, Query(max_length=200, description="part of the seller name")] = None,
    vat_id: Annotated[str | None, Query(max_length=50)] = None,
    issue_date_from: date | None = None,
    issue_date_to: date | None = None,
    amount_min: Decimal | None = None,
    amount_max: Decimal | None = None,
    currency: Annotated[str | None, Query(min_length=3, max_length=3)] = None,
    tag: Annotated[str | None, Query(max_length=100)] = None,
    type: Literal["invoice", "credit_note"] | None = None,
    q: Annotated[str | None, Query(max_length=200, description="text in the number or seller name")] = None,
    number: Annotated[str | None, Query(max_length=200)] = None,
) -> InvoiceFilters:
    return InvoiceFilters(
        status,
        vendor,
        vat_id,
        issue_date_from,
        issue_date_to,
        amount_min,
        amount_max,
        currency,
        tag,
        type,
        q,
        number,
    )


def ordered(
    session: Session, query: Select[Any], *, descending: bool, starting_after: str | None
) -> Select[Any]:
    """Order by (created_at, id) and continue after the invoice ``starting_after``."""
    inv = tables.Invoice
    if starting_after:
        anchor = session.get(inv, starting_after)
        if anchor is None:
            raise HTTPException(404, f"no invoice {starting_after} (starting_after)")
        at, key = anchor.created_at, anchor.id
        # The plain bound (<= / >=) is implied by the OR but lets both databases seek the
        # (created_at, id) index instead of filtering every newer row (deep pages 2-3x slower).
        if descending:
            query = query.where(
                col(inv.created_at) <= at,
                or_(col(inv.created_at) < at, and_(col(inv.created_at) == at, col(inv.id) < key)),
            )
        else:
            query = query.where(
                col(inv.created_at) >= at,
                or_(col(inv.created_at) > at, and_(col(inv.created_at) == at, col(inv.id) > key)),
            )
    if descending:
        return query.order_by(col(inv.created_at).desc(), col(inv.id).desc())
    return query.order_by(col(inv.created_at), col(inv.id))


def canonical(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stored data split into the canonical invoice and what the pipeline adds beside it
    (``duplicate`` findings): the model validates the first, the second is kept as it is."""
    return (
        {k: v for k, v in data.items() if k in MODEL_KEYS},
        {k: v for k, v in data.items() if k not in MODEL_KEYS},
    )


def page(
    session: Session, ctx: Context, found: InvoiceFilters, *, limit: int, descending: bool, after: str | None
) -> list[tables.Invoice]:
    """One page of matching invoices. The ids are found first and the rows fetched after: the
    database then sorts narrow (created_at, id) pairs instead of whole rows with their JSON."""
    inv = tables.Invoice
    query = found.apply(select(inv.id), ctx.engine.dialect.name)
    ids = list(
        session.exec(ordered(session, query, descending=descending, starting_after=after).limit(limit)).all()  # type: ignore[call-overload]
    )
    if not ids:
        return []
    rows = {r.id: r for r in session.exec(select(inv).where(col(inv.id).in_(ids))).all()}
    return [rows[i] for i in ids if i in rows]


def revalidate(before: Invoice, after: Invoice) -> Validation:
    """The checks run on the corrected invoice. Notes others added (extractors, vendor history,
    hooks) stay; the messages the checks gave for the invoice as it was are replaced."""
    own = {(m.rule, m.text) for m in validate(before.model_copy(update={"validation": None})).messages}
    kept = [
        m for m in (before.validation.messages if before.validation else []) if (m.rule, m.text) not in own
    ]
    fresh = validate(after.model_copy(update={"validation": None})).messages
    messages = kept + fresh
    return Validation(valid=not any(m.severity == "error" for m in messages), messages=messages)


def etag(row: tables.Invoice) -> str:
    raw = json.dumps([row.data, row.status], sort_keys=True, separators=(",", ":"), default=str)
    return '"' + hashlib.sha256(raw.encode()).hexdigest()[:32] + '"'


def columns(invoice: Invoice) -> dict[str, Any]:
    """The filter columns of ``tables.Invoice`` recomputed from a canonical invoice."""

    def fit(value: str | None, size: int) -> str | None:
        return value[:size] if value else value

    amount = invoice.totals.amount_due
    seller = invoice.seller
    return {
        "number": fit(invoice.number, 200),
        "number_key": fit(number_key(invoice.number), 200) if invoice.number else None,
        "type": invoice.type,
        "seller_name": fit(seller.name, 500) if seller else None,
        "seller_vat_id": fit(seller.vat_id, 50) if seller else None,
        "issue_date": fit(invoice.issue_date, 10),
        "currency": fit(invoice.currency, 3),
        "amount_due": amount if amount is not None and amount.is_finite() and abs(amount) < LIMIT else None,
    }


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge-patch: objects merge, ``null`` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _record_corrections(
    session: Session, row: tables.Invoice, before: Invoice, after: Invoice, actor: str
) -> None:
    # imported here: the vendor profile module is optional at import time of the API
    from mailingest.vendors.corrections import record_corrections

    record_corrections(session, row, before, after, actor)


def patch_invoice(
    ctx: Context, invoice_id: str, patch: dict[str, Any], if_match: str, actor: str
) -> tuple[dict[str, Any], str]:
    """Apply a merge-patch under If-Match; returns the new data and ETag (one transaction)."""
    for name in READ_ONLY:
        if name in patch:
            raise HTTPException(422, f"{name} cannot be changed with PATCH")
    unknown = [k for k in patch if k not in MODEL_KEYS]
    if unknown:
        raise _Invalid(
            [
                {"loc": ["body", k], "msg": "not a field of the invoice", "type": "extra_forbidden"}
                for k in unknown
            ]
        )
    with Session(ctx.engine, expire_on_commit=False) as session:
        row = actions.get_invoice(session, invoice_id)
        current = etag(row)
        if if_match.strip() not in (current, "*"):
            raise HTTPException(412, f"invoice {invoice_id} changed since you read it (ETag {current})")
        stored, extra = canonical(row.data)
        before = Invoice.model_validate(stored)
        merged = merge_patch(stored, patch)
        try:
            after = Invoice.model_validate(merged)
        except ValidationError as exc:
            raise _invalid(exc) from exc
        except InvalidOperation as exc:  # the model's decimal parser lets this through unwrapped
            raise _Invalid(
                [
                    {"loc": ["body", *p], "msg": "not a decimal number", "type": "decimal_parsing"}
                    for p in _not_decimals(patch)
                ]
            ) from exc
        data = after.to_json_dict()
        data.update(extra)
        data.update({k: row.data[k] for k in READ_ONLY if k in row.data})  # exactly as stored
        changed = sorted(k for k in set(data) | set(row.data) if data.get(k) != row.data.get(k))
        checked = revalidate(before, after)  # the checks run again; the status stays
        data["validation"] = checked.model_dump(mode="json", exclude_none=True)
        for name, value in columns(after).items():
            setattr(row, name, value)
        row.valid = checked.valid
        row.data = data
        row.updated_at = tables.utcnow()
        session.add(row)
        repo.audit(
            session,
            actor=actor,
            action="invoice.updated",
            subject_type="invoice",
            subject_id=invoice_id,
            detail={"fields": changed, "valid": checked.valid},
        )
        repo.add_event(
            session, type="invoice.updated", subject_id=invoice_id, data=data, connectors=ctx.connectors
        )
        session.flush()
        _record_corrections(session, row, before, after, actor)
        session.commit()
        return data, etag(row)


def _not_decimals(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Where the patch holds a string that is no decimal under an amount field's name."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _not_decimals(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _not_decimals(v, (*path, i))]
    if isinstance(value, str) and path and path[-1] in AMOUNT_FIELDS:
        try:
            Decimal(value.strip())
        except InvalidOperation:
            return [path]
    return []


class _Invalid(HTTPException):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        fields = ", ".join(dict.fromkeys(".".join(str(p) for p in e["loc"]) for e in errors))
        super().__init__(422, f"the invoice is not valid: {fields}")
        self.errors = errors


def _invalid(exc: ValidationError) -> _Invalid:
    return _Invalid([{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()])


class ActionBody(BaseModel):
    comment: str | None = Field(default=None, max_length=2000)


class AssignBody(BaseModel):
    approvers: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(max_length=50)


class CommentBody(BaseModel):
    body: str = Field(min_length=1, max_length=4000)


def comment_view(row: Comment) -> dict[str, Any]:
    return {
        "id": row.id,
        "invoice_id": row.invoice_id,
        "actor": row.actor,
        "body": row.body,
        "created_at": row.created_at.isoformat(),
    }


def router(ctx: Context) -> APIRouter:
    api = APIRouter(prefix="/v1/invoices", tags=["invoices"])
    reader, writer, approver = (
        ctx.scope("invoices:read"),
        ctx.scope("invoices:write"),
        ctx.scope("invoices:approve"),
    )

    @api.get("", dependencies=[reader])
    def list_invoices(
        found: Annotated[InvoiceFilters, Depends(filters)],
        limit: Annotated[int, Query(ge=1, le=200)] = 20,
        starting_after: Annotated[str | None, Query(max_length=40)] = None,
        sort: Literal["created_at", "-created_at"] = "-created_at",
    ) -> dict[str, Any]:
        """Invoices matching every filter given, newest first (``sort=created_at``: oldest first)."""
        with Session(ctx.engine) as s:
            rows = page(s, ctx, found, limit=limit + 1, descending=sort.startswith("-"), after=starting_after)
        return {"data": [r.data for r in rows[:limit]], "has_more": len(rows) > limit}

    @api.get("/{invoice_id}", dependencies=[reader])
    def get_invoice(invoice_id: str) -> JSONResponse:
        """The canonical invoice, with its ``ETag`` for a later PATCH."""
        with Session(ctx.engine) as s:
            row = actions.get_invoice(s, invoice_id)
            return JSONResponse(row.data, headers={"ETag": etag(row)})

    @api.patch("/{invoice_id}")
    def update_invoice(
        invoice_id: str,
        patch: Annotated[dict[str, Any], Body(media_type="application/merge-patch+json")],
        if_match: Annotated[str | None, Header()] = None,
        principal: Principal = writer,
    ) -> JSONResponse:
        """Correct an invoice: a JSON merge-patch (RFC 7396) of the canonical invoice. Needs the
        ``If-Match`` of a GET (428 without, 412 when the invoice changed since). Writes the audit
        entry, the ``invoice.updated`` event and the vendor-profile corrections in one transaction."""
        if not if_match:
            raise HTTPException(428, "send If-Match with the ETag of the invoice you corrected")
        try:
            data, tag = patch_invoice(ctx, invoice_id, patch, if_match, principal.actor)
        except _Invalid as exc:
            return actions.problem(422, str(exc.detail), errors=exc.errors)
        return JSONResponse(data, headers={"ETag": tag})

    def status_action(action: str) -> Any:
        def endpoint(
            invoice_id: str,
            request: Request,
            body: Annotated[ActionBody | None, Body()] = None,
            idempotency_key: IdempotencyKey = None,
            principal: Principal = approver,
        ) -> JSONResponse:
            outcome = actions.change_status(
                ctx.engine,
                invoice_id=invoice_id,
                action=action,
                actor=principal.actor,
                comment=body.comment if body else None,
                connectors=ctx.connectors,
                idempotency_key=idempotency_key,
                request_print=actions.request_print(request, body.model_dump() if body else None),
            )
            return outcome.response()

        endpoint.__doc__ = (
            f"{action.capitalize()} an invoice that is validated, needs_review or extracted (else 409). "
            "Writes the audit entry and the outbox event in one transaction. "
            "A repeat with the same Idempotency-Key (24 h) returns the first response, changing nothing."
        )
        return endpoint

    for name in actions.TRANSITIONS:
        api.post(f"/{{invoice_id}}/{name}", name=f"{name}_invoice")(status_action(name))

    @api.post("/{invoice_id}/assign")
    def assign_invoice(
        invoice_id: str,
        body: AssignBody,
        request: Request,
        idempotency_key: IdempotencyKey = None,
        principal: Principal = approver,
    ) -> JSONResponse:
        """Set who approves the invoice (replaces the list); event ``invoice.assigned``."""
        outcome = actions.idempotent(
            ctx.engine,
            actor=principal.actor,
            idempotency_key=idempotency_key,
            request_print=actions.request_print(request, body.model_dump()),
            work=lambda s: (
                200,
                actions.assign(
                    s,
                    invoice_id=invoice_id,
                    approvers=body.approvers,
                    actor=principal.actor,
                    connectors=ctx.connectors,
                ),
            ),
        )
        return outcome.response()

    @api.post("/{invoice_id}/comments", status_code=201)
    def add_comment(
        invoice_id: str,
        body: CommentBody,
        request: Request,
        idempotency_key: IdempotencyKey = None,
        principal: Principal = writer,
    ) -> JSONResponse:
        """Leave a comment (``com_...``) on an invoice."""

        def work(s: Session) -> tuple[int, dict[str, Any]]:
            actions.get_invoice(s, invoice_id)
            row = Comment(id=new_id("com"), invoice_id=invoice_id, actor=principal.actor, body=body.body)
            s.add(row)
            repo.audit(
                s,
                actor=principal.actor,
                action="invoice.commented",
                subject_type="invoice",
                subject_id=invoice_id,
                detail={"comment_id": row.id},
            )
            return 201, comment_view(row)

        return ctx.respond(request, body.model_dump(), idempotency_key, principal.actor, work)

    @api.get("/{invoice_id}/comments", dependencies=[reader])
    def list_comments(
        invoice_id: str,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        starting_after: Annotated[str | None, Query(max_length=40)] = None,
    ) -> dict[str, Any]:
        """Comments oldest first (ids sort by time)."""
        with Session(ctx.engine) as s:
            actions.get_invoice(s, invoice_id)
            query = select(Comment).where(Comment.invoice_id == invoice_id).order_by(col(Comment.id))
            if starting_after:
                query = query.where(col(Comment.id) > starting_after)
            rows = s.exec(query.limit(limit + 1)).all()
        return {"data": [comment_view(r) for r in rows[:limit]], "has_more": len(rows) > limit}

    @api.post("/{invoice_id}/reprocess", status_code=202)
    def reprocess_invoice(
        invoice_id: str,
        request: Request,
        idempotency_key: IdempotencyKey = None,
        principal: Principal = writer,
    ) -> JSONResponse:
        """Extract the invoice's message again (see ``POST /v1/messages/{id}/reprocess``)."""
        from mailingest.api.documents import requeue

        def work(s: Session) -> tuple[int, dict[str, Any]]:
            row = actions.get_invoice(s, invoice_id)
            return 202, requeue(s, ctx, row.message_id, principal.actor)

        outcome = actions.idempotent(
            ctx.engine,
            actor=principal.actor,
            idempotency_key=idempotency_key,
            request_print=actions.request_print(request, None),
            work=work,
        )
        ctx.queued()
        return outcome.response()

    return api
