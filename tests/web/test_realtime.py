"""The realtime assistants (Gmail: settings, preflight, validation, register; Outlook: readiness
and Register Subscription), the checkpoint-6 report, and Reconnect (OAuth code flow with state
and PKCE, both providers), over in-process HTTP."""

from __future__ import annotations

import dataclasses
import html
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from maildesk import mailboxes
from maildesk.clock import ManualClock
from maildesk.domain.accounts import ProviderKind, TokenKind
from maildesk.domain.push import PushState
from maildesk.errors import InputError
from maildesk.push import timeline
from maildesk.sim.google import create_google_app
from maildesk.sim.microsoft import create_microsoft_app
from maildesk.sim.server import serve_app
from maildesk.store import accounts as account_store
from maildesk.store import push as push_store
from tests.support.harness import MAILDESK, Harness
from tests.web.support import ADMIN, AGENT, Site, csrf_of, post_form

GMAIL = "push@example.com"
OUTLOOK = "olivia@example.com"
MALLORY = "mallory@example.com"
SIGNER = "gmail-push@acme.iam.gserviceaccount.com"
PUSH_URL = f"{MAILDESK}/maildesk/push/gmail"


def flashes(page: str) -> list[tuple[str, str]]:
    return [(level, html.unescape(text)) for level, text in re.findall(
        r'<p class="flash flash-(\w+)" data-level="\w+">([^<]*)</p>', page)]


async def _push_settings(h: Harness, account_id: int, provider: ProviderKind) -> dict[str, object]:
    async with h.services.db.read() as conn:
        row = await push_store.get(conn, account_id, provider)
    assert row is not None
    return row.settings


async def test_gmail_assistant_validates_realigns_the_audience_saves_the_signer_and_registers(
    harness: Harness,
) -> None:
    h = harness
    account_id = await h.add_gmail(GMAIL, seed=3)
    await h.sync_until_idle()
    site = Site(h)
    await site.user(ADMIN, admin=True)
    url = f"/mailboxes/{account_id}/realtime"
    async with site.client(ADMIN) as admin:
        page = (await admin.get(url)).text
        assert "Gmail realtime push" in page
        assert PUSH_URL in page
        assert 'id="register-watch" disabled' in page, "nothing to register before validation"

        bad = await post_form(admin, url, url + "/validate", {
            "project": "", "topic": "gmail", "audience": "", "signer": SIGNER})
        assert bad.status_code == 400
        assert "project id is required" in bad.text

        empty = await post_form(admin, url, url + "/validate", {
            "project": "acme", "topic": "gmail", "audience": "", "signer": SIGNER.upper()})
        assert empty.status_code == 303
        [(level, text)] = flashes((await admin.get(url)).text)
        assert level == "success"
        assert f"The audience was empty: set to the push URL {PUSH_URL}" \
            in text
        settings = await _push_settings(h, account_id, ProviderKind.GMAIL)
        assert settings == {"project": "acme", "topic": "projects/acme/topics/gmail",
                            "audience": PUSH_URL, "signers": [SIGNER]}

        await post_form(admin, url, url + "/validate", {
            "project": "acme", "topic": "projects/acme/topics/gmail",
            "audience": "https://old.example.com/push", "signer": SIGNER})
        [(_, text)] = flashes((await admin.get(url)).text)
        assert f"re-aligned from https://old.example.com/push to the push URL {PUSH_URL}" in text
        assert (await _push_settings(h, account_id, ProviderKind.GMAIL))["audience"] == PUSH_URL

        registered = await post_form(admin, url, url + "/register")
        assert registered.status_code == 303
        page = (await admin.get(url)).text
        [(level, text)] = flashes(page)
        assert level == "success"
        assert text.startswith("Watch registered: ")
        assert 'id="subscription-id"' in page
        assert 'id="realtime-state">Active' in page
        assert 'id="start-test"' in page
        assert 'id="start-test" disabled' not in page


async def test_gmail_preflight_does_a_real_get_and_wants_405(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(GMAIL)
    site = Site(h)
    await site.user(ADMIN, admin=True)
    url = f"/mailboxes/{account_id}/realtime"
    async with serve_app(site.app) as base, site.client(ADMIN) as admin:
        h.services.settings = h.services.settings.replace(base_url=base)
        await post_form(admin, url, url + "/preflight")
        [(level, text)] = flashes((await admin.get(url)).text)
        assert level == "success"
        assert text.startswith(f"Preflight passed: {base}/maildesk/push/gmail answered HTTP 405")

        # Some other server (here: a route that is not the push route) does not pass.
        h.services.settings = h.services.settings.replace(base_url=base + "/static")
        await post_form(admin, url, url + "/preflight")
        [(level, text)] = flashes((await admin.get(url)).text)
        assert level == "warning"
        assert "answered HTTP 404 to a GET instead of 405" in text

    h.services.settings = h.services.settings.replace(base_url="http://127.0.0.1:9")
    async with site.client(ADMIN) as admin:
        await post_form(admin, url, url + "/preflight")
        [(level, text)] = flashes((await admin.get(url)).text)
        assert level == "error"
        assert "could not be reached (ConnectError)" in text


async def test_outlook_assistant_registers_only_when_ready(harness: Harness) -> None:
    h = harness
    ready_id = await h.add_outlook(OUTLOOK, seed=3)
    imap_id = await h.add_outlook("imap-only@example.com", kind="imap")
    await h.sync_until_idle()
    site = Site(h)
    await site.user(ADMIN, admin=True)
    async with site.client(ADMIN) as admin:
        url = f"/mailboxes/{imap_id}/realtime"
        page = (await admin.get(url)).text
        assert 'id="readiness">Not ready' in page
        assert "Microsoft Graph" in page
        assert "IMAP" in page
        assert "Register Subscription" not in page

        url = f"/mailboxes/{ready_id}/realtime"
        page = (await admin.get(url)).text
        assert 'name="project"' not in page, "the Outlook assistant asks for nothing"
        assert f'value="{MAILDESK}/maildesk/push/outlook" readonly' in page
        assert 'id="readiness">Ready' in page
        assert "Register Subscription" in page
        response = await post_form(admin, url, url + "/register")
        assert response.status_code == 303
        page = (await admin.get(url)).text
        [(level, text)] = flashes(page)
        assert level == "success"
        assert text.startswith("Subscription registered: ")
        async with h.services.db.read() as conn:
            row = await push_store.get(conn, ready_id, ProviderKind.OUTLOOK)
        assert row is not None
        assert row.sub.state is PushState.ACTIVE
        assert f'<code id="subscription-id">{row.sub.subscription_id}</code>' in page
        assert 'id="subscription-expiration"' in page


async def test_visible_reports_count_only_during_a_test_and_need_csrf(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(GMAIL, seed=2)
    other_id = await h.add_gmail("other@example.com", seed=1)
    await h.sync_until_idle()
    site = Site(h)
    await site.user(AGENT, share=[account_id])
    async with h.services.db.transaction() as conn:
        await timeline.start_test(conn, account_id, "gmail", h.clock.now())
        await timeline.start_test(conn, other_id, "gmail", h.clock.now())
    h.google.add_message(GMAIL, subject="New", sender="a@example.org", to=GMAIL, text="x",
                         html="")
    await mailboxes.request_sync(h.services, account_id)
    await h.sync_until_idle()
    async with h.services.db.read() as conn:
        run = await timeline.current_test(conn, account_id)
        assert run is not None
        [message_id] = await timeline.changed_since(conn, run)
    async with site.client(AGENT) as agent:
        page = (await agent.get(f"/mailboxes/{account_id}")).text
        token = csrf_of(page)
        no_csrf = await agent.post(f"/mailboxes/{account_id}/visible",
                                   data={"message_id": str(message_id)})
        assert no_csrf.status_code == 403
        foreign = await agent.post(f"/mailboxes/{other_id}/visible",
                                   data={"message_id": str(message_id)},
                                   headers={"X-CSRF-Token": token})
        assert foreign.status_code == 404, "not a mailbox shared with this user"
        ok = await agent.post(f"/mailboxes/{account_id}/visible",
                              data={"message_id": str(message_id)},
                              headers={"X-CSRF-Token": token})
        assert ok.status_code == 204
    async with h.services.db.read() as conn:
        seen = await timeline.observe(conn, run)
    assert seen.visible is not None


async def _round_trip(admin: httpx.AsyncClient, provider_app: httpx.AsyncClient,
                      account_id: int) -> tuple[httpx.Response, dict[str, list[str]]]:
    """Reconnect → the provider's sign-in → back to our callback, as a browser follows it."""
    account_url = f"/mailboxes/{account_id}/account"
    start = await post_form(admin, account_url, account_url + "/reconnect")
    assert start.status_code == 303, start.text
    authorize = start.headers["location"]
    query = parse_qs(urlsplit(authorize).query)
    signed_in = await provider_app.get(authorize)
    assert signed_in.status_code == 302, signed_in.text
    back = urlsplit(signed_in.headers["location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == f"{MAILDESK}/oauth/callback"
    return await admin.get(f"{back.path}?{back.query}"), query


async def test_reconnect_gmail_runs_the_code_flow_with_state_and_pkce(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(GMAIL, seed=2)
    await h.sync_until_idle()
    async with h.services.db.read() as conn:
        old = h.services.secrets.decrypt((await account_store.get(conn, account_id)
                                          ).refresh_token_enc or "")
    h.google.revoke_grant(old)
    site = Site(h)
    await site.user(ADMIN, admin=True)
    google = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_google_app(h.google)),
                               base_url="http://sim")
    async with google, site.client(ADMIN) as admin:
        done, query = await _round_trip(admin, google, account_id)
        assert query["code_challenge_method"] == ["S256"]
        assert len(query["state"][0]) >= 32
        assert query["login_hint"] == [GMAIL]
        assert query["access_type"] == ["offline"]
        assert done.status_code == 303
        assert done.headers["location"].endswith("/account#token")
        [(level, text)] = flashes((await admin.get(done.headers["location"])).text)
        assert level == "success"
        assert text.startswith("Gmail reconnected")

        # The answer is single use: replaying it is refused and changes nothing.
        replay = await admin.get("/oauth/callback?state=" + query["state"][0] + "&code=x")
        assert replay.status_code == 400
    async with h.services.db.read() as conn:
        account = await account_store.get(conn, account_id)
    new = h.services.secrets.decrypt(account.refresh_token_enc or "")
    assert new != old
    results = await h.sync_until_idle()
    assert results, "the reconnect requested a sync"
    assert all(r.status == "ok" for r in results), "sync works with the new token"


async def test_reconnect_outlook_stores_the_rotated_graph_token(harness: Harness) -> None:
    h = harness
    account_id = await h.add_outlook(OUTLOOK, seed=2, kind="imap")
    site = Site(h)
    await site.user(ADMIN, admin=True)
    microsoft = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_microsoft_app(h.microsoft)),
        base_url="http://mssim")
    async with microsoft, site.client(ADMIN) as admin:
        done, query = await _round_trip(admin, microsoft, account_id)
        assert query["code_challenge_method"] == ["S256"]
        [(level, text)] = flashes((await admin.get(done.headers["location"])).text)
        assert (level, text.split(":")[0]) == ("success", "Outlook reconnected")
    async with h.services.db.read() as conn:
        account = await account_store.get(conn, account_id)
    assert account.token_kind == TokenKind.GRAPH.value, "reconnected with the Graph option"
    results = await h.sync_until_idle()
    assert results
    assert all(r.status == "ok" for r in results)


async def test_a_reconnect_signed_in_as_another_mailbox_is_refused_and_changes_nothing(
    harness: Harness,
) -> None:
    h = harness
    gmail_id = await h.add_gmail(GMAIL)
    outlook_id = await h.add_outlook(OUTLOOK)

    async def stored() -> list[str | None]:
        async with h.services.db.read() as conn:
            return [(await account_store.get(conn, i)).refresh_token_enc
                    for i in (gmail_id, outlook_id)]

    before = await stored()
    connectors = h.services.connectors
    mallory = h.grant(MALLORY)
    # What the code flow returns: an access token and a refresh token, of Mallory's mailbox.
    google_grant = dataclasses.replace(await connectors.google_oauth.refresh(mallory),
                                       refresh_token=mallory)
    with pytest.raises(InputError, match=f"you signed in as {MALLORY}, not {GMAIL}"):
        await mailboxes.reconnect_gmail_grant(h.services, gmail_id, google_grant)
    microsoft_grant = await connectors.microsoft_oauth().refresh(h.outlook_grant(MALLORY))
    with pytest.raises(InputError, match=f"you signed in as {MALLORY}, not {OUTLOOK}"):
        await mailboxes.reconnect_outlook(h.services, outlook_id, microsoft_grant)
    assert await stored() == before


async def test_reconnect_preflight_names_the_missing_app_credentials(
    db_url: str, clock: ManualClock, tmp_path: Path,
) -> None:
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path,
                            google_client_secret="", microsoft_client_id="") as h:
        async with h.services.db.transaction() as conn:
            gmail_id = await account_store.create(
                conn, provider=ProviderKind.GMAIL, email=GMAIL, now=h.clock.now(),
                refresh_token_enc=h.services.secrets.encrypt("x"), scopes=frozenset())
            outlook_id = await account_store.create(
                conn, provider=ProviderKind.OUTLOOK, email=OUTLOOK, now=h.clock.now(),
                refresh_token_enc=h.services.secrets.encrypt("x"), scopes=frozenset())
        site = Site(h)
        await site.user(ADMIN, admin=True)
        async with site.client(ADMIN) as admin:
            for account_id, missing in ((gmail_id, "MAILDESK_GOOGLE_CLIENT_SECRET"),
                                        (outlook_id, "MAILDESK_MICROSOFT_CLIENT_ID")):
                url = f"/mailboxes/{account_id}/account"
                response = await post_form(admin, url, url + "/reconnect")
                assert response.status_code == 303
                assert response.headers["location"] == url + "#token"
                [(level, text)] = flashes((await admin.get(url)).text)
                assert level == "error"
                assert text.endswith(f"Missing: {missing}.")
        assert not h.requests, "nothing was sent to a provider"

