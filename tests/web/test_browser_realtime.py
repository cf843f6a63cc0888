"""The realtime assistants and the realtime test timeline in Chromium, and Reconnect's redirect
round trip through the Google simulator's sign-in.

The Gmail test goes the whole way: settings (validation re-aligns the empty audience), a real
preflight GET, Register, Start test, a new mail delivered by the simulator's Pub/Sub with a real
OIDC token, the inbox open in a second tab rendering it live, Re-check until 6/6, Finish. With
``MAILDESK_SCREENSHOT_DIR=docs`` the finished timeline is captured for the README.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from playwright.async_api import Browser, Page, expect

from maildesk.sim.google import create_google_app
from maildesk.sim.server import serve_app
from maildesk.store import accounts as account_store
from tests.support.harness import MAILDESK, Harness
from tests.web.browser import tab
from tests.web.support import ADMIN, Site

GMAIL = "realtime@example.com"
OUTLOOK = "olivia@example.com"
SIGNER = "gmail-push@acme-mail.iam.gserviceaccount.com"
TOPIC = "projects/acme-mail/topics/gmail-push"


async def flash(page: Page, level: str) -> str:
    found = page.locator(f".flash-{level}")
    await expect(found).to_have_count(1)
    return await found.inner_text()


async def test_gmail_assistant_and_the_timeline_reach_six_of_six(
    harness: Harness, site: Site, base_url: str, browser: Browser, tmp_path: Path,
) -> None:
    h = harness
    account_id = await h.add_gmail(GMAIL, seed=6)
    await h.sync_until_idle()
    await site.user(ADMIN, admin=True)
    # The public address is where this test serves the app (the preflight GETs it).
    h.services.settings = h.services.settings.replace(base_url=base_url)
    push_url = f"{base_url}/maildesk/push/gmail"
    h.google.pubsub.add_subscription(TOPIC, f"{MAILDESK}/maildesk/push/gmail",
                                     audience=push_url, service_account=SIGNER)
    h.google.pubsub.backoff_scale = 0.001
    async with tab(browser, base_url, ADMIN) as t, h.serving():
        page = t.page
        await page.goto(f"/mailboxes/{account_id}/account")
        await page.get_by_role("link", name="Gmail realtime assistant").click()
        await expect(page.get_by_role("heading", name="Gmail realtime push")).to_be_visible()
        await expect(page.locator("#register-watch")).to_be_disabled()

        await page.get_by_label("Google Cloud project id").fill("acme-mail")
        await page.get_by_label("Pub/Sub topic").fill("gmail-push")
        await page.get_by_label("OIDC audience").fill("")
        await page.get_by_label("Signer service account").fill(SIGNER)
        await page.get_by_role("button", name="Validate and save").click()
        text = await flash(page, "success")
        assert f"topic {TOPIC}" in text
        assert f"The audience was empty: set to the push URL {push_url}." in text
        await expect(page.get_by_label("OIDC audience")).to_have_value(push_url)

        await page.get_by_role("button", name="Run preflight").click()
        assert (await flash(page, "success")).startswith(
            f"Preflight passed: {push_url} answered HTTP 405 to a GET")

        await page.get_by_role("button", name="Register", exact=True).click()
        assert (await flash(page, "success")).startswith("Watch registered: ")
        await expect(page.locator("#realtime-state")).to_have_text("Active")

        await page.get_by_role("button", name="Start test").click()
        assert (await flash(page, "success")).startswith("Realtime test started.")
        await expect(page.locator("#timeline li[data-status=waiting]")).to_have_count(6)

        inbox = await t.context.new_page()
        await inbox.goto(f"/mailboxes/{account_id}")
        await expect(inbox.locator("#live-status")).to_have_text("Live")
        h.clock.advance(2)  # past the simulator's per-mailbox publish rate limit
        h.google.add_message(GMAIL, subject="Realtime test 1", sender="Ada <ada@example.org>",
                             to=GMAIL, text="Testing.", html="<p>Testing.</p>")
        await expect(inbox.locator("#message-list li.msg", has_text="Realtime test 1")
                     ).to_have_count(1)

        async with asyncio.timeout(15):
            while True:
                await page.get_by_role("button", name="Re-check").click()
                await page.wait_for_load_state()
                if await page.locator("#timeline-score").get_attribute("data-observed") == "6":
                    break
                await asyncio.sleep(0.2)
        await expect(page.locator("#timeline li[data-status=observed]")).to_have_count(6)
        await expect(page.locator("#timeline-score")).to_contain_text("6/6")
        await expect(page.locator("#timeline-hint")).to_have_count(0)
        shots = Path(os.environ.get("MAILDESK_SCREENSHOT_DIR") or tmp_path)
        shot = shots / "screenshot-realtime.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000

        await page.get_by_role("button", name="Finish").click()
        assert await flash(page, "success") == (
            "Realtime test finished: 6 of 6 checkpoints observed.")
        await expect(page.get_by_role("button", name="Start test")).to_be_enabled()
        t.assert_clean()


async def test_outlook_assistant_shows_readiness_and_registers_a_subscription(
    harness: Harness, site: Site, base_url: str, browser: Browser,
) -> None:
    h = harness
    account_id = await h.add_outlook(OUTLOOK, seed=3)
    await h.sync_until_idle()
    await site.user(ADMIN, admin=True)
    async with tab(browser, base_url, ADMIN) as t:
        page = t.page
        await page.goto(f"/mailboxes/{account_id}/account")
        await page.get_by_role("link", name="Outlook push assistant").click()
        await expect(page.get_by_role(
            "heading", name="Enable Microsoft 365 push notifications")).to_be_visible()
        await expect(page.locator("#mailbox-email")).to_have_text(OUTLOOK)
        webhook = page.get_by_label("Webhook URL")
        await expect(webhook).to_have_value(f"{MAILDESK}/maildesk/push/outlook")
        await expect(webhook).not_to_be_editable()
        await expect(page.locator("#readiness")).to_have_text("Ready")
        await expect(page.get_by_role("textbox")).to_have_count(1)  # no inputs but the URL

        await page.get_by_role("button", name="Register Subscription").click()
        assert (await flash(page, "success")).startswith("Subscription registered: ")
        await expect(page.locator("#realtime-state")).to_have_text("Active")
        await expect(page.locator("#subscription-id")).not_to_be_empty()
        await expect(page.locator("#subscription-expiration")).to_be_visible()
        await expect(page.get_by_role("button", name="Start test")).to_be_enabled()
        t.assert_clean()


async def test_reconnect_gmail_round_trip_through_the_sign_in_page(
    harness: Harness, site: Site, base_url: str, browser: Browser,
) -> None:
    h = harness
    account_id = await h.add_gmail(GMAIL, seed=2)
    await h.sync_until_idle()
    async with h.services.db.read() as conn:
        old = (await account_store.get(conn, account_id)).refresh_token_enc
    await site.user(ADMIN, admin=True)
    async with serve_app(create_google_app(h.google)) as google:
        # The browser reaches the simulator's sign-in over real HTTP; the code exchange goes
        # through MailDesk's own client, as in production.
        h.services.settings = h.services.settings.replace(
            base_url=base_url, google_authorize_url=f"{google}/o/oauth2/v2/auth")
        async with tab(browser, base_url, ADMIN) as t:
            page = t.page
            await page.goto(f"/mailboxes/{account_id}/account")
            await page.get_by_role("button", name="Reconnect Gmail").click()
            await page.wait_for_url(f"{base_url}/mailboxes/{account_id}/account*")
            assert (await flash(page, "success")).startswith("Gmail reconnected")
            t.assert_clean()
    async with h.services.db.read() as conn:
        new = (await account_store.get(conn, account_id)).refresh_token_enc
    assert new
    assert new != old
