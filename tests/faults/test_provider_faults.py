"""Fault injection against the simulators: what providers and networks do on a bad day.

Each test makes the world misbehave while mail keeps changing and then checks the one property
that matters: the store ends equal to the provider's mailbox, each message once. (Gmail's
duplicated/reordered/dropped Pub/Sub pushes are covered in tests/push/test_push_end_to_end.py.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from maildesk.clock import ManualClock
from maildesk.domain.accounts import ProviderKind
from maildesk.store import accounts as account_store
from maildesk.store.tables import messages
from maildesk.sync.runner import SyncResult
from tests.support.harness import Harness, without_unread

GMAIL = "storm@example.com"
OUTLOOK = "olivia@example.com"
DAYS = 10 * 86400
WAIT = 15.0


@pytest.fixture
async def pushing(db_url: str, clock: ManualClock, tmp_path: Path) -> AsyncIterator[Harness]:
    """Polling effectively off: what arrives, arrived through push."""
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path,
                            poll_interval=DAYS, safety_poll_interval=DAYS) as h:
        yield h


async def _rows(h: Harness, account_id: int) -> int:
    async with h.services.db.read() as conn:
        count = await conn.scalar(select(func.count()).select_from(messages).where(
            messages.c.account_id == account_id))
    return int(count or 0)


async def _until(condition: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(WAIT):
        while not await condition():  # noqa: ASYNC110 - simulator state has no event to wait on
            await asyncio.sleep(0.02)


async def _gmail_equal(h: Harness, account_id: int) -> bool:
    return await h.store_state(account_id) == without_unread(h.provider_state(GMAIL))


async def _sync_through_faults(h: Harness, rounds: int = 200) -> list[SyncResult]:
    """Run the scheduler like the worker would, letting backoff deadlines pass on the clock."""
    results: list[SyncResult] = []
    for _ in range(rounds):
        batch = await h.sync()
        results += batch
        if not batch:
            async with h.services.db.read() as conn:
                pending = [a for a in await account_store.list_all(conn)
                           if a.retry_at is not None or a.sync_requested_at is not None]
            if not pending:
                return results
        h.clock.advance(60)
    raise AssertionError("the faults never let the sync finish")


# ------------------------------------------------------------------------ Outlook notifications
async def _outlook_enabled(h: Harness) -> int:
    account_id = await h.add_outlook(OUTLOOK, seed=20)
    assert all(r.status == "ok" for r in await h.sync_until_idle())
    await h.services.push.enable(account_id, ProviderKind.OUTLOOK, {})
    return account_id


async def test_outlook_duplicated_and_reordered_notifications_store_each_message_once(
    pushing: Harness,
) -> None:
    h = pushing
    account_id = await _outlook_enabled(h)
    async with h.serving():
        h.microsoft.notifier.faults.update({"duplicate": 6, "reorder": 3})
        added = [h.microsoft.add_message(OUTLOOK, subject=f"dup {n}") for n in range(6)]
        h.microsoft.delete_message(OUTLOOK, added[0])

        async def converged() -> bool:
            return await h.store_state(account_id) == h.outlook_state(OUTLOOK)

        await _until(converged)
        await h.microsoft.notifier.drain(timeout=WAIT)
        await _until(converged)
    # Every batch was POSTed six times (and one held back behind the next).
    assert h.services.outlook_webhook.stats.answers[202] >= 6
    assert await _rows(h, account_id) == len(h.outlook_state(OUTLOOK))
    assert set(added[1:]) <= set(await h.store_state(account_id))


async def test_outlook_dropped_notifications_are_recovered_by_the_silence_fallback(
    pushing: Harness,
) -> None:
    h = pushing
    account_id = await _outlook_enabled(h)
    async with h.serving():
        await h.microsoft.notifier.drain(timeout=WAIT)
        h.microsoft.notifier.faults.update({"drop": 100})
        lost = h.microsoft.add_message(OUTLOOK, subject="notification lost")
        await h.microsoft.notifier.drain(timeout=WAIT)
        assert lost not in await h.store_state(account_id), "no push, no poll: not yet here"
        h.clock.advance(h.services.settings.push_silence_threshold + 1)
        await h.services.push.detect_silence()

        async def arrived() -> bool:
            return lost in await h.store_state(account_id)

        await _until(arrived)
    assert h.microsoft.notifier.dropped, "the simulator did drop notifications"


# ------------------------------------------------------------------------------- API storms
async def test_a_429_and_5xx_storm_during_initial_sync_loses_and_doubles_nothing(
    harness: Harness,
) -> None:
    h = harness
    h.google.seed_mailbox(GMAIL, 900)
    account_id = await h.add_gmail(GMAIL)
    # Every other call of the storm fails: rate limits with and without Retry-After, 500s,
    # 503s; then the storm passes.
    storm = []
    for _ in range(12):
        storm += [
            h.google.add_fault(path=".*", status=429, retry_after=1.0, count=1),
            h.google.add_fault(path=".*/messages.*", status=503, count=1),
            h.google.add_fault(path=".*", status=500, count=1),
            h.google.add_fault(path=".*/history.*", status=429, count=1),
        ]
    h.google.add_message(GMAIL, subject="during the storm", sender="s@example.org", to=GMAIL,
                         text="x", html="")
    results = await _sync_through_faults(h)
    assert results
    assert all(rule.count == 0 for rule in storm), "the whole storm hit the sync"
    assert await _gmail_equal(h, account_id)
    assert await _rows(h, account_id) == len(h.provider_state(GMAIL))
    async with h.services.db.read() as conn:
        account = await account_store.get(conn, account_id)
    assert account.state.value == "ok"
    assert account.last_error_kind is None
    assert account.backfill_done


@pytest.fixture
async def one_page(db_url: str, clock: ManualClock, tmp_path: Path) -> AsyncIterator[Harness]:
    """One backfill page per run, so a backfill spans several runs."""
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path,
                            backfill_pages_per_run=1) as h:
        yield h


async def test_history_expiry_in_the_middle_of_a_backfill_resyncs_to_identical_state(
    one_page: Harness,
) -> None:
    h = one_page
    seeded = h.google.seed_mailbox(GMAIL, 1_600)
    # Archived mail is fetched by the backfill, 500 a page: make it several pages.
    for mid in seeded[:1_200]:
        h.google.modify_labels(GMAIL, mid, remove=["INBOX"])
    account_id = await h.add_gmail(GMAIL)
    first = await h.sync()
    assert [r.status for r in first] == ["ok"]
    async with h.services.db.read() as conn:
        account = await account_store.get(conn, account_id)
    assert not account.backfill_done, "the backfill must still be running"
    # Changes, then Google forgets the history we were going to replay.
    ids = sorted(h.provider_state(GMAIL))
    h.google.delete_message(GMAIL, ids[0])
    h.google.modify_labels(GMAIL, ids[1], add=["STARRED"])
    h.google.add_message(GMAIL, subject="after expiry", sender="e@example.org", to=GMAIL,
                         text="x", html="")
    h.google.expire_history(GMAIL)
    await h.sync_until_idle(rounds=80)
    assert await _gmail_equal(h, account_id)
    assert await _rows(h, account_id) == len(h.provider_state(GMAIL))


# ------------------------------------------------------------------------------ clock jumps
async def test_clock_jumps_forward_and_back_neither_stall_nor_double_sync(
    harness: Harness,
) -> None:
    h = harness
    account_id = await h.add_gmail(GMAIL, seed=30)
    await h.sync_until_idle()
    # Forward by a day: every deadline is in the past at once; one sync each, no storm.
    h.clock.advance(86_400)
    h.google.add_message(GMAIL, subject="after the jump", sender="j@example.org", to=GMAIL,
                         text="x", html="")
    results = await h.sync()
    assert [r.account_id for r in results] == [account_id]
    assert await h.sync() == [], "one jump, one sync: nothing is due twice"
    assert await _gmail_equal(h, account_id)
    # Back by two days (NTP step, VM restore): leases and poll times now lie in the future.
    h.clock.advance(-2 * 86_400)
    h.google.add_message(GMAIL, subject="after going back", sender="b@example.org", to=GMAIL,
                         text="x", html="")
    async with h.services.db.transaction() as conn:
        await account_store.request_sync(conn, account_id, reason="operator", now=h.clock.now())
    results = await h.sync()
    assert [r.status for r in results] == ["ok"], "an operator's request is served at once"
    assert await _gmail_equal(h, account_id)
    # The poll schedule is relative to the (new) now, not stuck two days ahead.
    async with h.services.db.read() as conn:
        account = await account_store.get(conn, account_id)
    assert account.next_poll_at - h.clock.now() <= timedelta(
        seconds=h.services.settings.poll_interval + 1)
    assert account.lease_owner is None
