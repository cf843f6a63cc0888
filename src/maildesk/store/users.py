"""Users of the web UI and the API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.errors import InputError, NotFound
from maildesk.store.tables import account_users, users


@dataclass(frozen=True, slots=True)
class UserRow:
    id: int
    email: str
    password_hash: str
    is_admin: bool
    created_at: datetime


def _row(r: Any) -> UserRow:
    return UserRow(int(r.id), r.email, r.password_hash, bool(r.is_admin), r.created_at)


async def create(
    conn: AsyncConnection, *, email: str, password_hash: str, is_admin: bool, now: datetime
) -> int:
    if await conn.scalar(select(users.c.id).where(users.c.email == email)) is not None:
        raise InputError(f"a user {email} already exists")
    result = await conn.execute(insert(users).values(
        email=email, password_hash=password_hash, is_admin=is_admin, created_at=now
    ).returning(users.c.id))
    return int(result.scalar_one())


async def by_email(conn: AsyncConnection, email: str) -> UserRow:
    r = (await conn.execute(select(users).where(users.c.email == email))).first()
    if r is None:
        raise NotFound(f"no user {email}")
    return _row(r)


async def list_all(conn: AsyncConnection) -> list[UserRow]:
    return [_row(r) for r in await conn.execute(select(users).order_by(users.c.id))]


async def visible_accounts(conn: AsyncConnection, user: UserRow) -> frozenset[int] | None:
    """The mailboxes a user may see: all for an administrator (None), else those shared."""
    if user.is_admin:
        return None
    rows = await conn.execute(
        select(account_users.c.account_id).where(account_users.c.user_id == user.id)
    )
    return frozenset(int(a) for a in rows.scalars())
