"""Body prefetch and HTML sanitization."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select

from maildesk import mailboxes
from maildesk.domain.mail import RemoteBody
from maildesk.errors import MessageGone
from maildesk.store import accounts as account_store
from maildesk.store import bodies
from maildesk.store.tables import bodies as bodies_table
from maildesk.store.tables import messages
from maildesk.sync.context import SyncContext
from maildesk.sync.prefetch import prefetch_bodies
from maildesk.sync.sanitize import sanitize_html
from tests.support.harness import Harness

EMAIL = "bodies@example.com"

HOSTILE = """<html><head><style>body{display:none}</style><script>alert(1)</script></head>
<body onload="steal()"><p style="color:red">Hi <b>there</b></p>
<img src="https://tracker.example/p.gif" onerror="x()"><a href="javascript:alert(2)">x</a>
<a href="https://example.com/ok">ok</a><iframe src="https://evil.example"></iframe>
<form action="https://evil.example"><input name=p></form>
<svg onload=alert(3)></svg></body></html>"""


def test_sanitizer_strips_scripts_handlers_and_dangerous_urls() -> None:
    clean = sanitize_html(HOSTILE)
    lowered = clean.lower()
    for bad in ("<script", "alert(1)", "onload", "onerror", "javascript:", "<iframe", "<form",
                "<input", "<svg", "display:none"):
        assert bad not in lowered, bad
    assert "<b>there</b>" in clean
    assert 'href="https://example.com/ok"' in clean
    assert 'rel="noopener noreferrer nofollow"' in clean


async def test_new_mail_bodies_are_prefetched_sanitized(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=3)
    await h.sync_until_idle()
    remote = h.google.add_message(EMAIL, subject="hostile", sender="m@example.com", to=EMAIL,
                                  text="plain part", html=HOSTILE)
    await mailboxes.request_sync(h.services, account_id)
    await h.sync_until_idle()
    async with h.services.db.read() as conn:
        mid = await conn.scalar(select(messages.c.id).where(messages.c.remote_id == remote))
        assert mid is not None
        cached = await bodies.get(conn, int(mid))
    assert cached is not None
    assert "plain part" in cached.text
    assert "<b>there</b>" in cached.html
    assert "<script" not in cached.html.lower()


async def test_prefetch_skips_a_message_deleted_meanwhile(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(EMAIL, seed=3)
    await h.sync_until_idle()
    async with h.services.db.read() as conn:
        ids = [int(i) for i in (await conn.execute(
            select(messages.c.id).where(messages.c.account_id == account_id)
        )).scalars()]
    lease = timedelta(seconds=60)
    async with h.services.db.transaction() as conn:
        await conn.execute(delete(bodies_table))  # start cold: the sync already warmed them
        claim = await account_store.claim_one(conn, account_id, owner="w", now=h.clock.now(),
                                              lease=lease)
    assert claim is not None
    ctx = SyncContext(h.services.db, h.clock, h.services.bus, account_id, "w", lease)
    gone_remote = "gone"

    async def fetch(remote_id: str) -> RemoteBody:
        if remote_id == gone_remote:
            raise MessageGone("404")
        return RemoteBody(remote_id, text=f"text of {remote_id}", html="<p>x</p>")

    async with h.services.db.read() as conn:
        rows = await conn.execute(
            select(messages.c.id, messages.c.remote_id).where(messages.c.id.in_(ids))
        )
        remote_of = {int(i): str(r) for i, r in rows}
    gone_remote = remote_of[ids[0]]
    stored = await prefetch_bodies(fetch, ctx, ids, limit=10)
    assert stored == len(ids) - 1
    async with h.services.db.read() as conn:
        assert await bodies.get(conn, ids[0]) is None
        kept = await bodies.get(conn, ids[1])
    assert kept is not None
    assert kept.text == f"text of {remote_of[ids[1]]}"
