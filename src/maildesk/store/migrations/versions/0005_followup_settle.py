"""follow-up settling: a burst of notifications becomes a few sync runs, not one per run time

Revision ID: 0005
Revises: 0004

``sync_last_requested_at`` is the newest pending request (``sync_requested_at`` keeps the
earliest). ``sync_followup_at`` is set when a run ends with a request still pending: that
follow-up waits until requests stop arriving for a moment, or at most a bounded time (see
``store.accounts.claim_due_blocking``). Existing rows start with neither, so nothing waits.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("sync_last_requested_at", sa.DateTime(timezone=True),
                                   nullable=True))
        batch.add_column(sa.Column("sync_followup_at", sa.DateTime(timezone=True),
                                   nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("sync_followup_at")
        batch.drop_column("sync_last_requested_at")
