"""The web UI under test: users, signed-in HTTP clients, and the app served on loopback."""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import AsyncIterator, Iterable

import httpx

from maildesk.app import create_app
from maildesk.errors import NotFound
from maildesk.passwords import hash_password
from maildesk.store import users as user_store
from tests.support.harness import Harness

PASSWORD = "correct horse battery"
ADMIN = "admin@example.com"
AGENT = "agent@example.com"
BASE = "http://maildesk.test"

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')


def csrf_of(page: str) -> str:
    found = _CSRF.search(page) or _META.search(page)
    assert found is not None, "the page carries a CSRF token"
    return html.unescape(found.group(1))


class Site:
    """One ``create_app`` of the harness's services, and helpers to use it as people do."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.app = create_app(h.services)

    async def user(self, email: str, *, admin: bool = False, password: str = PASSWORD,
                   share: Iterable[int] = ()) -> int:
        """Create the user (or, when it exists, just set what is shared with it)."""
        async with self.h.services.db.transaction() as conn:
            try:
                uid = (await user_store.by_email(conn, email)).id
            except NotFound:
                uid = await user_store.create(conn, email=email, password_hash=hash_password(
                    password), is_admin=admin, now=self.h.clock.now())
            await user_store.set_shared_accounts(conn, uid, frozenset(share))
        return uid

    @contextlib.asynccontextmanager
    async def client(self, email: str | None = None, password: str = PASSWORD
                     ) -> AsyncIterator[httpx.AsyncClient]:
        """An in-process client; signed in as ``email`` when given."""
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                     base_url=BASE) as client:
            if email is not None:
                response = await sign_in(client, email, password)
                assert response.status_code == 303, response.text
            yield client


async def sign_in(client: httpx.AsyncClient, email: str, password: str,
                  next_url: str = "/") -> httpx.Response:
    form = await client.get("/signin")
    return await client.post("/signin", data={
        "csrf_token": csrf_of(form.text), "email": email, "password": password,
        "next": next_url,
    })


async def post_form(client: httpx.AsyncClient, page_url: str, action: str,
                    data: dict[str, str] | None = None) -> httpx.Response:
    """Submit a form the way a browser would: with the token of the page it sits on."""
    page = await client.get(page_url)
    return await client.post(action, data={"csrf_token": csrf_of(page.text), **(data or {})})
