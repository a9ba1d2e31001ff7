"""Duplicate detection against stored invoices (first cut: same file, same vendor + number).

A duplicate is never dropped: it is stored with ``duplicate_of`` and the reason, and goes to
review. Fuzzy matching (dates, amounts, number punctuation) comes with the routing issue.
"""

from __future__ import annotations

import re

from sqlmodel import Session, select

from mailingest.models import Invoice
from mailingest.storage import tables

_NUMBER_NOISE = re.compile(r"[\s\-_/.#]")


def number_key(number: str) -> str:
    """Invoice numbers compared without punctuation, case or leading zeros."""
    return _NUMBER_NOISE.sub("", number).upper().lstrip("0")


def find_duplicate(session: Session, invoice: Invoice, document_sha256: str) -> tuple[str, str] | None:
    """(id of the earlier invoice, reason) or None."""
    if invoice.number is None:
        return None
    same_file = session.exec(
        select(tables.Invoice.id)
        .join(tables.Document, tables.Document.id == tables.Invoice.document_id)  # type: ignore[arg-type]
        .where(tables.Document.sha256 == document_sha256, tables.Invoice.number == invoice.number)
        .limit(1)
    ).first()
    if same_file:
        return same_file, "same file and invoice number"
    seller = invoice.seller
    if seller is None or not (seller.vat_id or seller.name):
        return None
    query = select(tables.Invoice.id).where(
        tables.Invoice.number_key == number_key(invoice.number),
        tables.Invoice.duplicate_of.is_(None),  # type: ignore[union-attr]
    )
    if seller.vat_id:
        query = query.where(tables.Invoice.seller_vat_id == seller.vat_id)
    else:
        query = query.where(tables.Invoice.seller_name == seller.name)
    other = session.exec(query.limit(1)).first()
    return (other, "same seller and invoice number") if other else None
