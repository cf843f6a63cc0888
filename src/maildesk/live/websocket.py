"""The mailbox websocket: ``/ws/mailboxes/{account_id}`` pushes committed changes to open inboxes.

Bus events carry no mail content, so for every ``added``/``updated`` event the row is read from
the store after the event (the store is the truth; if the message is already gone again, the
event is dropped and the ``removed`` that follows says so). Messages sent (JSON text frames)::

    {"kind": "hello", "change_id": N}                      once, after the replay check
    {"kind": "added" | "updated", "message_id", "change_id", "folder_ids",
     "sender", "sender_name", "subject", "snippet", "received_at" (ISO 8601), "unread",
     "starred"}
    {"kind": "removed", "message_id", "change_id", "folder_ids"}   folders it was in
    {"kind": "counts", "folders": {"<folder id>": {"total": n, "unread": n}, ...}}
    {"kind": "reload"}                                     the client's view is stale: reload it

``?since=<change id>`` (the page renders the account's latest change id) closes the gap between
rendering the page and subscribing: the changes logged after it are replayed from the change log,
or, when there are too many or the id is unknown, the client is told to reload. A reconnecting
client passes the last change id it saw and so misses nothing either.

Lifecycle: the bus subscription is taken before the handshake completes (a client that sees the
socket open is already subscribed) and released when the handler returns. The handler runs two
tasks, one reading from the client (only to notice the disconnect) and one sending; whichever
ends first cancels the other, and both are awaited, so nothing outlives the connection.

Who may connect is decided by an injected ``visible_accounts`` callable (the web layer's session
policy: nobody signed in sees nothing); an account outside the visible set is answered 404, like
one that does not exist. ``check_origin`` (the web layer's same-origin test) refuses a handshake
from another site's page with 403 before anything else: browsers send the session cookie with a
cross-site websocket handshake, so the ``Origin`` header is what stops cross-site hijacking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from maildesk.domain.events import ChangeKind, MailEvent
from maildesk.live.bus import LiveBus, Subscription
from maildesk.store import views
from maildesk.store.database import Database

log = logging.getLogger(__name__)

VisibleAccounts = Callable[[HTTPConnection], Awaitable[frozenset[int] | None]]
OriginCheck = Callable[[HTTPConnection], bool]


class MailboxSocket:
    """The endpoint; mount ``MailboxSocket(...).handle`` as a Starlette ``WebSocketRoute``."""

    def __init__(
        self,
        *,
        bus: LiveBus,
        db: Database,
        visible_accounts: VisibleAccounts,
        check_origin: OriginCheck | None = None,
        queue_size: int = 1000,
        batch_size: int = 200,
        replay_limit: int = 500,
    ) -> None:
        self.bus = bus
        self.db = db
        self.visible_accounts = visible_accounts
        self.check_origin = check_origin
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.replay_limit = replay_limit

    async def handle(self, websocket: WebSocket) -> None:
        account_id = int(websocket.path_params["account_id"])
        if self.check_origin is not None and not self.check_origin(websocket):
            await _deny(websocket, 403, "Forbidden")
            return
        visible = await self.visible_accounts(websocket)
        allowed = visible is None or account_id in visible
        if allowed:
            async with self.db.read() as conn:
                allowed = await views.account_exists(conn, account_id)
        if not allowed:
            await _deny(websocket)
            return
        since = _since(websocket.query_params.get("since"))
        with self.bus.subscribe(frozenset({account_id}), maxsize=self.queue_size) as sub:
            await websocket.accept()
            sender = asyncio.create_task(self._send_loop(websocket, sub, account_id, since))
            receiver = asyncio.create_task(_until_disconnect(websocket))
            try:
                await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sender.cancel()
                receiver.cancel()
                outcomes = await asyncio.gather(sender, receiver, return_exceptions=True)
        failure = outcomes[0]
        if isinstance(failure, Exception) and not isinstance(failure, WebSocketDisconnect):
            log.error("websocket of account %s failed", account_id, exc_info=failure)
            await _close(websocket, 1011)
        else:
            await _close(websocket, 1000)

    # ----------------------------------------------------------------------------- sending
    async def _send_loop(
        self, websocket: WebSocket, sub: Subscription, account_id: int, since: int | None
    ) -> None:
        async with self.db.read() as conn:
            latest = await views.latest_change_id(conn, account_id)
            replay: list[MailEvent] | None = []
            if since is not None and since < latest:
                replay = await views.changes_since(conn, account_id, since, self.replay_limit)
        await websocket.send_json({"kind": "hello", "change_id": latest})
        if since is not None and (since > latest or replay is None):
            await websocket.send_json({"kind": "reload"})
            await self._send_counts(websocket, account_id)
        elif replay:
            await self._send_events(websocket, account_id, replay)
        # Events the client already has (rendered into its page, or just replayed) are skipped.
        # Without ``since`` we do not know what it has, so nothing is skipped.
        floor = latest if since is not None else 0
        while True:
            batch: list[MailEvent | None] = [await sub.get()]
            while len(batch) < self.batch_size and not sub.queue.empty():
                batch.append(await sub.get())
            if None in batch:
                # Overflow: events were dropped; the store has everything, so reload from it.
                await websocket.send_json({"kind": "reload"})
                await self._send_counts(websocket, account_id)
                continue
            fresh = [e for e in batch if e is not None and (e.change_id == 0
                                                             or e.change_id > floor)]
            if fresh:
                await self._send_events(websocket, account_id, fresh)

    async def _send_events(
        self, websocket: WebSocket, account_id: int, events: Sequence[MailEvent]
    ) -> None:
        wanted = [e.message_id for e in events if e.kind is not ChangeKind.REMOVED]
        async with self.db.read() as conn:
            rows = await views.message_rows(conn, account_id, wanted) if wanted else {}
        for event in events:
            payload = _payload(event, rows.get(event.message_id))
            if payload is not None:
                await websocket.send_json(payload)
        await self._send_counts(websocket, account_id)

    async def _send_counts(self, websocket: WebSocket, account_id: int) -> None:
        async with self.db.read() as conn:
            found = await views.list_folders(conn, account_id)
        await websocket.send_json({
            "kind": "counts",
            "folders": {str(f.id): {"total": f.total, "unread": f.unread} for f in found},
        })


def _payload(event: MailEvent, row: views.MessageView | None) -> dict[str, Any] | None:
    base: dict[str, Any] = {"kind": event.kind.value, "message_id": event.message_id,
                            "change_id": event.change_id}
    if event.kind is ChangeKind.REMOVED:
        return {**base, "folder_ids": list(event.folder_ids)}
    if row is None:
        return None  # deleted since; its own "removed" event follows
    return {
        **base,
        # The folders it is in now (the store's word, which may be newer than the event's).
        "folder_ids": list(row.folder_ids),
        "sender": row.sender,
        "sender_name": row.sender_name,
        "subject": row.subject,
        "snippet": row.snippet,
        "received_at": row.received_at.isoformat(),
        "unread": row.unread,
        "starred": row.starred,
    }


async def _until_disconnect(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends until it goes away."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


async def _deny(websocket: WebSocket, status: int = 404, text: str = "Not Found") -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(PlainTextResponse(text, status_code=status))
    else:
        await websocket.close(code=1008)


async def _close(websocket: WebSocket, code: int) -> None:
    if (websocket.client_state is WebSocketState.CONNECTED
            and websocket.application_state is WebSocketState.CONNECTED):
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await websocket.close(code=code)


def _since(value: str | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    return int(value)
