"""Roles in Chromium: a signed-in user who is not an administrator is refused (403) on every
administrator page and action — with a valid CSRF token, so the refusal is the role's — and
sees none of them in the navigation."""

from __future__ import annotations

from playwright.async_api import Browser, expect
from sqlalchemy import func, select

from maildesk.store import mail as mail_store
from maildesk.store import users as user_store
from maildesk.store.tables import folders
from tests.support.harness import Harness
from tests.web.browser import tab
from tests.web.support import ADMIN, AGENT, Site
from tests.web.test_auth import ADMIN_SURFACE, concrete

MAILBOX = "ops@example.com"
POST_STATUS = """async ([url, fields]) => {
  const token = document.querySelector('meta[name="csrf-token"]').content;
  const body = new URLSearchParams({csrf_token: token, ...fields});
  const response = await fetch(url, {method: "POST", body, redirect: "manual"});
  return response.status;
}"""


async def test_a_user_is_refused_every_admin_page_and_action(
    harness: Harness, site: Site, base_url: str, browser: Browser,
) -> None:
    h = harness
    account_id = await h.add_gmail(MAILBOX, seed=3)
    await h.sync_until_idle()
    admin_id = await site.user(ADMIN, admin=True)
    await site.user(AGENT, share=[account_id])
    async with h.services.db.read() as conn:
        folder_id = int(await conn.scalar(select(func.min(folders.c.id))) or 0)
    ids = {"account_id": account_id, "folder_id": folder_id, "user_id": admin_id}
    fields = {"email": "sneaky@example.com", "password": "p" * 12, "role": "admin",
              "account": str(account_id), "selected": "0"}
    async with tab(browser, base_url, AGENT) as t:
        page = t.page
        await page.goto("/")
        nav = page.get_by_role("navigation", name="Main")
        await expect(nav.get_by_role("link", name="Mailboxes")).to_be_visible()
        await expect(nav.get_by_role("link", name="Jobs")).to_have_count(0)
        await expect(nav.get_by_role("link", name="Users")).to_have_count(0)
        for method, path in sorted(ADMIN_SURFACE):
            url = concrete(path, ids)
            if method == "GET":
                response = await page.goto(url)
                assert response is not None
                assert response.status == 403, url
                await expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
            else:
                await page.goto(f"/mailboxes/{account_id}/account")
                status = await page.evaluate(POST_STATUS, [url, fields])
                assert status == 403, url
        # The account page offers them only what they may do.
        await page.goto(f"/mailboxes/{account_id}/account")
        await expect(page.get_by_role("button", name="Verify token now")).to_be_visible()
        await expect(page.get_by_role("button", name="Trigger backfill")).to_have_count(0)
        await expect(page.get_by_role("switch")).to_have_count(0)
        t.assert_clean("status of 403")
    async with h.services.db.read() as conn:
        assert [u.email for u in await user_store.list_all(conn)] == [ADMIN, AGENT]
        assert all(f.selected for f in await mail_store.list_folders(conn, account_id))
