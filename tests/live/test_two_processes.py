"""Two MailDesk "processes" (two ``open_services`` on one PostgreSQL database, as `maildesk web`
and `maildesk worker` would be): mail one of them syncs reaches the other's subscribers once,
and a sync request one of them stamps wakes the other's worker at once.

PostgreSQL delivers one session's notifications in commit order, so a "fence" event published
after the ones under test proves nothing else is still on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from maildesk.clock import ManualClock
from maildesk.domain.events import ChangeKind, MailEvent
from maildesk.live.bus import Subscription
from maildesk.live.pg_relay import PgRelay
from maildesk.services import Services
from maildesk.store import accounts as account_store
from maildesk.sync.worker import PeriodicJob
from tests.support.harness import Harness

EMAIL = "split@example.com"
WAIT = 10.0
# A worker tick far longer than any wait here: only a wake-up explains a prompt claim.
LONG_TICK = 30.0
PROMPT = 5.0

postgresql_only = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


def _fence(n: int) -> MailEvent:
    return MailEvent(0, ChangeKind.REMOVED, -n, f"fence-{n}", (), 0)


async def _collect_until(sub: Subscription, last: MailEvent) -> list[MailEvent | None]:
    got: list[MailEvent | None] = []
    async with asyncio.timeout(WAIT):
        while not got or got[-1] != last:
            got.append(await sub.get())
    return got


@postgresql_only
async def test_mail_synced_in_one_process_reaches_the_others_subscribers_once(
    harness: Harness,
) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=40)
    async with h.second_worker("worker-b") as b:
        with h.services.bus.subscribe(maxsize=10_000) as at_a, \
                b.bus.subscribe(frozenset({account_id, 0}), maxsize=10_000) as at_b:
            await h.sync_until_idle()
            h.services.bus.publish([_fence(1)])
            at_b_got = await _collect_until(at_b, _fence(1))
            # B answers after it saw A's events: any echo of them would reach A before this.
            b.bus.publish([_fence(2)])
            at_a_got = await _collect_until(at_a, _fence(2))
    synced = at_a_got[:-2]
    assert len(synced) >= 40
    assert {e.kind for e in synced if e is not None} == {ChangeKind.ADDED}
    assert at_b_got == [*synced, _fence(1)], "every event once, in order"
    assert at_a_got == [*synced, _fence(1), _fence(2)], "A's own events are not echoed back"
    assert len({e.message_id for e in synced if e is not None}) == len(synced)


@contextlib.asynccontextmanager
async def _parked_worker(services: Services) -> AsyncIterator[None]:
    """``services``' worker serving, and past its first look for due mailboxes: a periodic
    job (its only one) starts after that look and holds the job slot until the end, so the
    worker's next look comes only from a wake-up or its tick."""
    parked, release, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def park() -> str:
        parked.set()
        await release.wait()
        return "parked"

    services.worker.periodic[:] = [PeriodicJob("parked", 3600.0, park)]
    async with asyncio.TaskGroup() as group:
        group.create_task(services.worker.serve(stop))
        try:
            async with asyncio.timeout(WAIT):
                await parked.wait()
            yield
        finally:
            release.set()
            stop.set()


async def _stamp(services: Services, account_id: int, clock: ManualClock) -> None:
    async with services.db.transaction() as conn:
        await account_store.request_sync(conn, account_id, reason="push", now=clock.now())


@postgresql_only
async def test_a_sync_request_stamped_in_one_process_wakes_the_others_worker(
    db_url: str, clock: ManualClock, tmp_path: Path,
) -> None:
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path,
                            worker_tick=LONG_TICK) as h:
        account_id = await h.add_gmail(EMAIL, seed=3)
        await h.sync_until_idle()
        arrived = h.google.add_message(EMAIL, subject="wake up", sender="w@example.com",
                                       to=EMAIL, text="x", html="")
        async with h.second_worker("worker-b") as b, _parked_worker(b):
            with b.bus.subscribe(frozenset({account_id})) as at_b:
                await _stamp(h.services, account_id, clock)
                h.services.wake()  # what A's webhooks, IDLE and sending call
                async with asyncio.timeout(PROMPT):
                    while (event := await at_b.get()) is None or event.remote_id != arrived:
                        pass
        assert event.kind is ChangeKind.ADDED


async def test_the_wake_path_wakes_this_processes_worker_too(
    db_url: str, clock: ManualClock, tmp_path: Path,
) -> None:
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path,
                            worker_tick=LONG_TICK) as h:
        account_id = await h.add_gmail(EMAIL, seed=3)
        await h.sync_until_idle()
        arrived = h.google.add_message(EMAIL, subject="local", sender="w@example.com",
                                       to=EMAIL, text="x", html="")
        async with _parked_worker(h.services):
            with h.services.bus.subscribe(frozenset({account_id})) as sub:
                await _stamp(h.services, account_id, clock)
                h.services.wake()
                async with asyncio.timeout(PROMPT):
                    while (event := await sub.get()) is None or event.remote_id != arrived:
                        pass


@postgresql_only
async def test_after_a_lost_relay_connection_subscribers_reload_and_events_flow_again(
    harness: Harness,
) -> None:
    h = harness
    async with h.second_worker("worker-b") as b:
        relay = b.relay
        assert isinstance(relay, PgRelay)
        pid = relay.backend_pid
        assert pid is not None
        with b.bus.subscribe(frozenset({1})) as at_b:
            async with h.services.db.transaction() as conn:
                assert await conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            async with asyncio.timeout(WAIT):
                assert await at_b.get() is None, "events may have been missed: reload"
            assert relay.connected
            assert relay.backend_pid != pid
            event = MailEvent(1, ChangeKind.ADDED, 5, "after", (1,), 5)
            h.services.bus.publish([event])
            async with asyncio.timeout(WAIT):
                assert await at_b.get() == event
