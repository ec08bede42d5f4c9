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
    "enrolments": ("{r}.entered_at", "{r}.converted_at", "{r}.ended_at"),
    "journey_steps": ("{r}.executed_at",),
    # A message counts in one bucket: of its sending, or of its making while not sent.
    "outbox": ("coalesce({r}.sent_at, {r}.created_at)",),
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
            for suffix in ("insert", "delete", "update"):
                bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_marks_{suffix} ON {table}")
            bind.exec_driver_sql(f"DROP FUNCTION IF EXISTS nurture_marks_{table}()")
            bind.exec_driver_sql(f"DROP FUNCTION IF EXISTS nurture_marks_{table}_inserted()")
        bind.exec_driver_sql("DROP FUNCTION IF EXISTS nurture_marks_outbox_updated()")
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
    insert = "INSERT OR IGNORE INTO metric_marks (journey_key, bucket, tx) "
    if len(moments) == 1:  # never null: the cheapest body (a trigger costs ~7 µs a row)
        m = moments[0].format(r=row)
        return f"{insert}VALUES (coalesce({row}.journey_key, ''), {m} - {m} % {BUCKET_US}, 0);"
    values = " UNION ALL ".join(f"SELECT {m.format(r=row)} AS m" for m in moments)
    return (
        f"{insert}SELECT coalesce({row}.journey_key, ''), m - m % {BUCKET_US}, 0 "
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


def _counted(table: str) -> str:
    """The counted columns, for `UPDATE OF`: an UPDATE that sets none of them (a step
    moving on, a lease renewed) does not run the trigger at all."""
    return ", ".join(COUNTED[table])


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
            f"CREATE TRIGGER {table}_marks_update AFTER UPDATE OF {_counted(table)} ON {table} "
            f"WHEN {_changed(table, True)} BEGIN {old} {new} END",
        ]
    new, old = _sqlite_feedback_marks("NEW"), _sqlite_feedback_marks("OLD")
    out += [
        "CREATE TRIGGER message_feedback_marks_insert AFTER INSERT ON message_feedback "
        f"WHEN NEW.type IN {ENGAGEMENT} BEGIN {new} END",
        "CREATE TRIGGER message_feedback_marks_delete AFTER DELETE ON message_feedback "
        f"WHEN OLD.type IN {ENGAGEMENT} BEGIN {old} END",
        "CREATE TRIGGER message_feedback_marks_update AFTER UPDATE OF "
        f"{_counted('message_feedback')} ON message_feedback "
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
    return " ".join(
        f"PERFORM nurture_mark({row}.journey_key, {m.format(r=row)});" for m in MOMENTS[table]
    )


BUCKET_PG = "date_bin('15 minutes', {}, timestamptz '1970-01-01 00:00:00+00')"
TX_PG = "pg_current_xact_id()::text::bigint"


def _pg_inserted(table: str) -> str:
    """One INSERT of the marks of every row a statement inserted (`inserted`, its
    transition table): one statement per batch instead of a call per row."""
    head = "INSERT INTO metric_marks (journey_key, bucket, tx) SELECT DISTINCT "
    if table == "message_feedback":
        at = BUCKET_PG.format("o.sent_at")
        # Two joins, not one with OR: each can be hashed or follow an index.
        return (
            f"{head}coalesce(o.journey_key, ''), {at}, {TX_PG} "
            "FROM inserted AS f JOIN outbox AS o ON o.id = f.outbox_id "
            f"WHERE f.type IN {ENGAGEMENT} AND o.sent_at IS NOT NULL "
            "UNION "
            f"SELECT coalesce(o.journey_key, ''), {at}, {TX_PG} "
            "FROM inserted AS f JOIN outbox AS o ON o.provider_id = f.provider_id "
            f"WHERE f.outbox_id IS NULL AND f.type IN {ENGAGEMENT} AND o.sent_at IS NOT NULL "
            "ON CONFLICT DO NOTHING;"
        )
    values = ", ".join(f"({m.format(r='i')})" for m in MOMENTS[table])
    return (
        f"{head}coalesce(i.journey_key, ''), {BUCKET_PG.format('v.m')}, {TX_PG} "
        f"FROM inserted AS i CROSS JOIN LATERAL (VALUES {values}) AS v(m) "
        "WHERE v.m IS NOT NULL ON CONFLICT DO NOTHING;"
    )


def _pg_outbox_updated() -> str:
    """The marks of the messages a statement changed in a counted column, old and new
    bucket: the dispatcher updates messages in batches (claimed, sent), one statement each."""
    columns = ", ".join(f"o.{c}" for c in COUNTED["outbox"])
    changed = ", ".join(f"n.{c}" for c in COUNTED["outbox"])
    return f"""
CREATE OR REPLACE FUNCTION nurture_marks_outbox_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO metric_marks (journey_key, bucket, tx)
  SELECT DISTINCT coalesce(x.journey_key, ''), {BUCKET_PG.format("x.m")}, {TX_PG}
  FROM old_rows AS o JOIN new_rows AS n ON n.id = o.id
  CROSS JOIN LATERAL (VALUES (o.journey_key, coalesce(o.sent_at, o.created_at)),
                             (n.journey_key, coalesce(n.sent_at, n.created_at)))
       AS x(journey_key, m)
  WHERE ROW({columns}) IS DISTINCT FROM ROW({changed})
  ON CONFLICT DO NOTHING;
  RETURN NULL;
END $$
"""


def _postgresql() -> list[str]:
    """Rows inserted are marked once per statement (the runtime and the dispatcher insert
    in batches), and so are messages updated; other rows updated (only when a counted
    column changed) or deleted, per row."""
    out = [MARK, _pg_outbox_updated()]
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
            f"""
CREATE OR REPLACE FUNCTION nurture_marks_{table}_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  {_pg_inserted(table)}
  RETURN NULL;
END $$
""",
            f"CREATE TRIGGER {table}_marks_insert AFTER INSERT ON {table} "
            "REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT "
            f"EXECUTE FUNCTION nurture_marks_{table}_inserted()",
            f"CREATE TRIGGER {table}_marks_delete AFTER DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION nurture_marks_{table}()",
            f"CREATE TRIGGER {table}_marks_update AFTER UPDATE ON {table} "
            "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT "
            "EXECUTE FUNCTION nurture_marks_outbox_updated()"
            if table == "outbox"
            else f"CREATE TRIGGER {table}_marks_update AFTER UPDATE OF {_counted(table)} "
            f"ON {table} FOR EACH ROW WHEN ({_changed(table, False)}) "
            f"EXECUTE FUNCTION nurture_marks_{table}()",
        ]
    return out


def _mark_existing(dialect: str) -> None:
    """Mark every bucket that already has rows: the first refresh computes them."""
    bind = op.get_bind()
    for table, moments in MOMENTS.items():
        for template in moments:
            moment = template.format(r=table)
            if dialect == "postgresql":
                bucket = BUCKET_PG.format(moment)
                insert, tail = "INSERT INTO", "ON CONFLICT DO NOTHING"
            else:
                bucket = f"{moment} - {moment} % {BUCKET_US}"
                insert, tail = "INSERT OR IGNORE INTO", ""
            bind.exec_driver_sql(
                f"{insert} metric_marks (journey_key, bucket, tx) "
                f"SELECT DISTINCT coalesce(journey_key, ''), {bucket}, 0 FROM {table} "
                f"WHERE {moment} IS NOT NULL {tail}"
            )
