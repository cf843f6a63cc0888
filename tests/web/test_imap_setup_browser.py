"""Add IMAP mailbox in Chromium: the server tests run in place (script), the typed password
stays in its field, and the mailbox is added and tested again from its account page."""

from __future__ import annotations

from playwright.async_api import Browser, expect

from maildesk.sim.server import serve_app
from tests.imap import conftest as imap_fixtures
from tests.support import imap_rig
from tests.support.dovecot import DovecotServer
from tests.support.harness import Harness
from tests.support.smtp_peer import PeerTls, SmtpPeer
from tests.web.browser import tab
from tests.web.support import ADMIN, Site

dovecot_full = imap_fixtures.dovecot_full


h = imap_rig.dovecot_harness


async def test_add_imap_mailbox_in_the_browser(
    h: Harness, dovecot_full: DovecotServer, browser: Browser,
) -> None:
    site = Site(h)
    await site.user(ADMIN, admin=True)
    user = dovecot_full.new_user()
    with SmtpPeer(tls=PeerTls.NONE, users={user: dovecot_full.password}) as peer:
        async with serve_app(site.app) as base, tab(browser, base, ADMIN) as t:
            page = t.page
            await page.get_by_role("link", name="Add IMAP mailbox").click()
            await expect(page.get_by_role("heading", name="Add an IMAP mailbox")).to_be_visible()
            form = page.locator("#imap-form")
            await form.locator("input[name=host]").fill(dovecot_full.host)
            await form.locator("input[name=port]").fill(str(dovecot_full.imaps_port))
            await form.locator("input[name=username]").fill(user)
            await form.locator("input[name=email]").fill(f"{user}@example.org")
            await form.locator("#imap-password").fill("not the password")

            await page.get_by_role("button", name="Test incoming server").click()
            result = page.locator(".check-result[data-which=incoming]")
            await expect(result).to_have_attribute("data-stage", "auth")
            await expect(result).to_contain_text("Failed at AUTH")
            await expect(result).to_contain_text("AUTH: the server refused the password")
            # Tested in place: still the same page, the password still typed.
            await expect(form.locator("#imap-password")).to_have_value("not the password")

            await form.locator("#imap-password").fill(dovecot_full.password)
            await page.get_by_role("button", name="Test incoming server").click()
            await expect(result).to_have_attribute("data-ok", "true")
            await expect(result).to_contain_text("OK: connected, signed in and opened INBOX")

            await form.locator("input[name=smtp_host]").fill(peer.host)
            await form.locator("input[name=smtp_port]").fill(str(peer.port))
            await form.locator("select[name=smtp_security]").select_option("none")
            await page.get_by_role("button", name="Test outgoing server").click()
            outgoing = page.locator(".check-result[data-which=outgoing]")
            await expect(outgoing).to_have_attribute("data-ok", "true")
            await expect(outgoing).to_contain_text("ready to send")
            await expect(result).to_have_attribute("data-ok", "true")  # both results shown

            await page.get_by_role("button", name="Add mailbox").click()
            await expect(page.locator(".flash-success")).to_contain_text(
                f"Added {user}@example.org.")
            await expect(page.locator("#incoming-server")).to_contain_text(
                f"{dovecot_full.host}:{dovecot_full.imaps_port}")
            await page.get_by_role("button", name="Test outgoing server").click()
            await expect(page.locator(".flash-success")).to_contain_text(
                "Outgoing server (SMTP)")
            assert peer.messages == []
            t.assert_clean()
