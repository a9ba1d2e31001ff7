"""deliveries: leases (claimed_by, claimed_until) and replay count; connector_state: circuit breaker

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("claimed_by", sqlmodel.sql.sqltypes.AutoString(length=120), nullable=True)
        )
        batch_op.add_column(sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("replays", sa.Integer(), nullable=False, server_default="0"))
        batch_op.create_index("ix_deliveries_due", ["connector", "status", "event_seq"], unique=False)
        batch_op.create_index(
            "ix_deliveries_subject_order", ["connector", "subject_id", "event_seq"], unique=False
        )
    with op.batch_alter_table("connector_state", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("consecutive_failures", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("circuit_open_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("connector_state", schema=None) as batch_op:
        for name in ("last_success_at", "last_failure_at", "circuit_open_until", "consecutive_failures"):
            batch_op.drop_column(name)
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_subject_order")
        batch_op.drop_index("ix_deliveries_due")
        for name in ("replays", "claimed_until", "claimed_by"):
            batch_op.drop_column(name)
