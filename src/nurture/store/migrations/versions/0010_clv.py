"""customer lifetime value: fitted models and per-contact predictions

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Microseconds since the epoch on SQLite, timestamptz on PostgreSQL (store/types.py).
UTC_TIME = sa.DateTime(timezone=True).with_variant(sa.BigInteger(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "clv_models",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("parameters", JSON, nullable=False),
        sa.Column("log_likelihood", sa.Float(), nullable=False),
        sa.Column("customers", sa.Integer(), nullable=False),
        sa.Column("fit", JSON, nullable=False),
        sa.Column("settings", JSON, nullable=False),
        sa.Column("fitted_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_clv_models"),
    )
    op.create_table(
        "clv_predictions",
        sa.Column("contact_id", BIG_ID, nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("x", sa.Integer(), nullable=False),
        sa.Column("t_x", sa.Float(), nullable=False),
        sa.Column("T", sa.Float(), nullable=False),
        sa.Column("monetary", sa.Float(), nullable=True),
        sa.Column("p_alive", sa.Float(), nullable=False),
        sa.Column("expected_purchases", sa.Float(), nullable=False),
        sa.Column("expected_spend", sa.Float(), nullable=True),
        sa.Column("expected_value", sa.Float(), nullable=True),
        sa.Column("computed_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("contact_id", "model", name="pk_clv_predictions"),
    )
    op.create_index(
        "ix_clv_predictions_model_expected_value",
        "clv_predictions",
        ["model", "expected_value"],
    )


def downgrade() -> None:
    op.drop_index("ix_clv_predictions_model_expected_value", table_name="clv_predictions")
    op.drop_table("clv_predictions")
    op.drop_table("clv_models")
