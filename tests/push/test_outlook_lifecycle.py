"""The Outlook push lifecycle: readiness guard, registration, renewal, lifecycle notifications,
silence, status — through the one PushManager shared with Gmail."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from maildesk.domain.accounts import ProviderKind
from maildesk.domain.push import (
    OUTLOOK_RENEW_WITHIN,
    PushState,
    PushSubscription,
    check_outlook_ready,
    renewal_due,
    renewal_window,
    webhook_base_problem,
)
from maildesk.errors import (
    NotReady,
    OAuthInvalid,
    ProviderRejected,
    ProviderUnavailable,
    WrongTokenKind,
)
from maildesk.providers.graph_types import GraphSubscription
from maildesk.push.manager import gmail_push_settings
from maildesk.push.status import push_status
from maildesk.store import accounts as account_store
from maildesk.store import push as push_store
from maildesk.store.push import SubscriptionRow
from maildesk.store.tables import push_subscriptions
from tests.support.fake_graph_push import FakeSubscription, OutlookRig, outlook_rig
from tests.support.harness import Harness

LIFECYCLE_URL = "/maildesk/push/outlook/lifecycle"
IMAP_REASON = "reconnect with the Microsoft Graph option"


@pytest.fixture
async def rig(harness: Harness) -> AsyncIterator[OutlookRig]:
    async with outlook_rig(harness) as r:
        yield r


async def _sub(rig: OutlookRig, account_id: int) -> SubscriptionRow:
    async with rig.h.services.db.read() as conn:
        row = await push_store.get(conn, account_id, ProviderKind.OUTLOOK)
    assert row is not None
    return row


async def _seq(rig: OutlookRig, account_id: int) -> int:
    async with rig.h.services.db.read() as conn:
        return (await account_store.get(conn, account_id)).sync_request_seq


async def _enabled(rig: OutlookRig, email: str = "desk@contoso.example") -> tuple[int, str]:
    account_id = await rig.add_outlook(email)
    row = await rig.push.enable(account_id, ProviderKind.OUTLOOK, {})
    assert row.sub.subscription_id is not None
    return account_id, row.sub.subscription_id


async def _lifecycle(rig: OutlookRig, account_id: int, event: str,
                     subscription_id: str | None = None, client_state: str | None = None) -> int:
    row = await _sub(rig, account_id)
    state = client_state or await rig.push.client_state(account_id)
    body = {"value": [{"subscriptionId": subscription_id or row.sub.subscription_id,
                       "subscriptionExpirationDateTime": "2026-01-06T09:00:00.000Z",
                       "tenantId": "t-1", "clientState": state, "lifecycleEvent": event}]}
    return (await rig.client.post(LIFECYCLE_URL, json=body)).status_code


# --- the readiness guard ------------------------------------------------------------------------

@pytest.mark.parametrize("base", [
    "http://maildesk.example.com", "https://localhost", "https://LOCALHOST:8443",
    "https://127.0.0.1", "https://127.8.9.1:8025", "https://[::1]", "https://10.1.2.3",
    "https://192.168.1.20", "https://172.16.0.9", "https://169.254.10.1", "https://0.0.0.0",
    "https://[fe80::1]", "https://[::ffff:10.0.0.1]", "https://100.64.1.1", "https://box.local",
    "https://svc.internal", "https://app.localhost", "https://maildesk",
])
def test_local_or_plain_http_bases_are_refused_unless_allowed(base: str) -> None:
    problem = webhook_base_problem(base, allow_loopback=False)
    assert problem is not None
    assert "MAILDESK_BASE_URL" in problem
    assert webhook_base_problem(base, allow_loopback=True) is None


@pytest.mark.parametrize("base", ["https://maildesk.example.com", "https://93.184.216.34",
                                  "https://mail.example.org:8443/desk"])
def test_public_https_bases_are_accepted(base: str) -> None:
    assert webhook_base_problem(base, allow_loopback=False) is None


def test_guard_reasons() -> None:
    ok: dict[str, Any] = {
        "provider": ProviderKind.OUTLOOK, "has_refresh_token": True, "token_kind": "graph",
        "base_url": "https://maildesk.example.com", "allow_loopback": False,
    }
    check_outlook_ready(**ok)
    check_outlook_ready(**{**ok, "token_kind": None})
    cases: list[tuple[dict[str, Any], str]] = [
        ({"token_kind": "imap"}, IMAP_REASON),
        ({"has_refresh_token": False}, "no stored refresh token"),
        ({"provider": ProviderKind.GMAIL}, "not an Outlook"),
        ({"base_url": "http://maildesk.example.com"}, "MAILDESK_BASE_URL"),
    ]
    for change, reason in cases:
        with pytest.raises(NotReady, match=reason):
            check_outlook_ready(**{**ok, **change})


async def test_guard_refuses_an_imap_token_with_the_exact_reason(rig: OutlookRig) -> None:
    account_id = await rig.add_outlook("imap@contoso.example", token_kind="imap")
    with pytest.raises(NotReady) as caught:
        await rig.push.enable(account_id, ProviderKind.OUTLOOK, {})
    assert caught.value.reason == (
        "the mailbox is connected with an IMAP-only Microsoft token, which cannot call Graph "
        "subscriptions: reconnect with the Microsoft Graph option")
    assert account_id not in rig.graphs, "refused before any call to Microsoft"


async def test_guard_refuses_a_mailbox_without_refresh_token_or_the_wrong_provider(
    rig: OutlookRig,
) -> None:
    account_id = await rig.add_outlook("bare@contoso.example", refresh_token=False)
    with pytest.raises(NotReady, match="no stored refresh token"):
        await rig.push.enable(account_id, ProviderKind.OUTLOOK, {})
    gmail = await rig.h.add_gmail("g@example.com")
    with pytest.raises(NotReady, match="not an Outlook / Microsoft 365 mailbox"):
        await rig.push.enable(gmail, ProviderKind.OUTLOOK, {})


@pytest.mark.parametrize("base", ["http://maildesk.example.com", "https://127.0.0.1:8025"])
async def test_guard_refuses_a_local_base_url_unless_allowed(harness: Harness, base: str
                                                             ) -> None:
    async with outlook_rig(harness, base_url=base, validate=False) as rig:
        account_id = await rig.add_outlook("local@contoso.example")
        with pytest.raises(NotReady, match="MAILDESK_BASE_URL"):
            await rig.push.enable(account_id, ProviderKind.OUTLOOK, {})
    async with outlook_rig(harness, base_url=base, allow_loopback=True) as rig:
        row = await rig.push.enable(account_id, ProviderKind.OUTLOOK, {})
        assert row.sub.state is PushState.ACTIVE
        assert row.settings["notification_url"] == f"{base}/maildesk/push/outlook"


async def test_guard_checks_the_token_for_real_and_errors_stay_typed(rig: OutlookRig) -> None:
    account_id = await rig.add_outlook("revoked@contoso.example")
    async with rig.h.services.db.read() as conn:
        account = await account_store.get(conn, account_id)
    graph = rig.push.adapters[ProviderKind.OUTLOOK]
    await graph.check_ready(account)  # creates the fake for this account
    fake = rig.graph(account_id)
    fake.fail["profile"] = [OAuthInvalid("AADSTS70008: grant expired"),
                            WrongTokenKind("an IMAP token cannot call Graph")]
    with pytest.raises(OAuthInvalid):
        await rig.push.enable(account_id, ProviderKind.OUTLOOK, {})
    with pytest.raises(WrongTokenKind):
        await rig.push.enable(account_id, ProviderKind.OUTLOOK, {})
    assert fake.subscriptions == {}
    assert "create_subscription" not in fake.calls


# --- registration -------------------------------------------------------------------------------

async def test_register_stores_the_encrypted_client_state_and_grahps_expiration(
    rig: OutlookRig,
) -> None:
    now = rig.h.clock.now()
    account_id, sub_id = await _enabled(rig)
    fake = rig.graph(account_id).only()
    row = await _sub(rig, account_id)
    assert row.sub.state is PushState.ACTIVE
    assert (row.sub.failure_count, row.sub.last_error) == (0, None)
    assert row.sub.resource == "/me/messages" == fake.sub.resource
    assert sub_id == fake.sub.id
    assert fake.sub.change_type == "created,updated,deleted"
    assert fake.sub.notification_url == "https://maildesk.example.com/maildesk/push/outlook"
    assert fake.lifecycle_url == "https://maildesk.example.com/maildesk/push/outlook/lifecycle"
    # We asked for 6 days; Graph granted 4230 minutes: what Graph returned is stored.
    assert row.sub.expiration == now + timedelta(minutes=4230) == fake.sub.expiration
    # The clientState: fresh, ≤128 characters, stored only encrypted, visible to admins.
    state = fake.client_state
    assert 32 <= len(state) <= 128
    assert await rig.push.client_state(account_id) == state
    async with rig.h.services.db.read() as conn:
        raw = (await conn.execute(select(push_subscriptions).where(
            push_subscriptions.c.account_id == account_id))).one()
    assert raw.client_state_enc
    assert raw.client_state_enc != state
    assert all(state not in str(value) for value in raw)
    assert rig.h.services.secrets.decrypt(raw.client_state_enc) == state
    # Settings (shown in status) are non-secret.
    assert state not in json.dumps(row.settings)


async def test_registering_again_rotates_the_client_state_and_replaces_the_subscription(
    rig: OutlookRig,
) -> None:
    account_id, first = await _enabled(rig)
    first_state = await rig.push.client_state(account_id)
    row = await rig.push.enable(account_id, ProviderKind.OUTLOOK, {})
    assert row.sub.subscription_id != first
    assert await rig.push.client_state(account_id) != first_state
    assert list(rig.graph(account_id).subscriptions) == [row.sub.subscription_id]
    async with rig.h.services.db.read() as conn:
        assert len(await push_store.for_account(conn, account_id)) == 1


async def test_a_409_conflict_is_resolved_by_deleting_ours_and_creating_once_more(
    rig: OutlookRig,
) -> None:
    account_id = await rig.add_outlook("dup@contoso.example")
    async with rig.h.services.db.read() as conn:
        account = await account_store.get(conn, account_id)
    await rig.push.adapters[ProviderKind.OUTLOOK].check_ready(account)
    fake = rig.graph(account_id)
    # Left behind by a registration whose answer was never stored; plus someone else's.
    url = "https://maildesk.example.com/maildesk/push/outlook"
    expires = rig.h.clock.now() + timedelta(days=1)
    fake.subscriptions["stale"] = FakeSubscription(
        GraphSubscription("stale", "me/messages", expires, "created", url), url + "/lifecycle",
        "old-state")
    fake.subscriptions["foreign"] = FakeSubscription(
        GraphSubscription("foreign", "/me/messages", expires, "created",
                          "https://other.example/hook"), "x", "theirs")
    row = await rig.push.enable(account_id, ProviderKind.OUTLOOK, {})
    assert row.sub.state is PushState.ACTIVE
    assert sorted(fake.subscriptions) == sorted(["foreign", row.sub.subscription_id or ""])
    assert fake.calls.count("create_subscription") == 2
    assert "list_subscriptions" in fake.calls
    # A second 409 is not looped on: it is a typed failure, recorded.
    fake.fail["create_subscription"] = [ProviderRejected("Conflict", status=409)] * 2
    with pytest.raises(ProviderRejected):
        await rig.push.enable(account_id, ProviderKind.OUTLOOK, {})
    failed = await _sub(rig, account_id)
    assert (failed.sub.state, failed.sub.failure_count, failed.sub.last_error_kind) == (
        PushState.ERROR, 1, "rejected")


async def test_a_failed_validation_handshake_is_a_typed_failure(rig: OutlookRig) -> None:
    account_id = await rig.add_outlook("nohandshake@contoso.example")

    async def refuse(url: str) -> bool:
        return False

    async with rig.h.services.db.read() as conn:
        account = await account_store.get(conn, account_id)
    await rig.push.adapters[ProviderKind.OUTLOOK].check_ready(account)
    rig.graph(account_id).validator = refuse
    with pytest.raises(ProviderRejected, match="ValidationError"):
        await rig.push.enable(account_id, ProviderKind.OUTLOOK, {})
    assert (await _sub(rig, account_id)).sub.state is PushState.ERROR


async def test_stop_deletes_the_subscription_and_forgets_the_secret(rig: OutlookRig) -> None:
    account_id, _ = await _enabled(rig)
    await rig.push.disable(account_id, ProviderKind.OUTLOOK)
    assert rig.graph(account_id).subscriptions == {}
    row = await _sub(rig, account_id)
    assert (row.sub.state, row.client_state_enc) == (PushState.STOPPED, None)
    assert await rig.push.client_state(account_id) is None
    assert await rig.push.renew_due() == "renewed 0, failed 0"


# --- renewal ------------------------------------------------------------------------------------

def test_outlook_renews_on_expiration_only() -> None:
    now = datetime(2026, 1, 5, tzinfo=UTC)
    old = now - timedelta(days=30)
    sub = PushSubscription(1, 1, ProviderKind.OUTLOOK, "/me/messages", "s",
                           now + timedelta(days=2), PushState.ACTIVE, 0, None, None, None,
                           old, old)
    within, max_age = renewal_window(ProviderKind.OUTLOOK)
    assert (within, max_age) == (OUTLOOK_RENEW_WITHIN, None)
    assert not renewal_due(sub, now, within=within, max_age=max_age), \
        "an old registration with two days left is not due (Graph may grant short lifetimes)"
    assert renewal_due(sub, now + timedelta(days=1, seconds=1), within=within, max_age=max_age)


async def test_renewal_ahead_of_expiry_counts_failures_and_retries(rig: OutlookRig) -> None:
    account_id, sub_id = await _enabled(rig)
    first = await _sub(rig, account_id)
    state = await rig.push.client_state(account_id)
    fake = rig.graph(account_id)
    assert first.sub.expiration is not None
    assert await rig.push.renew_due() == "renewed 0, failed 0"
    # Graph granted 4230 minutes (70.5 h).
    rig.h.clock.advance(timedelta(hours=45, minutes=30).total_seconds())  # 25 h left: not yet
    assert await rig.push.renew_due() == "renewed 0, failed 0"
    assert "renew_subscription" not in fake.calls

    rig.h.clock.advance(timedelta(hours=2).total_seconds())  # 23 h left: about a day to spare
    fake.fail["renew_subscription"] = [ProviderUnavailable("503")] * 2
    assert await rig.push.renew_due() == "renewed 0, failed 1"
    row = await _sub(rig, account_id)
    assert (row.sub.state, row.sub.failure_count, row.sub.last_error_kind) == (
        PushState.ERROR, 1, "unavailable")
    assert await rig.push.renew_due() == "renewed 0, failed 1"
    assert (await _sub(rig, account_id)).sub.failure_count == 2

    rig.h.clock.advance(600)
    assert await rig.push.renew_due() == "renewed 1, failed 0"
    row = await _sub(rig, account_id)
    assert row.sub.state is PushState.ACTIVE
    assert (row.sub.failure_count, row.sub.last_error) == (0, None)
    assert row.sub.subscription_id == sub_id, "renewed in place (PATCH)"
    assert await rig.push.client_state(account_id) == state, "a renewal keeps the clientState"
    assert row.sub.expiration == fake.only().sub.expiration
    assert row.sub.expiration == rig.h.clock.now() + timedelta(minutes=4230)
    assert row.sub.last_renewal_at == rig.h.clock.now()


async def test_a_vanished_subscription_is_recreated_and_the_mailbox_resynced(
    rig: OutlookRig,
) -> None:
    account_id, sub_id = await _enabled(rig)
    old_state = await rig.push.client_state(account_id)
    fake = rig.graph(account_id)
    fake.drop(sub_id)  # Graph lost it: PATCH will answer 404
    rig.h.clock.advance(timedelta(days=2, hours=1).total_seconds())
    seq = await _seq(rig, account_id)
    rig.wakes.clear()
    assert await rig.push.renew_due() == "renewed 1, failed 0"
    assert "renew_subscription" in fake.calls
    row = await _sub(rig, account_id)
    assert row.sub.state is PushState.ACTIVE
    assert row.sub.subscription_id not in (None, sub_id)
    assert row.sub.subscription_id == fake.only().sub.id
    new_state = await rig.push.client_state(account_id)
    assert new_state not in (None, old_state)
    assert await _seq(rig, account_id) == seq + 1, "a resync is requested"
    assert rig.wakes["sync"] >= 1
    async with rig.h.services.db.read() as conn:
        events = await push_store.events_since(conn, account_id, rig.h.clock.now())
    assert ("resync", "subscription recreated") in [(e.kind, e.detail) for e in events]


async def test_an_expired_subscription_is_recreated_without_patching(rig: OutlookRig) -> None:
    account_id, sub_id = await _enabled(rig)
    fake = rig.graph(account_id)
    rig.h.clock.advance(timedelta(days=4).total_seconds())  # the server was down past expiry
    seq = await _seq(rig, account_id)
    assert await rig.push.renew_due() == "renewed 1, failed 0"
    assert "renew_subscription" not in fake.calls
    row = await _sub(rig, account_id)
    assert row.sub.subscription_id != sub_id
    assert row.sub.expiration is not None
    assert row.sub.expiration > rig.h.clock.now()
    assert await _seq(rig, account_id) == seq + 1


async def test_a_changed_base_url_moves_the_subscription(harness: Harness) -> None:
    async with outlook_rig(harness) as rig:
        account_id, sub_id = await _enabled(rig)
    async with outlook_rig(harness, base_url="https://desk2.example.com") as rig:
        harness.clock.advance(timedelta(days=2, hours=1).total_seconds())
        assert await rig.push.renew_due() == "renewed 1, failed 0"
        row = await _sub(rig, account_id)
        assert row.sub.subscription_id != sub_id
        assert row.settings["notification_url"] == \
            "https://desk2.example.com/maildesk/push/outlook"
        assert rig.graph(account_id).only().sub.notification_url == \
            "https://desk2.example.com/maildesk/push/outlook"


async def test_gmail_and_outlook_renew_in_one_job(rig: OutlookRig) -> None:
    h = rig.h
    gmail = await h.add_gmail("both@example.com", seed=2)
    await h.sync_until_idle()
    await rig.push.enable(gmail, ProviderKind.GMAIL, gmail_push_settings(
        project="p", topic="t", audience="https://md/push", signers=["s@p.iam"]))
    outlook, _ = await _enabled(rig)
    h.clock.advance(timedelta(days=2, hours=1).total_seconds())
    # Outlook (4230 min) is due; the Gmail watch (7 days, renewed at 6) is not yet.
    assert await rig.push.renew_due() == "renewed 1, failed 0"
    h.clock.advance(timedelta(days=4).total_seconds())
    # Now both: Gmail by age and expiry, Outlook by expiry.
    detail = await rig.push.run_job()
    assert detail.startswith("renewed 2, failed 0")
    assert (await _sub(rig, outlook)).sub.state is PushState.ACTIVE


# --- lifecycle notifications --------------------------------------------------------------------

async def test_reauthorization_required_is_noted_then_done_by_the_push_job(
    rig: OutlookRig,
) -> None:
    account_id, sub_id = await _enabled(rig)
    seq = await _seq(rig, account_id)
    rig.wakes.clear()
    assert await _lifecycle(rig, account_id, "reauthorizationRequired") == 202
    fake = rig.graph(account_id)
    assert "reauthorize_subscription" not in fake.calls, "never inside the request"
    row = await _sub(rig, account_id)
    assert row.settings["lifecycle"] == "reauthorize"
    assert row.sub.state is PushState.ACTIVE, "still delivering meanwhile"
    assert rig.wakes == {"push": 1}
    assert await _seq(rig, account_id) == seq
    rig.h.clock.advance(5)
    assert await rig.push.run_lifecycle() == "lifecycle 1 done, 0 failed"
    assert fake.only().reauthorized == 1
    assert fake.calls.index("reauthorize_subscription") < fake.calls.index("renew_subscription")
    row = await _sub(rig, account_id)
    assert row.sub.subscription_id == sub_id
    assert "lifecycle" not in row.settings
    assert row.sub.last_renewal_at == rig.h.clock.now()
    assert await rig.push.run_lifecycle() == "lifecycle 0 done, 0 failed"


async def test_subscription_removed_resyncs_at_once_and_registers_anew(rig: OutlookRig) -> None:
    account_id, sub_id = await _enabled(rig)
    old_state = await rig.push.client_state(account_id)
    seq = await _seq(rig, account_id)
    rig.wakes.clear()
    rig.graph(account_id).drop(sub_id)
    assert await _lifecycle(rig, account_id, "subscriptionRemoved") == 202
    assert await _seq(rig, account_id) == seq + 1, "polling catches up before the resubscribe"
    assert rig.wakes == {"sync": 1, "push": 1}
    row = await _sub(rig, account_id)
    assert (row.sub.state, row.settings["lifecycle"]) == (PushState.RECOVERING, "recreate")
    # A later reauthorizationRequired does not weaken the pending recreate.
    assert await _lifecycle(rig, account_id, "reauthorizationRequired") == 202
    assert (await _sub(rig, account_id)).settings["lifecycle"] == "recreate"

    detail = await rig.push.run_job()
    assert detail.endswith("lifecycle 1 done, 0 failed")
    row = await _sub(rig, account_id)
    assert row.sub.state is PushState.ACTIVE
    assert row.sub.subscription_id not in (None, sub_id)
    assert row.sub.subscription_id == rig.graph(account_id).only().sub.id
    assert await rig.push.client_state(account_id) != old_state
    assert "lifecycle" not in row.settings
    assert await _seq(rig, account_id) == seq + 2, "resynced after the new subscription"


async def test_missed_requests_a_resync_only(rig: OutlookRig) -> None:
    account_id, sub_id = await _enabled(rig)
    seq = await _seq(rig, account_id)
    rig.wakes.clear()
    assert await _lifecycle(rig, account_id, "missed") == 202
    assert await _seq(rig, account_id) == seq + 1
    assert rig.wakes == {"sync": 1}
    row = await _sub(rig, account_id)
    assert "lifecycle" not in row.settings
    assert (row.sub.state, row.sub.subscription_id) == (PushState.ACTIVE, sub_id)
    async with rig.h.services.db.read() as conn:
        events = await push_store.events_since(conn, account_id, rig.h.clock.now())
    assert ("lifecycle", "missed") in [(e.kind, e.detail) for e in events]
    assert rig.webhook.stats.lifecycle == {"missed": 1}


async def test_unverified_or_unknown_lifecycle_items_are_dropped(rig: OutlookRig) -> None:
    account_id, _ = await _enabled(rig)
    seq = await _seq(rig, account_id)
    rig.wakes.clear()
    assert await _lifecycle(rig, account_id, "subscriptionRemoved",
                            client_state="not-the-state") == 202
    assert await _lifecycle(rig, account_id, "subscriptionRemoved",
                            subscription_id="someone-else") == 202
    assert await _lifecycle(rig, account_id, "somethingNew") == 202
    assert rig.webhook.stats.dropped == {"clientState mismatch": 1, "unknown subscription": 1,
                                         "unknown lifecycle event": 1}
    row = await _sub(rig, account_id)
    assert (row.sub.state, "lifecycle" in row.settings) == (PushState.ACTIVE, False)
    assert await _seq(rig, account_id) == seq
    assert not rig.wakes


async def test_a_failed_lifecycle_action_is_counted_and_retried(rig: OutlookRig) -> None:
    account_id, sub_id = await _enabled(rig)
    assert await _lifecycle(rig, account_id, "reauthorizationRequired") == 202
    fake = rig.graph(account_id)
    fake.fail["reauthorize_subscription"] = [OAuthInvalid("AADSTS50173: grant revoked")]
    assert await rig.push.run_lifecycle() == "lifecycle 0 done, 1 failed"
    row = await _sub(rig, account_id)
    assert (row.sub.state, row.sub.failure_count, row.sub.last_error_kind) == (
        PushState.ERROR, 1, "oauth_invalid")
    assert row.settings["lifecycle"] == "reauthorize", "still owed"
    # The renewal job retries failed rows every run; the pending action rides along.
    assert await rig.push.renew_due() == "renewed 1, failed 0"
    row = await _sub(rig, account_id)
    assert (row.sub.state, row.sub.subscription_id) == (PushState.ACTIVE, sub_id)
    assert "lifecycle" not in row.settings
    assert fake.only().reauthorized == 1


async def test_reauthorize_of_a_vanished_subscription_recreates_it(rig: OutlookRig) -> None:
    account_id, sub_id = await _enabled(rig)
    assert await _lifecycle(rig, account_id, "reauthorizationRequired") == 202
    rig.graph(account_id).drop(sub_id)
    assert await rig.push.run_lifecycle() == "lifecycle 1 done, 0 failed"
    assert (await _sub(rig, account_id)).sub.subscription_id not in (None, sub_id)


# --- silence and status -------------------------------------------------------------------------

async def test_the_silence_detector_applies_to_outlook(rig: OutlookRig) -> None:
    account_id, sub_id = await _enabled(rig)
    state = await rig.push.client_state(account_id)
    assert await rig.push.detect_silence() == "0 silent subscriptions sent to catch-up"
    rig.h.clock.advance(rig.h.services.settings.push_silence_threshold + 1)
    seq = await _seq(rig, account_id)
    assert await rig.push.detect_silence() == "1 silent subscriptions sent to catch-up"
    assert (await _sub(rig, account_id)).sub.state is PushState.RECOVERING
    assert await _seq(rig, account_id) == seq + 1
    # A verified notification proves push works again.
    body = {"value": [{"subscriptionId": sub_id, "clientState": state, "changeType": "created"}]}
    assert (await rig.client.post("/maildesk/push/outlook", json=body)).status_code == 202
    assert (await _sub(rig, account_id)).sub.state is PushState.ACTIVE


async def test_status_shows_outlook_rows_but_never_the_client_state(rig: OutlookRig) -> None:
    account_id, sub_id = await _enabled(rig, "status@contoso.example")
    state = await rig.push.client_state(account_id)
    assert state is not None
    [status] = await push_status(rig.h.services.db)
    assert (status.provider, status.email, status.state) == (
        "outlook", "status@contoso.example", "active")
    assert status.subscription_id == sub_id
    assert status.expiration == rig.graph(account_id).only().sub.expiration
    assert status.settings["notification_url"].endswith("/maildesk/push/outlook")
    dumped = json.dumps(status.to_json())
    assert state not in dumped
    assert "client_state" not in dumped
