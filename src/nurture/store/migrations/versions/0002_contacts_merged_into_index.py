"""index contacts.merged_into

Profiles, exports and erasures look up the tombstones merged into a contact, and
ingest re-points them on every merge; without this index each of those scans the
whole contacts table.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_contacts_merged_into"), "contacts", ["merged_into"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_contacts_merged_into"), table_name="contacts")
