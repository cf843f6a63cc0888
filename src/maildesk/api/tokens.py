"""API tokens: random, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.store import users as user_store
from maildesk.store.tables import users
from maildesk.store.users import UserRow

PREFIX = "mdk_"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def issue(conn: AsyncConnection, email: str) -> str:
    """A new token for the user (replacing any previous one); the only time it is visible."""
    user = await user_store.by_email(conn, email)
    token = PREFIX + secrets.token_urlsafe(32)
    await conn.execute(update(users).where(users.c.id == user.id).values(
        api_token_hash=_hash(token)))
    return token


async def authenticate(conn: AsyncConnection, token: str) -> UserRow | None:
    if not token.startswith(PREFIX):
        return None
    r = (await conn.execute(select(users).where(users.c.api_token_hash == _hash(token)))).first()
    return None if r is None else user_store.UserRow(
        int(r.id), r.email, r.password_hash, bool(r.is_admin), r.created_at)
