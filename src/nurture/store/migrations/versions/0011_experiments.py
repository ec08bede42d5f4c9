"""experiments: automatic winners recorded with their statistics

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Microseconds since the epoch on SQLite, timestamptz on PostgreSQL (store/types.py).
UTC_TIME = sa.DateTime(timezone=True).with_variant(sa.BigInteger(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiment_winners",
        sa.Column("journey_key", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(length=200), nullable=False),
        sa.Column("winner", sa.String(length=200), nullable=False),
        sa.Column("decided_at", UTC_TIME, nullable=False),
        sa.Column("statistics", JSON, nullable=False),
        sa.PrimaryKeyConstraint("journey_key", "version", "step"),
    )


def downgrade() -> None:
    op.drop_table("experiment_winners")
