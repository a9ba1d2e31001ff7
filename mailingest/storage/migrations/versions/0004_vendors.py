"""vendors, vendor keys, corrections; invoices.vendor_id (issues 6 and 7)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_str = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        "vendors",
        sa.Column("id", _str(length=40), nullable=False),
        sa.Column("name", _str(length=500), nullable=False),
        sa.Column("name_key", _str(length=500), nullable=False),
        sa.Column("vat_ids", sa.JSON(), nullable=False),
        sa.Column("ibans", sa.JSON(), nullable=False),
        sa.Column("email_domains", sa.JSON(), nullable=False),
        sa.Column("trusted", sa.Boolean(), nullable=False),
        sa.Column("lists", sa.JSON(), nullable=False),
        sa.Column("default_gl_account", _str(length=100), nullable=True),
        sa.Column("profile", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("vendors", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_vendors_name_key"), ["name_key"], unique=False)

    op.create_table(
        "vendor_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vendor_id", _str(length=40), nullable=False),
        sa.Column("kind", _str(length=10), nullable=False),
        sa.Column("value", _str(length=200), nullable=False),
        sa.ForeignKeyConstraint(["vendor_id"], ["vendors.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "value", name="uq_vendor_keys_kind_value"),
    )
    with op.batch_alter_table("vendor_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_vendor_keys_vendor_id"), ["vendor_id"], unique=False)

    op.create_table(
        "corrections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("invoice_id", _str(length=40), nullable=False),
        sa.Column("vendor_id", _str(length=40), nullable=True),
        sa.Column("field", _str(length=300), nullable=False),
        sa.Column("old", sa.JSON(), nullable=True),
        sa.Column("new", sa.JSON(), nullable=True),
        sa.Column("actor", _str(length=200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["invoice_id"], ["invoices.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("corrections", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_corrections_invoice_id"), ["invoice_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_corrections_vendor_id"), ["vendor_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_corrections_at"), ["at"], unique=False)

    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("vendor_id", _str(length=40), nullable=True))
        batch_op.create_index(batch_op.f("ix_invoices_vendor_id"), ["vendor_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoices_vendor_id"))
        batch_op.drop_column("vendor_id")
    with op.batch_alter_table("corrections", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_corrections_at"))
        batch_op.drop_index(batch_op.f("ix_corrections_vendor_id"))
        batch_op.drop_index(batch_op.f("ix_corrections_invoice_id"))
    op.drop_table("corrections")
    with op.batch_alter_table("vendor_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vendor_keys_vendor_id"))
    op.drop_table("vendor_keys")
    with op.batch_alter_table("vendors", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vendors_name_key"))
    op.drop_table("vendors")
