"""Follow-up settling (``FollowupSettle``): requests that arrive while a run is busy make one
follow-up, which waits for them to pause (MAILDESK_SYNC_FOLLOWUP_QUIET), never longer than
MAILDESK_SYNC_FOLLOWUP_MAX_WAIT; a lone request is claimed at once. On SQLite and PostgreSQL.

These tests set the clock by hand; the harness turns settling off for every other test, whose
frozen clock would never let a follow-up settle.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from maildesk import mailboxes
from maildesk.clock import ManualClock
from maildesk.store import accounts as account_store
from tests.support.harness import Harness

EMAIL = "ops@example.com"
QUIET = 0.3
MAX_WAIT = 2.0
LEASE = timedelta(seconds=60)


@pytest.fixture
async def settling(db_url: str, clock: ManualClock, tmp_path: Path) -> AsyncIterator[Harness]:
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path,
                            sync_followup_quiet=QUIET, sync_followup_max_wait=MAX_WAIT,
                            worker_tick=30.0) as h:
        yield h


async def _synced_mailbox(h: Harness) -> int:
    account_id = await h.add_gmail(EMAIL, seed=3)
    await h.sync_until_idle()
    return account_id


async def _run_with_requests_during_it(h: Harness, account_id: int, requests: int,
                                       *, ok: bool = True) -> None:
    """A run (claimed by "w1") during which ``requests`` notifications arrive, then ends."""
    await mailboxes.request_sync(h.services, account_id, "push")
    async with h.services.db.transaction() as conn:
        [claim] = await account_store.claim_due(conn, owner="w1", now=h.clock.now(),
                                                lease=LEASE, limit=5, skip_locked=False)
    for _ in range(requests):
        await mailboxes.request_sync(h.services, account_id, "push")
    async with h.services.db.transaction() as conn:
        await account_store.release(conn, claim, owner="w1", now=h.clock.now(), values={},
                                    clear_request=ok)


async def test_a_lone_request_is_claimed_at_once(settling: Harness) -> None:
    h = settling
    account_id = await _synced_mailbox(h)
    h.clock.advance(60)
    await mailboxes.request_sync(h.services, account_id, "push")
    assert [r.account_id for r in await h.sync()] == [account_id]


async def test_a_follow_up_waits_until_requests_pause(settling: Harness) -> None:
    h = settling
    account_id = await _synced_mailbox(h)
    await _run_with_requests_during_it(h, account_id, requests=10)
    assert await h.sync() == [], "requests just came: the follow-up settles first"
    h.clock.advance(QUIET / 2)
    await mailboxes.request_sync(h.services, account_id, "push")  # the burst goes on
    h.clock.advance(QUIET * 0.75)
    assert await h.sync() == [], "the quiet time counts from the newest request"
    h.clock.advance(QUIET * 0.3)
    results = await h.sync()
    assert [r.account_id for r in results] == [account_id], "quiet for QUIET: due"
    assert await h.sync() == [], "N requests made exactly one follow-up"


async def test_a_request_stamped_just_after_the_claims_clock_still_counts(
    settling: Harness,
) -> None:
    """Another connection may commit a request between the worker reading the clock and its
    claim statement: that stamp lies slightly in the claim's future and is no clock jump."""
    h = settling
    account_id = await _synced_mailbox(h)
    await _run_with_requests_during_it(h, account_id, requests=2)
    h.clock.advance(QUIET)
    h.clock.advance(0.05)
    await mailboxes.request_sync(h.services, account_id, "push")
    h.clock.advance(-0.05)
    assert await h.sync() == [], "a fresh request: still settling"
    h.clock.advance(QUIET + 0.06)
    assert [r.account_id for r in await h.sync()] == [account_id]


async def test_a_mailbox_that_never_goes_quiet_is_synced_every_max_wait(
    settling: Harness,
) -> None:
    h = settling
    account_id = await _synced_mailbox(h)
    await _run_with_requests_during_it(h, account_id, requests=3)
    step = QUIET / 3
    waited = 0.0
    while waited + step < MAX_WAIT:
        h.clock.advance(step)
        waited += step
        await mailboxes.request_sync(h.services, account_id, "push")
        assert await h.sync() == [], f"still within MAX_WAIT after {waited:.1f} s"
    h.clock.advance(MAX_WAIT - waited + 0.01)
    await mailboxes.request_sync(h.services, account_id, "push")
    assert [r.account_id for r in await h.sync()] == [account_id]


async def test_a_failed_run_or_a_clock_jump_back_holds_nothing(settling: Harness) -> None:
    h = settling
    account_id = await _synced_mailbox(h)
    # A failed run keeps its request, and retry rules (not settling) decide when it runs.
    await _run_with_requests_during_it(h, account_id, requests=2, ok=False)
    assert [r.account_id for r in await h.sync()] == [account_id]
    # A settling follow-up whose stamps lie in the future (the clock went back) is due.
    await _run_with_requests_during_it(h, account_id, requests=2)
    assert await h.sync() == []
    h.clock.advance(-3600)
    assert [r.account_id for r in await h.sync()] == [account_id]


async def test_only_requests_that_need_a_worker_wake_one(settling: Harness) -> None:
    h = settling
    account_id = await _synced_mailbox(h)

    async def request() -> list[int]:
        return await h.services.db.run_write(lambda conn: account_store.request_syncs_blocking(
            conn, [account_id], reason="push", now=h.clock.now()))

    h.clock.advance(60)
    assert await request() == [account_id], "an idle mailbox: wake a worker"
    await h.sync_until_idle()
    await _run_with_requests_during_it(h, account_id, requests=1)
    assert await request() == [], "a settling follow-up is due on its worker's timer"


async def test_the_worker_claims_a_settled_follow_up_on_its_own_timer(
    settling: Harness,
) -> None:
    """worker_tick is 30 s and nothing wakes the worker: only its follow-up timer can make
    the follow-up run within a few seconds."""
    h = settling
    account_id = await _synced_mailbox(h)
    await _run_with_requests_during_it(h, account_id, requests=5)
    h.google.add_message(EMAIL, subject="arrived during the burst", sender="bob@example.com",
                         to=EMAIL, text="hello", html="<p>hello</p>")
    # Periodic jobs wake the worker when they end: none here, so only the timer can.
    h.services.worker.periodic.clear()
    stop = asyncio.Event()
    with h.services.bus.subscribe(frozenset({account_id})) as sub:
        serving = asyncio.create_task(h.services.worker.serve(stop))
        try:
            # The worker's first look finds the follow-up settling and sets its timer for
            # QUIET from now (real time); move the clock past that meanwhile.
            await asyncio.sleep(QUIET / 2)
            assert sub.queue.empty(), "not before it settled"
            h.clock.advance(QUIET + 0.01)
            event = await asyncio.wait_for(sub.get(), 5)
        finally:
            stop.set()
            await asyncio.wait_for(serving, 10)
    assert event is not None
    assert event.account_id == account_id
