"""API tokens: random, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.store import users as user_store
from maildesk.store.users import UserRow

PREFIX = "mdk_"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def issue(conn: AsyncConnection, email: str) -> str:
    """A new token for the user (replacing any previous one); the only time it is visible."""
    user = await user_store.by_email(conn, email)
    token = PREFIX + secrets.token_urlsafe(32)
    await user_store.set_api_token_hash(conn, user.id, _hash(token))
    return token


async def authenticate(conn: AsyncConnection, token: str) -> UserRow | None:
    if not token.startswith(PREFIX):
        return None
    return await user_store.by_api_token_hash(conn, _hash(token))
