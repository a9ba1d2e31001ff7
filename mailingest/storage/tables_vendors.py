"""Vendor tables (issue 6 item 6, issue 7): known sellers, the keys they are matched by, and the
corrections people made to their invoices (which the vendor's learned ``profile`` is built from).

``vendor_keys`` holds one row per identifying value (kind ``vat`` | ``iban`` | ``domain``), unique
per kind, so matching an invoice to a vendor is an indexed lookup; the vendor row keeps the same
values as lists for display.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from mailingest.storage.tables import UTCDateTime, _ts, utcnow


class Vendor(SQLModel, table=True):
    """A seller mailingest has seen, with what people told it (trusted, lists, GL) and learnt."""

    __tablename__ = "vendors"

    id: str = Field(primary_key=True, max_length=40)  # ven_...
    name: str = Field(max_length=500)
    name_key: str = Field(max_length=500, index=True)  # normalised, legal form removed
    vat_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    ibans: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    email_domains: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    trusted: bool = False
    lists: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    default_gl_account: str | None = Field(default=None, max_length=100)
    profile: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    version: int = 1  # bumped on every change; the API's ETag
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class VendorKey(SQLModel, table=True):
    """One identifying value of a vendor: a VAT id, an IBAN or a sender e-mail domain."""

    __tablename__ = "vendor_keys"
    __table_args__ = (UniqueConstraint("kind", "value", name="uq_vendor_keys_kind_value"),)

    id: int | None = Field(default=None, primary_key=True)
    vendor_id: str = Field(foreign_key="vendors.id", index=True, max_length=40)
    kind: str = Field(max_length=10)  # vat | iban | domain
    value: str = Field(max_length=200)


class Correction(SQLModel, table=True):
    """One field a person changed on one invoice: what it was, what it became, who and when."""

    __tablename__ = "corrections"

    id: int | None = Field(default=None, primary_key=True)
    invoice_id: str = Field(foreign_key="invoices.id", index=True, max_length=40)
    vendor_id: str | None = Field(default=None, index=True, max_length=40)
    field: str = Field(max_length=300)  # dotted path in the canonical invoice, e.g. seller.name
    old: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    new: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    actor: str = Field(max_length=200)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
