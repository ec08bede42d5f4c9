"""journey metrics: rollups per 15-minute bucket, kept exact by triggers that mark changes

`metric_rollups` holds the journey report's counts per journey and 15-minute bucket, and
their sums per hour and per UTC day;
`metric_marks` names the buckets whose rows changed since (analytics/rollups.py). Triggers
on enrolments, journey_steps, outbox and message_feedback write the marks in the writing
transaction, so every path that changes a counted row (the runtime, the dispatcher,
feedback, erasure, a hand-written UPDATE) marks it. Existing rows are marked here; the
first refresh computes their rollups.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True).with_variant(sa.BigInteger(), "sqlite")
BUCKET_US = 900_000_000  # 15 minutes: every time zone's offset is a multiple of it

# The moments each table's rows are counted by (analytics/rollups.py reads the same).
MOMENTS = {
    "enrolments": ("entered_at", "converted_at", "ended_at"),
    "journey_steps": ("executed_at",),
    "outbox": ("created_at", "sent_at"),
}
# The columns whose change changes what a row counts for: an UPDATE that leaves them all
# as they were (a step moving on, a lease renewed) marks nothing.
COUNTED = {
    "enrolments": (
        "journey_key",
        "version",
        "control",
        "status",
        "end_reason",
        "entered_at",
        "converted_at",
        "revenue",
        "ended_at",
    ),
    "journey_steps": ("journey_key", "version", "step", "executed_at"),
    "outbox": (
        "journey_key",
        "version",
        "step",
        "template",
        "variant",
        "channel",
        "status",
        "created_at",
        "sent_at",
        "provider_id",
    ),
    "message_feedback": ("outbox_id", "provider_id", "type", "payload"),
}
# Index ranges a bucket's recount reads: enrolments ended, messages not sent by creation.
PARTIAL = (
    ("ix_outbox_unsent", "outbox", ["created_at", "journey_key"], "sent_at IS NULL"),
    (
        "ix_enrolments_journey_ended",
        "enrolments",
        ["journey_key", "ended_at"],
        "ended_at IS NOT NULL",
    ),
)
# Feedback the rollups count (the rest reaches them through the message's status).
ENGAGEMENT = "('opened', 'clicked', 'unsubscribed', 'complained')"


def upgrade() -> None:
    op.create_table(
        "metric_marks",
        sa.Column("journey_key", sa.String(length=200), nullable=False),
        sa.Column("bucket", UTC_TIME, nullable=False),
        sa.Column("tx", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("journey_key", "bucket", "tx"),
    )
    counts = [
        sa.Column(name, sa.BigInteger(), nullable=False)
        for name in (
            "n",
            "control_n",
            "unsent",
        )
    ]
    engagement = [
        sa.Column(name, sa.BigInteger(), nullable=False)
        for name in (
            "opened",
            "opens",
            "machine_opened",
            "machine_opens",
            "clicked",
            "clicks",
            "machine_clicked",
            "machine_clicks",
            "unsubscribed",
            "complained",
        )
    ]
    op.create_table(
        "metric_rollups",
        sa.Column("journey_key", sa.String(length=200), nullable=False),
        sa.Column("bucket", UTC_TIME, nullable=False),
        sa.Column("span", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("step", sa.String(length=200), nullable=True),
        sa.Column("template", sa.String(length=200), nullable=True),
        sa.Column("variant", sa.String(length=200), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("end_reason", sa.String(length=500), nullable=True),
        sa.Column("control", sa.Boolean(), nullable=True),
        *counts,
        sa.Column("revenue", sa.Float(), nullable=False),
        *engagement,
    )
    op.create_index(
        op.f("ix_metric_rollups_journey_key_span_bucket"),
        "metric_rollups",
        ["journey_key", "span", "bucket"],
        unique=False,
    )
    for name, table, columns, where in PARTIAL:
        op.create_index(
            name,
            table,
            columns,
            unique=False,
            sqlite_where=sa.text(where),
            postgresql_where=sa.text(where),
        )
    bind = op.get_bind()
    statements = _postgresql() if bind.dialect.name == "postgresql" else _sqlite()
    for statement in statements:
        bind.exec_driver_sql(statement)  # no bind-parameter parsing of the bodies
    _mark_existing(bind.dialect.name)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for table in (*MOMENTS, "message_feedback"):
            for suffix in ("write", "update"):
                bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_marks_{suffix} ON {table}")
            bind.exec_driver_sql(f"DROP FUNCTION IF EXISTS nurture_marks_{table}()")
        bind.exec_driver_sql("DROP FUNCTION IF EXISTS nurture_mark(text, timestamptz)")
    else:
        for table in (*MOMENTS, "message_feedback"):
            for suffix in ("insert", "update", "delete"):
                bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_marks_{suffix}")
    for name, table, _, _ in PARTIAL:
        op.drop_index(name, table_name=table)
    op.drop_index(op.f("ix_metric_rollups_journey_key_span_bucket"), table_name="metric_rollups")
    op.drop_table("metric_rollups")
    op.drop_table("metric_marks")


# -- SQLite ---------------------------------------------------------------------------------
def _sqlite_marks(row: str, moments: tuple[str, ...]) -> str:
    values = " UNION ALL ".join(f"SELECT {row}.{m} AS m" for m in moments)
    return (
        "INSERT OR IGNORE INTO metric_marks (journey_key, bucket, tx) "
        f"SELECT coalesce({row}.journey_key, ''), m - m % {BUCKET_US}, 0 "
        f"FROM ({values}) WHERE m IS NOT NULL;"
    )


def _sqlite_feedback_marks(row: str) -> str:
    # The message the feedback is about: by outbox id, or by the provider's message id.
    select = (
        "INSERT OR IGNORE INTO metric_marks (journey_key, bucket, tx) "
        f"SELECT coalesce(o.journey_key, ''), o.sent_at - o.sent_at % {BUCKET_US}, 0 "
        "FROM outbox AS o WHERE o.sent_at IS NOT NULL AND "
    )
    return (
        f"{select}o.id = {row}.outbox_id;"
        f"{select}{row}.outbox_id IS NULL AND {row}.provider_id IS NOT NULL "
        f"AND o.provider_id = {row}.provider_id;"
    )


def _changed(table: str, sqlite: bool) -> str:
    op_ = "IS NOT" if sqlite else "IS DISTINCT FROM"
    return " OR ".join(f"OLD.{c} {op_} NEW.{c}" for c in COUNTED[table])


def _sqlite() -> list[str]:
    out = []
    for table, moments in MOMENTS.items():
        new, old = _sqlite_marks("NEW", moments), _sqlite_marks("OLD", moments)
        out += [
            f"CREATE TRIGGER {table}_marks_insert AFTER INSERT ON {table} BEGIN {new} END",
            f"CREATE TRIGGER {table}_marks_delete AFTER DELETE ON {table} BEGIN {old} END",
            f"CREATE TRIGGER {table}_marks_update AFTER UPDATE ON {table} "
            f"WHEN {_changed(table, True)} BEGIN {old} {new} END",
        ]
    new, old = _sqlite_feedback_marks("NEW"), _sqlite_feedback_marks("OLD")
    out += [
        "CREATE TRIGGER message_feedback_marks_insert AFTER INSERT ON message_feedback "
        f"WHEN NEW.type IN {ENGAGEMENT} BEGIN {new} END",
        "CREATE TRIGGER message_feedback_marks_delete AFTER DELETE ON message_feedback "
        f"WHEN OLD.type IN {ENGAGEMENT} BEGIN {old} END",
        "CREATE TRIGGER message_feedback_marks_update AFTER UPDATE ON message_feedback "
        f"WHEN ({_changed('message_feedback', True)}) "
        f"AND (OLD.type IN {ENGAGEMENT} OR NEW.type IN {ENGAGEMENT}) BEGIN {old} {new} END",
    ]
    return out


# -- PostgreSQL -----------------------------------------------------------------------------
MARK = """
CREATE OR REPLACE FUNCTION nurture_mark(journey text, at timestamptz) RETURNS void
LANGUAGE sql AS $$
  INSERT INTO metric_marks (journey_key, bucket, tx)
  SELECT coalesce(journey, ''),
         date_bin('15 minutes', at, timestamptz '1970-01-01 00:00:00+00'),
         pg_current_xact_id()::text::bigint
  WHERE at IS NOT NULL
  ON CONFLICT DO NOTHING
$$
"""


def _pg_marks(row: str, table: str) -> str:
    if table == "message_feedback":
        return (
            f"IF {row}.type IN {ENGAGEMENT} THEN "
            "PERFORM nurture_mark(o.journey_key, o.sent_at) FROM outbox AS o "
            f"WHERE o.id = {row}.outbox_id; "
            "PERFORM nurture_mark(o.journey_key, o.sent_at) FROM outbox AS o "
            f"WHERE {row}.outbox_id IS NULL AND {row}.provider_id IS NOT NULL "
            f"AND o.provider_id = {row}.provider_id; "
            "END IF;"
        )
    return " ".join(f"PERFORM nurture_mark({row}.journey_key, {row}.{m});" for m in MOMENTS[table])


def _postgresql() -> list[str]:
    out = [MARK]
    for table in (*MOMENTS, "message_feedback"):
        out += [
            f"""
CREATE OR REPLACE FUNCTION nurture_marks_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP <> 'INSERT' THEN {_pg_marks("OLD", table)} END IF;
  IF TG_OP <> 'DELETE' THEN {_pg_marks("NEW", table)} END IF;
  RETURN NULL;
END $$
""",
            f"CREATE TRIGGER {table}_marks_write AFTER INSERT OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION nurture_marks_{table}()",
            f"CREATE TRIGGER {table}_marks_update AFTER UPDATE ON {table} FOR EACH ROW "
            f"WHEN ({_changed(table, False)}) EXECUTE FUNCTION nurture_marks_{table}()",
        ]
    return out


def _mark_existing(dialect: str) -> None:
    """Mark every bucket that already has rows: the first refresh computes them."""
    bind = op.get_bind()
    for table, moments in MOMENTS.items():
        for moment in moments:
            if dialect == "postgresql":
                bucket = f"date_bin('15 minutes', {moment}, timestamptz '1970-01-01 00:00:00+00')"
                insert, tail = "INSERT INTO", "ON CONFLICT DO NOTHING"
            else:
                bucket = f"{moment} - {moment} % {BUCKET_US}"
                insert, tail = "INSERT OR IGNORE INTO", ""
            bind.exec_driver_sql(
                f"{insert} metric_marks (journey_key, bucket, tx) "
                f"SELECT DISTINCT coalesce(journey_key, ''), {bucket}, 0 FROM {table} "
                f"WHERE {moment} IS NOT NULL {tail}"
            )
