"""Outlook push end to end against the Microsoft simulator: registration with the real
validation handshake, Graph change notifications → our webhook → worker → store, lifecycle
events and renewal. Polling is effectively off (days), so what arrives here came through push."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.clock import ManualClock
from maildesk.domain.accounts import ProviderKind
from maildesk.domain.push import PushState
from maildesk.errors import NotReady
from maildesk.store import push as push_store
from maildesk.store.tables import push_subscriptions
from tests.support.harness import MAILDESK, Harness

EMAIL = "olivia@example.com"
DAYS = 10 * 86400
WAIT = 10.0


@pytest.fixture
async def pushing(db_url: str, clock: ManualClock, tmp_path: Path) -> AsyncIterator[Harness]:
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path,
                            poll_interval=DAYS, safety_poll_interval=DAYS) as h:
        yield h


async def _enable(h: Harness) -> int:
    account_id = await h.add_outlook(EMAIL, seed=20)
    assert all(r.status == "ok" for r in await h.sync_until_idle())
    await h.services.push.enable(account_id, ProviderKind.OUTLOOK, {})
    return account_id


async def _until(condition: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``condition`` until it holds (simulator state has no event to wait on)."""
    async with asyncio.timeout(WAIT):
        while not await condition():  # noqa: ASYNC110 - polling state without an event
            await asyncio.sleep(0.02)


async def _converged(h: Harness, account_id: int) -> None:
    async def same() -> bool:
        return await h.store_state(account_id) == h.outlook_state(EMAIL)

    await _until(same)


async def test_register_runs_the_handshake_on_both_urls_and_stores_graphs_answer(
    pushing: Harness,
) -> None:
    h = pushing
    account_id = await _enable(h)
    checked = {(v.url.split("?")[0], v.ok) for v in h.microsoft.subscriptions.validations}
    assert checked == {(f"{MAILDESK}/maildesk/push/outlook", True),
                       (f"{MAILDESK}/maildesk/push/outlook/lifecycle", True)}
    (sim_sub,) = h.microsoft.subscriptions.by_id.values()
    async with h.services.db.read() as conn:
        row = await push_store.get(conn, account_id, ProviderKind.OUTLOOK)
        raw = (await conn.execute(select(push_subscriptions.c.client_state_enc))).scalar_one()
    assert row is not None
    assert row.sub.state is PushState.ACTIVE
    assert row.sub.subscription_id == sim_sub.id
    assert row.sub.expiration == sim_sub.expiration
    # The secret Graph echoes is stored encrypted, never as plaintext.
    assert sim_sub.client_state
    assert sim_sub.client_state not in raw
    assert await h.services.push.client_state(account_id, ProviderKind.OUTLOOK) == \
        sim_sub.client_state


async def test_arrivals_and_deletes_arrive_through_push_alone(pushing: Harness) -> None:
    h = pushing
    account_id = await _enable(h)
    async with h.serving():
        new_id = h.microsoft.add_message(EMAIL, subject="pushed to us")
        await _converged(h, account_id)
        assert new_id in await h.store_state(account_id)
        h.microsoft.delete_message(EMAIL, new_id)
        await _converged(h, account_id)
        assert new_id not in await h.store_state(account_id)
        await h.microsoft.notifier.drain(timeout=WAIT)
    acked = [d for d in h.microsoft.notifier.log if d.outcome == "acked" and d.kind == "change"]
    assert acked, "the simulator delivered no notification"
    async with h.services.db.read() as conn:
        row = await push_store.get(conn, account_id, ProviderKind.OUTLOOK)
    assert row is not None
    assert row.sub.last_notification_at is not None


async def test_imap_only_token_is_refused_by_the_readiness_guard(pushing: Harness) -> None:
    h = pushing
    account_id = await h.add_outlook("ivan@example.com", kind="imap")
    with pytest.raises(NotReady, match="reconnect with the Microsoft Graph option"):
        await h.services.push.enable(account_id, ProviderKind.OUTLOOK, {})
    assert not h.microsoft.subscriptions.by_id


async def test_subscription_removed_is_recreated_and_missed_resyncs(pushing: Harness) -> None:
    h = pushing
    account_id = await _enable(h)
    (first,) = list(h.microsoft.subscriptions.by_id)
    async with h.serving():
        h.microsoft.lifecycle(first, "subscriptionRemoved")
        async def recreated() -> bool:
            return bool(set(h.microsoft.subscriptions.by_id) - {first})

        await _until(recreated)
        (second,) = list(h.microsoft.subscriptions.by_id)
        # Mail that changed while no subscription existed arrives via the resync.
        h.microsoft.add_message(EMAIL, subject="while removed")
        h.microsoft.lifecycle(second, "missed")
        await _converged(h, account_id)
    async with h.services.db.read() as conn:
        row = await push_store.get(conn, account_id, ProviderKind.OUTLOOK)
    assert row is not None
    assert row.sub.subscription_id == second
    assert row.sub.state is PushState.ACTIVE


async def test_reauthorization_required_reauthorizes_and_renews(pushing: Harness) -> None:
    h = pushing
    account_id = await _enable(h)
    (sub_id,) = list(h.microsoft.subscriptions.by_id)
    async with h.serving():
        h.microsoft.lifecycle(sub_id, "reauthorizationRequired")
        async def reauthorized() -> bool:
            return h.microsoft.subscriptions.by_id[sub_id].reauthorized_at is not None

        await _until(reauthorized)

        # ... and renewed: the owed action is cleared, the same subscription stays active.
        async def settled() -> bool:
            async with h.services.db.read() as conn:
                row = await push_store.get(conn, account_id, ProviderKind.OUTLOOK)
            return row is not None and "lifecycle" not in row.settings

        await _until(settled)
    async with h.services.db.read() as conn:
        row = await push_store.get(conn, account_id, ProviderKind.OUTLOOK)
    assert row is not None
    assert row.sub.state is PushState.ACTIVE
    assert row.sub.subscription_id == sub_id
    assert row.sub.expiration == h.microsoft.subscriptions.by_id[sub_id].expiration


async def test_renewal_on_a_virtual_clock_patches_before_expiry(
    pushing: Harness, clock: ManualClock
) -> None:
    h = pushing
    account_id = await _enable(h)
    (sub_id,) = list(h.microsoft.subscriptions.by_id)
    expires = h.microsoft.subscriptions.by_id[sub_id].expiration
    assert "renewed 0" in await h.services.push.renew_due()
    clock.advance((expires - clock.now() - timedelta(hours=20)).total_seconds())
    assert "renewed 1" in await h.services.push.renew_due()
    renewed = h.microsoft.subscriptions.by_id[sub_id].expiration
    assert renewed > expires
    async with h.services.db.read() as conn:
        row = await push_store.get(conn, account_id, ProviderKind.OUTLOOK)
    assert row is not None
    assert row.sub.expiration == renewed
    assert row.sub.subscription_id == sub_id  # renewed in place, not recreated
