"""Claims, leases, request coalescing and polling, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from maildesk import mailboxes
from maildesk.clock import ManualClock
from maildesk.errors import InputError, LeaseLost
from maildesk.store import accounts as account_store
from maildesk.store import jobs
from maildesk.store.tables import messages
from maildesk.sync.context import SyncContext
from maildesk.sync.worker import PeriodicJob
from tests.support.harness import Harness, without_unread

EMAIL = "ops@example.com"


async def _duplicates(h: Harness) -> int:
    async with h.services.db.read() as conn:
        return int(await conn.scalar(select(func.count()).select_from(
            select(messages.c.remote_id).group_by(messages.c.account_id, messages.c.remote_id)
            .having(func.count() > 1).subquery()
        )) or 0)


async def test_crashed_worker_lease_expires_and_another_finishes(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=2400)
    lease = timedelta(seconds=h.services.settings.lease_seconds)

    # Worker A claims and starts syncing; it "dies" (its task is cancelled, nothing released)
    # after its first commit, as a killed process would.
    async with h.services.db.transaction() as conn:
        claims = await account_store.claim_due(
            conn, owner=h.services.runner.owner, now=h.clock.now(), lease=lease, limit=1,
            skip_locked=not h.services.db.is_sqlite,
        )
    assert [c.account_id for c in claims] == [account_id]
    with h.services.bus.subscribe(maxsize=100_000) as sub:
        crashed = asyncio.create_task(h.services.runner.run(claims[0]))
        assert await asyncio.wait_for(sub.get(), 10) is not None
        crashed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await crashed
    partial = await h.message_count(account_id)
    assert 0 < partial < 2400

    async with h.second_worker("worker-b") as b:
        # While A's lease is live, B cannot take the mailbox.
        assert await b.worker.claim(5) == []
        h.clock.advance(h.services.settings.lease_seconds + 1)
        results = []
        for _ in range(50):
            claims_b = await b.worker.claim(5)
            if not claims_b:
                break
            for claim in claims_b:
                results.append(await b.runner.run(claim))
        assert results
        assert all(r.status == "ok" for r in results)

        # A comes back to life (a paused process): its next write is refused.
        ctx = SyncContext(h.services.db, h.clock, h.services.bus, account_id,
                          h.services.runner.owner, lease)
        with pytest.raises(LeaseLost):
            async with ctx.write():
                pass

    assert await h.store_state(account_id) == without_unread(h.provider_state(EMAIL))
    assert await _duplicates(h) == 0


async def test_requests_during_a_sync_collapse_into_one_follow_up(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=5)
    await h.sync_until_idle()
    lease = timedelta(seconds=60)
    await mailboxes.request_sync(h.services, account_id, "push")
    async with h.services.db.transaction() as conn:
        [claim] = await account_store.claim_due(
            conn, owner="w1", now=h.clock.now(), lease=lease, limit=5, skip_locked=False
        )
    # Ten notifications arrive while the sync runs.
    for _ in range(10):
        await mailboxes.request_sync(h.services, account_id, "push")
    async with h.services.db.transaction() as conn:
        await account_store.release(conn, claim, owner="w1", now=h.clock.now(), values={},
                                    clear_request=True)
    # The stamp survived (a request came in meanwhile): exactly one follow-up sync is due.
    results = await h.sync()
    assert len(results) == 1
    assert results[0].status == "ok"
    assert await h.sync() == []


async def test_polling_brings_mail_without_any_request(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=5)
    await h.sync_until_idle()
    arrived = h.google.add_message(EMAIL, subject="polled", sender="p@example.com", to=EMAIL,
                                   text="x", html="")
    assert await h.sync() == [], "not due before the poll interval"
    h.clock.advance(h.services.settings.poll_interval + 1)
    results = await h.sync()
    assert [r.status for r in results] == ["ok"]
    assert arrived in await h.store_state(account_id)


async def test_each_sync_is_recorded_as_a_job_run(harness: Harness) -> None:
    h = harness
    await h.add_gmail(EMAIL, seed=3)
    await h.sync_until_idle()
    await h.services.worker.run_periodic(force=True)
    async with h.services.db.read() as conn:
        runs = {r.job: r for r in await jobs.latest(conn)}
    assert runs["sync"].status == "ok"
    assert runs["sync"].duration_ms is not None
    assert "added=" in runs["sync"].detail
    assert runs["maintenance"].status == "ok"


async def test_worker_serve_syncs_on_wake_and_stops_cleanly(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=3)
    stop = asyncio.Event()
    with h.services.bus.subscribe() as sub:
        serving = asyncio.create_task(h.services.worker.serve(stop))
        first = await asyncio.wait_for(sub.get(), 10)
        assert first is not None
        assert first.account_id == account_id
        stop.set()
        await asyncio.wait_for(serving, 10)
    async with h.services.db.read() as conn:
        account = await account_store.get(conn, account_id)
    assert account.lease_owner is None, "a stopped worker leaves no lease behind"


async def test_a_slow_periodic_job_does_not_hold_up_syncs(harness: Harness) -> None:
    h = harness
    started, release = asyncio.Event(), asyncio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "took its time"

    h.services.worker.periodic.append(PeriodicJob("slow", 3600.0, slow))
    stop = asyncio.Event()
    serving = asyncio.create_task(h.services.worker.serve(stop))
    try:
        await asyncio.wait_for(started.wait(), 10)
        with h.services.bus.subscribe() as sub:
            account_id = await h.add_gmail(EMAIL, seed=3)
            first = await asyncio.wait_for(sub.get(), 10)
        assert first is not None
        assert first.account_id == account_id, "the mailbox synced while the job still ran"
    finally:
        release.set()
        stop.set()
        await asyncio.wait_for(serving, 10)
    async with h.services.db.read() as conn:
        runs = {r.job: r for r in await jobs.latest(conn)}
    assert runs["slow"].status == "ok", "a stopping worker lets a running job finish"
    assert runs["slow"].detail == "took its time"


async def test_sync_now_waits_for_another_workers_run_then_syncs(harness: Harness) -> None:
    """`maildesk account sync` beside a server whose worker holds the mailbox: it waits for
    that run to end instead of refusing, then runs its own."""
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=3)
    await h.sync_until_idle()
    lease = timedelta(seconds=60)
    async with h.services.db.transaction() as conn:
        busy = await account_store.claim_one(conn, account_id, owner="server-worker",
                                             now=h.clock.now(), lease=lease)
    assert busy is not None
    syncing = asyncio.create_task(mailboxes.sync_now(h.services, account_id))
    await asyncio.sleep(0.6)
    assert not syncing.done(), "the mailbox is held: sync_now waits"
    async with h.services.db.transaction() as conn:
        await account_store.release(conn, busy, owner="server-worker", now=h.clock.now(),
                                    values={}, clear_request=False)
    result = await asyncio.wait_for(syncing, 10)
    assert result.status == "ok"
    assert result.account_id == account_id


async def test_sync_now_gives_up_after_a_lease_time(
    db_url: str, clock: ManualClock, tmp_path: Path,
) -> None:
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path,
                            lease_seconds=0.5) as h:
        account_id = await h.add_gmail(EMAIL, seed=3)
        await h.sync_until_idle()
        async with h.services.db.transaction() as conn:
            # The clock never moves, so this lease never expires.
            held = await account_store.claim_one(conn, account_id, owner="stuck-worker",
                                                 now=h.clock.now(), lease=timedelta(hours=1))
        assert held is not None
        with pytest.raises(InputError, match="still busy"):
            await asyncio.wait_for(mailboxes.sync_now(h.services, account_id), 10)
