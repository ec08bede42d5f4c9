"""analytics: indexes for journey and message metrics

Covering indexes for the per-table GROUP BY queries of analytics/journey_queries.py
(measured with bench/journey_metrics.py).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_enrolments_entered": ("enrolments", ["journey_key", "version", "entered_at", "control"]),
    "ix_enrolments_converted": (
        "enrolments",
        ["journey_key", "version", "converted_at", "control", "revenue"],
    ),
    "ix_enrolments_ended": (
        "enrolments",
        ["journey_key", "status", "end_reason", "step", "version", "control", "ended_at"],
    ),
    "ix_journey_steps_runs": ("journey_steps", ["journey_key", "version", "step", "executed_at"]),
    "ix_outbox_journey_message": (
        "outbox",
        [
            "journey_key",
            "version",
            "step",
            "template",
            "variant",
            "channel",
            "status",
            "sent_at",
            "created_at",
            "id",
        ],
    ),
    "ix_outbox_journey_sent": (
        "outbox",
        [
            "journey_key",
            "sent_at",
            "status",
            "version",
            "step",
            "template",
            "variant",
            "channel",
            "created_at",
            "id",
        ],
    ),
    "ix_message_feedback_outbox_type": ("message_feedback", ["outbox_id", "type"]),
}


def upgrade() -> None:
    for name, (table, columns) in INDEXES.items():
        op.create_index(name, table, columns, unique=False)


def downgrade() -> None:
    for name, (table, _) in INDEXES.items():
        op.drop_index(name, table_name=table)
