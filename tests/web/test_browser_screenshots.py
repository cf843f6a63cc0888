"""The main pages in Chromium at laptop size, captured as screenshots.

Every run checks the pages render without a script or CSP error; with
``MAILDESK_SCREENSHOT_DIR=docs`` it also writes the README's screenshots there::

    MAILDESK_TEST_DB=sqlite MAILDESK_SCREENSHOT_DIR=docs \\
        .venv/bin/python -m pytest -q tests/web/test_browser_screenshots.py
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from playwright.async_api import Browser, expect

from maildesk.domain.accounts import ProviderKind
from maildesk.push.manager import gmail_push_settings
from maildesk.sync.worker import run_job
from tests.support.harness import Harness
from tests.web.browser import tab
from tests.web.support import ADMIN, Site

MAILBOX = "support@example.com"
PUSH = gmail_push_settings(project="acme-mail", topic="projects/acme-mail/topics/gmail",
                           audience="https://maildesk.example.com/maildesk/push/gmail",
                           signers=["gmail-push@acme-mail.iam.gserviceaccount.com"])


async def test_main_pages_render_cleanly_and_are_captured(
    harness: Harness, site: Site, base_url: str, browser: Browser, tmp_path: Path,
) -> None:
    h = harness
    # The browser shows times relative to its own clock: start the manual clock at "now".
    h.clock.advance(max(0.0, (datetime.now(UTC) - h.clock.now()).total_seconds()))
    account_id = await h.add_gmail(MAILBOX, seed=80)
    await h.sync_until_idle()
    await h.services.push.enable(account_id, ProviderKind.GMAIL, PUSH)
    for job in h.services.worker.periodic:
        await run_job(h.services.db, h.clock, job.name, job.run)
    await site.user(ADMIN, admin=True)
    out = Path(os.environ.get("MAILDESK_SCREENSHOT_DIR") or tmp_path)
    shots = {
        "screenshot-inbox.png": (f"/mailboxes/{account_id}", "#message-list li"),
        "screenshot-account.png": (f"/mailboxes/{account_id}/account", "#token-badge"),
        "screenshot-jobs.png": ("/admin/jobs", "#jobs"),
    }
    async with tab(browser, base_url, ADMIN) as t:
        for name, (url, ready) in shots.items():
            await t.page.goto(url)
            await expect(t.page.locator(ready).first).to_be_visible()
            if url.endswith(str(account_id)):
                await expect(t.page.locator("#live-status")).to_have_text("Live")
            path = out / name
            await t.page.screenshot(path=str(path))
            assert path.stat().st_size > 10_000, name
        t.assert_clean()
