"""Named sync cursors (Gmail historyId, backfill page tokens, Graph deltaLinks, ...).

A cursor is written in the same transaction as the changes it stands for, never before, so a
crash at any point leaves a cursor from which replaying is harmless.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.store.tables import cursors


async def get(conn: AsyncConnection, account_id: int, name: str, scope: str = "") -> str | None:
    value = await conn.scalar(select(cursors.c.value).where(
        cursors.c.account_id == account_id, cursors.c.scope == scope, cursors.c.name == name
    ))
    return None if value is None else str(value)


async def get_named(
    conn: AsyncConnection, account_id: int, names: frozenset[str]
) -> dict[tuple[str, str], str]:
    """Every cursor of the account called one of ``names``, in one query: (scope, name) → value."""
    rows = await conn.execute(select(cursors.c.scope, cursors.c.name, cursors.c.value).where(
        cursors.c.account_id == account_id, cursors.c.name.in_(sorted(names))
    ))
    return {(r.scope, r.name): str(r.value) for r in rows}


async def put(
    conn: AsyncConnection, account_id: int, name: str, value: str, now: datetime, scope: str = ""
) -> None:
    result = await conn.execute(update(cursors).where(
        cursors.c.account_id == account_id, cursors.c.scope == scope, cursors.c.name == name
    ).values(value=value, updated_at=now).returning(cursors.c.name))
    if result.first() is None:
        await conn.execute(insert(cursors).values(
            account_id=account_id, scope=scope, name=name, value=value, updated_at=now
        ))


async def drop(conn: AsyncConnection, account_id: int, name: str, scope: str = "") -> None:
    await conn.execute(delete(cursors).where(
        cursors.c.account_id == account_id, cursors.c.scope == scope, cursors.c.name == name
    ))
