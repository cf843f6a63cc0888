"""outbox (sending, retries, failed sends kept as drafts)

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("account_id", _id(), nullable=False),
        sa.Column("user_id", _id(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("source_message_id", sa.BigInteger(), nullable=True),
        sa.Column("thread_id", sa.String(length=512), nullable=False),
        sa.Column("message_id_header", sa.String(length=998), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("recipients_json", sa.Text(), nullable=False),
        sa.Column("mime", sa.LargeBinary(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error_kind", sa.String(length=32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("copy_pending", sa.Boolean(), nullable=False),
        sa.Column("local_message_id", _id(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_outbox_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_outbox_user_id_users"), ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["local_message_id"], ["messages.id"],
            name=op.f("fk_outbox_local_message_id_messages"), ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    op.create_index("ix_outbox_account", "outbox", ["account_id", "id"], unique=False)
    op.create_index("ix_outbox_due", "outbox", ["state", "next_attempt_at"], unique=False)
    op.create_index("ix_outbox_local_message", "outbox", ["local_message_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_outbox_local_message", table_name="outbox")
    op.drop_index("ix_outbox_due", table_name="outbox")
    op.drop_index("ix_outbox_account", table_name="outbox")
    op.drop_table("outbox")
