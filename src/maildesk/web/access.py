"""Who may see which mailboxes: one policy asked by every page and the websocket.

``SessionAccess`` is the policy of ``maildesk serve`` and ``maildesk demo``: administrators see
every account, other users the accounts linked to them in ``account_users``, and a request that
is not signed in sees nothing.
"""

from __future__ import annotations

from typing import Protocol

from starlette.requests import HTTPConnection, Request

from maildesk.errors import NotFound
from maildesk.store import accounts as account_store
from maildesk.store import users as user_store
from maildesk.store import views as view_store
from maildesk.store.accounts import AccountRow
from maildesk.store.database import Database
from maildesk.store.views import MailboxView
from maildesk.web.auth import Sessions


class AccessPolicy(Protocol):
    async def visible_accounts(self, request: HTTPConnection) -> frozenset[int] | None:
        """The account ids the caller may see; None means every account.

        Called for every page and websocket connection. An account outside the set is answered
        like one that does not exist (404), so ids of other people's mailboxes leak nothing.
        """
        ...


class SessionAccess:
    """The signed-in user's mailboxes (none when nobody is signed in)."""

    def __init__(self, sessions: Sessions, db: Database) -> None:
        self.sessions = sessions
        self.db = db

    async def visible_accounts(self, request: HTTPConnection) -> frozenset[int] | None:
        user = await self.sessions.user(request)
        if user is None:
            return frozenset()
        async with self.db.read() as conn:
            return await user_store.visible_accounts(conn, user)


def may_see(visible: frozenset[int] | None, account_id: int) -> bool:
    return visible is None or account_id in visible


async def visible_account(
    access: AccessPolicy, db: Database, request: Request
) -> AccountRow | None:
    """The account named by the ``account_id`` path parameter, or None when there is no such
    account or the caller may not see it (both are answered alike)."""
    account_id = int(request.path_params["account_id"])
    if not may_see(await access.visible_accounts(request), account_id):
        return None
    try:
        async with db.read() as conn:
            return await account_store.get(conn, account_id)
    except NotFound:
        return None


async def visible_mailbox(
    access: AccessPolicy, db: Database, request: Request
) -> MailboxView | None:
    """The mailbox view named by the ``account_id`` path parameter, or None when there is no
    such mailbox or the caller may not see it (both are answered alike)."""
    account_id = int(request.path_params["account_id"])
    if not may_see(await access.visible_accounts(request), account_id):
        return None
    async with db.read() as conn:
        return await view_store.get_mailbox(conn, account_id)
