"""Tables of the REST API's own resources: invoice comments, upload jobs and action batches."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from mailingest.storage.tables import UTCDateTime, _ts


class Comment(SQLModel, table=True):
    """A note a person or program left on an invoice (``com_...``)."""

    __tablename__ = "invoice_comments"

    id: str = Field(primary_key=True, max_length=40)
    invoice_id: str = Field(max_length=40, index=True)  # no foreign key: reprocessing replaces invoices
    actor: str = Field(max_length=200)
    body: str = Field(max_length=4000)
    created_at: datetime = _ts()


class UploadJob(SQLModel, table=True):
    """Files uploaded through ``POST /v1/documents`` (``job_...``); each file became a ledger message,
    so per-file status is read from the messages and invoices, never copied here."""

    __tablename__ = "upload_jobs"

    id: str = Field(primary_key=True, max_length=40)
    actor: str = Field(max_length=200)
    files: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))  # [{filename, message_id}]
    created_at: datetime = _ts()


class Batch(SQLModel, table=True):
    """Many actions submitted in one call (``bat_...``); ``status``: running → done."""

    __tablename__ = "batches"

    id: str = Field(primary_key=True, max_length=40)
    action: str = Field(max_length=20)
    actor: str = Field(max_length=200)
    status: str = Field(default="running", max_length=20)
    created_at: datetime = _ts()
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class BatchItem(SQLModel, table=True):
    """One action of a batch with its outcome: pending → succeeded | failed (``error`` as problem)."""

    __tablename__ = "batch_items"
    __table_args__ = (UniqueConstraint("batch_id", "position", name="uq_batch_items_position"),)

    id: int | None = Field(default=None, primary_key=True)
    batch_id: str = Field(foreign_key="batches.id", index=True, max_length=40)
    position: int
    invoice_id: str = Field(max_length=40)
    params: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    status: str = Field(default="pending", max_length=20)
    attempts: int = 0
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    updated_at: datetime = _ts()
