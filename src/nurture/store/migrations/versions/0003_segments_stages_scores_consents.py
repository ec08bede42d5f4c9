"""segments, stages, scores, consents

Tables for the condition language's stored state (memberships, stages, scores,
consents), their change history, definitions kept as data, the evaluation queue, and
on PostgreSQL the `nurture_ts` function that reads date traits (SQLite registers it
per connection).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 04:20:28.086196
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from nurture.store.functions import POSTGRES_FUNCTION

# Microseconds since the epoch on SQLite, timestamptz on PostgreSQL (store/types.py).
UTC_TIME = sa.DateTime(timezone=True).with_variant(sa.BigInteger(), "sqlite")

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consents",
        sa.Column(
            "contact_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("topic", sa.String(length=100), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("wording", sa.Text(), nullable=True),
        sa.Column("recorded_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("contact_id", "channel", "topic", name=op.f("pk_consents")),
    )
    op.create_table(
        "contact_scores",
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column(
            "contact_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("temperature", sa.String(length=64), nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("model", "contact_id", name=op.f("pk_contact_scores")),
    )
    with op.batch_alter_table("contact_scores", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_contact_scores_contact_id"), ["contact_id"], unique=False
        )

    op.create_table(
        "contact_stages",
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column(
            "contact_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("stage", sa.String(length=200), nullable=False),
        sa.Column("since", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("model", "contact_id", name=op.f("pk_contact_stages")),
    )
    with op.batch_alter_table("contact_stages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_contact_stages_contact_id"), ["contact_id"], unique=False
        )

    op.create_table(
        "definitions",
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=500), server_default="", nullable=False),
        sa.Column(
            "body",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="active", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.Column("evaluated_at", UTC_TIME, nullable=True),
        sa.PrimaryKeyConstraint("kind", "key", name=op.f("pk_definitions")),
    )
    op.create_table(
        "evaluation_state",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column(
            "value",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("computed_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_evaluation_state")),
    )
    op.create_table(
        "pending_evaluations",
        sa.Column(
            "contact_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("queued_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("contact_id", name=op.f("pk_pending_evaluations")),
    )
    with op.batch_alter_table("pending_evaluations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_pending_evaluations_queued_at"), ["queued_at"], unique=False
        )

    op.create_table(
        "score_changes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column(
            "contact_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("from_temperature", sa.String(length=64), nullable=True),
        sa.Column("to_temperature", sa.String(length=64), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("changed_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_score_changes")),
    )
    with op.batch_alter_table("score_changes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_score_changes_contact_id"), ["contact_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_score_changes_model_changed_at"), ["model", "changed_at"], unique=False
        )

    op.create_table(
        "segment_changes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("segment_key", sa.String(length=200), nullable=False),
        sa.Column(
            "contact_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("change", sa.String(length=8), nullable=False),
        sa.Column("changed_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segment_changes")),
    )
    with op.batch_alter_table("segment_changes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_segment_changes_contact_id"), ["contact_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_segment_changes_segment_key_changed_at"),
            ["segment_key", "changed_at"],
            unique=False,
        )

    op.create_table(
        "segment_memberships",
        sa.Column("segment_key", sa.String(length=200), nullable=False),
        sa.Column(
            "contact_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("entered_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("segment_key", "contact_id", name=op.f("pk_segment_memberships")),
    )
    with op.batch_alter_table("segment_memberships", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_segment_memberships_contact_id"), ["contact_id"], unique=False
        )

    op.create_table(
        "stage_changes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column(
            "contact_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("from_stage", sa.String(length=200), nullable=True),
        sa.Column("to_stage", sa.String(length=200), nullable=False),
        sa.Column("changed_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stage_changes")),
    )
    with op.batch_alter_table("stage_changes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_stage_changes_contact_id"), ["contact_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_stage_changes_model_changed_at"), ["model", "changed_at"], unique=False
        )

    if op.get_bind().dialect.name == "postgresql":
        op.get_bind().exec_driver_sql(POSTGRES_FUNCTION)  # no bind-parameter parsing


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS nurture_ts(jsonb)")
    with op.batch_alter_table("stage_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stage_changes_model_changed_at"))
        batch_op.drop_index(batch_op.f("ix_stage_changes_contact_id"))

    op.drop_table("stage_changes")
    with op.batch_alter_table("segment_memberships", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_segment_memberships_contact_id"))

    op.drop_table("segment_memberships")
    with op.batch_alter_table("segment_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_segment_changes_segment_key_changed_at"))
        batch_op.drop_index(batch_op.f("ix_segment_changes_contact_id"))

    op.drop_table("segment_changes")
    with op.batch_alter_table("score_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_score_changes_model_changed_at"))
        batch_op.drop_index(batch_op.f("ix_score_changes_contact_id"))

    op.drop_table("score_changes")
    with op.batch_alter_table("pending_evaluations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pending_evaluations_queued_at"))

    op.drop_table("pending_evaluations")
    op.drop_table("evaluation_state")
    op.drop_table("definitions")
    with op.batch_alter_table("contact_stages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_contact_stages_contact_id"))

    op.drop_table("contact_stages")
    with op.batch_alter_table("contact_scores", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_contact_scores_contact_id"))

    op.drop_table("contact_scores")
    op.drop_table("consents")
