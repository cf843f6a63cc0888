"""Gmail sync end to end against the Google simulator, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from sqlalchemy import func, select

from maildesk import mailboxes
from maildesk.clock import ManualClock
from maildesk.domain.accounts import AccountState
from maildesk.domain.events import ChangeKind
from maildesk.sim.gmail_state import GoogleState
from maildesk.store import accounts as account_store
from maildesk.store import cursors
from maildesk.store.tables import changes, messages
from maildesk.sync.gmail import HISTORY
from tests.support.harness import Harness, without_unread

EMAIL = "alice@example.com"


async def _account(h: Harness, account_id: int) -> account_store.AccountRow:
    async with h.services.db.read() as conn:
        return await account_store.get(conn, account_id)


async def _change_count(h: Harness) -> int:
    async with h.services.db.read() as conn:
        return int(await conn.scalar(select(func.count()).select_from(changes)) or 0)


async def test_initial_sync_is_inbox_newest_first_then_backfill_completes(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=1800)
    inbox = h.google.mailbox(EMAIL)
    newest_inbox = max(
        (m for m in inbox.all_messages() if "INBOX" in m.label_ids),
        key=lambda m: (m.internal_date, m.id),
    )
    with h.services.bus.subscribe(maxsize=100_000) as sub:
        results = await h.sync()
        first = await asyncio.wait_for(sub.get(), 1)
    assert [r.status for r in results] == ["ok"]
    # The very first message committed is the newest one in the inbox.
    assert first is not None
    assert first.kind is ChangeKind.ADDED
    assert first.remote_id == newest_inbox.id

    # Insertion order of the inbox pass follows received date, newest first.
    async with h.services.db.read() as conn:
        rows = (await conn.execute(
            select(messages.c.remote_id, messages.c.received_at)
            .where(messages.c.account_id == account_id).order_by(messages.c.id).limit(300)
        )).all()
    dates = [r.received_at for r in rows]
    assert dates == sorted(dates, reverse=True)

    await h.sync_until_idle()
    account = await _account(h, account_id)
    assert account.initial_sync_done
    assert account.backfill_done
    assert account.state is AccountState.OK
    assert await h.store_state(account_id) == without_unread(h.provider_state(EMAIL))
    assert account.backfill_fetched > 0


async def test_backfill_resumes_from_its_page_after_a_restart(
    db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    google = GoogleState(clock=clock, rng=random.Random(11))
    # One backfill page per run, so each run stops with backfill unfinished.
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path, google=google,
                            backfill_pages_per_run=1) as h:
        account_id = await h.add_gmail(EMAIL, seed=2600)
        await h.sync()
        async with h.services.db.read() as conn:
            token = await cursors.get(conn, account_id, "gmail_backfill_token")
            fetched = (await account_store.get(conn, account_id)).backfill_fetched
        assert token is not None, "backfill progress must be recorded"
        assert 0 < fetched < 2600
    # A new process on the same store: it continues at the recorded page, not from the start.
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path, google=google,
                            owner="worker-restarted") as h:
        await h.sync_until_idle()
        listings = [r for r in h.requests if r.url.path.endswith("/messages")]
        # The first listing after the restart asks for the recorded page, not the first one.
        assert listings
        assert listings[0].url.params.get("pageToken") == token
        account = await _account(h, account_id)
        assert account.backfill_done
        assert account.backfill_fetched > fetched
        assert await h.store_state(account_id) == without_unread(h.provider_state(EMAIL))


async def test_incremental_adds_deletes_trash_and_labels(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=40)
    await h.sync_until_idle()
    box = h.google.mailbox(EMAIL)
    ids = sorted(m.id for m in box.all_messages() if "INBOX" in m.label_ids)
    added = h.google.add_message(EMAIL, subject="Quarterly numbers", sender="bob@example.com",
                                 to=EMAIL, text="see attached", html="<p>see attached</p>")
    h.google.delete_message(EMAIL, ids[0])
    h.google.trash_message(EMAIL, ids[1])
    label = h.google.create_label(EMAIL, "Customers")
    h.google.modify_labels(EMAIL, ids[2], add=[label, "STARRED"], remove=["INBOX"])

    with h.services.bus.subscribe(frozenset({account_id})) as sub:
        await mailboxes.request_sync(h.services, account_id, "test")
        await h.sync_until_idle()
        kinds: dict[str, ChangeKind] = {}
        while not sub.queue.empty():
            event = await sub.get()
            assert event is not None
            kinds[event.remote_id] = event.kind

    state = await h.store_state(account_id)
    assert state == without_unread(h.provider_state(EMAIL))
    assert added in state
    assert "INBOX" in state[added]
    assert ids[0] not in state
    assert "TRASH" in state[ids[1]]
    assert "INBOX" not in state[ids[1]]
    assert label in state[ids[2]]
    assert "INBOX" not in state[ids[2]]
    assert kinds == {
        added: ChangeKind.ADDED, ids[0]: ChangeKind.REMOVED,
        ids[1]: ChangeKind.UPDATED, ids[2]: ChangeKind.UPDATED,
    }


async def test_replayed_history_creates_no_duplicates_and_no_changes(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=30)
    await h.sync_until_idle()
    async with h.services.db.read() as conn:
        start = await cursors.get(conn, account_id, HISTORY)
    assert start is not None
    for i in range(5):
        h.google.add_message(EMAIL, subject=f"n{i}", sender="x@example.com", to=EMAIL,
                             text="t", html="")
    await mailboxes.request_sync(h.services, account_id)
    await h.sync_until_idle()
    expected = await h.store_state(account_id)
    logged = await _change_count(h)

    # Rewind the cursor: the same history pages are fetched and applied again.
    for _ in range(3):
        async with h.services.db.transaction() as conn:
            await cursors.put(conn, account_id, HISTORY, start, h.clock.now())
        await mailboxes.request_sync(h.services, account_id)
        await h.sync_until_idle()
    assert await h.store_state(account_id) == expected
    assert await _change_count(h) == logged, "a replay must not log changes"
    async with h.services.db.read() as conn:
        dupes = await conn.scalar(
            select(func.count()).select_from(
                select(messages.c.remote_id).group_by(messages.c.account_id, messages.c.remote_id)
                .having(func.count() > 1).subquery()
            )
        )
    assert dupes == 0


async def test_expired_history_triggers_full_resync_to_identical_state(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=300)
    await h.sync_until_idle()
    box = h.google.mailbox(EMAIL)
    ids = sorted(m.id for m in box.all_messages())
    for mid in ids[:10]:
        h.google.delete_message(EMAIL, mid)
    for mid in ids[10:15]:
        h.google.trash_message(EMAIL, mid)
    h.google.modify_labels(EMAIL, ids[20], add=["STARRED"], remove=[])
    new = h.google.add_message(EMAIL, subject="fresh", sender="c@example.com", to=EMAIL,
                               text="x", html="")
    h.google.expire_history(EMAIL)

    await mailboxes.request_sync(h.services, account_id)
    results = await h.sync_until_idle()
    assert results
    assert all(r.status == "ok" for r in results)
    state = await h.store_state(account_id)
    assert state == without_unread(h.provider_state(EMAIL))
    assert new in state
    assert ids[0] not in state
    async with h.services.db.read() as conn:
        cursor = await cursors.get(conn, account_id, HISTORY)
    assert cursor is not None
    assert int(cursor) >= int(h.google.snapshot(EMAIL)["minHistoryId"])


async def test_revoked_grant_is_typed_loses_nothing_and_resumes_after_reconnect(
    harness: Harness,
) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=25)
    await h.sync_until_idle()
    before = await h.store_state(account_id)
    token = (await _account(h, account_id)).refresh_token_enc
    assert token is not None
    h.google.revoke_grant(h.services.secrets.decrypt(token))
    h.google.expire_access_tokens(EMAIL)
    arrived = h.google.add_message(EMAIL, subject="while revoked", sender="d@example.com",
                                   to=EMAIL, text="x", html="")

    await mailboxes.request_sync(h.services, account_id)
    results = await h.sync()
    assert [r.status for r in results] == ["reauth_required"]
    assert results[0].error_kind == "oauth_invalid"
    account = await _account(h, account_id)
    assert account.state is AccountState.REAUTH_REQUIRED
    assert account.last_error_kind == "oauth_invalid"
    assert await h.store_state(account_id) == before, "nothing lost"

    await mailboxes.reconnect_gmail(h.services, account_id, refresh_token=h.grant(EMAIL))
    await h.sync_until_idle()
    account = await _account(h, account_id)
    assert account.state is AccountState.OK
    assert account.last_error is None
    assert arrived in await h.store_state(account_id)


async def test_rate_limit_with_retry_after_waits_and_succeeds(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=10)
    await h.sync_until_idle()
    h.google.add_message(EMAIL, subject="after 429", sender="e@example.com", to=EMAIL,
                         text="x", html="")
    h.google.add_fault(path=r"/history$", status=429, retry_after=7, count=1)
    h.clock.slept.clear()
    await mailboxes.request_sync(h.services, account_id)
    results = await h.sync_until_idle()
    assert [r.status for r in results] == ["ok"]
    assert 7 in h.clock.slept
    assert await h.store_state(account_id) == without_unread(h.provider_state(EMAIL))


async def test_long_retry_after_defers_the_mailbox_instead_of_blocking(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=5)
    await h.sync_until_idle()
    h.google.add_fault(path=r"/history$", status=429, retry_after=900, count=1)
    await mailboxes.request_sync(h.services, account_id)
    results = await h.sync()
    assert [r.status for r in results] == ["degraded"]
    account = await _account(h, account_id)
    assert account.retry_at is not None
    assert (account.retry_at - h.clock.now()).total_seconds() >= 900
    assert await h.sync() == [], "deferred until Retry-After has passed"
    h.clock.advance(901)
    assert [r.status for r in await h.sync()] == ["ok"]


async def test_malformed_answers_are_typed_errors_then_recover(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=5)
    await h.sync_until_idle()
    h.google.add_message(EMAIL, subject="m", sender="f@example.com", to=EMAIL, text="x", html="")
    h.google.add_fault(path=r"/history$", body="not json{", status=200, count=1)
    await mailboxes.request_sync(h.services, account_id)
    results = await h.sync()
    assert results[0].status == "error"
    assert results[0].error_kind == "protocol"

    h.clock.advance(3600)
    h.google.add_fault(path=r"/history$", drop_fields=["historyId"], count=1)
    results = await h.sync()
    assert results[0].status == "error"
    assert results[0].error_kind == "protocol"
    assert "historyId" in (results[0].error or "")

    h.clock.advance(3600)
    assert [r.status for r in await h.sync_until_idle()] == ["ok"]
    assert await h.store_state(account_id) == without_unread(h.provider_state(EMAIL))


async def test_network_failure_is_never_reported_as_an_auth_error(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=3)
    await h.sync_until_idle()
    h.google.expire_access_tokens(EMAIL)
    h.google.add_fault(path=r"/token$", status=503, count=20)
    await mailboxes.request_sync(h.services, account_id)
    results = await h.sync()
    assert results[0].status == "degraded"
    assert results[0].error_kind == "unavailable"
    assert (await _account(h, account_id)).state is AccountState.DEGRADED
