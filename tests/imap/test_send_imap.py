"""Sending from an IMAP mailbox end to end: SMTP to a real aiosmtpd peer, our copy APPENDed to
Dovecot's Sent folder (Dovecot keeps none), the local Sent entry replaced by that copy on the
next sync, and the SMTP failure rules (5xx → Drafts, 4xx → retried with backoff, attempts
exhausted → Drafts, "Try sending again")."""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from pathlib import Path

from maildesk.clock import ManualClock
from maildesk.domain.accounts import ProviderKind
from maildesk.domain.compose import Draft
from maildesk.domain.mail_servers import MailServers, Security, ServerAddress
from maildesk.send import service
from maildesk.store import accounts as account_store
from tests.send.helpers import with_header
from tests.support.dovecot import DovecotServer
from tests.support.harness import Harness
from tests.support.smtp_peer import PeerTls, SmtpPeer

from .accounts import dovecot_settings

DRAFT = Draft(to=("Bob <bob@example.org>",), cc=("Dora Ünal <dora@example.org>",),
              bcc=("carol@example.org",), subject="Bericht für März", text="Anbei.\nGrüße")


@dataclass(frozen=True, slots=True)
class Copy:
    uid: int
    message_id: str
    seen: bool
    bcc: str


def _sent_copies(dovecot: DovecotServer, user: str) -> list[Copy]:
    """What Dovecot's Sent folder holds, read with stdlib imaplib (not our client)."""
    imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=30)
    try:
        imap.login(user, dovecot.password)
        typ, _ = imap.select(f'"{dovecot.sent_folder}"', readonly=True)
        assert typ == "OK"
        typ, data = imap.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER])")
        assert typ == "OK"
        copies = []
        for item in data:
            if not isinstance(item, tuple):
                continue
            meta, header = item
            uid = re.search(rb"UID (\d+)", meta)
            assert uid is not None
            parsed = BytesParser(policy=policy.default).parsebytes(header)
            copies.append(Copy(int(uid.group(1)), str(parsed["Message-ID"]),
                               b"\\Seen" in meta, str(parsed.get("Bcc", ""))))
        return copies
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            imap.logout()


@dataclass(frozen=True, slots=True)
class Mailbox:
    h: Harness
    account_id: int
    user: str
    peer: SmtpPeer


@contextlib.asynccontextmanager
async def _mailbox(db_url: str, clock: ManualClock, tmp_path: Path, dovecot: DovecotServer,
                   **settings: object) -> AsyncIterator[Mailbox]:
    """A fresh Dovecot user as an IMAP mailbox whose SMTP server is an aiosmtpd peer that
    wants the same sign-in; folders synced."""
    user = dovecot.new_user()
    with SmtpPeer(tls=PeerTls.NONE, users={user: dovecot.password}) as peer:
        async with _account(db_url, clock, tmp_path, dovecot, user, peer, **settings) as (
                h, account_id):
            yield Mailbox(h, account_id, user, peer)


@contextlib.asynccontextmanager
async def _account(db_url: str, clock: ManualClock, tmp_path: Path, dovecot: DovecotServer,
                   user: str, peer: SmtpPeer, **settings: object
                   ) -> AsyncIterator[tuple[Harness, int]]:
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path,
                            **dovecot_settings(dovecot, **settings)) as h:
        servers = MailServers(
            imap=ServerAddress(dovecot.host, dovecot.imap_port, Security.STARTTLS),
            username=user, smtp=ServerAddress(peer.host, peer.port, Security.NONE))
        async with h.services.db.transaction() as conn:
            account_id = await account_store.create(
                conn, provider=ProviderKind.IMAP, email=f"{user}@example.org",
                now=clock.now(), password_enc=h.services.secrets.encrypt(dovecot.password),
                settings={"imap": servers.to_json()})
        results = await h.sync_until_idle()
        assert [r.status for r in results] == ["ok"] * len(results)
        yield h, account_id


async def _outbox_job(h: Harness) -> str:
    [job] = [j for j in h.services.worker.periodic if j.name == "outbox"]
    return await job.run()


async def _entries(h: Harness, account_id: int, header: str) -> list[tuple[str, str]]:
    """(remote id, folder role) of the stored messages carrying ``header``."""
    return [(s.remote_id, ",".join(s.folders)) for s in
            await with_header(h.services, account_id, header)]


async def test_send_through_smtp_appends_to_sent_and_the_copy_replaces_the_local_entry(
    db_url: str, clock: ManualClock, tmp_path: Path, dovecot: DovecotServer,
) -> None:
    async with _mailbox(db_url, clock, tmp_path, dovecot) as box:
        h, account_id, user, peer = box.h, box.account_id, box.user, box.peer
        outcome = await service.send(h.services, account_id=account_id, draft=DRAFT)
        assert outcome.state == "sent"
        assert outcome.error is None

        [received] = await asyncio.to_thread(peer.wait_for, 1)
        assert received.login == user
        assert received.mail_from == f"{user}@example.org"
        assert received.rcpt_tos == ("bob@example.org", "dora@example.org", "carol@example.org")
        sent = BytesParser(policy=policy.default).parsebytes(received.content)
        assert sent["Message-ID"] == outcome.message_id_header
        assert sent["Bcc"] is None  # Bcc is in the envelope only
        assert sent["Subject"] == "Bericht für März"
        assert sent["Cc"] == "Dora Ünal <dora@example.org>"

        # At once: the local entry in Sent; and our copy APPENDed to Dovecot's Sent folder.
        assert await _entries(h, account_id, outcome.message_id_header) == [
            (f"local:outbox:{outcome.outbox_id}", "sent")]
        [copy] = await asyncio.to_thread(_sent_copies, dovecot, user)
        assert copy.message_id == outcome.message_id_header
        assert copy.seen
        assert copy.bcc == "carol@example.org"  # the sender's own record keeps it
        item = await service.outbox_item(h.services, outcome.outbox_id)
        assert item.state == "sent"

        # The next sync brings the server's copy, which replaces the local entry: exactly one.
        results = await h.sync_until_idle()
        assert results
        assert await _entries(h, account_id, outcome.message_id_header) == [
            (f"{dovecot.sent_folder}:{_uidvalidity(dovecot, user)}:{copy.uid}", "sent")]
        await h.sync_until_idle()
        assert len(await _entries(h, account_id, outcome.message_id_header)) == 1


def _uidvalidity(dovecot: DovecotServer, user: str) -> int:
    imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=30)
    try:
        imap.login(user, dovecot.password)
        imap.select(f'"{dovecot.sent_folder}"', readonly=True)
        return int(imap.response("UIDVALIDITY")[1][0] or b"0")
    finally:
        imap.logout()


async def test_a_5xx_leaves_the_message_in_drafts_and_resend_after_the_fix_sends_it(
    db_url: str, clock: ManualClock, tmp_path: Path, dovecot_full: DovecotServer,
) -> None:
    dovecot = dovecot_full
    async with _mailbox(db_url, clock, tmp_path, dovecot) as box:
        h, account_id, user, peer = box.h, box.account_id, box.user, box.peer
        peer.fail_next("DATA", 554, "5.7.1 Message rejected as spam")
        outcome = await service.send(h.services, account_id=account_id, draft=DRAFT)
        assert outcome.state == "failed"
        assert "554 5.7.1 Message rejected as spam" in (outcome.error or "")
        assert await _entries(h, account_id, outcome.message_id_header) == [
            (f"local:outbox:{outcome.outbox_id}", "drafts")]
        assert peer.messages == []
        assert await asyncio.to_thread(_sent_copies, dovecot, user) == []
        item = await service.outbox_item(h.services, outcome.outbox_id)
        assert (item.state, item.attempts, item.next_attempt_at) == ("failed", 1, None)

        # A sync keeps the draft; the outbox job does not retry a permanent failure.
        await h.sync_until_idle()
        clock.advance(3600)
        await _outbox_job(h)
        assert peer.messages == []
        assert len(await _entries(h, account_id, outcome.message_id_header)) == 1

        # "Try sending again" once the cause is gone (the peer accepts now).
        again = await service.resend(h.services, outbox_id=outcome.outbox_id)
        assert again.state == "sent"
        [received] = await asyncio.to_thread(peer.wait_for, 1)
        assert BytesParser(policy=policy.default).parsebytes(received.content)[
            "Message-ID"] == outcome.message_id_header
        [copy] = await asyncio.to_thread(_sent_copies, dovecot, user)
        assert copy.message_id == outcome.message_id_header
        await h.sync_until_idle()
        [(remote_id, role)] = await _entries(h, account_id, outcome.message_id_header)
        assert role == "sent"
        assert remote_id.startswith(f"{dovecot.sent_folder}:")


async def test_4xx_twice_then_accepted_is_retried_with_backoff_and_sent_once(
    db_url: str, clock: ManualClock, tmp_path: Path, dovecot_full: DovecotServer,
) -> None:
    async with _mailbox(db_url, clock, tmp_path, dovecot_full) as box:
        h, account_id, user, peer = box.h, box.account_id, box.user, box.peer
        peer.fail_next("DATA", 451, "4.3.0 Try again later", times=2)
        outcome = await service.send(h.services, account_id=account_id, draft=DRAFT)
        assert outcome.state == "retrying"
        assert "451" in (outcome.error or "")
        waits = []
        for attempt in (1, 2):
            item = await service.outbox_item(h.services, outcome.outbox_id)
            assert (item.state, item.attempts) == ("retrying", attempt)
            assert item.next_attempt_at is not None
            waits.append(item.next_attempt_at - clock.now())
            clock.advance(1)
            await _outbox_job(h)  # not due yet
            assert (await service.outbox_item(h.services, outcome.outbox_id)).attempts == attempt
            clock.set(item.next_attempt_at)
            await _outbox_job(h)
        assert waits[1] > waits[0]  # backed off
        done = await service.outbox_item(h.services, outcome.outbox_id)
        assert (done.state, done.attempts, done.error) == ("sent", 3, None)
        assert len(await asyncio.to_thread(peer.wait_for, 1)) == 1
        [copy] = await asyncio.to_thread(_sent_copies, dovecot_full, user)
        assert copy.message_id == outcome.message_id_header
        clock.advance(3600)
        await _outbox_job(h)
        assert len(peer.messages) == 1


async def test_attempts_exhausted_leave_the_message_in_drafts(
    db_url: str, clock: ManualClock, tmp_path: Path, dovecot_full: DovecotServer,
) -> None:
    async with _mailbox(db_url, clock, tmp_path, dovecot_full, send_max_attempts=2) as box:
        h, account_id, user, peer = box.h, box.account_id, box.user, box.peer
        peer.fail_next("RCPT", 450, "4.2.1 Mailbox busy", times=5)
        outcome = await service.send(h.services, account_id=account_id, draft=DRAFT)
        assert outcome.state == "retrying"
        item = await service.outbox_item(h.services, outcome.outbox_id)
        assert item.next_attempt_at is not None
        clock.set(item.next_attempt_at)
        await _outbox_job(h)
        failed = await service.outbox_item(h.services, outcome.outbox_id)
        assert failed.state == "failed"
        assert "450 4.2.1 Mailbox busy" in (failed.error or "")
        assert "gave up after 2 attempts" in (failed.error or "")
        assert await _entries(h, account_id, outcome.message_id_header) == [
            (f"local:outbox:{outcome.outbox_id}", "drafts")]
        assert peer.messages == []
        assert await asyncio.to_thread(_sent_copies, dovecot_full, user) == []


async def test_sent_before_the_first_sync_is_appended_and_replaced_all_the_same(
    db_url: str, clock: ManualClock, tmp_path: Path, dovecot_full: DovecotServer,
) -> None:
    dovecot = dovecot_full
    user = dovecot.new_user()
    with SmtpPeer(tls=PeerTls.NONE, users={user: dovecot.password}) as peer:
        async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path,
                                **dovecot_settings(dovecot)) as h:
            servers = MailServers(
                imap=ServerAddress(dovecot.host, dovecot.imap_port, Security.STARTTLS),
                username=user, smtp=ServerAddress(peer.host, peer.port, Security.NONE))
            async with h.services.db.transaction() as conn:
                account_id = await account_store.create(
                    conn, provider=ProviderKind.IMAP, email=f"{user}@example.org",
                    now=clock.now(), password_enc=h.services.secrets.encrypt(dovecot.password),
                    settings={"imap": servers.to_json()})
            outcome = await service.send(h.services, account_id=account_id, draft=DRAFT)
            assert outcome.state == "sent"
            # No folder is known yet: the entry shows in a stand-in Sent folder, and the copy
            # went to the folder the server lists as Sent.
            assert await _entries(h, account_id, outcome.message_id_header) == [
                (f"local:outbox:{outcome.outbox_id}", "sent")]
            [copy] = await asyncio.to_thread(_sent_copies, dovecot, user)
            assert copy.message_id == outcome.message_id_header

            results = await h.sync_until_idle()
            assert [r.status for r in results] == ["ok"] * len(results)
            [(remote_id, role)] = await _entries(h, account_id, outcome.message_id_header)
            assert (remote_id.rsplit(":", 2)[0], role) == ("Sent", "sent")
            assert len(peer.messages) == 1
