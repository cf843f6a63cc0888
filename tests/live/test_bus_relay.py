"""The bus with a relay, on the in-memory fake that links buses as PostgreSQL links processes:
local subscribers see an event once, the other buses' subscribers once, reload signals become
the overflow marker. And the SQLite wiring: nothing to relay, wake-ups stay local."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from maildesk.config import Settings
from maildesk.domain.events import ChangeKind, MailEvent
from maildesk.live.bus import LiveBus, Subscription
from maildesk.live.relay import WAKE_PUSH, WAKE_SYNC, Inbox, LocalRelay, MemoryHub
from maildesk.services import open_services


def _event(account: int, n: int, folders: tuple[int, ...] = (1,)) -> MailEvent:
    return MailEvent(account, ChangeKind.ADDED, n, f"r{n}", folders, change_id=n)


def _queued(sub: Subscription) -> list[MailEvent | None]:
    found = []
    while not sub.queue.empty():
        found.append(sub.queue.get_nowait())
    return found


@contextlib.asynccontextmanager
async def _linked(count: int, hub: MemoryHub) -> AsyncIterator[tuple[list[LiveBus],
                                                                    list[list[frozenset[str]]]]]:
    buses: list[LiveBus] = []
    wakes: list[list[frozenset[str]]] = []
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(count):
            bus = LiveBus(hub.relay())
            woken: list[frozenset[str]] = []
            await stack.enter_async_context(
                bus.relay.running(Inbox(bus.deliver, bus.reload, woken.append)))
            buses.append(bus)
            wakes.append(woken)
        yield buses, wakes


async def test_an_event_reaches_every_bus_once_and_is_not_echoed() -> None:
    hub = MemoryHub()
    async with _linked(3, hub) as ([a, b, c], _):
        with a.subscribe() as at_a, b.subscribe(frozenset({1})) as at_b, \
                c.subscribe(frozenset({2})) as at_c:
            a.publish([_event(1, 1), _event(2, 2)])
            assert _queued(at_a) == [_event(1, 1), _event(2, 2)]
            assert _queued(at_b) == [_event(1, 1)]
            assert _queued(at_c) == [_event(2, 2)]
            b.deliver([_event(1, 3)])  # what a relay received: local only, never sent on
            assert _queued(at_a) == []
            assert _queued(at_b) == [_event(1, 3)]
    assert len(hub.payloads) == 1


async def test_an_oversize_event_reaches_other_buses_as_the_reload_marker() -> None:
    hub = MemoryHub()
    huge = _event(1, 1, folders=tuple(range(100_000, 102_000)))
    async with _linked(2, hub) as ([a, b], _):
        with a.subscribe() as at_a, b.subscribe(frozenset({1})) as at_b, \
                b.subscribe(frozenset({2})) as other_account:
            a.publish([huge, _event(2, 2)])
            assert _queued(at_a) == [huge, _event(2, 2)]
            assert _queued(at_b) == [None]
            assert at_b.overflowed
            assert _queued(other_account) == [_event(2, 2)]
            b.deliver([_event(1, 5)])
            assert _queued(at_b) == [], "nothing more until the subscriber took the marker"


async def test_reload_marks_matching_subscribers_once_and_delivery_resumes() -> None:
    bus = LiveBus()
    with bus.subscribe(frozenset({1})) as one, bus.subscribe(frozenset({2})) as two, \
            bus.subscribe() as every:
        bus.deliver([_event(1, 1)])
        bus.reload(frozenset({1}))
        bus.reload(frozenset({1}))
        assert _queued(two) == []
        assert await one.get() is None
        assert one.queue.empty(), "events before the marker are covered by the reload"
        assert await every.get() is None
        bus.reload(None)
        assert [await two.get(), await one.get()] == [None, None]
        bus.deliver([_event(1, 9)])
        assert await one.get() == _event(1, 9)


async def test_wake_ups_reach_the_other_buses_only() -> None:
    hub = MemoryHub()
    async with _linked(3, hub) as (buses, wakes):
        buses[0].relay.wake()
        buses[1].relay.wake(WAKE_PUSH)
        assert wakes[0] == [frozenset({WAKE_PUSH})]
        assert wakes[1] == [frozenset({WAKE_SYNC})]
        assert wakes[2] == [frozenset({WAKE_SYNC}), frozenset({WAKE_PUSH})]


async def test_sqlite_has_nothing_to_relay(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, secret_key="test-key")
    async with open_services(settings) as services:
        assert isinstance(services.relay, LocalRelay)
        assert services.bus.relay is services.relay
        with services.bus.subscribe() as sub:
            services.bus.publish([_event(1, 1)])
            assert _queued(sub) == [_event(1, 1)]


def test_a_bus_without_a_relay_keeps_working_alone() -> None:
    bus = LiveBus()
    assert isinstance(bus.relay, LocalRelay)
    with bus.subscribe() as sub:
        bus.publish([_event(1, 1)])
        bus.publish([])
        assert _queued(sub) == [_event(1, 1)]


@pytest.mark.parametrize("count", [1, 3])
async def test_every_payload_of_the_fake_fits_postgresql(count: int) -> None:
    hub = MemoryHub()
    async with _linked(2, hub) as ([a, b], _):
        with b.subscribe(maxsize=10_000) as at_b:
            for _ in range(count):
                a.publish([_event(1, n, folders=tuple(range(40))) for n in range(300)])
            assert len(_queued(at_b)) == 300 * count
    assert all(len(p.encode()) < 8000 for p in hub.payloads)
    assert len(hub.payloads) > count
