"""Live inbox in Chromium: two people (an administrator and a user the mailbox is shared with)
watch the same inbox in two browser contexts; an arrival and a delete reach both without a
reload."""

from __future__ import annotations

import re

from playwright.async_api import Browser, expect

from maildesk import mailboxes
from tests.support.harness import Harness
from tests.web.browser import tab
from tests.web.support import ADMIN, AGENT, Site

MAILBOX = "shared@example.com"


async def synced(h: Harness, account_id: int) -> None:
    await mailboxes.request_sync(h.services, account_id)
    results = await h.sync_until_idle()
    assert all(r.status == "ok" for r in results)


async def test_arrival_and_delete_show_live_in_two_signed_in_contexts(
    harness: Harness, site: Site, base_url: str, browser: Browser,
) -> None:
    h = harness
    account_id = await h.add_gmail(MAILBOX, seed=12)
    await h.sync_until_idle()
    await site.user(ADMIN, admin=True)
    await site.user(AGENT, share=[account_id])
    async with tab(browser, base_url, ADMIN) as a, tab(browser, base_url, AGENT) as b:
        viewers = (a, b)
        for t in viewers:
            await t.page.goto(f"/mailboxes/{account_id}")
            await expect(t.page.locator("#live-status")).to_have_text("Live")
            # Set on the open page: still there later means nothing was reloaded.
            await t.page.evaluate("window.__sameDocument = true")
        before = await a.page.locator("#message-list li.msg").count()

        remote = h.google.add_message(MAILBOX, subject="Live arrival: order 4417",
                                      sender="Ada Lovelace <ada@example.org>", to=MAILBOX,
                                      text="It shipped.", html="<p>It shipped.</p>")
        await synced(h, account_id)
        for t in viewers:
            row = t.page.locator("#message-list li.msg", has_text="Live arrival: order 4417")
            await expect(row).to_have_count(1)
            await expect(row).to_have_class(re.compile(r"\bunread\b"))
            await expect(row.locator(".msg-from")).to_have_text("Ada Lovelace")
            await expect(t.page.locator("#message-list li.msg").first).to_contain_text(
                "Live arrival: order 4417")  # newest first
        await expect(a.page.locator("#message-list li.msg")).to_have_count(before + 1)

        h.google.trash_message(MAILBOX, remote)
        await synced(h, account_id)
        for t in viewers:
            await expect(t.page.locator("#message-list li.msg",
                                        has_text="Live arrival: order 4417")).to_have_count(0)
            assert await t.page.evaluate("window.__sameDocument") is True
        await expect(b.page.locator("#message-list li.msg")).to_have_count(before)
        trash = b.page.locator("#folders a.folder", has_text="Trash").locator(".folder-total")
        await expect(trash).to_have_text("1")
        for t in viewers:
            t.assert_clean()
