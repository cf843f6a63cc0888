"""The in-process live bus: committed mail changes fan out to subscribers (websockets, the
demo's arrival log, the realtime test timeline).

Events are published only after the transaction that made them committed. A subscriber that
falls behind loses nothing silently: its queue is bounded, and on overflow it receives one
``overflowed`` marker so it can reload from the store (the store, not the bus, is the truth).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from maildesk.domain.events import MailEvent


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
    def __init__(self) -> None:
        self._subs: set[Subscription] = set()

    def publish(self, events: Sequence[MailEvent]) -> None:
        for sub in list(self._subs):
            for event in events:
                if sub.account_ids is not None and event.account_id not in sub.account_ids:
                    continue
                if sub.overflowed:
                    break
                try:
                    sub.queue.put_nowait(event)
                except asyncio.QueueFull:
                    sub.overflowed = True
                    _drain(sub.queue)
                    sub.queue.put_nowait(None)

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


def _drain(queue: asyncio.Queue[MailEvent | None]) -> None:
    while not queue.empty():
        queue.get_nowait()

