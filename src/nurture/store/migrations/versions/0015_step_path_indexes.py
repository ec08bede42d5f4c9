"""journeys: indexes a due step no longer pays for

A due step inserts a step run and a message and updates its enrolment; on PostgreSQL the
update is never HOT (its due time is indexed), so every index of the three tables gets an
entry per step. Four of migration 0012's covering indexes serve only rows a step does not
write (measured one at a time, in-process on PostgreSQL, 50,000 steps: 0.6-4.4 µs of
server CPU a step each; 13 µs with all six of its journey-table indexes dropped) and are
now partial, so that a step leaves them alone, as is one of 0009's:

- `ix_enrolments_converted`: converted enrolments only (every query of it names a
  `converted_at` range or `IS NOT NULL`);
- `ix_enrolments_ended`: ended enrolments only (the exits count them by `ended_at`; the
  enrolments waiting now are read through `(journey_key, status)`);
- `ix_outbox_journey_message`, `ix_outbox_journey_sent`: messages sent (or being sent)
  only; the messages not sent are counted through `ix_outbox_unsent`;
- `ix_outbox_provider_id` (migration 0009): messages with a provider's id only (feedback
  looks a message up by it; a message queued by a step has none yet).

And journey_steps had two indexes on (journey_key, step, executed_at), one with the
version before the step: one `(journey_key, step, executed_at, version)` serves both the
rollups' per-step ranges and the exact counts (analytics/journey_queries.py).

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# name: (table, columns, predicate of the partial index)
PARTIAL = {
    "ix_enrolments_converted": (
        "enrolments",
        ["journey_key", "version", "converted_at", "control", "revenue"],
        "converted_at IS NOT NULL",
    ),
    "ix_enrolments_ended": (
        "enrolments",
        ["journey_key", "status", "end_reason", "step", "version", "control", "ended_at"],
        "ended_at IS NOT NULL",
    ),
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
        "sent_at IS NOT NULL",
    ),
    # Feedback finds its message by the provider's id, which a message has once sent.
    "ix_outbox_provider_id": ("outbox", ["provider_id"], "provider_id IS NOT NULL"),
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
        "sent_at IS NOT NULL",
    ),
}
STEPS_BY_STEP = "ix_journey_steps_journey_key_step_executed_at"  # migration 0007
RUNS = "ix_journey_steps_runs"
RUNS_BEFORE = ["journey_key", "version", "step", "executed_at"]  # migration 0012
RUNS_AFTER = ["journey_key", "step", "executed_at", "version"]


def _analyze(names: list[str]) -> None:
    """On an SQLite database that has statistics (ANALYZE ran), give the new indexes
    theirs: with statistics for the others and none for these, the planner read every
    ended enrolment through ix_enrolments_ended for each bucket a report recounts
    (measured: 2.9 s against 0.2 ms for 48 buckets)."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    found = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'"
    if bind.exec_driver_sql(found).first() is None:
        return
    for name in names:
        bind.exec_driver_sql(f"ANALYZE {name}")


def upgrade() -> None:
    for name, (table, columns, where) in PARTIAL.items():
        op.drop_index(name, table_name=table)
        predicate = sa.text(where)
        op.create_index(
            name, table, columns, unique=False, sqlite_where=predicate, postgresql_where=predicate
        )
    op.drop_index(RUNS, table_name="journey_steps")
    op.drop_index(STEPS_BY_STEP, table_name="journey_steps")
    op.create_index(RUNS, "journey_steps", RUNS_AFTER, unique=False)
    _analyze([*PARTIAL, RUNS])


def downgrade() -> None:
    op.drop_index(RUNS, table_name="journey_steps")
    op.create_index(STEPS_BY_STEP, "journey_steps", ["journey_key", "step", "executed_at"])
    op.create_index(RUNS, "journey_steps", RUNS_BEFORE, unique=False)
    for name, (table, columns, _) in PARTIAL.items():
        op.drop_index(name, table_name=table)
        op.create_index(name, table, columns, unique=False)
    _analyze([*PARTIAL, RUNS, STEPS_BY_STEP])
