"""The live bus: filtering by account, and honest overflow."""

from __future__ import annotations

from maildesk.domain.events import ChangeKind, MailEvent
from maildesk.live.bus import LiveBus


def _event(account: int, n: int) -> MailEvent:
    return MailEvent(account, ChangeKind.ADDED, n, f"r{n}", (1,))


async def test_subscribers_see_only_their_accounts() -> None:
    bus = LiveBus()
    with bus.subscribe(frozenset({1})) as one, bus.subscribe() as every:
        bus.publish([_event(1, 1), _event(2, 2)])
        assert (await one.get()) == _event(1, 1)
        assert one.queue.empty()
        assert [await every.get(), await every.get()] == [_event(1, 1), _event(2, 2)]
    assert bus.subscriber_count == 0


async def test_overflow_is_signalled_once_and_then_delivery_resumes() -> None:
    bus = LiveBus()
    with bus.subscribe(maxsize=3) as sub:
        bus.publish([_event(1, n) for n in range(10)])
        assert await sub.get() is None, "overflow: reload from the store"
        assert sub.queue.empty()
        bus.publish([_event(1, 99)])
        assert await sub.get() == _event(1, 99)
