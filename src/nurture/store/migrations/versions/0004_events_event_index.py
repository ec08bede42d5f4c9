"""index events by event name for segment evaluation

"Who did X at least N times in a window" reads (event, type, contact_id, timestamp)
only: one range per event name, already grouped by contact, without touching the
table. Measured on 10M events (bench/RESULTS.md): the reference segment goes from
24 s (a scan of the table) to about 0.5 s.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        op.f("ix_events_event_type_contact_id_timestamp"),
        "events",
        ["event", "type", "contact_id", "timestamp"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_events_event_type_contact_id_timestamp"), table_name="events")
