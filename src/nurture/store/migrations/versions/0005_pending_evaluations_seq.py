"""count re-queues of a pending evaluation; nurture_ts not parallel safe

An evaluator on SQLite reads and evaluates outside the write lock, then writes only the
results of contacts whose `seq` did not move meanwhile (no new event arrived).

On PostgreSQL `nurture_ts` is redefined as PARALLEL UNSAFE: its exception block starts a
subtransaction, which a parallel query cannot (0003 declared it safe).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from nurture.store.functions import POSTGRES_FUNCTION

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pending_evaluations") as batch:
        batch.add_column(sa.Column("seq", sa.Integer(), server_default="0", nullable=False))
    if op.get_bind().dialect.name == "postgresql":
        op.get_bind().exec_driver_sql(POSTGRES_FUNCTION)  # no bind-parameter parsing


def downgrade() -> None:
    with op.batch_alter_table("pending_evaluations") as batch:
        batch.drop_column("seq")
