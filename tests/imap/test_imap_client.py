"""The IMAP client against a real Dovecot (both flavours unless a test needs one)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from maildesk.domain.mail import FolderRole
from maildesk.errors import (
    CapabilityMissing,
    CursorExpired,
    LoginFailed,
    MessageGone,
    ProviderRejected,
    ProviderUnavailable,
)
from maildesk.providers.imap import (
    ImapClient,
    ImapServer,
    PasswordLogin,
    QresyncState,
    Security,
)
from maildesk.providers.imap_fetch import (
    Exists,
    Expunged,
    FlagsChanged,
    MailboxEvent,
    Vanished,
)
from maildesk.providers.imap_wire import UidSet, encode_mailbox_name
from tests.support.dovecot import DovecotServer, Flavour, MailboxAdmin, make_message

from .servers import server_settings

# -- connect and sign in -------------------------------------------------------------------------


@pytest.mark.parametrize("security", [Security.SSL, Security.STARTTLS, Security.NONE])
async def test_connect_with_each_security_mode(
    dovecot: DovecotServer, imap_user: str, security: Security
) -> None:
    server = server_settings(dovecot, security)
    client = await ImapClient.connect(server, PasswordLogin(imap_user, dovecot.password))
    try:
        assert client.has("IMAP4rev1")
        assert client.has("IDLE")
        # Post-login capabilities, not the greeting's (which lists STARTTLS and AUTH=).
        assert not client.has("STARTTLS")
        if dovecot.flavour is Flavour.FULL:
            assert client.enabled >= {"QRESYNC"}
            assert client.condstore
            assert client.qresync
        else:
            assert client.enabled == frozenset()
            assert not client.condstore
        assert [f.remote_id for f in await client.list_folders()]
    finally:
        await client.logout()
    assert client.closed


async def test_wrong_password_is_a_typed_login_failure(
    dovecot: DovecotServer, imap_server: ImapServer, imap_user: str
) -> None:
    with pytest.raises(LoginFailed) as caught:
        await ImapClient.connect(imap_server, PasswordLogin(imap_user, "not-the-password"))
    assert caught.value.kind == "login_failed"
    assert "AUTHENTICATIONFAILED" in str(caught.value)
    assert "not-the-password" not in str(caught.value)


async def test_password_with_special_characters_goes_as_a_literal(
    dovecot: DovecotServer, imap_server: ImapServer
) -> None:
    # The static passdb accepts one password; a wrong one with quotes and non-ASCII must still
    # arrive as a well-formed command (NO, not BAD).
    with pytest.raises(LoginFailed):
        await ImapClient.connect(imap_server, PasswordLogin("someone", 'pä"ss\\ wörd'))


async def test_untrusted_certificate_is_a_tls_failure(dovecot_full: DovecotServer) -> None:
    server = ImapServer(dovecot_full.host, dovecot_full.imaps_port, Security.SSL)
    with pytest.raises(ProviderUnavailable, match=r"^TLS: the certificate of .* is not trusted"):
        await ImapClient.connect(server, PasswordLogin("u", dovecot_full.password))


async def test_implicit_tls_on_a_plain_port_names_the_problem(
    dovecot_full: DovecotServer,
) -> None:
    server = server_settings(dovecot_full, Security.SSL)
    server = ImapServer(
        server.host, dovecot_full.imap_port, Security.SSL, ssl_context=dovecot_full.ssl_context()
    )
    with pytest.raises(ProviderUnavailable, match="does not speak TLS"):
        await ImapClient.connect(server, PasswordLogin("u", dovecot_full.password))


async def test_plain_connect_to_the_tls_port_times_out_with_a_hint(
    dovecot_full: DovecotServer,
) -> None:
    server = ImapServer(
        dovecot_full.host, dovecot_full.imaps_port, Security.STARTTLS, connect_timeout=1.0
    )
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match=r"^GREETING: .*try security=ssl"):
        await ImapClient.connect(server, PasswordLogin("u", dovecot_full.password))
    assert time.monotonic() - started < 5


# -- folders -------------------------------------------------------------------------------------


async def test_list_roles(
    dovecot: DovecotServer, client: ImapClient, admin: MailboxAdmin
) -> None:
    await asyncio.to_thread(admin.create, "Projects")
    await asyncio.to_thread(admin.create, "Projects/Sent")
    await asyncio.to_thread(admin.create, encode_mailbox_name("Entwürfe Ü").decode())
    folders = {f.remote_id: f for f in await client.list_folders()}
    roles = {name: folder.role for name, folder in folders.items()}
    if dovecot.flavour is Flavour.FULL:  # SPECIAL-USE attributes
        expected = {
            "INBOX": FolderRole.INBOX,
            "Sent": FolderRole.SENT,
            "Drafts": FolderRole.DRAFTS,
            "Trash": FolderRole.TRASH,
            "Junk": FolderRole.SPAM,
            "Archive": FolderRole.ARCHIVE,
        }
    else:  # names only
        expected = {
            "INBOX": FolderRole.INBOX,
            "Sent Items": FolderRole.SENT,
            "Drafts": FolderRole.DRAFTS,
            "Deleted Items": FolderRole.TRASH,
            "Junk Email": FolderRole.SPAM,
            "Archive": FolderRole.ARCHIVE,
        }
    expected |= {
        "Projects": FolderRole.NONE,
        "Projects/Sent": FolderRole.NONE,
        "Entwürfe Ü": FolderRole.NONE,
    }
    assert roles == expected
    assert folders["Projects/Sent"].name == "Sent"
    assert folders["INBOX"].system
    assert not folders["Projects"].system
    # The decoded name is the remote id and selects the folder.
    assert (await client.select("Entwürfe Ü")).exists == 0


async def test_select_and_examine_report_the_folder_state(
    dovecot: DovecotServer, client: ImapClient, imap_user: str
) -> None:
    dovecot.deliver(imap_user, "INBOX", [make_message(i) for i in range(5)])
    selected = await client.select("INBOX")
    assert selected.exists == 5
    assert selected.uidnext == 6
    assert selected.uidvalidity > 0
    assert not selected.read_only
    if dovecot.flavour is Flavour.FULL:
        assert isinstance(selected.highest_modseq, int)
    else:
        assert selected.highest_modseq is None
    examined = await client.select("INBOX", readonly=True)
    assert examined.read_only
    assert examined.uidvalidity == selected.uidvalidity
    status = await client.status(dovecot.sent_folder)
    assert (status.messages, status.uidnext) == (0, 1)
    # Dovecot 2.3 answers a plain NO here (no [NONEXISTENT] code): a rejected request.
    with pytest.raises(ProviderRejected, match="No such folder"):
        await client.select("No such folder")
    assert client.selected is None


# -- messages ------------------------------------------------------------------------------------


async def test_fetch_metadata_of_thousands_of_messages(
    dovecot: DovecotServer, client: ImapClient, imap_user: str
) -> None:
    count = 3000
    dovecot.deliver(imap_user, "INBOX", (make_message(i) for i in range(count)), seen=True)
    selected = await client.select("INBOX")
    assert selected.exists == count
    assert await client.uid_search() == list(range(1, count + 1))
    started = time.monotonic()
    messages = await client.fetch_messages("1:*")
    elapsed = time.monotonic() - started
    assert [m.uid for m in messages] == list(range(1, count + 1))
    first, last = messages[0].message, messages[-1].message
    assert first.remote_id == f"INBOX:{selected.uidvalidity}:1"
    assert (first.subject, last.subject) == ("Message 0", f"Message {count - 1}")
    assert first.sender == "Alice Example <alice@example.org>"
    assert first.recipients == "Bob <bob@example.org>"
    assert first.message_id_header.startswith("<m0.")
    assert first.received_at == datetime(2024, 1, 1, 0, 1, tzinfo=UTC)
    assert not any(m.message.unread for m in messages)
    assert all(m.message.size > 0 for m in messages)
    if dovecot.flavour is Flavour.FULL:
        assert all(isinstance(m.modseq, int) for m in messages)
    # Generous for two shared cores; locally this is about one second.
    assert elapsed < 30, f"fetching {count} messages took {elapsed:.1f} s"
    assert await client.uid_search(f"UID {count - 1}:*") == [count - 1, count]


async def test_append_then_fetch_metadata_and_body(
    dovecot: DovecotServer, client: ImapClient
) -> None:
    raw = (
        b"From: =?UTF-8?Q?Z=C3=B6e?= <zoe@example.org>\r\nTo: me@example.org\r\n"
        b"Subject: =?UTF-8?B?8J+OiSBwYXJ0eQ==?=\r\nMessage-ID: <party@example.org>\r\n"
        b"References: <root@example.org> <mid@example.org>\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee you at 8\r\n"
        b"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>See you at 8</p>\r\n--b--\r\n"
    )
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    uid = await client.append("INBOX", raw, flags=["\\Seen", "\\Flagged"], internaldate=when)
    assert uid == 1
    selected = await client.select("INBOX")
    [message] = await client.fetch_messages(UidSet.of([uid]))
    remote = message.message
    assert remote.subject == "🎉 party"
    assert remote.sender == "Zöe <zoe@example.org>"
    assert remote.thread_id == "<root@example.org>"
    assert remote.received_at == when
    assert (remote.unread, remote.starred) == (False, True)
    body = await client.fetch_body(remote.remote_id)
    assert body.text.strip() == "See you at 8"
    assert body.html.strip() == "<p>See you at 8</p>"
    # A folder that is not selected is examined on the way.
    sent_uid = await client.append(dovecot.sent_folder, make_message(1, body="sent copy"))
    assert sent_uid == 1
    sent_id = f"{dovecot.sent_folder}:{(await client.status(dovecot.sent_folder)).uidvalidity}:1"
    assert (await client.fetch_body(sent_id)).text.strip() == "sent copy"
    assert client.selected is not None
    assert client.selected.name == dovecot.sent_folder
    with pytest.raises(MessageGone):
        await client.fetch_body(f"INBOX:{selected.uidvalidity}:999")


async def test_changedsince_reports_flag_changes(
    dovecot_full: DovecotServer,
) -> None:
    user = dovecot_full.new_user()
    dovecot_full.deliver(user, "INBOX", [make_message(i) for i in range(10)])
    server = server_settings(dovecot_full)
    async with await ImapClient.connect(server, PasswordLogin(user, dovecot_full.password)) as c:
        selected = await c.select("INBOX")
        assert selected.highest_modseq is not None
        with dovecot_full.admin(user) as admin:
            await asyncio.to_thread(admin.set_flags, "INBOX", [2], "\\Seen")
            await asyncio.to_thread(admin.set_flags, "INBOX", [3], "\\Flagged")
        changes = await c.fetch_changes(selected.highest_modseq)
        assert [m.uid for m in changes.changed] == [2, 3]
        assert "\\Seen" in (changes.changed[0].flags or ())
        assert "\\Flagged" in (changes.changed[1].flags or ())
        assert all(m.modseq and m.modseq > selected.highest_modseq for m in changes.changed)
        assert not changes.vanished
        # Our own STORE moves the modseq too.
        latest = max(m.modseq or 0 for m in changes.changed)
        await c.store_flags(UidSet.of([5]), ["\\Seen"])
        again = await c.fetch_changes(latest)
        assert [m.uid for m in again.changed] == [5]
        [five] = await c.fetch_messages("5")
        assert not five.message.unread


async def test_vanished_after_expunge(dovecot_full: DovecotServer) -> None:
    user = dovecot_full.new_user()
    dovecot_full.deliver(user, "INBOX", [make_message(i) for i in range(10)])
    server = server_settings(dovecot_full)
    login = PasswordLogin(user, dovecot_full.password)
    async with await ImapClient.connect(server, login) as c:
        selected = await c.select("INBOX")
        assert selected.highest_modseq is not None
        state = QresyncState(selected.uidvalidity, selected.highest_modseq)
        with dovecot_full.admin(user) as admin:
            await asyncio.to_thread(admin.expunge, "INBOX", [2, 4, 5])
            await asyncio.to_thread(admin.set_flags, "INBOX", [7], "\\Answered")
        changes = await c.fetch_changes(selected.highest_modseq)
        assert changes.vanished == UidSet([(2, 2), (4, 5)])
        assert [m.uid for m in changes.changed] == [7]
        # The same session was told live, as VANISHED (not EARLIER) responses.
        events = await c.noop()
        assert any(isinstance(e, Vanished) and not e.earlier for e in events)
    # A later session catches up in the SELECT itself (QRESYNC).
    async with await ImapClient.connect(server, login) as c:
        selected2, changes = await c.resync("INBOX", state)
        assert selected2.exists == 7
        assert changes.vanished == UidSet([(2, 2), (4, 5)])
        assert [m.uid for m in changes.changed] == [7]
        known = QresyncState(
            selected2.uidvalidity, selected2.highest_modseq or 0, UidSet([(1, 10)])
        )
        _, nothing = await c.resync("INBOX", known)
        assert not nothing.vanished
        assert not nothing.changed


async def test_plain_uid_diff_without_condstore(dovecot_basic: DovecotServer) -> None:
    user = dovecot_basic.new_user()
    dovecot_basic.deliver(user, "INBOX", [make_message(i) for i in range(6)])
    server = server_settings(dovecot_basic)
    async with await ImapClient.connect(server, PasswordLogin(user, dovecot_basic.password)) as c:
        await c.select("INBOX")
        with pytest.raises(CapabilityMissing) as caught:
            await c.fetch_changes(1)
        assert caught.value.capability == "CONDSTORE"
        with pytest.raises(CapabilityMissing):
            await c.resync("INBOX", QresyncState(1, 1))
        before = {m.uid: m.flags for m in await c.fetch_messages("1:*")}
        with dovecot_basic.admin(user) as admin:
            await asyncio.to_thread(admin.expunge, "INBOX", [3])
            await asyncio.to_thread(admin.set_flags, "INBOX", [1], "\\Seen")
        events = await c.noop()
        assert Expunged(3) in events
        assert any(isinstance(e, FlagsChanged) for e in events)
        after = {m.uid: m.flags for m in await c.fetch_messages("1:*")}
        assert set(before) - set(after) == {3}
        assert [uid for uid in after if after[uid] != before[uid]] == [1]


async def test_uidvalidity_changes_when_a_folder_is_recreated(
    dovecot: DovecotServer, client: ImapClient, admin: MailboxAdmin
) -> None:
    await asyncio.to_thread(admin.create, "Work")
    await asyncio.to_thread(admin.append, "Work", [make_message(1), make_message(2)])
    before = await client.select("Work")
    [first, _] = await client.fetch_messages("1:*")
    await client.select("INBOX")
    await asyncio.to_thread(admin.recreate, "Work")
    await asyncio.to_thread(admin.append, "Work", [make_message(3)])
    after = await client.select("Work")
    assert after.uidvalidity != before.uidvalidity
    [fresh] = await client.fetch_messages("1:*")
    assert fresh.uid == 1  # the UID is reused …
    assert fresh.message.remote_id != first.message.remote_id  # … the remote id is not
    with pytest.raises(MessageGone, match="UIDVALIDITY"):
        await client.fetch_body(first.message.remote_id)
    if dovecot.flavour is Flavour.FULL:
        stale = QresyncState(before.uidvalidity, before.highest_modseq or 1)
        with pytest.raises(CursorExpired, match="UIDVALIDITY"):
            await client.resync("Work", stale)
        assert client.selected is not None
        assert client.selected.uidvalidity == after.uidvalidity


# -- IDLE ----------------------------------------------------------------------------------------


async def _append_later(
    dovecot: DovecotServer, user: str, delay: float, folder: str = "INBOX"
) -> float:
    await asyncio.sleep(delay)

    def append() -> None:
        with dovecot.admin(user) as admin:
            admin.append(folder, [make_message(99)])

    await asyncio.to_thread(append)
    return time.monotonic()


async def test_idle_delivers_new_mail_from_another_connection(
    dovecot: DovecotServer, client: ImapClient, imap_user: str
) -> None:
    await client.select("INBOX")
    appender = asyncio.create_task(_append_later(dovecot, imap_user, 0.3))
    events = await client.idle(10)
    received = time.monotonic()
    appended = await appender
    assert Exists(1) in events
    # Dovecot's own notify delay is ~0.5 s; allow for a busy machine.
    assert received - appended < 2.0, f"IDLE took {received - appended:.2f} s"
    [message] = await client.fetch_messages("1:*")
    assert message.message.subject == "Message 99"


async def test_idle_reports_flag_changes_and_expunges(
    dovecot: DovecotServer, client: ImapClient, imap_user: str, admin: MailboxAdmin
) -> None:
    dovecot.deliver(imap_user, "INBOX", [make_message(i) for i in range(3)])
    await client.select("INBOX")

    async def change(action: Callable[[], None]) -> list[MailboxEvent]:
        async def later() -> None:
            await asyncio.sleep(0.2)
            await asyncio.to_thread(action)

        task = asyncio.create_task(later())
        events = await client.idle(10)
        await task
        return events

    events = await change(lambda: admin.set_flags("INBOX", [2], "\\Flagged"))
    [flagged] = [e for e in events if isinstance(e, FlagsChanged)]
    assert flagged.message.seq == 2
    assert "\\Flagged" in (flagged.message.flags or ())
    events = await change(lambda: admin.expunge("INBOX", [1]))
    if dovecot.flavour is Flavour.FULL:  # QRESYNC enabled: UIDs, not sequence numbers
        assert Vanished(UidSet.of([1]), earlier=False) in events
    else:
        assert Expunged(1) in events


async def test_idle_times_out_quietly_and_is_reissued(
    dovecot: DovecotServer, imap_user: str
) -> None:
    server = server_settings(dovecot, idle_keepalive=0.3)
    async with await ImapClient.connect(server, PasswordLogin(imap_user, dovecot.password)) as c:
        await c.select("INBOX")
        started = time.monotonic()
        assert await c.idle(60) == []  # capped by idle_keepalive, ended with DONE
        assert time.monotonic() - started < 3
        assert await c.idle(0.2) == []
        # The session is healthy after the DONE round trips.
        appender = asyncio.create_task(_append_later(dovecot, imap_user, 0.1))
        events: list[object] = []
        while not events:
            events = list(await c.idle(5))
        await appender
        assert Exists(1) in events


async def test_mail_arriving_between_commands_is_not_lost(
    dovecot: DovecotServer, client: ImapClient, admin: MailboxAdmin
) -> None:
    await client.select("INBOX")
    await asyncio.to_thread(admin.append, "INBOX", [make_message(1)])
    # Dovecot reports the new mail at the end of the next command's answer (after the search
    # result was computed) …
    assert await client.uid_search() == []
    # … and IDLE hands it over at once instead of waiting for more news.
    started = time.monotonic()
    assert await client.idle(10) == [Exists(1)]
    assert time.monotonic() - started < 0.3
    assert await client.uid_search() == [1]


async def test_idle_detects_a_kicked_connection_and_a_new_one_works(
    dovecot: DovecotServer, imap_server: ImapServer, imap_user: str
) -> None:
    login = PasswordLogin(imap_user, dovecot.password)
    client = await ImapClient.connect(imap_server, login)
    await client.select("INBOX")

    async def kick() -> None:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(dovecot.kick, imap_user)

    kicker = asyncio.create_task(kick())
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="closed the connection"):
        await client.idle(30)
    await kicker
    assert time.monotonic() - started < 5
    assert client.closed
    with pytest.raises(ProviderUnavailable):
        await client.noop()
    await client.logout()  # harmless on a dead session

    async with await ImapClient.connect(imap_server, login) as again:
        await again.select("INBOX")
        appender = asyncio.create_task(_append_later(dovecot, imap_user, 0.3))
        events = await again.idle(10)
        await appender
        assert Exists(1) in events


async def test_idle_detects_a_killed_server_process(
    dovecot_full: DovecotServer,
) -> None:
    user = dovecot_full.new_user()
    server = server_settings(dovecot_full)
    client = await ImapClient.connect(server, PasswordLogin(user, dovecot_full.password))
    await client.select("INBOX")

    async def kill() -> None:
        await asyncio.sleep(0.3)
        assert await asyncio.to_thread(dovecot_full.kill_sessions, user) == 1

    killer = asyncio.create_task(kill())
    with pytest.raises(ProviderUnavailable, match="closed the connection"):
        await client.idle(30)
    await killer
    assert client.closed
    await client.logout()
