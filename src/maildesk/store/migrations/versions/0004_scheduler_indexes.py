"""scheduler indexes: push selections grow with due rows, not with all rows

Revision ID: 0004
Revises: 0003

The silence detector and the renewal job's age rule filtered push_subscriptions on columns no
index covered, and pending Graph lifecycle actions were found by a text match on settings_json:
each was a full scan per tick (``bench/scheduler_tick.py``: 60-70 ms each at 100,000 rows on
SQLite). ``lifecycle_at`` marks a pending lifecycle action (set and cleared with the settings
key by ``store.push.upsert``) so that selection is an index lookup too.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("push_subscriptions") as batch:
        batch.add_column(sa.Column("lifecycle_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_push_subscriptions_lifecycle", "push_subscriptions", ["lifecycle_at"])
    op.create_index("ix_push_subscriptions_silence", "push_subscriptions",
                    ["state", "last_notification_at"])
    op.create_index("ix_push_subscriptions_renewed", "push_subscriptions",
                    ["state", "last_renewal_at"])
    # Actions noted before this migration keep being performed.
    op.execute(
        "UPDATE push_subscriptions SET lifecycle_at = updated_at "
        "WHERE settings_json LIKE '%\"lifecycle\": %'"
    )


def downgrade() -> None:
    op.drop_index("ix_push_subscriptions_renewed", table_name="push_subscriptions")
    op.drop_index("ix_push_subscriptions_silence", table_name="push_subscriptions")
    op.drop_index("ix_push_subscriptions_lifecycle", table_name="push_subscriptions")
    with op.batch_alter_table("push_subscriptions") as batch:
        batch.drop_column("lifecycle_at")
