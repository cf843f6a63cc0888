"""Gmail push end to end: simulator change → Pub/Sub push with a real OIDC token → our webhook →
worker sync → store and live bus. Polling is effectively off (a poll interval of days), so
everything that arrives here arrived through push."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from sqlalchemy import func, select

from maildesk.domain.accounts import ProviderKind
from maildesk.domain.events import ChangeKind, MailEvent
from maildesk.domain.push import PushState
from maildesk.live.bus import Subscription
from maildesk.store import accounts as account_store
from maildesk.store import push as push_store
from maildesk.store.tables import messages
from tests.push.gmail_pubsub import PUSH_SETTINGS
from tests.support.harness import Harness, without_unread

EMAIL = "realtime@example.com"


async def _enable(h: Harness) -> int:
    account_id = await h.add_gmail(EMAIL, seed=20)
    await h.sync_until_idle()
    await h.services.push.enable(account_id, ProviderKind.GMAIL, PUSH_SETTINGS)
    return account_id


WAIT = 10.0


async def _wait_for(sub: Subscription, predicate: Callable[[MailEvent], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            event = await sub.get()
            if event is not None and predicate(event):
                return


async def _settle(h: Harness) -> None:
    """Let every queued push be delivered (or given up)."""
    await h.google.pubsub.drain(timeout=WAIT)


async def _store_matches_provider(h: Harness, account_id: int, sub: Subscription) -> None:
    """Wait, change by change, until the store equals the simulator's mailbox."""
    async with asyncio.timeout(WAIT):
        while await h.store_state(account_id) != without_unread(h.provider_state(EMAIL)):
            await sub.get()


async def test_new_mail_and_bin_arrive_through_push_alone(pushing: Harness) -> None:
    h = pushing
    account_id = await _enable(h)
    with h.services.bus.subscribe(frozenset({account_id})) as sub:
        async with h.serving():
            h.clock.advance(2)
            arrived = h.google.add_message(EMAIL, subject="pushed", sender="a@example.com",
                                           to=EMAIL, text="x", html="<p>x</p>")
            await _wait_for(sub, lambda e: e.remote_id == arrived and e.kind is ChangeKind.ADDED)
            h.clock.advance(2)
            h.google.trash_message(EMAIL, arrived)
            await _wait_for(sub, lambda e: e.remote_id == arrived
                            and e.kind is ChangeKind.UPDATED)
            await _store_matches_provider(h, account_id, sub)
    state = await h.store_state(account_id)
    assert "INBOX" not in state[arrived]
    assert "TRASH" in state[arrived]
    assert state == without_unread(h.provider_state(EMAIL))
    async with h.services.db.read() as conn:
        row = await push_store.get(conn, account_id, ProviderKind.GMAIL)
        events = [e.kind for e in await push_store.events_since(
            conn, account_id, h.clock.now().replace(year=2000))]
    assert row is not None
    assert row.sub.last_notification_at is not None
    assert {"delivered", "verified", "sync_started"} <= set(events)


async def test_duplicated_and_reordered_notifications_store_each_message_once(
    pushing: Harness,
) -> None:
    h = pushing
    account_id = await _enable(h)
    with h.services.bus.subscribe(frozenset({account_id})) as sub:
        async with h.serving():
            h.google.pubsub.inject(duplicate=10, reorder=3)
            ids = []
            for n in range(5):
                h.clock.advance(1.5)
                ids.append(h.google.add_message(EMAIL, subject=f"dup {n}",
                                                sender="d@example.com", to=EMAIL, text="x",
                                                html=""))
            await _settle(h)
            await _store_matches_provider(h, account_id, sub)
    attempts = sum(len(r.attempts) for r in h.google.pubsub.log)
    assert attempts >= 50, "every notification was delivered ten times"
    state = await h.store_state(account_id)
    assert set(ids) <= set(state)
    assert state == without_unread(h.provider_state(EMAIL))
    async with h.services.db.read() as conn:
        rows = await conn.scalar(select(func.count()).select_from(messages).where(
            messages.c.account_id == account_id))
    assert rows == len(h.provider_state(EMAIL))


async def _quiet(h: Harness, account_id: int) -> None:
    """Until no sync of the mailbox runs or is requested (pushes delivered, syncs done)."""
    await _settle(h)
    async with asyncio.timeout(WAIT):
        while True:
            async with h.services.db.read() as conn:
                row = await account_store.get(conn, account_id)
            if row.lease_owner is None and row.sync_requested_at is None:
                return
            await asyncio.sleep(0.02)


async def test_dropped_notifications_are_recovered_by_the_silence_fallback(
    pushing: Harness,
) -> None:
    h = pushing
    account_id = await _enable(h)
    async with h.serving():
        await _quiet(h, account_id)
        h.google.pubsub.inject(drop=100)
        h.clock.advance(2)
        lost = h.google.add_message(EMAIL, subject="notification lost", sender="l@example.com",
                                    to=EMAIL, text="x", html="")
        await _quiet(h, account_id)
        assert lost not in await h.store_state(account_id), "no push, no poll: not yet here"
    # The catch-up runs alone, so the state it leaves is read before any later sync (one that
    # finds nothing makes the subscription active again, by design).
    h.clock.advance(h.services.settings.push_silence_threshold + 1)
    await h.services.push.detect_silence()
    [catch_up] = await h.sync()
    assert catch_up.status == "ok", catch_up.summary
    assert lost in await h.store_state(account_id), "the silence fallback found it"
    async with h.services.db.read() as conn:
        row = await push_store.get(conn, account_id, ProviderKind.GMAIL)
    assert row is not None
    assert row.sub.state is PushState.RECOVERING, "it found missed mail: keep polling"


async def test_a_forged_push_changes_nothing(pushing: Harness) -> None:
    h = pushing
    account_id = await _enable(h)
    async with h.serving():
        await _settle(h)
        h.google.pubsub.inject(wrong_audience=True)
        h.clock.advance(2)
        h.google.add_message(EMAIL, subject="forged", sender="f@example.com", to=EMAIL,
                             text="x", html="")
        with contextlib.suppress(TimeoutError):
            await h.google.pubsub.drain(timeout=2)
    statuses = [a.status for r in h.google.pubsub.log for a in r.attempts]
    assert 403 in statuses
    async with h.services.db.read() as conn:
        events = [e.kind for e in await push_store.events_since(
            conn, account_id, h.clock.now().replace(year=2000))]
    assert "rejected" in events
