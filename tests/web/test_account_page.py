"""The mailbox account page: honest token status, Verify token now (every outcome, both
providers), typed errors in plain words, realtime state, folders and backfill, and the jobs
page."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from maildesk.domain.accounts import ProviderKind
from maildesk.errors import OAuthInvalid, ProtocolViolation, ProviderUnavailable
from maildesk.providers.oauth import TokenGrant
from maildesk.push.manager import gmail_push_settings
from maildesk.store import accounts as account_store
from maildesk.store import jobs as job_store
from maildesk.store.tables import accounts, folders
from maildesk.web.token_check import TokenVerifier
from tests.support.harness import Harness
from tests.web.support import ADMIN, AGENT, Site, post_form

MAILBOX = "desk@example.com"
VALID = "Gmail token is valid - a fresh access token was issued."
PUSH = gmail_push_settings(project="proj", topic="mail", audience="https://md/push",
                           signers=["push@proj.iam.gserviceaccount.com"])


def flashes(page: str) -> list[tuple[str, str]]:
    return re.findall(r'<p class="flash flash-(\w+)" data-level="\w+">([^<]*)</p>', page)


async def verify(site: Site, account_id: int, who: str = AGENT) -> list[tuple[str, str]]:
    async with site.client(who) as client:
        url = f"/mailboxes/{account_id}/account"
        response = await post_form(client, url, url + "/verify")
        assert response.status_code == 303
        assert response.headers["location"] == url + "#token"
        return flashes((await client.get(url)).text)


async def test_token_badge_is_neutral_and_verify_reports_each_outcome(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(MAILBOX)
    await h.sync_until_idle()
    site = Site(h)
    await site.user(AGENT, share=[account_id])  # a shared user may verify (see account_page)
    async with site.client(AGENT) as client:
        page = (await client.get(f"/mailboxes/{account_id}/account")).text
    assert 'id="token-badge">Token stored<' in page
    assert "badge neutral" in page
    assert "valid" not in page.lower().replace("verify", ""), "no claim before a check"

    assert await verify(site, account_id) == [("success", VALID)]

    # Google down: transient, says nothing about the token, never "reconnect".
    h.google.add_fault(path="/token", status=503)
    [(level, text)] = await verify(site, account_id)
    assert level == "warning"
    assert text.startswith("Could not reach Google, try again")
    assert "reconnect" not in text.lower()
    h.google.clear_faults()

    # A 200 without an access token: reconnect.
    h.google.add_fault(path="/token", drop_fields=("access_token",), count=1)
    [(level, text)] = await verify(site, account_id)
    assert (level, text.split(":")[0]) == ("warning", "A reconnect is required")

    # Revoked at Google: reconnect.
    async with h.services.db.read() as conn:
        account = await account_store.get(conn, account_id)
    h.google.revoke_grant(h.services.secrets.decrypt(account.refresh_token_enc or ""))
    [(level, text)] = await verify(site, account_id)
    assert level == "warning"
    assert text.startswith("A reconnect is required: Google did not issue an access token")
    assert "invalid_grant" in text

    # No token stored at all.
    async with h.services.db.transaction() as conn:
        await conn.execute(accounts.update().values(refresh_token_enc=None))
    [(level, text)] = await verify(site, account_id)
    assert (level, text) == ("warning", "No Gmail token is stored for this mailbox. Connect "
                                        "the mailbox first.")
    async with site.client(AGENT) as client:
        page = (await client.get(f"/mailboxes/{account_id}/account")).text
    assert 'id="token-badge">No token stored<' in page


class _FakeMicrosoft:
    def __init__(self, outcome: TokenGrant | Exception) -> None:
        self.outcome = outcome
        self.seen: list[tuple[str | None, str]] = []

    def microsoft_oauth(self, tenant: str | None = None) -> _FakeMicrosoft:
        self.tenant = tenant
        return self

    async def refresh(self, token: str) -> TokenGrant:
        self.seen.append((self.tenant, token))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def _grant(access: str, refresh: str | None) -> TokenGrant:
    return TokenGrant(access_token=access, expires_in=3600, scopes=frozenset(),
                      refresh_token=refresh, token_type="Bearer")


@pytest.mark.parametrize(("outcome", "level", "start"), [
    (_grant("at", "rotated-2"), "success",
     "Outlook token is valid - a fresh access token was issued."),
    (OAuthInvalid("AADSTS70008: the refresh token has expired"), "warning",
     "A reconnect is required: Microsoft did not issue an access token"),
    (ProtocolViolation("token answer: field 'access_token' is missing"), "warning",
     "A reconnect is required: Microsoft did not issue an access token"),
    (ProviderUnavailable("HTTP 503"), "warning", "Could not reach Microsoft, try again"),
])
async def test_outlook_verify_stores_the_rotated_token_and_words_each_outcome(
    harness: Harness, outcome: Any, level: str, start: str,
) -> None:
    h = harness
    async with h.services.db.transaction() as conn:
        account_id = await account_store.create(
            conn, provider=ProviderKind.OUTLOOK, email="ops@contoso.example",
            now=h.clock.now(), refresh_token_enc=h.services.secrets.encrypt("original-1"),
            settings={"tenant": "contoso"})
        account = await account_store.get(conn, account_id)
    fake = _FakeMicrosoft(outcome)
    verifier = TokenVerifier(dataclasses.replace(h.services, connectors=fake))  # type: ignore[arg-type]
    result = await verifier.verify(account)
    assert result.level == level
    assert result.message.startswith(start)
    assert fake.seen == [("contoso", "original-1")]
    async with h.services.db.read() as conn:
        stored = h.services.secrets.decrypt(
            (await account_store.get(conn, account_id)).refresh_token_enc or "")
    # Microsoft rotates on every exchange: a successful check keeps the new token.
    assert stored == ("rotated-2" if level == "success" else "original-1")


async def test_last_error_and_state_are_said_in_plain_words(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(MAILBOX)
    await h.sync_until_idle()
    site = Site(h)
    await site.user(AGENT, share=[account_id])
    cases = {
        ("reauth_required", "oauth_invalid"): "Google refused the stored token: access was "
                                              "revoked or has expired. Reconnect the mailbox",
        ("reauth_required", "scope_missing"): "connected without a permission MailDesk needs",
        ("degraded", "rate_limited"): "Google is rate-limiting requests",
        ("degraded", "unavailable"): "Google could not be reached",
        ("error", "protocol"): "Google sent an answer MailDesk could not read",
        ("reauth_required", "wrong_token_kind"): "cannot call Microsoft Graph",
    }
    async with site.client(AGENT) as client:
        for (state, kind), sentence in cases.items():
            async with h.services.db.transaction() as conn:
                await account_store.update_fields(conn, account_id, state=state,
                                                  last_error_kind=kind,
                                                  last_error="provider detail here",
                                                  last_error_at=h.clock.now())
            page = (await client.get(f"/mailboxes/{account_id}/account")).text
            assert sentence in page, kind
            assert f'data-kind="{kind}"' in page
            assert "provider detail here" in page
        assert "must be reconnected" in page  # reauth_required's state sentence


async def test_realtime_state_active_with_expiration_then_error_with_reason(
    harness: Harness,
) -> None:
    h = harness
    account_id = await h.add_gmail(MAILBOX)
    await h.sync_until_idle()
    site = Site(h)
    await site.user(ADMIN, admin=True)
    async with site.client(ADMIN) as client:
        url = f"/mailboxes/{account_id}/account"
        assert 'id="realtime-state">Off<' in (await client.get(url)).text
        row = await h.services.push.enable(account_id, ProviderKind.GMAIL, PUSH)
        page = (await client.get(url)).text
        assert 'id="realtime-state">Active<' in page
        assert row.sub.expiration is not None
        assert f'datetime="{row.sub.expiration.isoformat()}"' in page
        # The token dies; the next renewal fails and says why.
        async with h.services.db.read() as conn:
            account = await account_store.get(conn, account_id)
        h.google.revoke_grant(h.services.secrets.decrypt(account.refresh_token_enc or ""))
        h.services.connectors.forget_tokens(account_id)
        h.clock.advance(timedelta(days=6, hours=1).total_seconds())
        await h.services.push.renew_due()
        page = (await client.get(url)).text
        assert 'id="realtime-state">Error<' in page
        assert "access was revoked or has expired" in page


async def test_admin_toggles_folder_sync_and_triggers_a_backfill(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(MAILBOX, seed=10)
    await h.sync_until_idle()
    site = Site(h)
    await site.user(ADMIN, admin=True)
    await site.user(AGENT, share=[account_id])
    async with h.services.db.read() as conn:
        inbox = int(await conn.scalar(select(folders.c.id).where(folders.c.role == "inbox"))
                    or 0)
    url = f"/mailboxes/{account_id}/account"
    async with site.client(AGENT) as agent:
        page = (await agent.get(url)).text
        assert "Trigger backfill" not in page, "users see no folder controls"
        assert 'role="switch"' not in page
    async with site.client(ADMIN) as admin:
        page = (await admin.get(url)).text
        assert f'id="folder-{inbox}"' in page
        response = await post_form(admin, url, f"{url}/folders/{inbox}/selected",
                                   {"selected": "0"})
        assert response.status_code == 303
        async with h.services.db.read() as conn:
            assert not await conn.scalar(select(folders.c.selected).where(folders.c.id == inbox))
        assert 'aria-checked="false"' in (await admin.get(url)).text
        await post_form(admin, url, f"{url}/folders/{inbox}/selected", {"selected": "1"})
        async with h.services.db.read() as conn:
            assert await conn.scalar(select(folders.c.selected).where(folders.c.id == inbox))

        response = await post_form(admin, url, f"{url}/folders/{inbox}/backfill")
        assert response.status_code == 303
        async with h.services.db.read() as conn:
            row = (await conn.execute(select(folders).where(folders.c.id == inbox))).one()
            account = await account_store.get(conn, account_id)
        assert row.backfill_requested
        assert not row.backfill_done
        assert account.sync_requested_at is not None, "the mailbox is stamped for a sync"
        page = (await admin.get(url)).text
        assert "Backfill of Inbox running" in page
        await h.sync_until_idle()
        page = (await admin.get(url)).text
        assert "Backfill of Inbox complete" in page
        # Someone else's folder id under this mailbox is no way in.
        response = await post_form(admin, url, f"{url}/folders/999999/backfill")
        assert response.status_code == 404


async def test_jobs_page_lists_each_jobs_last_run(harness: Harness) -> None:
    h = harness
    await h.add_gmail(MAILBOX, seed=3)
    await h.sync_until_idle()
    async with h.services.db.transaction() as conn:
        started = h.clock.now()
        run = await job_store.start(conn, "push-renewal", started)
        await job_store.finish(conn, run, started_at=started,
                               now=started + timedelta(milliseconds=2400), status="failed",
                               error="ProviderUnavailable: Google answered 503")
    site = Site(h)
    await site.user(ADMIN, admin=True)
    async with site.client(ADMIN) as admin:
        page = (await admin.get("/admin/jobs")).text
    assert 'data-job="sync"' in page
    assert f"last: {MAILBOX}" in page
    row = page[page.index('data-job="push-renewal"'):]
    row = row[:row.index("</tr>")]
    assert "2.4 s" in row
    assert "Failed" in row
    assert "ProviderUnavailable: Google answered 503" in row
