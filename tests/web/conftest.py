"""Browser fixtures: Debian's Chromium driven by Playwright (never a downloaded browser), and
the real app served on a free loopback port, in the test's event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, async_playwright

from maildesk.sim.server import serve_app
from tests.support.harness import Harness
from tests.web.support import Site

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                    args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def site(harness: Harness) -> Site:
    return Site(harness)


@pytest.fixture
async def base_url(site: Site) -> AsyncIterator[str]:
    """The site's app over real HTTP on 127.0.0.1 (the browser's address for it)."""
    async with serve_app(site.app) as base:
        yield base
