"""The live bus: committed mail changes fan out to subscribers (websockets, the demo's arrival
log, the realtime test timeline).

Events are published only after the transaction that made them committed. A subscriber that
falls behind loses nothing silently: its queue is bounded, and on overflow it receives one
``overflowed`` marker so it can reload from the store (the store, not the bus, is the truth).

With several processes on one PostgreSQL database the bus carries a relay (``live/relay.py``):
``publish`` fans out locally and hands the events to the relay for the other processes;
what the relay receives from them comes back through ``deliver`` (local fan-out only, never
sent on) and ``reload`` (the overflow marker, when events may have been missed).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from maildesk.domain.events import MailEvent
from maildesk.live.relay import LocalRelay, Relay


@dataclass(slots=True, eq=False)
class Subscription:
    account_ids: frozenset[int] | None
    queue: asyncio.Queue[MailEvent | None]
    overflowed: bool = False

    async def get(self) -> MailEvent | None:
        """The next event, or None once after an overflow (reload from the store then)."""
        event = await self.queue.get()
        if event is None:
            self.overflowed = False
        return event


class LiveBus:
    def __init__(self, relay: Relay | None = None) -> None:
        self._subs: set[Subscription] = set()
        self.relay: Relay = relay or LocalRelay()

    def publish(self, events: Sequence[MailEvent]) -> None:
        """Committed events: to this process's subscribers and, through the relay, to the
        other processes'."""
        self.deliver(events)
        if events:
            self.relay.publish(events)

    def deliver(self, events: Sequence[MailEvent]) -> None:
        """Fan ``events`` out to this process's subscribers only (what the relay received)."""
        for sub in list(self._subs):
            for event in events:
                if sub.account_ids is not None and event.account_id not in sub.account_ids:
                    continue
                if sub.overflowed:
                    break
                try:
                    sub.queue.put_nowait(event)
                except asyncio.QueueFull:
                    _overflow(sub)

    def reload(self, account_ids: frozenset[int] | None = None) -> None:
        """Tell the subscribers of ``account_ids`` (None: every subscriber) to reload from the
        store: events for them may have been lost on the way."""
        for sub in list(self._subs):
            if (account_ids is None or sub.account_ids is None
                    or not sub.account_ids.isdisjoint(account_ids)):
                _overflow(sub)

    @contextlib.contextmanager
    def subscribe(
        self, account_ids: frozenset[int] | None = None, *, maxsize: int = 1000
    ) -> Iterator[Subscription]:
        sub = Subscription(account_ids, asyncio.Queue(maxsize=maxsize))
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)


def _overflow(sub: Subscription) -> None:
    """Replace whatever ``sub`` has queued with the one reload marker (once)."""
    if sub.overflowed:
        return
    sub.overflowed = True
    while not sub.queue.empty():
        sub.queue.get_nowait()
    sub.queue.put_nowait(None)
