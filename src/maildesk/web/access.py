"""Who may see which mailboxes: one pluggable policy asked by every page and the websocket.

The sign-in issue brings a session-backed policy (administrators see every account, other users
the accounts linked to them in ``account_users``). Until then only the demo mounts the UI, with
``AllowAllInDemo``; a production ``maildesk serve`` mounts no mail pages at all.
"""

from __future__ import annotations

from typing import Protocol

from starlette.requests import HTTPConnection


class AccessPolicy(Protocol):
    async def visible_accounts(self, request: HTTPConnection) -> frozenset[int] | None:
        """The account ids the caller may see; None means every account.

        Called for every page and websocket connection. An account outside the set is answered
        like one that does not exist (404), so ids of other people's mailboxes leak nothing.
        """
        ...


class AllowAllInDemo:
    """Everyone sees everything: only for ``maildesk demo`` on loopback with simulated mail."""

    async def visible_accounts(self, request: HTTPConnection) -> frozenset[int] | None:
        return None


def may_see(visible: frozenset[int] | None, account_id: int) -> bool:
    return visible is None or account_id in visible
