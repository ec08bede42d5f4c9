"""messages: the outbox's send state, consent history, push subscriptions, provider feedback

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Microseconds since the epoch on SQLite, timestamptz on PostgreSQL (store/types.py).
UTC_TIME = sa.DateTime(timezone=True).with_variant(sa.BigInteger(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _outbox_columns() -> tuple[sa.Column[object], ...]:
    return (
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("throttles", sa.Integer(), server_default="0", nullable=False),
        sa.Column("rule", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("provider", sa.String(length=32), nullable=True),
        sa.Column("provider_id", sa.String(length=255), nullable=True),
        sa.Column("address", sa.String(length=320), nullable=True),
        sa.Column("lease_until", UTC_TIME, nullable=True),
        sa.Column("sent_at", UTC_TIME, nullable=True),
        sa.Column("updated_at", UTC_TIME, nullable=True),
        sa.Column("flagged", sa.Boolean(), server_default=sa.false(), nullable=False),
    )


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        for column in _outbox_columns():
            batch.add_column(column)
        batch.drop_index("ix_outbox_contact_id")
        batch.create_index(
            "ix_outbox_contact_id_channel_sent_at", ["contact_id", "channel", "sent_at"]
        )
        batch.create_index("ix_outbox_provider_id", ["provider_id"])
    with op.batch_alter_table("suppressions") as batch:
        batch.add_column(sa.Column("detail", sa.Text(), nullable=True))
    op.create_table(
        "consent_history",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("contact_id", BIG_ID, nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("topic", sa.String(length=100), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("wording", sa.Text(), nullable=True),
        sa.Column("recorded_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_consent_history"),
    )
    op.create_index("ix_consent_history_contact_id", "consent_history", ["contact_id"])
    op.create_table(
        "push_subscriptions",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("contact_id", BIG_ID, nullable=False),
        sa.Column("endpoint", sa.String(length=2000), nullable=False),
        sa.Column("p256dh", sa.String(length=200), nullable=False),
        sa.Column("auth", sa.String(length=100), nullable=False),
        sa.Column("user_agent", sa.String(length=500), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("expired_at", UTC_TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_push_subscriptions"),
        sa.UniqueConstraint("endpoint", name="uq_push_subscriptions_endpoint"),
    )
    op.create_index("ix_push_subscriptions_contact_id", "push_subscriptions", ["contact_id"])
    op.create_table(
        "message_feedback",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("event_key", sa.String(length=255), nullable=False),
        sa.Column("provider_id", sa.String(length=255), nullable=True),
        sa.Column("outbox_id", BIG_ID, nullable=True),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("occurred_at", UTC_TIME, nullable=False),
        sa.Column("received_at", UTC_TIME, nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("applied_at", UTC_TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_message_feedback"),
        sa.UniqueConstraint("provider", "event_key", name="uq_message_feedback_provider_event_key"),
    )
    op.create_index("ix_message_feedback_provider_id", "message_feedback", ["provider_id"])
    op.create_index("ix_message_feedback_outbox_id", "message_feedback", ["outbox_id"])
    op.create_index("ix_message_feedback_applied_at", "message_feedback", ["applied_at"])


def downgrade() -> None:
    op.drop_table("message_feedback")
    op.drop_table("push_subscriptions")
    op.drop_table("consent_history")
    with op.batch_alter_table("suppressions") as batch:
        batch.drop_column("detail")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_index("ix_outbox_provider_id")
        batch.drop_index("ix_outbox_contact_id_channel_sent_at")
        batch.create_index("ix_outbox_contact_id", ["contact_id"])
        for column in reversed(_outbox_columns()):
            batch.drop_column(column.name)
