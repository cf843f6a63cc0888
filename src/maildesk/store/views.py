"""Read models for the UI and the live websocket: mailbox, folder and message listings.

Everything here is read-only. Message lists use keyset pagination on ``(received_at, id)``
(newest first), so a page costs the same however deep the reader has scrolled and rows that
arrive meanwhile never shift a page. ``account_ids=None`` means "every account"; callers pass
the set their access policy allows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.domain.events import ChangeKind, MailEvent
from maildesk.domain.mail import FolderRole
from maildesk.store.tables import accounts, changes, folders, message_folders, messages

_CHUNK = 500


@dataclass(frozen=True, slots=True)
class MailboxView:
    id: int
    provider: str
    email: str
    display_name: str
    state: str
    last_error: str | None
    last_sync_at: datetime | None
    messages: int


@dataclass(frozen=True, slots=True)
class FolderView:
    id: int
    remote_id: str
    name: str
    role: FolderRole
    is_system: bool
    total: int
    unread: int


@dataclass(frozen=True, slots=True)
class MessageView:
    """One row of a message list (and of a live event)."""

    id: int
    account_id: int
    sender: str
    subject: str
    snippet: str
    received_at: datetime
    unread: bool
    starred: bool
    folder_ids: tuple[int, ...]

    @property
    def sender_name(self) -> str:
        return display_name(self.sender)


@dataclass(frozen=True, slots=True)
class MessagePage:
    rows: list[MessageView]
    # Key of the last row when older rows exist (the "older" link), else None.
    older: tuple[datetime, int] | None


@dataclass(frozen=True, slots=True)
class MessageDetail:
    id: int
    account_id: int
    remote_id: str
    thread_id: str
    message_id_header: str
    sender: str
    recipients: str
    subject: str
    snippet: str
    size: int
    received_at: datetime
    unread: bool
    starred: bool
    folder_ids: tuple[int, ...]


def display_name(address: str) -> str:
    """``"Ada Lovelace <ada@example.org>"`` -> ``"Ada Lovelace"``; the bare address if no name."""
    name, email = parseaddr(address)
    return name.strip() or email.strip() or address.strip()


# --------------------------------------------------------------------------------- mailboxes
def _mailbox_query() -> Any:
    count = (
        select(messages.c.account_id, func.count().label("n"))
        .group_by(messages.c.account_id)
        .subquery()
    )
    return (
        select(accounts.c.id, accounts.c.provider, accounts.c.email, accounts.c.display_name,
               accounts.c.state, accounts.c.last_error_kind, accounts.c.last_error,
               accounts.c.last_sync_at, func.coalesce(count.c.n, 0).label("n"))
        .select_from(accounts)
        .outerjoin(count, count.c.account_id == accounts.c.id)
        .order_by(accounts.c.email, accounts.c.id)
    )


def _mailbox(r: Any) -> MailboxView:
    error = f"{r.last_error_kind}: {r.last_error}" if r.last_error else None
    return MailboxView(int(r.id), r.provider, r.email, r.display_name, r.state, error,
                       r.last_sync_at, int(r.n))


async def list_mailboxes(
    conn: AsyncConnection, account_ids: frozenset[int] | None
) -> list[MailboxView]:
    query = _mailbox_query()
    if account_ids is not None:
        if not account_ids:
            return []
        query = query.where(accounts.c.id.in_(sorted(account_ids)))
    return [_mailbox(r) for r in await conn.execute(query)]


async def account_exists(conn: AsyncConnection, account_id: int) -> bool:
    found = await conn.scalar(select(accounts.c.id).where(accounts.c.id == account_id))
    return found is not None


async def get_mailbox(conn: AsyncConnection, account_id: int) -> MailboxView | None:
    r = (await conn.execute(_mailbox_query().where(accounts.c.id == account_id))).first()
    return None if r is None else _mailbox(r)


# ----------------------------------------------------------------------------------- folders
async def folder_counts(conn: AsyncConnection, account_id: int) -> dict[int, tuple[int, int]]:
    """folder id -> (messages, unread messages), for the folders that hold any."""
    rows = await conn.execute(
        select(message_folders.c.folder_id, func.count(),
               func.sum(case((messages.c.unread, 1), else_=0)))
        .select_from(message_folders)
        .join(messages, messages.c.id == message_folders.c.message_id)
        .where(messages.c.account_id == account_id)
        .group_by(message_folders.c.folder_id)
    )
    return {int(f): (int(n), int(u or 0)) for f, n, u in rows}


async def list_folders(conn: AsyncConnection, account_id: int) -> list[FolderView]:
    """Every folder of the account with its counts, in the store's order (callers sort)."""
    counts = await folder_counts(conn, account_id)
    rows = await conn.execute(
        select(folders.c.id, folders.c.remote_id, folders.c.name, folders.c.role,
               folders.c.is_system)
        .where(folders.c.account_id == account_id)
        .order_by(folders.c.id)
    )
    views = []
    for r in rows:
        total, unread = counts.get(int(r.id), (0, 0))
        views.append(FolderView(int(r.id), r.remote_id, r.name, FolderRole(r.role),
                                bool(r.is_system), total, unread))
    return views


# ---------------------------------------------------------------------------------- messages
_ROW_COLUMNS = (
    messages.c.id, messages.c.account_id, messages.c.sender, messages.c.subject,
    messages.c.snippet, messages.c.received_at, messages.c.unread, messages.c.starred,
)


async def _links(conn: AsyncConnection, ids: Sequence[int]) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {i: [] for i in ids}
    for start in range(0, len(ids), _CHUNK):
        rows = await conn.execute(
            select(message_folders.c.message_id, message_folders.c.folder_id)
            .where(message_folders.c.message_id.in_(ids[start : start + _CHUNK]))
        )
        for mid, fid in rows:
            found[int(mid)].append(int(fid))
    return found


def _row(r: Any, links: dict[int, list[int]]) -> MessageView:
    return MessageView(
        id=int(r.id), account_id=int(r.account_id), sender=r.sender, subject=r.subject,
        snippet=r.snippet, received_at=r.received_at, unread=bool(r.unread),
        starred=bool(r.starred), folder_ids=tuple(sorted(links.get(int(r.id), ()))),
    )


async def folder_messages(
    conn: AsyncConnection,
    account_id: int,
    folder_id: int,
    *,
    before: tuple[datetime, int] | None = None,
    limit: int = 50,
) -> MessagePage:
    """One page of a folder, newest first, strictly older than ``before`` if given."""
    in_folder = select(message_folders.c.message_id).where(
        message_folders.c.folder_id == folder_id,
        message_folders.c.message_id == messages.c.id,
    ).exists()
    query = select(*_ROW_COLUMNS).where(messages.c.account_id == account_id, in_folder)
    if before is not None:
        at, mid = before
        query = query.where(or_(
            messages.c.received_at < at,
            and_(messages.c.received_at == at, messages.c.id < mid),
        ))
    query = query.order_by(messages.c.received_at.desc(), messages.c.id.desc()).limit(limit + 1)
    found = (await conn.execute(query)).all()
    page = found[:limit]
    links = await _links(conn, [int(r.id) for r in page])
    rows = [_row(r, links) for r in page]
    older = (rows[-1].received_at, rows[-1].id) if len(found) > limit and rows else None
    return MessagePage(rows, older)


async def message_rows(
    conn: AsyncConnection, account_id: int, message_ids: Sequence[int]
) -> dict[int, MessageView]:
    """The current rows of the given messages (those that still exist) with their folders."""
    ids = sorted(set(message_ids))
    result: dict[int, MessageView] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        found = (await conn.execute(select(*_ROW_COLUMNS).where(
            messages.c.account_id == account_id, messages.c.id.in_(chunk)
        ))).all()
        links = await _links(conn, [int(r.id) for r in found])
        result.update({int(r.id): _row(r, links) for r in found})
    return result


async def message_detail(
    conn: AsyncConnection, account_id: int, message_id: int
) -> MessageDetail | None:
    r = (await conn.execute(select(messages).where(
        messages.c.account_id == account_id, messages.c.id == message_id
    ))).first()
    if r is None:
        return None
    links = await _links(conn, [int(r.id)])
    return MessageDetail(
        id=int(r.id), account_id=int(r.account_id), remote_id=r.remote_id,
        thread_id=r.thread_id, message_id_header=r.message_id_header, sender=r.sender,
        recipients=r.recipients, subject=r.subject, snippet=r.snippet, size=int(r.size),
        received_at=r.received_at, unread=bool(r.unread), starred=bool(r.starred),
        folder_ids=tuple(sorted(links[int(r.id)])),
    )


# ----------------------------------------------------------------------------- change feed
async def latest_change_id(conn: AsyncConnection, account_id: int) -> int:
    found = await conn.scalar(
        select(func.max(changes.c.id)).where(changes.c.account_id == account_id)
    )
    return int(found or 0)


async def changes_since(
    conn: AsyncConnection, account_id: int, since: int, limit: int
) -> list[MailEvent] | None:
    """The logged changes after ``since``, oldest first; None if there are more than ``limit``
    (the reader is too far behind: reload from the store instead of replaying)."""
    rows = (await conn.execute(
        select(changes).where(changes.c.account_id == account_id, changes.c.id > since)
        .order_by(changes.c.id).limit(limit + 1)
    )).all()
    if len(rows) > limit:
        return None
    return [
        MailEvent(
            account_id=int(r.account_id), kind=ChangeKind(r.kind),
            message_id=int(r.message_id or 0), remote_id=r.remote_id,
            folder_ids=tuple(int(f) for f in r.folder_ids.split(",") if f),
            change_id=int(r.id),
        )
        for r in rows
    ]
