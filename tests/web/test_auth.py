"""Sign-in, sessions, CSRF and roles, driven in-process (the browser tests drive the same paths
through Chromium)."""

from __future__ import annotations

import base64
import json
import logging
import re
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from starlette.routing import Mount, Route

from maildesk.store import push as push_store
from maildesk.store import users as user_store
from maildesk.store.tables import folders
from maildesk.web.auth import SESSION_COOKIE, safe_next
from tests.support.harness import Harness
from tests.web.support import ADMIN, AGENT, PASSWORD, Site, csrf_of, post_form, sign_in

MAILBOX = "team@example.com"


def web_routes(site: Site) -> list[Route]:
    mount = next(r for r in site.app.routes if isinstance(r, Mount) and r.path == "")
    return [r for r in mount.routes if isinstance(r, Route)]


def concrete(path: str, ids: dict[str, int]) -> str:
    return re.sub(r"\{(\w+):int\}", lambda m: str(ids[m.group(1)]), path)


def session_of(client: httpx.AsyncClient) -> dict[str, Any]:
    value = client.cookies[SESSION_COOKIE]
    payload = value.split(".")[0]
    decoded: dict[str, Any] = json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


async def test_sign_in_sets_a_hardened_session_cookie_and_goes_where_asked(
    harness: Harness,
) -> None:
    site = Site(harness)
    await site.user(ADMIN, admin=True)
    async with site.client() as client:
        first = await client.get("/admin/jobs")
        assert first.status_code == 303
        assert first.headers["location"] == "/signin?next=%2Fadmin%2Fjobs"
        response = await sign_in(client, ADMIN.upper(), PASSWORD, next_url="/admin/jobs")
        assert response.status_code == 303
        assert response.headers["location"] == "/admin/jobs"
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=lax" in cookie
        assert "path=/" in cookie
        assert "secure" not in cookie  # plain-http base URL (loopback)
        jobs = await client.get("/admin/jobs")
        assert jobs.status_code == 200
        assert "Scheduled jobs" in jobs.text
        # The signed cookie is readable, so it must carry nothing that helps guess a password.
        async with harness.services.db.read() as conn:
            stored = (await user_store.by_email(conn, ADMIN)).password_hash
        session = session_of(client)
        assert set(session) == {"uid", "pwf", "csrf"}
        assert session["pwf"] not in stored
        assert session["csrf"] == csrf_of(jobs.text)


async def test_wrong_password_and_unknown_address_get_the_same_refusal(
    harness: Harness, caplog: pytest.LogCaptureFixture,
) -> None:
    site = Site(harness)
    await site.user(ADMIN, admin=True)
    caplog.set_level(logging.DEBUG)
    async with site.client() as client:
        wrong = await sign_in(client, ADMIN, "not the password")
        unknown = await sign_in(client, "nobody@example.com", "not the password")
        for response in (wrong, unknown):
            assert response.status_code == 400
            assert "Wrong email address or password." in response.text
        assert (await client.get("/")).status_code == 303, "nobody is signed in"
    assert "not the password" not in caplog.text
    assert PASSWORD not in caplog.text


async def test_sign_in_is_rate_limited_per_address(harness: Harness) -> None:
    site = Site(harness)
    await site.user(ADMIN, admin=True)
    await site.user(AGENT)
    async with site.client() as client:
        for _ in range(5):
            assert (await sign_in(client, ADMIN, "guess")).status_code == 400
        limited = await sign_in(client, ADMIN, PASSWORD)
        assert limited.status_code == 429, "even the right password waits"
        assert "Too many failed sign-ins for this address" in limited.text
        assert (await client.get("/")).status_code == 303
        # Another address is not affected.
        assert (await sign_in(client, AGENT, PASSWORD)).status_code == 303
    harness.clock.advance(15 * 60 + 1)
    async with site.client() as client:
        assert (await sign_in(client, ADMIN, PASSWORD)).status_code == 303


def test_only_local_paths_are_redirect_targets() -> None:
    assert safe_next("/mailboxes/1?folder=2") == "/mailboxes/1?folder=2"
    for bad in ("https://evil.example/", "//evil.example", "/\\evil.example", "", None,
                "javascript:alert(1)", "/x\r\nSet-Cookie: a=b"):
        assert safe_next(bad) == "/"


async def test_every_state_changing_request_needs_the_session_csrf_token(
    harness: Harness,
) -> None:
    h = harness
    account_id = await h.add_gmail(MAILBOX)
    await h.sync_until_idle()
    site = Site(h)
    admin_id = await site.user(ADMIN, admin=True)
    async with h.services.db.read() as conn:
        folder_id = int(await conn.scalar(select(func.min(folders.c.id))) or 0)
    ids = {"account_id": account_id, "folder_id": folder_id, "user_id": admin_id,
           "message_id": 1, "outbox_id": 1}
    posts = [r for r in web_routes(site) if r.methods and "POST" in r.methods]
    assert len(posts) == 23, [r.path for r in posts]
    async with site.client(ADMIN) as client, site.client(ADMIN) as other:
        foreign_token = session_of(other)["csrf"]
        for route in posts:
            url = concrete(route.path, ids)
            for data, headers in (
                ({}, {}),                                          # no token at all
                ({"csrf_token": "x" * 43}, {}),                     # a made-up token
                ({"csrf_token": foreign_token}, {}),               # another session's token
                ({"csrf_token": session_of(client)["csrf"]},       # right token, other site
                 {"Origin": "https://evil.example"}),
            ):
                response = await client.post(url, data={**data, "password": "x" * 12,
                                                         "email": "new@example.com"},
                                             headers=headers)
                assert response.status_code == 403, (url, data, headers)
                assert "did not come from MailDesk" in response.text
        # Nothing happened: no user was created, the admin is still signed in.
        async with h.services.db.read() as conn:
            assert [u.email for u in await user_store.list_all(conn)] == [ADMIN]
        assert (await client.get("/")).status_code == 200
    # Without any session there is no token to match.
    async with site.client() as anonymous:
        response = await anonymous.post("/signin", data={"email": ADMIN, "password": PASSWORD})
        assert response.status_code == 403
        # The header form works too (for scripts), and only with the right value.
        page = await anonymous.get("/signin")
        token = csrf_of(page.text)
        response = await anonymous.post("/signin", data={"email": ADMIN, "password": PASSWORD},
                                        headers={"X-CSRF-Token": token})
        assert response.status_code == 303


ADMIN_SURFACE = {
    ("GET", "/admin/users"), ("POST", "/admin/users"), ("GET", "/admin/users/{user_id:int}"),
    ("POST", "/admin/users/{user_id:int}/mailboxes"),
    ("POST", "/admin/users/{user_id:int}/password"), ("GET", "/admin/jobs"),
    ("GET", "/admin/mailboxes/imap"), ("POST", "/admin/mailboxes/imap"),
    ("POST", "/admin/mailboxes/imap/test"),
    ("POST", "/mailboxes/{account_id:int}/account/password"),
    ("POST", "/mailboxes/{account_id:int}/account/folders/{folder_id:int}/selected"),
    ("POST", "/mailboxes/{account_id:int}/account/folders/{folder_id:int}/backfill"),
    ("POST", "/mailboxes/{account_id:int}/account/reconnect"), ("GET", "/oauth/callback"),
    ("GET", "/mailboxes/{account_id:int}/realtime"),
    ("POST", "/mailboxes/{account_id:int}/realtime/preflight"),
    ("POST", "/mailboxes/{account_id:int}/realtime/validate"),
    ("POST", "/mailboxes/{account_id:int}/realtime/register"),
    ("POST", "/mailboxes/{account_id:int}/realtime/test"),
    ("POST", "/mailboxes/{account_id:int}/realtime/test/finish"),
}


async def test_every_admin_page_and_action_refuses_other_users_with_403(
    harness: Harness,
) -> None:
    h = harness
    account_id = await h.add_gmail(MAILBOX)
    await h.sync_until_idle()
    site = Site(h)
    admin_id = await site.user(ADMIN, admin=True)
    await site.user(AGENT, share=[account_id])
    async with h.services.db.read() as conn:
        folder_id = int(await conn.scalar(select(func.min(folders.c.id))) or 0)
    ids = {"account_id": account_id, "folder_id": folder_id, "user_id": admin_id}
    surface = {(m, r.path) for r in web_routes(site)
               if getattr(r.endpoint, "maildesk_access", None) == "admin"
               for m in (r.methods or ()) if m != "HEAD"}
    assert surface == ADMIN_SURFACE, "a new admin route? add it here (and to the browser test)"
    unmarked = [r.path for r in web_routes(site) if not hasattr(r.endpoint, "maildesk_access")]
    assert unmarked == ["/signin"], "only the sign-in form itself is open to everyone"
    async with site.client(AGENT) as agent:
        token = session_of(agent)["csrf"]
        for method, path in sorted(surface):
            url = concrete(path, ids)
            if method == "GET":
                response = await agent.get(url)
            else:
                response = await agent.post(url, data={
                    "csrf_token": token, "email": "sneaky@example.com", "password": "p" * 12,
                    "role": "admin", "account": str(account_id), "selected": "0"})
            assert response.status_code == 403, (method, url)
            assert "administrators" in response.text.lower()
    async with h.services.db.read() as conn:
        assert [u.email for u in await user_store.list_all(conn)] == [ADMIN, AGENT]
        assert not await push_store.for_account(conn, account_id), "no push was set up"
        assert not await push_store.events_since(conn, account_id, h.clock.now() - timedelta(
            days=1)), "no realtime test was started"
        admin = await user_store.by_email(conn, ADMIN)
    assert admin.password_hash.startswith("$argon2"), "unchanged"
    async with site.client(ADMIN) as client:
        assert (await client.get("/admin/jobs")).status_code == 200, "the admin password held"


async def test_a_password_change_ends_every_other_session(harness: Harness) -> None:
    site = Site(harness)
    admin_id = await site.user(ADMIN, admin=True)
    agent_id = await site.user(AGENT)
    async with site.client(AGENT) as here, site.client(AGENT) as elsewhere:
        response = await post_form(here, "/settings/password", "/settings/password", {
            "current_password": PASSWORD, "new_password": "a brand new secret",
            "confirm_password": "a brand new secret"})
        assert response.status_code == 303
        assert (await here.get("/")).status_code == 200, "the session that changed it stays"
        assert (await elsewhere.get("/")).status_code == 303, "every other one is signed out"
        # An administrator resets it: the user's remaining session ends too.
        async with site.client(ADMIN) as admin:
            response = await post_form(admin, f"/admin/users/{agent_id}",
                                       f"/admin/users/{agent_id}/password",
                                       {"password": "set by the admin"})
            assert response.status_code == 303
            assert (await admin.get("/")).status_code == 200
        assert (await here.get("/")).status_code == 303
    async with site.client() as client:
        assert (await sign_in(client, AGENT, "set by the admin")).status_code == 303
    assert admin_id != agent_id


async def test_wrong_current_password_or_mismatch_changes_nothing(harness: Harness) -> None:
    site = Site(harness)
    await site.user(AGENT)
    async with site.client(AGENT) as client:
        for data, text in (
            ({"current_password": "wrong", "new_password": "n" * 10,
              "confirm_password": "n" * 10}, "The current password is not right."),
            ({"current_password": PASSWORD, "new_password": "short",
              "confirm_password": "short"}, "at least 8 characters"),
            ({"current_password": PASSWORD, "new_password": "n" * 10,
              "confirm_password": "m" * 10}, "The two new passwords differ."),
        ):
            response = await post_form(client, "/settings/password", "/settings/password",
                                       data)
            assert response.status_code == 400
            assert text in response.text
    async with site.client() as again:
        assert (await sign_in(again, AGENT, PASSWORD)).status_code == 303


async def test_sign_out_ends_the_session(harness: Harness) -> None:
    site = Site(harness)
    await site.user(ADMIN, admin=True)
    async with site.client(ADMIN) as client:
        stolen = client.cookies[SESSION_COOKIE]
        response = await post_form(client, "/", "/signout")
        assert response.status_code == 303
        assert response.headers["location"] == "/signin"
        assert (await client.get("/")).status_code == 303
        signin = await client.get("/signin")
        assert "You are signed out." in signin.text
    assert stolen


async def test_admin_creates_a_user_and_shares_a_mailbox_with_them(harness: Harness) -> None:
    h = harness
    shared = await h.add_gmail(MAILBOX)
    private = await h.add_gmail("private@example.com")
    site = Site(h)
    await site.user(ADMIN, admin=True)
    async with site.client(ADMIN) as admin:
        response = await post_form(admin, "/admin/users", "/admin/users", {
            "email": "New.Person@Example.com", "password": "welcome aboard", "role": "user"})
        assert response.status_code == 303
        user_page = response.headers["location"]
        duplicate = await post_form(admin, "/admin/users", "/admin/users", {
            "email": "new.person@example.com", "password": "welcome aboard", "role": "user"})
        assert duplicate.status_code == 400
        assert "already exists" in duplicate.text
        short = await post_form(admin, "/admin/users", "/admin/users", {
            "email": "x@example.com", "password": "short", "role": "user"})
        assert short.status_code == 400
        async with site.client("new.person@example.com", "welcome aboard") as person:
            empty = await person.get("/")
            assert "No mailbox is shared with you yet" in empty.text
            assert (await person.get(f"/mailboxes/{shared}")).status_code == 404
            response = await post_form(admin, user_page, user_page + "/mailboxes",
                                       {"account": str(shared)})
            assert response.status_code == 303
            index = await person.get("/")
            assert MAILBOX in index.text
            assert "private@example.com" not in index.text
            assert (await person.get(f"/mailboxes/{shared}")).status_code == 200
            assert (await person.get(f"/mailboxes/{private}")).status_code == 404
            # The navigation shows them no admin pages (and the server refuses them anyway).
            assert "/admin/jobs" not in index.text
        users = await admin.get("/admin/users")
        assert "new.person@example.com" in users.text
        account = await admin.get(f"/mailboxes/{shared}/account")
        assert "new.person@example.com" in account.text
