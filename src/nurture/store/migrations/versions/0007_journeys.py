"""journeys, their versions, enrolments, steps run, the outbox and the journey inbox

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Microseconds since the epoch on SQLite, timestamptz on PostgreSQL (store/types.py).
UTC_TIME = sa.DateTime(timezone=True).with_variant(sa.BigInteger(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enrolments",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("journey_key", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("contact_id", BIG_ID, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("control", sa.Boolean(), nullable=False),
        sa.Column("step", sa.String(length=200), nullable=True),
        sa.Column("due_at", UTC_TIME, nullable=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("entry_key", sa.String(length=255), nullable=False),
        sa.Column("exclusive", sa.Boolean(), nullable=False),
        sa.Column("context", JSON, nullable=False),
        sa.Column("entered_at", UTC_TIME, nullable=False),
        sa.Column("ended_at", UTC_TIME, nullable=True),
        sa.Column("end_reason", sa.String(length=500), nullable=True),
        sa.Column("converted_at", UTC_TIME, nullable=True),
        sa.Column("revenue", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrolments")),
        sa.UniqueConstraint(
            "journey_key", "entry_key", name=op.f("uq_enrolments_journey_key_entry_key")
        ),
    )
    op.create_index(
        op.f("ix_enrolments_contact_id_status"),
        "enrolments",
        ["contact_id", "status"],
        unique=False,
    )
    op.create_index(
        "ix_enrolments_due",
        "enrolments",
        ["due_at"],
        unique=False,
        sqlite_where=sa.text("status = 'active'"),
        postgresql_where=sa.text("status = 'active'"),
    )
    op.create_index(
        op.f("ix_enrolments_journey_key_status"),
        "enrolments",
        ["journey_key", "status"],
        unique=False,
    )
    op.create_index(
        "uq_enrolments_live",
        "enrolments",
        ["journey_key", "contact_id"],
        unique=True,
        sqlite_where=sa.text("status = 'active' AND exclusive"),
        postgresql_where=sa.text("status = 'active' AND exclusive"),
    )
    op.create_table(
        "journey_inbox",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("contact_id", BIG_ID, nullable=False),
        sa.Column("queued_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journey_inbox")),
    )
    op.create_table(
        "journey_steps",
        sa.Column("enrolment_id", BIG_ID, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("journey_key", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(length=200), nullable=False),
        sa.Column("contact_id", BIG_ID, nullable=False),
        sa.Column("outcome", sa.String(length=200), nullable=False),
        sa.Column("executed_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("enrolment_id", "seq", name=op.f("pk_journey_steps")),
    )
    op.create_index(
        op.f("ix_journey_steps_contact_id"), "journey_steps", ["contact_id"], unique=False
    )
    op.create_index(
        op.f("ix_journey_steps_journey_key_step_executed_at"),
        "journey_steps",
        ["journey_key", "step", "executed_at"],
        unique=False,
    )
    op.create_table(
        "journey_versions",
        sa.Column("journey_key", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("body", JSON, nullable=False),
        sa.Column("published_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("journey_key", "version", name=op.f("pk_journey_versions")),
    )
    op.create_table(
        "journeys",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=500), server_default="", nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("draft", JSON, nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.Column("scanned_to", UTC_TIME, nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_journeys")),
    )
    op.create_table(
        "outbox",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("contact_id", BIG_ID, nullable=False),
        sa.Column("enrolment_id", BIG_ID, nullable=True),
        sa.Column("journey_key", sa.String(length=200), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("step", sa.String(length=200), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("template", sa.String(length=200), nullable=True),
        sa.Column("variant", sa.String(length=200), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("topic", sa.String(length=100), nullable=True),
        sa.Column("recipient", sa.String(length=320), nullable=True),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("send_after", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_outbox_idempotency_key")),
    )
    op.create_index(op.f("ix_outbox_contact_id"), "outbox", ["contact_id"], unique=False)
    op.create_index(
        op.f("ix_outbox_journey_key_step"), "outbox", ["journey_key", "step"], unique=False
    )
    op.create_index(
        op.f("ix_outbox_status_send_after"), "outbox", ["status", "send_after"], unique=False
    )


def downgrade() -> None:
    for name in (
        "journey_inbox",
        "outbox",
        "journey_steps",
        "enrolments",
        "journey_versions",
        "journeys",
    ):
        op.drop_table(name)
