"""Verify token now in Chromium, as a user the mailbox is shared with: valid, revoked (reconnect
required) and no token stored (connect the mailbox)."""

from __future__ import annotations

from playwright.async_api import Browser, Page, expect

from maildesk.store import accounts as account_store
from maildesk.store.tables import accounts
from tests.support.harness import Harness
from tests.web.browser import tab
from tests.web.support import AGENT, Site

MAILBOX = "billing@example.com"


async def verify(page: Page) -> None:
    await page.get_by_role("button", name="Verify token now").click()
    await page.wait_for_load_state()


async def test_verify_token_now_reports_valid_revoked_and_missing(
    harness: Harness, site: Site, base_url: str, browser: Browser,
) -> None:
    h = harness
    account_id = await h.add_gmail(MAILBOX, seed=4)
    await h.sync_until_idle()
    await site.user(AGENT, share=[account_id])
    async with tab(browser, base_url, AGENT) as t:
        page = t.page
        await page.goto(f"/mailboxes/{account_id}")
        await page.get_by_role("link", name="Account", exact=True).first.click()
        await expect(page.locator("#token-badge")).to_have_text("Token stored")
        await expect(page.get_by_text("valid", exact=False)).to_have_count(0)

        await verify(page)
        await expect(page.locator(".flash-success")).to_have_text(
            "Gmail token is valid - a fresh access token was issued.")

        async with h.services.db.read() as conn:
            account = await account_store.get(conn, account_id)
        h.google.revoke_grant(h.services.secrets.decrypt(account.refresh_token_enc or ""))
        await verify(page)
        warning = page.locator(".flash-warning")
        await expect(warning).to_contain_text(
            "A reconnect is required: Google did not issue an access token")
        await expect(page.locator(".flash-success")).to_have_count(0)
        await expect(page.locator("#token-badge")).to_have_text("Token stored")  # still neutral

        async with h.services.db.transaction() as conn:
            await conn.execute(accounts.update().where(accounts.c.id == account_id)
                               .values(refresh_token_enc=None))
        await verify(page)
        await expect(page.locator(".flash-warning")).to_have_text(
            "No Gmail token is stored for this mailbox. Connect the mailbox first.")
        await expect(page.locator("#token-badge")).to_have_text("No token stored")
        t.assert_clean()
