"""The body cache: sanitized HTML and text of messages, warmed in the background."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.store.tables import bodies, messages


@dataclass(frozen=True, slots=True)
class CachedBody:
    message_id: int
    html: str
    text: str
    fetched_at: datetime


async def get(conn: AsyncConnection, message_id: int) -> CachedBody | None:
    r = (await conn.execute(select(bodies).where(bodies.c.message_id == message_id))).first()
    return None if r is None else CachedBody(int(r.message_id), r.html, r.text, r.fetched_at)


async def put(
    conn: AsyncConnection, message_id: int, *, html: str, text: str, now: datetime
) -> bool:
    """Store a body unless the message is gone or already cached; True if stored."""
    exists = await conn.scalar(select(messages.c.id).where(messages.c.id == message_id))
    cached = await conn.scalar(select(bodies.c.message_id).where(bodies.c.message_id == message_id))
    if exists is None or cached is not None:
        return False
    await conn.execute(insert(bodies).values(
        message_id=message_id, html=html, text=text, fetched_at=now
    ))
    return True


async def missing(
    conn: AsyncConnection, account_id: int, message_ids: list[int], limit: int
) -> list[tuple[int, str]]:
    """(message id, remote id) of the given messages that have no cached body, newest first."""
    if not message_ids:
        return []
    rows = await conn.execute(
        select(messages.c.id, messages.c.remote_id)
        .outerjoin(bodies, bodies.c.message_id == messages.c.id)
        .where(messages.c.account_id == account_id, messages.c.id.in_(message_ids[:2000]),
               bodies.c.message_id.is_(None))
        .order_by(messages.c.received_at.desc())
        .limit(limit)
    )
    return [(int(r.id), r.remote_id) for r in rows]
