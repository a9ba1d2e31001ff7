"""invoices: composite indexes for the list's keyset order (created_at, id), with and without status

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # GET /v1/invoices orders by (created_at, id) and pages on that pair; a status filter is the
    # commonest one. The single-column indexes from 0001 stay (other queries use them).
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.create_index("ix_invoices_status_created_id", ["status", "created_at", "id"], unique=False)
        batch_op.create_index("ix_invoices_created_id", ["created_at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_index("ix_invoices_created_id")
        batch_op.drop_index("ix_invoices_status_created_id")
