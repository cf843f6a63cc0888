"""The push lifecycle: readiness guard, registration, renewal, failures, silence, token loss."""

from __future__ import annotations

from datetime import timedelta

import pytest

from maildesk import mailboxes
from maildesk.domain.accounts import GMAIL_SCOPE_READONLY, AccountState, ProviderKind
from maildesk.domain.push import PushState
from maildesk.errors import InputError, NotReady, OAuthInvalid, ScopeMissing
from maildesk.push.manager import gmail_push_settings
from maildesk.store import accounts as account_store
from maildesk.store import jobs
from maildesk.store import push as push_store
from maildesk.store.push import SubscriptionRow
from tests.support.harness import Harness

EMAIL = "live@example.com"
SETTINGS = gmail_push_settings(project="proj", topic="mail", audience="https://md/push",
                               signers=["push@proj.iam.gserviceaccount.com"])


async def _sub(h: Harness, account_id: int) -> SubscriptionRow:
    async with h.services.db.read() as conn:
        row = await push_store.get(conn, account_id, ProviderKind.GMAIL)
    assert row is not None
    return row


async def _revoke(h: Harness, account_id: int) -> None:
    async with h.services.db.read() as conn:
        account = await account_store.get(conn, account_id)
    assert account.refresh_token_enc is not None
    h.google.revoke_grant(h.services.secrets.decrypt(account.refresh_token_enc))
    h.services.connectors.forget_tokens(account_id)


def test_push_settings_are_validated_and_normalised() -> None:
    assert SETTINGS["topic"] == "projects/proj/topics/mail"
    with pytest.raises(InputError, match="project"):
        gmail_push_settings(project="proj", topic="projects/other/topics/t", audience="a",
                            signers=["s@x"])
    with pytest.raises(InputError, match="signer"):
        gmail_push_settings(project="p", topic="t", audience="a", signers=[])
    with pytest.raises(InputError, match="audience"):
        gmail_push_settings(project="p", topic="t", audience=" ", signers=["s@x"])


async def test_register_stores_one_active_row(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=5)
    await h.sync_until_idle()
    row = await h.services.push.enable(account_id, ProviderKind.GMAIL, SETTINGS)
    watch = h.google.snapshot(EMAIL)["watch"]
    assert watch["topicName"] == "projects/proj/topics/mail"
    assert watch["labelIds"] == ["INBOX"]
    assert row.sub.state is PushState.ACTIVE
    assert row.sub.resource == "projects/proj/topics/mail"
    assert row.sub.subscription_id == watch["historyId"]
    assert row.sub.expiration is not None
    assert int(row.sub.expiration.timestamp() * 1000) == int(watch["expiration"])
    assert (row.sub.failure_count, row.sub.last_error) == (0, None)
    # Enabling again replaces, never duplicates.
    await h.services.push.enable(account_id, ProviderKind.GMAIL, SETTINGS)
    async with h.services.db.read() as conn:
        assert len(await push_store.for_account(conn, account_id)) == 1


async def test_readiness_guard_refuses_with_reasons(harness: Harness) -> None:
    h = harness
    narrow = await h.add_gmail("narrow@example.com", scopes=(GMAIL_SCOPE_READONLY,))
    with pytest.raises(NotReady, match="re-consent"):
        await h.services.push.enable(narrow, ProviderKind.GMAIL, SETTINGS)
    async with h.services.db.transaction() as conn:
        await account_store.update_fields(conn, narrow, refresh_token_enc=None)
    with pytest.raises(NotReady, match="no stored refresh token"):
        await h.services.push.enable(narrow, ProviderKind.GMAIL, SETTINGS)
    with pytest.raises(NotReady, match="not an Outlook"):
        await h.services.push.enable(narrow, ProviderKind.OUTLOOK, SETTINGS)
    assert h.google.snapshot("narrow@example.com")["watch"] is None


async def test_renewal_ahead_of_expiry_counts_failures_and_retries(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=3)
    await h.sync_until_idle()
    first = await h.services.push.enable(account_id, ProviderKind.GMAIL, SETTINGS)
    assert first.sub.expiration is not None
    assert await h.services.push.renew_due() == "renewed 0, failed 0"

    h.clock.advance(timedelta(days=6, minutes=1).total_seconds())  # within a day of expiry
    h.google.add_fault(path=r"/watch$", status=503, count=50)
    assert await h.services.push.renew_due() == "renewed 0, failed 1"
    row = await _sub(h, account_id)
    assert row.sub.state is PushState.ERROR
    assert (row.sub.failure_count, row.sub.last_error_kind) == (1, "unavailable")
    assert await h.services.push.renew_due() == "renewed 0, failed 1"
    assert (await _sub(h, account_id)).sub.failure_count == 2

    h.google.clear_faults()
    h.clock.advance(3600)
    assert await h.services.push.renew_due() == "renewed 1, failed 0"
    row = await _sub(h, account_id)
    assert row.sub.state is PushState.ACTIVE
    assert (row.sub.failure_count, row.sub.last_error) == (0, None)
    assert row.sub.expiration is not None
    assert row.sub.expiration > first.sub.expiration
    assert row.sub.last_renewal_at == h.clock.now()


async def test_revoked_token_is_typed_polling_continues_and_reconnect_resumes(
    harness: Harness,
) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=3)
    await h.sync_until_idle()
    await h.services.push.enable(account_id, ProviderKind.GMAIL, SETTINGS)
    await _revoke(h, account_id)
    h.clock.advance(timedelta(days=6, hours=1).total_seconds())
    assert await h.services.push.renew_due() == "renewed 0, failed 1"
    row = await _sub(h, account_id)
    assert (row.sub.state, row.sub.last_error_kind) == (PushState.ERROR, "oauth_invalid")
    with pytest.raises(OAuthInvalid):
        await h.services.push.renew_account(account_id, ProviderKind.GMAIL)

    # Push is broken: the mailbox is polled at the normal interval, not the safety sweep.
    results = await h.sync_until_idle()
    assert [r.status for r in results] == ["reauth_required"]
    await mailboxes.reconnect_gmail(h.services, account_id, refresh_token=h.grant(EMAIL))
    # The reconnect re-registered the watch at once: realtime is back without waiting.
    assert (await _sub(h, account_id)).sub.state is PushState.ACTIVE
    assert await h.services.push.renew_due() == "renewed 0, failed 0"
    await h.sync_until_idle()
    async with h.services.db.read() as conn:
        account = await account_store.get(conn, account_id)
    assert account.state is AccountState.OK


async def test_scope_loss_on_renewal_says_reconnect_and_reconsent(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=3)
    await h.sync_until_idle()
    await h.services.push.enable(account_id, ProviderKind.GMAIL, SETTINGS)
    async with h.services.db.transaction() as conn:
        await account_store.update_fields(conn, account_id, scopes=GMAIL_SCOPE_READONLY)
    with pytest.raises(NotReady, match="reconnect the mailbox and re-consent"):
        await h.services.push.renew_account(account_id, ProviderKind.GMAIL)
    assert (await _sub(h, account_id)).sub.last_error_kind == "not_ready"
    h.google.add_fault(path=r"/watch$", status=403, reason="insufficientPermissions", count=1)
    async with h.services.db.transaction() as conn:
        await account_store.update_fields(conn, account_id,
                                          scopes="https://mail.google.com/")
    with pytest.raises(ScopeMissing):
        await h.services.push.renew_account(account_id, ProviderKind.GMAIL)


async def test_healthy_push_relaxes_polling_and_broken_push_restores_it(
    harness: Harness,
) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=3)
    await h.sync_until_idle()
    await h.services.push.enable(account_id, ProviderKind.GMAIL, SETTINGS)
    await mailboxes.request_sync(h.services, account_id)
    await h.sync_until_idle()
    async with h.services.db.read() as conn:
        account = await account_store.get(conn, account_id)
    assert account.next_poll_at == h.clock.now() + timedelta(
        seconds=h.services.settings.safety_poll_interval)
    await h.services.push.disable(account_id, ProviderKind.GMAIL)
    assert (await _sub(h, account_id)).sub.state is PushState.STOPPED
    assert h.google.snapshot(EMAIL)["watch"] is None
    await mailboxes.request_sync(h.services, account_id)
    await h.sync_until_idle()
    async with h.services.db.read() as conn:
        account = await account_store.get(conn, account_id)
    assert account.next_poll_at == h.clock.now() + timedelta(
        seconds=h.services.settings.poll_interval)


async def test_silence_detector_falls_back_to_polling_and_loses_nothing(
    harness: Harness,
) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=3)
    await h.sync_until_idle()
    await h.services.push.enable(account_id, ProviderKind.GMAIL, SETTINGS)
    await h.sync_until_idle()
    # Mail arrives but every notification is lost.
    arrived = h.google.add_message(EMAIL, subject="never notified", sender="q@example.com",
                                   to=EMAIL, text="x", html="")
    assert await h.services.push.detect_silence() == "0 silent subscriptions sent to catch-up"
    h.clock.advance(h.services.settings.push_silence_threshold + 1)
    assert await h.services.push.detect_silence() == "1 silent subscriptions sent to catch-up"
    assert (await _sub(h, account_id)).sub.state is PushState.RECOVERING
    results = await h.sync_until_idle()
    assert [r.status for r in results] == ["ok"]
    assert arrived in await h.store_state(account_id)
    # The catch-up found mail push never announced: stay recovering, polled every interval.
    assert (await _sub(h, account_id)).sub.state is PushState.RECOVERING
    async with h.services.db.read() as conn:
        account = await account_store.get(conn, account_id)
    assert account.next_poll_at == h.clock.now() + timedelta(
        seconds=h.services.settings.poll_interval)
    # A quiet poll (nothing missed) returns it to active.
    h.clock.advance(h.services.settings.poll_interval + 1)
    await h.sync_until_idle()
    assert (await _sub(h, account_id)).sub.state is PushState.ACTIVE


async def test_push_job_is_a_recorded_periodic_job(harness: Harness) -> None:
    h = harness
    await h.services.worker.run_periodic(force=True)
    async with h.services.db.read() as conn:
        runs = {r.job: r for r in await jobs.latest(conn)}
    assert runs["push-renewal"].status == "ok"
    assert "renewed 0" in runs["push-renewal"].detail
