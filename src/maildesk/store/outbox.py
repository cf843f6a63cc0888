"""The outbox: messages being sent, sent and failed, and their local Sent/Draft entries.

An outbox row keeps the full RFC 5322 message, so a retry or "Try sending again" sends exactly
the same bytes (the same Message-ID). The *local entry* is an ordinary ``messages`` row with a
remote id in the local namespace (``local:outbox:<id>``) linked to the mailbox's Sent folder
(Drafts once the send failed); ``store.mail.apply_messages`` removes it when the provider's
own copy with the same Message-ID arrives. Claims are single conditional UPDATEs, so two
workers never send one row at the same time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.domain.compose import (
    OutboxState,
    is_local_folder,
    is_local_remote_id,
    local_folder_id,
    local_remote_id,
)
from maildesk.domain.events import MailEvent
from maildesk.domain.mail import FolderRole, RemoteMessage
from maildesk.errors import NotFound
from maildesk.store import mail as mail_store
from maildesk.store.tables import bodies, folders, messages, outbox

_FOLDER_NAMES = {FolderRole.SENT: "Sent", FolderRole.DRAFTS: "Drafts"}
# States whose message is not (known to be) sent: their local entry must exist.
UNSENT = (OutboxState.QUEUED, OutboxState.SENDING, OutboxState.RETRYING, OutboxState.FAILED)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    account_id: int
    user_id: int | None
    state: OutboxState
    mode: str
    source_message_id: int | None
    thread_id: str
    message_id_header: str
    subject: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    mime: bytes
    attempts: int
    next_attempt_at: datetime | None
    error_kind: str | None
    error: str | None
    copy_pending: bool
    local_message_id: int | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None


def _tuple(data: dict[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key) or []
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _row(r: Any) -> OutboxRow:
    recipients = json.loads(r.recipients_json or "{}")
    return OutboxRow(
        id=int(r.id), account_id=int(r.account_id),
        user_id=None if r.user_id is None else int(r.user_id), state=OutboxState(r.state),
        mode=r.mode, source_message_id=r.source_message_id, thread_id=r.thread_id,
        message_id_header=r.message_id_header, subject=r.subject,
        to=_tuple(recipients, "to"), cc=_tuple(recipients, "cc"), bcc=_tuple(recipients, "bcc"),
        mime=bytes(r.mime), attempts=int(r.attempts), next_attempt_at=r.next_attempt_at,
        error_kind=r.error_kind, error=r.error, copy_pending=bool(r.copy_pending),
        local_message_id=None if r.local_message_id is None else int(r.local_message_id),
        created_at=r.created_at, updated_at=r.updated_at, sent_at=r.sent_at,
    )


async def insert_row(
    conn: AsyncConnection,
    *,
    account_id: int,
    user_id: int | None,
    mode: str,
    source_message_id: int | None,
    thread_id: str,
    message_id_header: str,
    subject: str,
    to: Sequence[str],
    cc: Sequence[str],
    bcc: Sequence[str],
    mime: bytes,
    now: datetime,
) -> int:
    result = await conn.execute(insert(outbox).values(
        account_id=account_id, user_id=user_id, state=OutboxState.QUEUED.value, mode=mode,
        source_message_id=source_message_id, thread_id=thread_id,
        message_id_header=message_id_header, subject=subject,
        recipients_json=json.dumps({"to": list(to), "cc": list(cc), "bcc": list(bcc)}),
        mime=mime, attempts=0, next_attempt_at=None, error_kind=None, error=None,
        copy_pending=False, local_message_id=None, created_at=now, updated_at=now,
        sent_at=None,
    ).returning(outbox.c.id))
    return int(result.scalar_one())


async def get(conn: AsyncConnection, outbox_id: int) -> OutboxRow:
    r = (await conn.execute(select(outbox).where(outbox.c.id == outbox_id))).first()
    if r is None:
        raise NotFound(f"no outbox item with id {outbox_id}")
    return _row(r)


async def by_local_message(conn: AsyncConnection, message_id: int) -> OutboxRow | None:
    r = (await conn.execute(
        select(outbox).where(outbox.c.local_message_id == message_id)
        .order_by(outbox.c.id.desc()).limit(1)
    )).first()
    return None if r is None else _row(r)


async def by_message_id_header(
    conn: AsyncConnection, account_id: int, message_id_header: str
) -> OutboxRow | None:
    """The outbox row that sent ``message_id_header`` from this mailbox, if we sent it."""
    if not message_id_header:
        return None
    r = (await conn.execute(
        select(outbox).where(outbox.c.account_id == account_id,
                             outbox.c.message_id_header == message_id_header)
        .order_by(outbox.c.id.desc()).limit(1)
    )).first()
    return None if r is None else _row(r)


async def list_for_account(
    conn: AsyncConnection, account_id: int, limit: int = 200
) -> list[OutboxRow]:
    rows = await conn.execute(
        select(outbox).where(outbox.c.account_id == account_id)
        .order_by(outbox.c.id.desc()).limit(limit)
    )
    return [_row(r) for r in rows]


async def update_row(conn: AsyncConnection, outbox_id: int, now: datetime,
                     **values: Any) -> None:
    if "state" in values and isinstance(values["state"], OutboxState):
        values["state"] = values["state"].value
    await conn.execute(
        update(outbox).where(outbox.c.id == outbox_id).values(updated_at=now, **values)
    )


async def claim(
    conn: AsyncConnection,
    outbox_id: int,
    *,
    states: Sequence[OutboxState],
    now: datetime,
    until: datetime,
    due_only: bool,
) -> bool:
    """Take the row for one attempt: ``sending`` until ``until`` (after that a crashed
    attempt is tried again), attempts + 1. False when it is not in ``states`` (or, with
    ``due_only``, not due yet): someone else has it or it is done."""
    condition = [outbox.c.id == outbox_id, outbox.c.state.in_([s.value for s in states])]
    if due_only:
        condition.append(or_(outbox.c.next_attempt_at.is_(None),
                             outbox.c.next_attempt_at <= now))
    result = await conn.execute(update(outbox).where(*condition).values(
        state=OutboxState.SENDING.value, attempts=outbox.c.attempts + 1,
        next_attempt_at=until, updated_at=now,
    ))
    return bool(result.rowcount)


async def claim_copy(
    conn: AsyncConnection, outbox_id: int, *, now: datetime, until: datetime
) -> bool:
    """Take an owed Sent copy for one APPEND (due now); False if another worker has it."""
    result = await conn.execute(update(outbox).where(
        outbox.c.id == outbox_id, outbox.c.state == OutboxState.SENT.value,
        outbox.c.copy_pending.is_(True),
        or_(outbox.c.next_attempt_at.is_(None), outbox.c.next_attempt_at <= now),
    ).values(next_attempt_at=until, updated_at=now))
    return bool(result.rowcount)


async def due(conn: AsyncConnection, now: datetime, limit: int) -> list[int]:
    """Rows to attempt now: retries whose time has come, attempts that crashed (``sending``
    past their deadline) and owed Sent copies. Walks ``ix_outbox_due``."""
    rows = await conn.execute(
        select(outbox.c.id).where(or_(
            and_(outbox.c.state.in_([OutboxState.RETRYING.value, OutboxState.SENDING.value]),
                 outbox.c.next_attempt_at <= now),
            and_(outbox.c.state == OutboxState.SENT.value, outbox.c.copy_pending.is_(True),
                 outbox.c.next_attempt_at <= now),
        )).order_by(outbox.c.next_attempt_at).limit(limit)
    )
    return [int(r) for r in rows.scalars()]


async def detached(conn: AsyncConnection, limit: int) -> list[OutboxRow]:
    """Unsent rows whose local entry is gone (a provider sweep deleted it, or the provider's
    copy replaced it because the message did go out)."""
    rows = await conn.execute(
        select(outbox).where(outbox.c.state.in_([s.value for s in UNSENT]),
                             outbox.c.local_message_id.is_(None))
        .order_by(outbox.c.id).limit(limit)
    )
    return [_row(r) for r in rows]


async def prune_sent(conn: AsyncConnection, before: datetime) -> int:
    """Forget sent rows older than ``before`` whose local entry is gone (replaced)."""
    result = await conn.execute(delete(outbox).where(
        outbox.c.state == OutboxState.SENT.value, outbox.c.copy_pending.is_(False),
        outbox.c.local_message_id.is_(None), outbox.c.sent_at < before,
    ))
    return int(result.rowcount or 0)


# ---------------------------------------------------------------------------- local entries
async def provider_copy(conn: AsyncConnection, account_id: int,
                        message_id_header: str) -> int | None:
    """Id of a provider message (not a local entry) carrying ``message_id_header``."""
    if not message_id_header:
        return None
    rows = await conn.execute(select(messages.c.id, messages.c.remote_id).where(
        messages.c.account_id == account_id,
        messages.c.message_id_header == message_id_header,
    ))
    for r in rows:
        if not is_local_remote_id(r.remote_id):
            return int(r.id)
    return None


async def role_folder(conn: AsyncConnection, account_id: int, role: FolderRole) -> str:
    """Remote id of the mailbox's folder with ``role``. A mailbox whose folders are not
    listed yet gets a stand-in (``local:folder:<role>``), which the provider's own folder of
    that role replaces when the folders are listed (``store.mail.upsert_folders``)."""
    rows = (await conn.execute(
        select(folders.c.remote_id).where(folders.c.account_id == account_id,
                                          folders.c.role == role.value)
        .order_by(folders.c.id)
    )).scalars().all()
    real = [r for r in rows if not is_local_folder(r)]
    if real:
        return str(real[0])
    if rows:
        return str(rows[0])
    remote_id = local_folder_id(role)
    await conn.execute(insert(folders).values(
        account_id=account_id, remote_id=remote_id, name=_FOLDER_NAMES.get(role, role.value),
        role=role.value, is_system=True, selected=True, backfill_requested=False,
        backfill_done=True, backfill_fetched=0,
    ))
    return remote_id


@dataclass(frozen=True, slots=True)
class LocalEntry:
    """What the local entry shows (the message's headers as we sent them)."""

    subject: str
    sender: str
    recipients: str
    thread_id: str
    snippet: str
    size: int
    text: str


async def put_local_entry(
    conn: AsyncConnection,
    row: OutboxRow,
    entry: LocalEntry,
    role: FolderRole,
    now: datetime,
) -> list[MailEvent]:
    """Create (or move) the local entry of ``row`` into the folder with ``role``; logged,
    events returned for publishing after commit. Nothing is created when the provider's copy
    is already stored (a resend of a message that did go out): that copy is the entry."""
    events: list[MailEvent] = []
    if row.local_message_id is None and await provider_copy(
            conn, row.account_id, row.message_id_header) is not None:
        return events
    folder = await role_folder(conn, row.account_id, role)
    fmap = await mail_store.folder_map(conn, row.account_id)
    received = now
    if row.local_message_id is not None:
        current = (await conn.execute(select(messages.c.received_at).where(
            messages.c.id == row.local_message_id))).scalar_one_or_none()
        received = current if current is not None else now
    remote = RemoteMessage(
        remote_id=local_remote_id(row.id), thread_id=entry.thread_id,
        folder_ids=frozenset({folder}), received_at=received, subject=entry.subject,
        sender=entry.sender, recipients=entry.recipients,
        message_id_header=row.message_id_header, snippet=entry.snippet, size=entry.size,
        unread=False, starred=False,
    )
    events = await mail_store.apply_messages(conn, row.account_id, [remote], [], fmap, now)
    message_id = (await conn.execute(select(messages.c.id).where(
        messages.c.account_id == row.account_id,
        messages.c.remote_id == remote.remote_id))).scalar_one()
    if row.local_message_id != message_id:
        await conn.execute(update(outbox).where(outbox.c.id == row.id).values(
            local_message_id=message_id))
        cached = await conn.scalar(select(bodies.c.message_id).where(
            bodies.c.message_id == message_id))
        if cached is None:
            await conn.execute(insert(bodies).values(
                message_id=message_id, html="", text=entry.text, fetched_at=now))
    return events
