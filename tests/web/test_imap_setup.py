"""IMAP mailboxes in the web UI, through the app over in-process HTTP: the Add IMAP mailbox form
and its server tests (administrators), the account page's Test incoming/outgoing server
buttons and Update password — against a real Dovecot and a real SMTP server."""

from __future__ import annotations

import html
import re
from typing import Any

import httpx
import pytest

from maildesk.domain.accounts import AccountState, ProviderKind
from maildesk.store import accounts as account_store
from tests.imap import conftest as imap_fixtures
from tests.support import imap_rig
from tests.support.dovecot import DovecotServer
from tests.support.harness import Harness
from tests.support.smtp_peer import SmtpPeer
from tests.web.support import ADMIN, AGENT, Site, csrf_of, post_form

WRONG = "wrong-password-0815"
FORM = "/admin/mailboxes/imap"
# Dovecot (its session fixture lives with the IMAP tests; named here so pytest finds it).
dovecot_full = imap_fixtures.dovecot_full


h = imap_rig.dovecot_harness


@pytest.fixture
async def site(h: Harness) -> Site:
    site = Site(h)
    await site.user(ADMIN, admin=True)
    return site


user = imap_rig.dovecot_login


peer = imap_rig.plain_smtp_peer


def form_data(dovecot: DovecotServer, user: str, peer: SmtpPeer | None = None, *,
              password: str | None = None, **extra: str) -> dict[str, str]:
    data = {"email": f"{user}@example.org", "host": dovecot.host,
            "port": str(dovecot.imap_port), "security": "starttls", "username": user,
            "sign_in": "password", "sent_copy": "auto", "idle_folders": "INBOX",
            "password": dovecot.password if password is None else password,
            "smtp_host": "", "smtp_port": "", "smtp_security": "", "smtp_username": ""}
    if peer is not None:
        data.update(smtp_host=peer.host, smtp_port=str(peer.port), smtp_security="none")
    return {**data, **extra}


def text_of(page: str) -> str:
    """The page's text without tags (entities decoded), spaces collapsed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def flashes(page: str) -> list[tuple[str, str]]:
    return [(level, text_of(body).strip()) for level, body in re.findall(
        r'<p class="flash flash-(\w+)" data-level="\w+">(.*?)</p>', page, re.S)]


async def imap_rows(h: Harness) -> list[account_store.AccountRow]:
    async with h.services.db.read() as conn:
        return [a for a in await account_store.list_all(conn) if a.provider is ProviderKind.IMAP]


async def submit(client: httpx.AsyncClient, action: str, data: dict[str, Any],
                 **headers: str) -> httpx.Response:
    page = await client.get(FORM)
    return await client.post(action, data={"csrf_token": csrf_of(page.text), **data},
                             headers=headers)


async def test_admin_tests_the_servers_then_adds_the_mailbox(
    h: Harness, site: Site, dovecot_full: DovecotServer, user: str, peer: SmtpPeer,
) -> None:
    async with site.client(ADMIN) as admin:
        index = await admin.get("/")
        assert 'id="add-imap" href="/admin/mailboxes/imap"' in index.text
        page = await admin.get(FORM)
        assert page.status_code == 200
        assert "Test incoming server" in page.text
        assert "Test outgoing server" in page.text

        # Test incoming with a wrong password: the stage and the reason, no password echoed.
        response = await submit(admin, FORM + "/test", {
            **form_data(dovecot_full, user, peer, password=WRONG), "test": "incoming"})
        assert response.status_code == 200
        shown = text_of(response.text)
        assert "Failed at AUTH" in shown
        assert "AUTH: the server refused the password" in shown
        assert f"Incoming server (IMAP) {dovecot_full.host}:{dovecot_full.imap_port}" in shown
        assert WRONG not in response.text
        assert 'id="retype-note"' in response.text
        assert f'value="{user}"' in response.text, "the other fields are kept"

        # The same test as the page's script asks for it: JSON, nothing rendered.
        response = await submit(admin, FORM + "/test", {
            **form_data(dovecot_full, user, peer), "test": "outgoing"},
            accept="application/json")
        assert response.headers["content-type"].startswith("application/json")
        [check] = response.json()["checks"]
        assert (check["which"], check["ok"], check["stage"]) == ("outgoing", True, "ready")
        assert check["line"].startswith("OK: connected, signed in and ready to send")
        assert peer.messages == []
        response = await submit(admin, FORM + "/test", {
            **form_data(dovecot_full, user), "test": "outgoing"}, accept="application/json")
        assert response.status_code == 400
        assert "SMTP host" in response.json()["error"]

        # Adding with the wrong password: refused, the form again, nothing stored.
        response = await submit(admin, FORM, form_data(dovecot_full, user, peer,
                                                       password=WRONG))
        assert response.status_code == 400
        shown = text_of(response.text)
        assert "Not added: the incoming server (imap) test failed" in shown
        assert "AUTH: the server refused the password" in shown
        assert await imap_rows(h) == []

        response = await submit(admin, FORM, form_data(dovecot_full, user, peer))
        assert response.status_code == 303, text_of(response.text)
        [row] = await imap_rows(h)
        assert response.headers["location"] == f"/mailboxes/{row.id}/account"
        assert h.services.secrets.decrypt(row.password_enc or "") == dovecot_full.password
        page = await admin.get(response.headers["location"])
        assert ("success", f"Added {user}@example.org. The first sync starts now: the newest "
                "mail first, older mail follows in the background.") in flashes(page.text)
        shown = text_of(page.text)
        assert f"Incoming (IMAP) {dovecot_full.host}:{dovecot_full.imap_port} · starttls" in shown
        assert f"Outgoing (SMTP) {peer.host}:{peer.port} · none" in shown
        assert "Verify token now" not in page.text, "an IMAP mailbox has no OAuth token"
        assert dovecot_full.password not in page.text


async def test_account_page_tests_servers_and_takes_a_new_password(
    h: Harness, site: Site, dovecot_full: DovecotServer, user: str, peer: SmtpPeer,
) -> None:
    async with site.client(ADMIN) as admin:
        response = await submit(admin, FORM, {**form_data(dovecot_full, user, peer,
                                                           password=WRONG), "skip_verify": "1"})
        assert response.status_code == 303
        [row] = await imap_rows(h)
        account = f"/mailboxes/{row.id}/account"
        await site.user(AGENT, share=[row.id])

        # Everyone who sees the mailbox may test it; the stored (wrong) password fails at AUTH.
        async with site.client(AGENT) as agent:
            page = await agent.get(account)
            assert "Test incoming server" in page.text
            assert "Update password" not in page.text, "only administrators change it"
            response = await post_form(agent, account, account + "/test/incoming")
            assert response.status_code == 303
            [(level, shown)] = flashes((await agent.get(account)).text)
            assert level == "error"
            assert shown.startswith(f"Incoming server (IMAP) {dovecot_full.host}:"
                                    f"{dovecot_full.imap_port} (starttls): AUTH: the server "
                                    "refused the password")
            response = await post_form(agent, account, account + "/test/outgoing")
            [(level, shown)] = flashes((await agent.get(account)).text)
            assert level == "error"
            assert "AUTH: the server refused the password" in shown
            response = await post_form(agent, account, account + "/password",
                                       {"password": dovecot_full.password})
            assert response.status_code == 403

        page = await admin.get(account)
        assert 'id="update-password"' in page.text
        await post_form(admin, account, account + "/password", {"password": "also wrong"})
        [(level, shown)] = flashes((await admin.get(account)).text)
        assert level == "error"
        assert shown.startswith("The new password was not stored: Incoming server (IMAP)")
        assert "AUTH:" in shown
        [unchanged] = await imap_rows(h)
        assert unchanged.password_enc == row.password_enc

        await post_form(admin, account, account + "/password",
                        {"password": dovecot_full.password})
        [(level, shown)] = flashes((await admin.get(account)).text)
        assert (level, shown) == ("success", "New password stored. The mailbox syncs again "
                                  "now; realtime (IDLE) reconnects with it.")
        [fixed] = await imap_rows(h)
        assert h.services.secrets.decrypt(fixed.password_enc or "") == dovecot_full.password
        assert fixed.state is AccountState.NEW

        for which, reason in (("incoming", "opened INBOX"), ("outgoing", "ready to send")):
            await post_form(admin, account, f"{account}/test/{which}")
            [(level, shown)] = flashes((await admin.get(account)).text)
            assert level == "success", shown
            assert reason in shown
        assert peer.messages == []


async def test_the_add_form_is_for_administrators_only(
    h: Harness, site: Site, dovecot_full: DovecotServer, user: str,
) -> None:
    await site.user(AGENT)
    async with site.client(AGENT) as agent:
        assert 'id="add-imap"' not in (await agent.get("/")).text
        assert (await agent.get(FORM)).status_code == 403
        token = csrf_of((await agent.get("/")).text)
        for action in (FORM, FORM + "/test"):
            response = await agent.post(action, data={
                "csrf_token": token, **form_data(dovecot_full, user), "test": "incoming"})
            assert response.status_code == 403, action
    assert await imap_rows(h) == []
    async with site.client(ADMIN) as admin:
        # Bad input is said in words on the form, with a 400.
        response = await submit(admin, FORM, {**form_data(dovecot_full, user), "host": ""})
        assert response.status_code == 400
        assert "IMAP host: a host name or address is required." in text_of(response.text)
        response = await submit(admin, FORM + "/test", form_data(dovecot_full, user))
        assert response.status_code == 400
        assert "Choose which server to test." in text_of(response.text)
    assert await imap_rows(h) == []
