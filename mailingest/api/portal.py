"""The vendor portal: ``GET /v1/portal/invoices`` and ``/v1/portal/invoices/{id}``.

A vendor-portal credential (API key or OAuth2 client created with ``--vendor``) has exactly the
scope ``vendor:read`` and sees only the invoices of its vendor — matched by seller VAT id
(compared without spaces/punctuation, upper-case) or, for a ``ven_`` binding, by the invoice's
``vendor_id`` — in a reduced view: id, number, dates, amount, currency and status. Anything
else (lines, routing, approvers, extraction details, other vendors' invoices) stays hidden: an
invoice of another vendor answers 404, as if it did not exist. ``admin`` may use the portal
routes too (seeing every vendor, or one with ``?vendor=``), to check what a vendor sees.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, col, func, select

from mailingest.api.actions import Context
from mailingest.api.auth import VENDOR_SCOPE, Principal, normalize_vendor
from mailingest.storage import tables

PORTAL_FIELDS = ("id", "number", "issue_date", "due_date", "amount", "currency", "status")


def portal_view(row: tables.Invoice) -> dict[str, Any]:
    data = row.data or {}
    return {
        "id": row.id,
        "number": row.number,
        "issue_date": row.issue_date,
        "due_date": data.get("due_date"),
        "amount": str(row.amount_due) if row.amount_due is not None else None,
        "currency": row.currency,
        "status": row.status,
    }


def vendor_condition(vendor: str) -> ColumnElement[bool]:
    """SQL condition selecting the invoices of ``vendor`` (a normalised VAT id or ``ven_`` id)."""
    vendor_id = getattr(tables.Invoice, "vendor_id", None)
    if vendor.startswith("ven_") and vendor_id is not None:
        return col(vendor_id) == vendor
    vat: Any = col(tables.Invoice.seller_vat_id)
    for char in (" ", ".", "-"):
        vat = func.replace(vat, char, "")
    return func.upper(vat) == vendor


def router(ctx: Context) -> APIRouter:
    api = APIRouter(prefix="/v1/portal", tags=["vendor portal"])
    vendor_reader = ctx.scope(VENDOR_SCOPE)

    def _scope_vendor(principal: Principal, vendor: str | None) -> str | None:
        if principal.vendor is not None:
            return principal.vendor  # a vendor credential cannot widen its view
        return normalize_vendor(vendor) if vendor else None

    @api.get("/invoices")
    def portal_invoices(
        limit: Annotated[int, Query(ge=1, le=200)] = 20,
        starting_after: Annotated[str | None, Query(max_length=40)] = None,
        status: Annotated[str | None, Query(max_length=20)] = None,
        vendor: Annotated[str | None, Query(max_length=50, description="admin only")] = None,
        principal: Principal = vendor_reader,
    ) -> dict[str, Any]:
        """The calling vendor's invoices, newest first, in the reduced portal view."""
        query = select(tables.Invoice).order_by(col(tables.Invoice.id).desc())
        bound = _scope_vendor(principal, vendor)
        if bound:
            query = query.where(vendor_condition(bound))
        if starting_after:
            query = query.where(col(tables.Invoice.id) < starting_after)
        if status:
            query = query.where(tables.Invoice.status == status)
        with Session(ctx.engine) as session:
            rows = session.exec(query.limit(limit + 1)).all()
        return {"data": [portal_view(r) for r in rows[:limit]], "has_more": len(rows) > limit}

    @api.get("/invoices/{invoice_id}")
    def portal_invoice(invoice_id: str, principal: Principal = vendor_reader) -> dict[str, Any]:
        """One invoice of the calling vendor (404 for any other vendor's invoice)."""
        query = select(tables.Invoice).where(tables.Invoice.id == invoice_id)
        if principal.vendor is not None:
            query = query.where(vendor_condition(principal.vendor))
        with Session(ctx.engine) as session:
            row = session.exec(query).first()
        if row is None:
            raise HTTPException(404, f"no invoice {invoice_id}")
        return portal_view(row)

    return api
