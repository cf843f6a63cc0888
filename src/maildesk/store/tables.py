"""The store's tables (SQLAlchemy Core). The Alembic migrations must produce exactly this schema;
``tests/store/test_migrations.py`` compares them.

Times are stored as UTC: timezone-aware on PostgreSQL, naive-UTC text on SQLite (which sorts
correctly as text); ``UTCDateTime`` hands back aware datetimes on both.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a real bigint.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


users = Table(
    "users",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("api_token_hash", String(128), nullable=True, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("provider", String(16), nullable=False),
    Column("email", String(320), nullable=False),
    Column("display_name", String(200), nullable=False, default=""),
    Column("state", String(32), nullable=False, default="new"),
    Column("last_error_kind", String(32), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_error_at", UTCDateTime, nullable=True),
    # Secrets: encrypted with the secret box, never logged.
    Column("refresh_token_enc", Text, nullable=True),
    Column("password_enc", Text, nullable=True),
    Column("scopes", Text, nullable=False, default=""),
    Column("token_kind", String(16), nullable=True),
    Column("settings_json", Text, nullable=False, default="{}"),
    # Scheduling: a sync request is a stamp, so N requests while a sync runs become one.
    # sync_requested_at: earliest pending request (null = none). request_seq increases with every
    # request; a sync that claimed at seq R sets done_seq = R and clears the stamp only if no
    # request came in meanwhile, so a request during a sync always gets one follow-up sync.
    Column("sync_requested_at", UTCDateTime, nullable=True),
    Column("sync_reason", String(32), nullable=True),
    Column("sync_request_seq", BigInteger, nullable=False, default=0),
    Column("sync_done_seq", BigInteger, nullable=False, default=0),
    # Follow-up settling (migration 0005): the newest pending request, and when the last run
    # ended with a request still pending. Such a follow-up waits for requests to pause (see
    # ``store.accounts.claim_due_blocking``), so a burst of notifications is a few runs.
    Column("sync_last_requested_at", UTCDateTime, nullable=True),
    Column("sync_followup_at", UTCDateTime, nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    Column("next_poll_at", UTCDateTime, nullable=False),
    Column("retry_at", UTCDateTime, nullable=True),
    Column("failure_count", Integer, nullable=False, default=0),
    Column("last_sync_at", UTCDateTime, nullable=True),
    Column("initial_sync_done", Boolean, nullable=False, default=False),
    Column("backfill_done", Boolean, nullable=False, default=False),
    Column("backfill_fetched", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("provider", "email"),
    Index("ix_accounts_due", "next_poll_at"),
    Index("ix_accounts_requested", "sync_requested_at"),
)

account_users = Table(
    "account_users",
    metadata,
    Column("account_id", BigId, ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", BigId, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
)

# Named sync positions: the Gmail historyId, a backfill page token, a Graph deltaLink, ...
# scope is "" for the account, else a folder's remote id. Written only in the transaction that
# applied everything the cursor stands for.
cursors = Table(
    "cursors",
    metadata,
    Column("account_id", BigId, ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("scope", String(512), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

folders = Table(
    "folders",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("account_id", BigId, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("remote_id", String(512), nullable=False),
    Column("name", String(512), nullable=False),
    Column("role", String(16), nullable=False, default=""),
    Column("is_system", Boolean, nullable=False, default=False),
    Column("selected", Boolean, nullable=False, default=True),
    Column("backfill_requested", Boolean, nullable=False, default=False),
    Column("backfill_done", Boolean, nullable=False, default=False),
    Column("backfill_fetched", Integer, nullable=False, default=0),
    Column("oldest_at", UTCDateTime, nullable=True),
    Column("uidvalidity", BigInteger, nullable=True),
    Column("uidnext", BigInteger, nullable=True),
    Column("highestmodseq", BigInteger, nullable=True),
    UniqueConstraint("account_id", "remote_id"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("account_id", BigId, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("remote_id", String(512), nullable=False),
    Column("thread_id", String(512), nullable=False, default=""),
    Column("message_id_header", String(998), nullable=False, default=""),
    Column("subject", Text, nullable=False, default=""),
    Column("sender", Text, nullable=False, default=""),
    Column("recipients", Text, nullable=False, default=""),
    Column("snippet", Text, nullable=False, default=""),
    Column("size", Integer, nullable=False, default=0),
    Column("unread", Boolean, nullable=False, default=False),
    Column("starred", Boolean, nullable=False, default=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("account_id", "remote_id"),
    Index("ix_messages_account_received", "account_id", "received_at"),
    Index("ix_messages_account_msgid", "account_id", "message_id_header"),
)

message_folders = Table(
    "message_folders",
    metadata,
    Column("message_id", BigId, ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True),
    Column("folder_id", BigId, ForeignKey("folders.id", ondelete="CASCADE"), primary_key=True),
    Index("ix_message_folders_folder", "folder_id", "message_id"),
)

bodies = Table(
    "bodies",
    metadata,
    Column("message_id", BigId, ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True),
    Column("html", Text, nullable=False, default=""),
    Column("text", Text, nullable=False, default=""),
    Column("fetched_at", UTCDateTime, nullable=False),
)

push_subscriptions = Table(
    "push_subscriptions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("account_id", BigId, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("provider", String(16), nullable=False),
    Column("resource", Text, nullable=False, default=""),
    Column("subscription_id", String(512), nullable=True),
    Column("expiration", UTCDateTime, nullable=True),
    Column("state", String(16), nullable=False, default="pending"),
    Column("last_error_kind", String(32), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("failure_count", Integer, nullable=False, default=0),
    Column("last_notification_at", UTCDateTime, nullable=True),
    Column("last_renewal_at", UTCDateTime, nullable=True),
    Column("client_state_enc", Text, nullable=True),
    Column("settings_json", Text, nullable=False, default="{}"),
    # Set while a Graph lifecycle action waits in settings_json (store.push.upsert keeps it).
    Column("lifecycle_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("account_id", "provider"),
    # One index per scheduler selection, so a tick grows with the due rows only.
    Index("ix_push_subscriptions_expiration", "state", "expiration"),
    Index("ix_push_subscriptions_silence", "state", "last_notification_at"),
    Index("ix_push_subscriptions_renewed", "state", "last_renewal_at"),
    Index("ix_push_subscriptions_lifecycle", "lifecycle_at"),
    Index("ix_push_subscriptions_subscription_id", "subscription_id"),
)

# Append-only: feeds the live bus and, later, a change feed for integrators.
changes = Table(
    "changes",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("account_id", BigId, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("message_id", BigId, nullable=True),
    Column("remote_id", String(512), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("folder_ids", Text, nullable=False, default=""),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_changes_account", "account_id", "id"),
)

# What the push pipeline observed, per mailbox: deliveries, verifications, rejections, syncs
# triggered. Feeds the realtime test timeline and explains stalls; pruned by the maintenance job.
push_events = Table(
    "push_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("account_id", BigId, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=True),
    Column("provider", String(16), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("detail", Text, nullable=False, default=""),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_push_events_account", "account_id", "id"),
)

job_runs = Table(
    "job_runs",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("job", String(64), nullable=False),
    Column("account_id", BigId, nullable=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("duration_ms", Integer, nullable=True),
    Column("status", String(16), nullable=False),
    Column("error", Text, nullable=True),
    Column("detail", Text, nullable=False, default=""),
    Index("ix_job_runs_job", "job", "id"),
)

# Messages being sent, sent and failed: the full RFC 5322 message (so "Try sending again" resends
# the same Message-ID), its state and error, and the local Sent/Draft entry standing for it
# until the provider's own copy replaces it. See send/ and docs/architecture.md "Sending".
outbox = Table(
    "outbox",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("account_id", BigId, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", BigId, ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
    Column("state", String(16), nullable=False),
    Column("mode", String(16), nullable=False, default="new"),
    Column("source_message_id", BigInteger, nullable=True),
    # Gmail threadId of a reply ("" otherwise).
    Column("thread_id", String(512), nullable=False, default=""),
    Column("message_id_header", String(998), nullable=False),
    Column("subject", Text, nullable=False, default=""),
    # {"to": [...], "cc": [...], "bcc": [...]}: the recipients as written (Bcc is in no header).
    Column("recipients_json", Text, nullable=False, default="{}"),
    Column("mime", LargeBinary, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=True),
    Column("error_kind", String(32), nullable=True),
    Column("error", Text, nullable=True),
    # The copy we APPEND to the IMAP Sent folder is still owed (servers that keep none).
    Column("copy_pending", Boolean, nullable=False, default=False),
    Column("local_message_id", BigId, ForeignKey("messages.id", ondelete="SET NULL"),
           nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime, nullable=True),
    Index("ix_outbox_account", "account_id", "id"),
    Index("ix_outbox_due", "state", "next_attempt_at"),
    Index("ix_outbox_local_message", "local_message_id"),
)
