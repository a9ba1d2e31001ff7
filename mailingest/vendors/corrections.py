"""Corrections people make to invoices (API PATCH), stored one row per changed field, and the
learning they feed into the vendor's profile. Nothing here commits: the caller's transaction
holds the change, its corrections and the profile update together.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from mailingest.models import Invoice
from mailingest.storage import tables
from mailingest.storage.tables_vendors import Correction, Vendor, utcnow
from mailingest.vendors.profile import flatten, learn_confirmed, learn_correction

# Bookkeeping, not content: changes here are not corrections of what the document says.
IGNORED = ("/id", "/extraction", "/validation", "/source", "/routing", "/duplicate", "/enrichment")


def changed_fields(before: Invoice, after: Invoice) -> list[tuple[str, Any, Any]]:
    """(JSON pointer, old, new) for every leaf that differs, in a stable order."""
    old = flatten(before.to_json_dict())
    new = flatten(after.to_json_dict())
    changes = []
    for pointer in sorted(set(old) | set(new)):
        if pointer.startswith(IGNORED):
            continue
        if old.get(pointer) != new.get(pointer):
            changes.append((pointer, old.get(pointer), new.get(pointer)))
    return changes


def record_corrections(
    session: Session, row: tables.Invoice, before: Invoice, after: Invoice, actor: str
) -> list[Correction]:
    """Store one ``corrections`` row per changed field and teach the invoice's vendor from them.

    ``row`` is the stored invoice (its ``vendor_id`` says whose profile learns); ``before`` and
    ``after`` are the canonical invoice before and after the person's change. An invoice moving
    to ``approved`` also counts as confirmed (its GL coding and currency are reinforced).
    Does not commit.
    """
    vendor_id = row.vendor_id or after.vendor_id or before.vendor_id
    at = utcnow()
    rows = [
        Correction(
            invoice_id=row.id,
            vendor_id=vendor_id,
            field=pointer[:300],
            old=old,
            new=new,
            actor=actor[:200],
            at=at,
        )
        for pointer, old, new in changed_fields(before, after)
    ]
    for correction in rows:
        session.add(correction)
    vendor = session.get(Vendor, vendor_id) if vendor_id else None
    if vendor is not None:
        profile = dict(vendor.profile or {})
        before_json = before.to_json_dict()
        for c in rows:
            if c.field != "/status":
                profile = learn_correction(profile, c.field, c.old, c.new, before_json)
        if after.status == "approved" and before.status != "approved":
            profile = learn_confirmed(profile, after)
        if profile != vendor.profile:
            vendor.profile = profile  # a new dict, so SQLAlchemy sees the JSON column change
            vendor.version += 1
            vendor.updated_at = at
            session.add(vendor)
    session.flush()
    return rows


def record_approval(session: Session, row: tables.Invoice, invoice: Invoice) -> None:
    """An invoice approved without edits (API approve) confirms its vendor's GL coding and
    currency; call it in the approving transaction. Does not commit."""
    vendor = session.get(Vendor, row.vendor_id) if row.vendor_id else None
    if vendor is None:
        return
    vendor.profile = learn_confirmed(dict(vendor.profile or {}), invoice)
    vendor.version += 1
    vendor.updated_at = utcnow()
    session.add(vendor)
    session.flush()
