"""Playwright helpers: a signed-in browser context, and the page errors it collected."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, expect

from tests.web.support import PASSWORD

VIEWPORT = {"width": 1366, "height": 820}  # a laptop screen


@dataclass
class Tab:
    context: BrowserContext
    page: Page
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def assert_clean(self, *expected: str) -> None:
        """No script error, no dialog; console errors containing one of ``expected`` (e.g. the
        browser's note on a refused 403 page) are allowed."""
        unexpected = [e for e in self.errors if not any(x in e for x in expected)]
        assert not unexpected, unexpected
        assert not self.dialogs, self.dialogs


@contextlib.asynccontextmanager
async def tab(browser: Browser, base: str, email: str | None = None,
              password: str = PASSWORD) -> AsyncIterator[Tab]:
    """A fresh browser context (its own cookies), signed in as ``email`` when given."""
    context = await browser.new_context(base_url=base, viewport=VIEWPORT)  # type: ignore[arg-type]
    page = await context.new_page()
    opened = Tab(context, page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            opened.errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: opened.errors.append(str(exc)))

    async def on_dialog(dialog: object) -> None:
        opened.dialogs.append(getattr(dialog, "message", "?"))
        await dialog.dismiss()  # type: ignore[attr-defined]

    page.on("dialog", on_dialog)
    try:
        if email is not None:
            await sign_in(page, email, password)
            await expect(page.locator("#sign-out")).to_be_visible()
        yield opened
    finally:
        await context.close()


async def sign_in(page: Page, email: str, password: str) -> None:
    await page.goto("/signin")
    await page.get_by_label("Email address").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_load_state()
