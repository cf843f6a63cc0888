"""The queries of the realtime test timeline (``push/timeline.py`` holds what they mean).

A test is recorded as ``push_events`` rows beside the pipeline's own events; its checkpoints
are read from those events, the ``changes`` log and the body cache. Rows are found by id after
the test's start event, never by time (see ``push/timeline.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.store.push import PushEvent
from maildesk.store.tables import bodies, changes, push_events


@dataclass(frozen=True, slots=True)
class ChangedMessage:
    """A ``changes`` row that names a message."""

    message_id: int
    at: datetime


def _event(r: Any) -> PushEvent:
    return PushEvent(int(r.id), r.account_id, str(r.provider), str(r.kind), str(r.detail), r.at)


async def add_event(conn: AsyncConnection, *, account_id: int, provider: str, kind: str,
                    detail: str, at: datetime) -> None:
    await conn.execute(insert(push_events).values(
        account_id=account_id, provider=provider, kind=kind, detail=detail, at=at))


async def latest_event(conn: AsyncConnection, account_id: int, kind: str) -> PushEvent | None:
    """The mailbox's newest push event of ``kind``."""
    r = (await conn.execute(
        select(push_events).where(push_events.c.account_id == account_id,
                                  push_events.c.kind == kind)
        .order_by(push_events.c.id.desc()).limit(1))).first()
    return None if r is None else _event(r)


async def first_event_at(conn: AsyncConnection, account_id: int, kind: str, *, after_id: int
                         ) -> datetime | None:
    """When the mailbox's first push event of ``kind`` after event ``after_id`` happened."""
    found: datetime | None = await conn.scalar(select(func.min(push_events.c.at)).where(
        push_events.c.account_id == account_id, push_events.c.kind == kind,
        push_events.c.id > after_id))
    return found


async def has_event_after(conn: AsyncConnection, account_id: int, kind: str, *, after_id: int
                          ) -> bool:
    count = await conn.scalar(select(func.count()).select_from(push_events).where(
        push_events.c.account_id == account_id, push_events.c.id > after_id,
        push_events.c.kind == kind))
    return bool(count)


async def events_after(conn: AsyncConnection, account_id: int, provider: str,
                       kinds: Sequence[str], *, after_id: int) -> list[PushEvent]:
    """The mailbox's push events of ``provider`` and ``kinds`` after event ``after_id``,
    oldest first."""
    rows = await conn.execute(
        select(push_events)
        .where(push_events.c.account_id == account_id, push_events.c.id > after_id,
               push_events.c.provider == provider, push_events.c.kind.in_(list(kinds)))
        .order_by(push_events.c.id))
    return [_event(r) for r in rows]


async def changes_after(conn: AsyncConnection, account_id: int, *, after_id: int, limit: int,
                        kinds: Sequence[str] | None = None) -> list[ChangedMessage]:
    """The mailbox's logged message changes (of ``kinds``, or any) after change ``after_id``,
    oldest first, at most ``limit``."""
    query = select(changes.c.message_id, changes.c.at).where(
        changes.c.account_id == account_id, changes.c.id > after_id,
        changes.c.message_id.is_not(None))
    if kinds is not None:
        query = query.where(changes.c.kind.in_(list(kinds)))
    rows = await conn.execute(query.order_by(changes.c.id).limit(limit))
    return [ChangedMessage(int(m), at) for m, at in rows]


async def first_body_fetched_at(conn: AsyncConnection, message_ids: Sequence[int]
                                ) -> datetime | None:
    """When the first of these messages' bodies was cached (None: none is)."""
    found: datetime | None = await conn.scalar(select(func.min(bodies.c.fetched_at)).where(
        bodies.c.message_id.in_(list(message_ids))))
    return found
