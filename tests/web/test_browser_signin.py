"""Sign-in in Chromium: a bad password is refused, a POST without the CSRF token is refused,
and signing out ends the session."""

from __future__ import annotations

import re

from playwright.async_api import Browser, expect

from tests.web.browser import sign_in, tab
from tests.web.support import ADMIN, PASSWORD, Site


async def test_sign_in_refuses_bad_password_and_csrf_less_post(
    site: Site, base_url: str, browser: Browser,
) -> None:
    await site.user(ADMIN, admin=True)
    async with tab(browser, base_url) as t:
        page = t.page
        response = await page.goto("/admin/jobs")
        assert response is not None
        await expect(page).to_have_url(re.compile(r"/signin\?next=%2Fadmin%2Fjobs$"))
        await expect(page.get_by_role("heading", name="Sign in to MailDesk")).to_be_visible()

        await sign_in(page, ADMIN, "not my password")
        await expect(page.locator("#signin-error")).to_have_text(
            "Wrong email address or password.")
        await expect(page.locator("#sign-out")).to_have_count(0)

        # The browser holds a session (with its token) now; a POST that does not carry the
        # token — what a forged cross-site form would send — is refused.
        refused = await page.request.post(f"{base_url}/signin",
                                          form={"email": ADMIN, "password": PASSWORD})
        assert refused.status == 403
        assert "did not come from MailDesk" in await refused.text()
        await page.goto("/")
        await expect(page).to_have_url(re.compile(r"/signin"))

        # The real form carries it: in, and on to the page first asked for.
        await page.goto("/signin?next=%2Fadmin%2Fjobs")
        await page.get_by_label("Email address").fill(ADMIN)
        await page.get_by_label("Password").fill(PASSWORD)
        await page.keyboard.press("Enter")  # keyboard only
        await expect(page).to_have_url(f"{base_url}/admin/jobs")
        await expect(page.get_by_role("heading", name="Scheduled jobs")).to_be_visible()
        cookies = await t.context.cookies()
        [session] = [c for c in cookies if c["name"] == "maildesk_session"]
        assert session["httpOnly"] is True
        assert session["sameSite"] == "Lax"
        assert await page.evaluate("document.cookie") == "", "scripts cannot read the session"

        await page.get_by_role("button", name="Sign out").click()
        await expect(page).to_have_url(f"{base_url}/signin")
        await expect(page.locator(".flash-info")).to_have_text("You are signed out.")
        await page.goto("/admin/jobs")
        await expect(page).to_have_url(re.compile(r"/signin\?next="))
        t.assert_clean("status of 400", "status of 403")
