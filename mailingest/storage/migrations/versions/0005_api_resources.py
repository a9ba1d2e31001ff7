"""API resources: invoice comments, upload jobs, batches and batch items (issue 9)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _str(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table(
        "invoice_comments",
        sa.Column("id", _str(40), nullable=False),
        sa.Column("invoice_id", _str(40), nullable=False),
        sa.Column("actor", _str(200), nullable=False),
        sa.Column("body", _str(4000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("invoice_comments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_invoice_comments_invoice_id"), ["invoice_id"], unique=False)
    op.create_table(
        "upload_jobs",
        sa.Column("id", _str(40), nullable=False),
        sa.Column("actor", _str(200), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "batches",
        sa.Column("id", _str(40), nullable=False),
        sa.Column("action", _str(20), nullable=False),
        sa.Column("actor", _str(200), nullable=False),
        sa.Column("status", _str(20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "batch_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("batch_id", _str(40), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("invoice_id", _str(40), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("status", _str(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("batch_id", "position", name="uq_batch_items_position"),
    )
    with op.batch_alter_table("batch_items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_batch_items_batch_id"), ["batch_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("batch_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_batch_items_batch_id"))
    op.drop_table("batch_items")
    op.drop_table("batches")
    op.drop_table("upload_jobs")
    with op.batch_alter_table("invoice_comments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoice_comments_invoice_id"))
    op.drop_table("invoice_comments")
