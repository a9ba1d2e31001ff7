"""``/v1/vendors``: the vendors mailingest matched invoices to, their history, and what people
set on them (trusted, lists, default GL account) with ``If-Match`` on the vendor's version.

Scopes: ``invoices:read`` to read, ``invoices:write`` to change. See docs/vendors.md.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, or_, select

from mailingest.api.actions import Context
from mailingest.api.auth import Principal
from mailingest.storage import repo
from mailingest.storage.tables_vendors import Correction, Vendor, utcnow
from mailingest.vendors.history import load_history
from mailingest.vendors.profile import learned_gl_account

ListName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[\w.:-]+$")]


class VendorPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=500)
    trusted: bool | None = None
    lists: list[ListName] | None = Field(default=None, max_length=50)
    default_gl_account: str | None = Field(default=None, max_length=100)


def etag(vendor: Vendor) -> str:
    return f'"{vendor.id}.{vendor.version}"'


def vendor_view(vendor: Vendor) -> dict[str, Any]:
    return {
        "id": vendor.id,
        "name": vendor.name,
        "vat_ids": vendor.vat_ids,
        "ibans": vendor.ibans,
        "email_domains": vendor.email_domains,
        "trusted": vendor.trusted,
        "lists": vendor.lists,
        "default_gl_account": vendor.default_gl_account,
        "learned_gl_account": learned_gl_account(vendor.profile or {}),
        "profile": vendor.profile,
        "created_at": vendor.created_at.isoformat(),
        "updated_at": vendor.updated_at.isoformat(),
    }


def correction_view(row: Correction) -> dict[str, Any]:
    return {
        "invoice_id": row.invoice_id,
        "field": row.field,
        "old": row.old,
        "new": row.new,
        "actor": row.actor,
        "at": row.at.isoformat(),
    }


def _get(session: Session, vendor_id: str) -> Vendor:
    vendor = session.get(Vendor, vendor_id)
    if vendor is None:
        raise HTTPException(404, f"no vendor {vendor_id}")
    return vendor


def router(ctx: Context) -> APIRouter:
    api = APIRouter(prefix="/v1/vendors", tags=["vendors"])
    reader, writer = ctx.scope("invoices:read"), ctx.scope("invoices:write")

    @api.get("", dependencies=[reader])
    def list_vendors(
        q: Annotated[str | None, Query(max_length=200)] = None,
        trusted: bool | None = None,
        list_name: Annotated[str | None, Query(alias="list", max_length=100)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        starting_after: Annotated[str | None, Query(max_length=40)] = None,
    ) -> dict[str, Any]:
        """Vendors ordered by id (oldest first); ``q`` searches the name, ``list`` a list name."""
        query = select(Vendor).order_by(col(Vendor.id))
        if q:
            like = f"%{q.lower()}%"
            query = query.where(or_(col(Vendor.name_key).like(like), col(Vendor.name).ilike(like)))
        if trusted is not None:
            query = query.where(col(Vendor.trusted).is_(trusted))
        if starting_after:
            query = query.where(col(Vendor.id) > starting_after)
        with Session(ctx.engine) as s:
            rows = list(s.exec(query).all()) if list_name else list(s.exec(query.limit(limit + 1)).all())
        if list_name:  # JSON list membership, filtered here to stay portable across backends
            rows = [r for r in rows if list_name in r.lists][: limit + 1]
        return {"data": [vendor_view(r) for r in rows[:limit]], "has_more": len(rows) > limit}

    @api.get("/{vendor_id}", dependencies=[reader])
    def get_vendor(vendor_id: str) -> JSONResponse:
        """The vendor, its history (amounts, cadence, performance) and its latest corrections."""
        with Session(ctx.engine) as s:
            vendor = _get(s, vendor_id)
            history = load_history(s, vendor_id)
            corrections = s.exec(
                select(Correction)
                .where(Correction.vendor_id == vendor_id)
                .order_by(col(Correction.id).desc())
                .limit(50)
            ).all()
            body = {
                **vendor_view(vendor),
                "history": history.view(),
                "corrections": [correction_view(c) for c in corrections],
            }
            return JSONResponse(body, headers={"ETag": etag(vendor)})

    @api.patch("/{vendor_id}")
    def update_vendor(
        vendor_id: str,
        patch: Annotated[VendorPatch, Body()],
        if_match: Annotated[str | None, Header()] = None,
        principal: Principal = writer,
    ) -> JSONResponse:
        """Set ``trusted``, ``lists``, ``default_gl_account`` or ``name``; needs ``If-Match``."""
        if not if_match:
            raise HTTPException(428, "send If-Match with the ETag of the vendor you changed")
        changes = patch.model_dump(exclude_unset=True)
        with Session(ctx.engine, expire_on_commit=False) as s:
            vendor = _get(s, vendor_id)
            if if_match.strip() not in (etag(vendor), "*"):
                raise HTTPException(
                    412, f"vendor {vendor_id} changed since you read it (ETag {etag(vendor)})"
                )
            for name, value in changes.items():
                if name == "lists":
                    value = list(dict.fromkeys(value or []))
                if name in ("trusted", "name") and value is None:
                    continue
                setattr(vendor, name, value)
            vendor.version += 1
            vendor.updated_at = utcnow()
            s.add(vendor)
            repo.audit(
                s,
                actor=principal.actor,
                action="vendor.updated",
                subject_type="vendor",
                subject_id=vendor_id,
                detail={"fields": sorted(changes)},
            )
            s.commit()
            return JSONResponse(vendor_view(vendor), headers={"ETag": etag(vendor)})

    return api
