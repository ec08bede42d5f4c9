"""journey metrics: enrolments updated are marked once per statement on PostgreSQL

Migration 0013 marked an enrolment whose counted columns changed with a row trigger that
calls `nurture_mark` for each of its moments, old and new: six SQL-function calls, each
an INSERT planned anew, ~160 µs of server CPU per enrolment that ends (measured: every
event that enters a one-step journey, every enrolment's last step). Here, as for
messages, one statement-level trigger inserts the marks of every row the statement
changed in a counted column, from its transition tables: the same marks, one INSERT. An
UPDATE that changes no counted column (a step moving on) still marks nothing; it now
runs the trigger once per statement, where the row trigger's `UPDATE OF` list let it skip
the call. SQLite keeps its row triggers (a few µs a row there).

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

BUCKET = "date_bin('15 minutes', {}, timestamptz '1970-01-01 00:00:00+00')"
TX = "pg_current_xact_id()::text::bigint"
# As in 0013: the columns whose change changes what an enrolment counts for, and the
# moments it is counted at.
COUNTED = (
    "journey_key",
    "version",
    "control",
    "status",
    "end_reason",
    "entered_at",
    "converted_at",
    "revenue",
    "ended_at",
)
MOMENTS = ("entered_at", "converted_at", "ended_at")


def _updated() -> str:
    old = ", ".join(f"o.{c}" for c in COUNTED)
    new = ", ".join(f"n.{c}" for c in COUNTED)
    moments = ", ".join(f"({r}.journey_key, {r}.{m})" for r in ("o", "n") for m in MOMENTS)
    return f"""
CREATE OR REPLACE FUNCTION nurture_marks_enrolments_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO metric_marks (journey_key, bucket, tx)
  SELECT DISTINCT coalesce(x.journey_key, ''), {BUCKET.format("x.m")}, {TX}
  FROM old_rows AS o JOIN new_rows AS n ON n.id = o.id
  CROSS JOIN LATERAL (VALUES {moments}) AS x(journey_key, m)
  WHERE x.m IS NOT NULL AND ROW({old}) IS DISTINCT FROM ROW({new})
  ON CONFLICT DO NOTHING;
  RETURN NULL;
END $$
"""


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    bind.exec_driver_sql(_updated())  # no bind-parameter parsing of the body
    bind.exec_driver_sql("DROP TRIGGER enrolments_marks_update ON enrolments")
    bind.exec_driver_sql(
        "CREATE TRIGGER enrolments_marks_update AFTER UPDATE ON enrolments "
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT "
        "EXECUTE FUNCTION nurture_marks_enrolments_updated()"
    )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in COUNTED)
    bind.exec_driver_sql("DROP TRIGGER enrolments_marks_update ON enrolments")
    # 0013's row trigger (its function, nurture_marks_enrolments, is still there).
    bind.exec_driver_sql(
        f"CREATE TRIGGER enrolments_marks_update AFTER UPDATE OF {', '.join(COUNTED)} "
        f"ON enrolments FOR EACH ROW WHEN ({changed}) "
        "EXECUTE FUNCTION nurture_marks_enrolments()"
    )
    bind.exec_driver_sql("DROP FUNCTION nurture_marks_enrolments_updated()")
