"""what arrived for a queued contact

Real-time evaluation re-evaluates only the segments that read the events that arrived
(or every definition for a new or merged contact, flagged `full`).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pending_evaluations") as batch:
        batch.add_column(sa.Column("full", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table(
        "pending_arrivals",
        sa.Column(
            "contact_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("event", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("contact_id", "type", "event", name=op.f("pk_pending_arrivals")),
    )


def downgrade() -> None:
    op.drop_table("pending_arrivals")
    with op.batch_alter_table("pending_evaluations") as batch:
        batch.drop_column("full")
