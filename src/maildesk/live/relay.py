"""The relay port: how the live bus and worker wake-ups reach other MailDesk processes.

Several ``maildesk web`` and ``maildesk worker`` processes can share one PostgreSQL database.
Mail committed by a worker process must reach the websockets a web process holds, and a sync
request a web process stamped (a webhook) should wake the worker processes at once rather than
at their next tick. A ``Relay`` carries both; ``PgRelay`` (``live/pg_relay.py``) does it over
LISTEN/NOTIFY. Implementations here:

- ``LocalRelay``: nothing to relay. A SQLite store belongs to one process, which delivers
  everything locally.
- ``MemoryHub`` / ``MemoryRelay``: links the relays of several buses in one process, through
  the same wire format as PostgreSQL (payload limits included); for fast tests.

What a relay receives goes to an ``Inbox``: events to the local bus subscribers only (never
sent on again), reload signals to the same subscribers as the overflow marker, wake-ups to
the local worker.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from maildesk.domain.events import MailEvent
from maildesk.live.relay_wire import (
    MAX_PAYLOAD,
    decode_live,
    decode_wake,
    encode_events,
    encode_wake,
)

# Wake-up topics: a mailbox was stamped for a sync; a push subscription needs the lifecycle
# job (a Graph lifecycle event was noted).
WAKE_SYNC = "sync"
WAKE_PUSH = "push"


@dataclass(frozen=True, slots=True)
class Inbox:
    """Where a relay hands over what other processes sent. Each callable is quick and
    synchronous (it only queues or sets an event)."""

    events: Callable[[Sequence[MailEvent]], None]
    # Subscribers of these accounts (None: all) must reload from the store.
    reload: Callable[[frozenset[int] | None], None]
    wake: Callable[[frozenset[str]], None]


class Relay(Protocol):
    """Sends to the other processes on the same database; ``running`` receives from them."""

    def publish(self, events: Sequence[MailEvent]) -> None:
        """Send committed events to the other processes. Never blocks and never raises:
        called from sync code right after a commit."""
        ...

    def wake(self, topic: str = WAKE_SYNC) -> None:
        """Wake the other processes' workers (``topic``: why). Never blocks; wake-ups
        coalesce."""
        ...

    def running(self, inbox: Inbox) -> contextlib.AbstractAsyncContextManager[None]:
        """The relay's lifecycle: every task it needs lives inside this block."""
        ...


def new_origin() -> str:
    return secrets.token_hex(8)


class LocalRelay:
    """One process, nothing to relay (SQLite)."""

    def publish(self, events: Sequence[MailEvent]) -> None:
        pass

    def wake(self, topic: str = WAKE_SYNC) -> None:
        pass

    @contextlib.asynccontextmanager
    async def running(self, inbox: Inbox) -> AsyncIterator[None]:
        yield


class MemoryHub:
    """Links several ``MemoryRelay``s as PostgreSQL links ``PgRelay``s on one database.
    Delivery is synchronous; payloads go through the wire format and its size limit."""

    def __init__(self, *, limit: int = MAX_PAYLOAD) -> None:
        self.limit = limit
        self._inboxes: dict[str, Inbox] = {}
        self.payloads: list[str] = []  # everything sent, for tests to look at

    def relay(self) -> MemoryRelay:
        return MemoryRelay(self)

    def _send_live(self, payloads: Iterable[str]) -> None:
        for payload in payloads:
            self.payloads.append(payload)
            received = decode_live(payload)
            for other, inbox in list(self._inboxes.items()):
                if other == received.origin:
                    continue
                if received.reload is not None:
                    inbox.reload(received.reload.account_ids)
                elif received.events:
                    inbox.events(received.events)

    def _send_wake(self, payload: str) -> None:
        self.payloads.append(payload)
        origin, topics = decode_wake(payload)
        for other, inbox in list(self._inboxes.items()):
            if other != origin:
                inbox.wake(topics)


class MemoryRelay:
    def __init__(self, hub: MemoryHub) -> None:
        self._hub = hub
        self.origin = new_origin()

    def publish(self, events: Sequence[MailEvent]) -> None:
        packets = encode_events(self.origin, events, limit=self._hub.limit)
        self._hub._send_live(p.payload for p in packets)

    def wake(self, topic: str = WAKE_SYNC) -> None:
        self._hub._send_wake(encode_wake(self.origin, [topic]))

    @contextlib.asynccontextmanager
    async def running(self, inbox: Inbox) -> AsyncIterator[None]:
        self._hub._inboxes[self.origin] = inbox
        try:
            yield
        finally:
            del self._hub._inboxes[self.origin]
