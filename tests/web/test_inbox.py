"""The live inbox: mailbox pages, the sandboxed message view, access, and the websocket.

Pages are driven in-process (httpx ASGITransport) by a signed-in client; the websocket over a
real uvicorn server on a free loopback port with the ``websockets`` client (carrying the session
cookie and this site's Origin), in the same event loop as the services.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
import websockets
from sqlalchemy import delete, func, select
from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from starlette.routing import WebSocketRoute
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from maildesk import mailboxes
from maildesk.domain.events import ChangeKind, MailEvent
from maildesk.domain.mail import FolderRole
from maildesk.live.websocket import MailboxSocket
from maildesk.sim.server import serve_app
from maildesk.store import views
from maildesk.store.tables import bodies, folders, message_folders, messages
from maildesk.store.views import FolderView
from maildesk.web.folders import sidebar
from maildesk.web.inbox import decode_cursor, encode_cursor
from tests.support.harness import Harness
from tests.web.support import ADMIN, AGENT, Site

EMAIL = "inbox@example.com"
OTHER = "other@example.com"

HOSTILE = """<html><head><script>alert(1)</script></head>
<body onload="steal()"><p style="color:red">Hi <b>there</b></p>
<img src="https://tracker.example/p.gif" onerror="x()"><a href="javascript:alert(2)">x</a>
<iframe src="https://evil.example"></iframe></body></html>"""


# ------------------------------------------------------------------------------- helpers
class _Page(HTMLParser):
    """Collects what the tests look at: message rows, sidebar folders, links, the frame."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[dict[str, str]] = []
        self.folders: list[dict[str, str]] = []
        self.links: list[dict[str, str]] = []
        self.iframes: list[dict[str, str]] = []
        self._folder_name: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        classes = a.get("class", "").split()
        if tag == "li" and "msg" in classes and a.get("data-id"):
            self.rows.append(a)
        elif tag == "a" and "data-folder-id" in a:
            self.folders.append(a)
        elif tag == "span" and "folder-name" in classes and self.folders:
            self._folder_name = self.folders[-1]
        elif tag == "iframe":
            self.iframes.append(a)
        if tag == "a":
            self.links.append(a)

    def handle_data(self, data: str) -> None:
        if self._folder_name is not None:
            self._folder_name["name"] = self._folder_name.get("name", "") + data

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._folder_name = None


def parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def older_link(page: _Page) -> str | None:
    return next((a["href"] for a in page.links if a.get("rel") == "next"), None)


@contextlib.asynccontextmanager
async def client_for(h: Harness, *, share: tuple[int, ...] | None = None
                     ) -> AsyncIterator[httpx.AsyncClient]:
    """Signed in as an administrator, or (``share``) as a user the given mailboxes are shared
    with."""
    site = Site(h)
    email = ADMIN if share is None else AGENT
    await site.user(email, admin=share is None, share=share or ())
    async with site.client(email) as client:
        yield client


@contextlib.asynccontextmanager
async def served(h: Harness, *, share: tuple[int, ...] | None = None
                 ) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """The app on a loopback port, and the headers of a signed-in browser on it (the session
    cookie and the page's Origin)."""
    site = Site(h)
    email = ADMIN if share is None else AGENT
    await site.user(email, admin=share is None, share=share or ())
    async with site.client(email) as client:
        cookie = f"maildesk_session={client.cookies['maildesk_session']}"
    async with serve_app(site.app) as base:
        yield base, {"Cookie": cookie, "Origin": base}


async def inbox_id(h: Harness, account_id: int) -> int:
    async with h.services.db.read() as conn:
        found = await conn.scalar(select(folders.c.id).where(
            folders.c.account_id == account_id, folders.c.role == "inbox"))
    assert found is not None
    return int(found)


async def message_id_of(h: Harness, remote_id: str) -> int:
    async with h.services.db.read() as conn:
        found = await conn.scalar(select(messages.c.id).where(messages.c.remote_id == remote_id))
    assert found is not None
    return int(found)


async def synced(h: Harness, account_id: int) -> None:
    await mailboxes.request_sync(h.services, account_id)
    results = await h.sync_until_idle()
    assert all(r.status == "ok" for r in results)


async def next_event(ws: ClientConnection, kind: str, **match: Any) -> dict[str, Any]:
    """The next message of ``kind`` (whose fields equal ``match``), skipping others."""
    async with asyncio.timeout(10):
        while True:
            event = json.loads(await ws.recv())
            if event["kind"] == kind and all(event.get(k) == v for k, v in match.items()):
                return dict(event)


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting: {what}")


def socket_tasks() -> list[asyncio.Task[Any]]:
    names = ("_send_loop", "_until_disconnect", "MailboxSocket.handle")
    return [t for t in asyncio.all_tasks()
            if any(n in repr(t.get_coro()) for n in names) and not t.done()]


def ws_url(base: str, account_id: int, query: str = "") -> str:
    return base.replace("http://", "ws://") + f"/ws/mailboxes/{account_id}{query}"


# ------------------------------------------------------------------------------- pages
async def test_mailbox_list_shows_each_mailbox_with_its_count(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=20)
    await h.sync_until_idle()
    async with client_for(h) as client:
        response = await client.get("/")
    assert response.status_code == 200
    assert EMAIL in response.text
    assert f'href="/mailboxes/{account_id}"' in response.text
    assert f"<strong>{await h.message_count(account_id)}</strong> messages" in response.text
    assert "Content-Security-Policy" in response.headers


async def test_folder_is_newest_first_and_paginates_by_keyset(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=150)
    # Three messages at the very same instant: keyset pages must neither drop nor repeat them.
    same = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    for n in range(3):
        h.google.add_message(EMAIL, subject=f"tie {n}", sender="t@example.com", to=EMAIL,
                             text="t", html="", internal_date=same)
    await h.sync_until_idle()
    inbox = await inbox_id(h, account_id)
    async with h.services.db.read() as conn:
        expected = [int(i) for i in (await conn.execute(
            select(messages.c.id)
            .join(message_folders, message_folders.c.message_id == messages.c.id)
            .where(message_folders.c.folder_id == inbox)
            .order_by(messages.c.received_at.desc(), messages.c.id.desc())
        )).scalars()]
    assert len(expected) > 100, "the seed should fill more than two pages"

    seen: list[int] = []
    pages = 0
    url: str | None = f"/mailboxes/{account_id}"
    async with client_for(h) as client:
        while url is not None:
            response = await client.get(url)
            assert response.status_code == 200
            page = parse(response.text)
            pages += 1
            assert len(page.rows) == (50 if len(expected) - len(seen) >= 50
                                      else len(expected) - len(seen))
            dates = [datetime.fromisoformat(r["data-at"]) for r in page.rows]
            assert dates == sorted(dates, reverse=True)
            seen += [int(r["data-id"]) for r in page.rows]
            url = older_link(page)
            if url is not None:
                url = html.unescape(url)
                assert "before=" in url
    assert seen == expected
    assert pages == -(-len(expected) // 50)


async def test_keyset_pages_split_ties_exactly(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL)
    same = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    for n in range(5):
        h.google.add_message(EMAIL, subject=f"tie {n}", sender="t@example.com", to=EMAIL,
                             text="t", html="", internal_date=same)
    await h.sync_until_idle()
    inbox = await inbox_id(h, account_id)
    got: list[int] = []
    before = None
    async with h.services.db.read() as conn:
        while True:
            page = await views.folder_messages(conn, account_id, inbox, before=before, limit=2)
            got += [r.id for r in page.rows]
            if page.older is None:
                break
            before = decode_cursor(encode_cursor(page.older))
    assert len(got) == 5
    assert got == sorted(got, reverse=True)


def test_cursor_round_trips_exactly() -> None:
    for at in (datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
               datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC)):
        assert decode_cursor(encode_cursor((at, 42))) == (at, 42)
    for bad in ("", "x", "12", "a_b", "1_x"):
        assert decode_cursor(bad) is None


async def test_sidebar_counts_match_the_provider_and_order_is_inbox_system_labels(
    harness: Harness,
) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=120)
    await h.sync_until_idle()
    async with h.services.db.read() as conn:
        remote_of = {int(i): r for i, r in await conn.execute(
            select(folders.c.id, folders.c.remote_id).where(folders.c.account_id == account_id))}
    state = h.provider_state(EMAIL)
    async with client_for(h) as client:
        response = await client.get(f"/mailboxes/{account_id}")
    shown = parse(response.text).folders
    assert shown, "the sidebar lists folders"
    for f in shown:
        label = remote_of[int(f["data-folder-id"])]
        total = sum(1 for labels in state.values() if label in labels)
        unread = sum(1 for labels in state.values() if label in labels and "UNREAD" in labels)
        assert (int(f["data-total"]), int(f["data-unread"])) == (total, unread), label

    names = [f["name"].strip() for f in shown]
    assert names[0] == "Inbox"
    assert shown[0].get("aria-current") == "page"
    user = [n for f, n in zip(shown, names, strict=True)
            if remote_of[int(f["data-folder-id"])].startswith("Label_")]
    assert user == sorted(user, key=str.casefold)
    assert names[-len(user):] == user, "user labels come after the system folders"
    assert {"Sent", "Trash", "Spam"} <= set(names)
    assert "UNREAD" not in names  # a flag, not a place
    assert "Unread" not in names


def test_sidebar_order_and_hidden_empty_system_folders() -> None:
    def f(i: int, name: str, role: FolderRole = FolderRole.NONE, system: bool = True,
          total: int = 0) -> FolderView:
        return FolderView(i, name, name, role, system, total, 0)

    result = sidebar([
        f(1, "zeta", system=False), f(2, "TRASH", FolderRole.TRASH), f(3, "CATEGORY_SOCIAL",
                                                                        total=4),
        f(4, "UNREAD"), f(5, "Alpha", system=False), f(6, "SENT", FolderRole.SENT),
        f(7, "INBOX", FolderRole.INBOX), f(8, "beta", system=False), f(9, "CHAT"),
    ])
    assert [s.label for s in result] == ["Inbox", "Sent", "Trash", "Social", "Alpha", "beta",
                                         "zeta"]


async def test_message_page_shows_the_sanitized_body_in_a_sandboxed_frame(
    harness: Harness,
) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=3)
    await h.sync_until_idle()
    remote = h.google.add_message(EMAIL, subject="Hostile <one>", sender="Mallory <m@evil.test>",
                                  to=EMAIL, text="plain part", html=HOSTILE)
    await synced(h, account_id)
    mid = await message_id_of(h, remote)
    async with client_for(h) as client:
        response = await client.get(f"/mailboxes/{account_id}/messages/{mid}")
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "img-src 'self' data: cid:" in csp
    assert "script-src 'self'" in csp
    assert "object-src 'none'" in csp
    assert "http" not in csp, "no remote origin is allowed anything"

    page = parse(response.text)
    assert len(page.iframes) == 1
    frame = page.iframes[0]
    sandbox = frame["sandbox"].split()
    assert "allow-scripts" not in sandbox
    assert "allow-same-origin" not in sandbox
    doc = frame["srcdoc"]  # the parser already unescaped the attribute
    assert "<b>there</b>" in doc
    lowered = doc.lower()
    for bad in ("<script", "alert(", "onload", "onerror", "javascript:", "<iframe"):
        assert bad not in lowered, bad
    assert "alert(" not in response.text
    assert "Hostile &lt;one&gt;" in response.text  # the subject is escaped, not markup
    assert "Remote images in this message are blocked" in response.text


async def test_message_page_says_plainly_when_the_body_is_not_cached(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=3)
    await h.sync_until_idle()
    async with h.services.db.transaction() as conn:
        mid = int(await conn.scalar(select(func.min(messages.c.id))) or 0)
        await conn.execute(delete(bodies).where(bodies.c.message_id == mid))
    async with client_for(h) as client:
        response = await client.get(f"/mailboxes/{account_id}/messages/{mid}")
    assert response.status_code == 200
    assert "has not been downloaded yet" in response.text
    assert "<iframe" not in response.text


async def test_unknown_mailbox_folder_message_and_page_are_404(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=3)
    await h.sync_until_idle()
    async with client_for(h) as client:
        for url in (f"/mailboxes/{account_id + 1}", f"/mailboxes/{account_id}?folder=99999",
                    f"/mailboxes/{account_id}?folder=abc",
                    f"/mailboxes/{account_id}?before=nonsense",
                    f"/mailboxes/{account_id}/messages/99999"):
            response = await client.get(url)
            assert response.status_code == 404, url
            assert "Content-Security-Policy" in response.headers


async def test_without_sign_in_no_mail_is_served(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=3)
    await h.sync_until_idle()
    site = Site(h)
    async with site.client() as client:
        for url in ("/", f"/mailboxes/{account_id}", f"/mailboxes/{account_id}/messages/1",
                    f"/mailboxes/{account_id}/account"):
            response = await client.get(url)
            assert response.status_code == 303, url
            assert response.headers["location"].startswith("/signin?next="), url
            assert EMAIL not in response.text
        signin = await client.get("/signin")
        assert signin.status_code == 200
        assert EMAIL not in signin.text
        assert (await client.get("/healthz")).status_code == 200
    async with serve_app(site.app) as base:
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(ws_url(base, account_id), origin=base):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 404
    assert h.services.bus.subscriber_count == 0


async def test_accounts_outside_the_visible_set_are_404_everywhere(harness: Harness) -> None:
    h = harness
    mine = await h.add_gmail(EMAIL, seed=3)
    theirs = await h.add_gmail(OTHER, seed=3)
    await h.sync_until_idle()
    async with h.services.db.read() as conn:
        their_message = int(await conn.scalar(
            select(func.min(messages.c.id)).where(messages.c.account_id == theirs)) or 0)
    async with client_for(h, share=(mine,)) as client:
        index = await client.get("/")
        assert EMAIL in index.text
        assert OTHER not in index.text
        assert (await client.get(f"/mailboxes/{mine}")).status_code == 200
        assert (await client.get(f"/mailboxes/{theirs}")).status_code == 404
        assert (await client.get(f"/mailboxes/{theirs}/account")).status_code == 404
        response = await client.get(f"/mailboxes/{theirs}/messages/{their_message}")
        assert response.status_code == 404
        # Their message under my mailbox's URL is no way in either.
        response = await client.get(f"/mailboxes/{mine}/messages/{their_message}")
        assert response.status_code == 404
    async with served(h, share=(mine,)) as (base, headers):
        async with websockets.connect(ws_url(base, mine), additional_headers=headers) as ws:
            await next_event(ws, "hello")
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(ws_url(base, theirs), additional_headers=headers):
                pass
        assert refused.value.response.status_code == 404
        # Another site's page, with the user's cookie: refused before anything else.
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(ws_url(base, mine), additional_headers={
                    **headers, "Origin": "http://evil.example"}):
                pass
        assert refused.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(ws_url(base, mine), additional_headers={
                    "Cookie": headers["Cookie"]}):
                pass
        assert refused.value.response.status_code == 403, "no Origin: not a page of this site"
    await wait_for(lambda: h.services.bus.subscriber_count == 0, "subscriptions released")


# ------------------------------------------------------------------------------- websocket
async def test_websocket_pushes_added_then_left_inbox_and_releases_on_close(
    harness: Harness,
) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=10)
    await h.sync_until_idle()
    inbox = await inbox_id(h, account_id)
    bus = h.services.bus
    assert bus.subscriber_count == 0
    async with served(h) as (base, headers):
        async with websockets.connect(ws_url(base, account_id), additional_headers=headers) as ws:
            hello = await next_event(ws, "hello")
            assert hello["change_id"] > 0
            assert bus.subscriber_count == 1
            assert len(socket_tasks()) >= 2, "a sender and a receiver while connected"

            remote = h.google.add_message(EMAIL, subject="Live one", sender="Ada <ada@x.test>",
                                          to=EMAIL, text="hello there", html="<p>hello</p>")
            await synced(h, account_id)
            mid = await message_id_of(h, remote)
            added = await next_event(ws, "added", message_id=mid)
            assert added["subject"] == "Live one"
            assert added["sender_name"] == "Ada"
            assert added["sender"] == "Ada <ada@x.test>"
            assert added["unread"] is True
            assert inbox in added["folder_ids"]
            assert datetime.fromisoformat(added["received_at"]).tzinfo is not None
            assert "hello there" in added["snippet"]
            assert added["change_id"] > hello["change_id"]
            counts = await next_event(ws, "counts")
            assert counts["folders"][str(inbox)]["total"] == len(
                [1 for labels in h.provider_state(EMAIL).values() if "INBOX" in labels])

            h.google.trash_message(EMAIL, remote)
            await synced(h, account_id)
            async with asyncio.timeout(10):
                while True:
                    event = json.loads(await ws.recv())
                    if event.get("message_id") == mid and event["kind"] in ("updated",
                                                                             "removed"):
                        break
            assert inbox not in event["folder_ids"], "the message left the inbox"

        await wait_for(lambda: bus.subscriber_count == 0, "subscription released")
        # Both halves of the connection ended with it: nothing keeps running for a gone client.
        await wait_for(lambda: not socket_tasks(), "no websocket task left")


async def test_websocket_replays_changes_missed_since_the_page_was_rendered(
    harness: Harness,
) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=5)
    await h.sync_until_idle()
    async with client_for(h) as client:
        rendered = await client.get(f"/mailboxes/{account_id}")
    since = int(re.search(r'data-change="(\d+)"', rendered.text).group(1))  # type: ignore[union-attr]
    remote = h.google.add_message(EMAIL, subject="While you were away", sender="b@x.test",
                                  to=EMAIL, text="x", html="")
    await synced(h, account_id)
    mid = await message_id_of(h, remote)
    async with served(h) as (base, headers):
        async with websockets.connect(ws_url(base, account_id, f"?since={since}"),
                                      additional_headers=headers) as ws:
            added = await next_event(ws, "added", message_id=mid)
            assert added["subject"] == "While you were away"
        # A client from another database (or far behind) is told to reload.
        async with websockets.connect(ws_url(base, account_id, "?since=999999999"),
                                      additional_headers=headers) as ws:
            await next_event(ws, "reload")
    await wait_for(lambda: h.services.bus.subscriber_count == 0, "subscriptions released")


async def test_websocket_overflow_asks_the_client_to_reload(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=3)
    await h.sync_until_idle()
    async def everything(conn: HTTPConnection) -> frozenset[int] | None:
        return None

    socket = MailboxSocket(bus=h.services.bus, db=h.services.db,
                           visible_accounts=everything, queue_size=3)
    app = Starlette(routes=[WebSocketRoute("/ws/mailboxes/{account_id:int}", socket.handle)])
    async with serve_app(app) as base, websockets.connect(ws_url(base, account_id)) as ws:
        await next_event(ws, "hello")
        h.services.bus.publish([MailEvent(account_id, ChangeKind.ADDED, n, f"r{n}", ())
                                for n in range(10)])
        await next_event(ws, "reload")
        await next_event(ws, "counts")
    await wait_for(lambda: h.services.bus.subscriber_count == 0, "subscription released")
