"""Users of the web UI and the API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.errors import InputError, NotFound
from maildesk.store.tables import account_users, accounts, users


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


async def get(conn: AsyncConnection, user_id: int) -> UserRow | None:
    r = (await conn.execute(select(users).where(users.c.id == user_id))).first()
    return None if r is None else _row(r)


async def set_api_token_hash(conn: AsyncConnection, user_id: int, token_hash: str) -> None:
    """Store the hash of the user's API token (replacing any previous one)."""
    await conn.execute(update(users).where(users.c.id == user_id).values(
        api_token_hash=token_hash))


async def by_api_token_hash(conn: AsyncConnection, token_hash: str) -> UserRow | None:
    r = (await conn.execute(select(users).where(users.c.api_token_hash == token_hash))).first()
    return None if r is None else _row(r)


async def set_password(conn: AsyncConnection, user_id: int, password_hash: str) -> None:
    """A new password hash. Web sessions carry a fingerprint of the hash, so every session
    signed in with the old password stops working at once."""
    result = await conn.execute(
        update(users).where(users.c.id == user_id).values(password_hash=password_hash)
    )
    if result.rowcount == 0:
        raise NotFound(f"no user with id {user_id}")


async def shared_accounts(conn: AsyncConnection, user_id: int) -> frozenset[int]:
    """The mailboxes shared with the user (whatever the role)."""
    rows = await conn.execute(
        select(account_users.c.account_id).where(account_users.c.user_id == user_id)
    )
    return frozenset(int(a) for a in rows.scalars())


async def set_shared_accounts(
    conn: AsyncConnection, user_id: int, account_ids: frozenset[int]
) -> None:
    """Share exactly ``account_ids`` with the user (ids of mailboxes that no longer exist are
    ignored)."""
    existing = frozenset(int(a) for a in (await conn.execute(
        select(accounts.c.id).where(accounts.c.id.in_(sorted(account_ids)))
    )).scalars()) if account_ids else frozenset()
    current = await shared_accounts(conn, user_id)
    gone = current - existing
    if gone:
        await conn.execute(delete(account_users).where(
            account_users.c.user_id == user_id, account_users.c.account_id.in_(sorted(gone))
        ))
    for account_id in sorted(existing - current):
        await conn.execute(insert(account_users).values(account_id=account_id, user_id=user_id))


async def users_of_account(conn: AsyncConnection, account_id: int) -> list[UserRow]:
    """The non-administrators a mailbox is shared with (administrators see every mailbox)."""
    rows = await conn.execute(
        select(users).join(account_users, account_users.c.user_id == users.c.id)
        .where(account_users.c.account_id == account_id, users.c.is_admin.is_(False))
        .order_by(users.c.email)
    )
    return [_row(r) for r in rows]
