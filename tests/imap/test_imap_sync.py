"""The IMAP sync engine against a real Dovecot: initial sync newest first, backfill in pages that
resumes where it stopped, Trigger backfill, roles, a connection dropped mid-sync, and the runner
end to end. Every test runs on SQLite and on PostgreSQL.

The big mailbox (2,450 messages in three folders) is made once per module and only read.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select

from maildesk.clock import ManualClock
from maildesk.domain.accounts import AccountState
from maildesk.domain.mail import FolderRole
from maildesk.errors import ProviderUnavailable
from maildesk.store import accounts as account_store
from maildesk.store import cursors, imap_state
from maildesk.store import mail as mail_store
from maildesk.store.tables import bodies, messages
from maildesk.sync.imap import FIRST_PAGE_SIZE, PAGE_SIZE
from tests.support.dovecot import DovecotServer, Flavour, make_message

from .accounts import (
    add_imap_account,
    imap_harness,
    run_sync,
    server_state,
    store_state,
)

INBOX_SIZE, ARCHIVE_SIZE, SENT_SIZE = 1400, 900, 150
TOTAL = INBOX_SIZE + ARCHIVE_SIZE + SENT_SIZE


@dataclass(frozen=True)
class BigMailbox:
    dovecot: DovecotServer
    user: str
    uids: dict[str, list[int]]  # folder -> its UIDs, ascending


@pytest.fixture(scope="module")
def big(dovecot_full: DovecotServer) -> BigMailbox:
    """2,450 messages (some read, some starred) in INBOX, Archive and Sent; tests only read it."""
    dovecot = dovecot_full
    user = dovecot.new_user("big")
    with dovecot.admin(user) as admin:  # the first login creates the auto folders
        dovecot.deliver(user, "INBOX", (make_message(i) for i in range(INBOX_SIZE)))
        dovecot.deliver(user, "Archive", (make_message(10_000 + i) for i in range(ARCHIVE_SIZE)),
                        seen=True)
        dovecot.deliver(user, "Sent", (make_message(20_000 + i) for i in range(SENT_SIZE)),
                        seen=True)
        uids = {folder: admin.uids(folder) for folder in ("INBOX", "Archive", "Sent")}
        admin.set_flags("INBOX", uids["INBOX"][::7], r"\Flagged")
        admin.set_flags("INBOX", uids["INBOX"][::3], r"\Seen")
        admin.set_flags("Archive", uids["Archive"][::5], r"\Seen", add=False)
    assert {f: len(u) for f, u in uids.items()} == {
        "INBOX": INBOX_SIZE, "Archive": ARCHIVE_SIZE, "Sent": SENT_SIZE}
    return BigMailbox(dovecot, user, uids)


def folder_uids(state: dict[str, tuple[str, bool, bool]], folder: str) -> list[int]:
    return sorted(int(rid.rsplit(":", 1)[1]) for rid, (f, _, _) in state.items() if f == folder)


def server_status(dovecot: DovecotServer, user: str, folder: str) -> dict[str, int]:
    imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=30)
    try:
        imap.login(user, dovecot.password)
        typ, data = imap.status(f'"{folder}"', "(UIDVALIDITY UIDNEXT HIGHESTMODSEQ)")
        assert typ == "OK"
        raw = data[0]
        assert isinstance(raw, bytes)
        words = raw.decode().split("(", 1)[1].rstrip(")").split()
        return {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            imap.logout()


# -- initial sync and backfill -------------------------------------------------------------------


async def test_initial_sync_is_newest_first_then_backfills_in_pages(
    big: BigMailbox, db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    expected = server_state(big.dovecot, big.user)
    assert len(expected) == TOTAL
    async with imap_harness(db_url, clock, tmp_path, big.dovecot) as h:
        aid = await add_imap_account(h.services, big.dovecot, big.user)

        ctx, rec = await run_sync(h, aid, pages=2)
        # The inbox's newest 50 are fetched (and committed) before anything else.
        first = rec.fetched[:FIRST_PAGE_SIZE]
        assert first == [("INBOX", uid) for uid in big.uids["INBOX"][-FIRST_PAGE_SIZE:]]
        assert rec.fetch_sizes[0] == ("INBOX", FIRST_PAGE_SIZE)
        # Then every other folder's newest page, then two backfill pages (of the inbox).
        assert rec.fetch_sizes[1:3] == [("Sent", SENT_SIZE), ("Archive", PAGE_SIZE)]
        assert rec.fetch_sizes[3:] == [("INBOX", PAGE_SIZE), ("INBOX", PAGE_SIZE)]
        assert ctx.more_work
        state = await store_state(h.services, aid)
        held = FIRST_PAGE_SIZE + 2 * PAGE_SIZE
        assert folder_uids(state, "INBOX") == big.uids["INBOX"][-held:]
        assert folder_uids(state, "Archive") == big.uids["Archive"][-PAGE_SIZE:]
        assert {rid: v for rid, v in expected.items() if rid in state} == state
        async with h.services.db.read() as conn:
            account = await account_store.get(conn, aid)
        assert account.initial_sync_done
        assert not account.backfill_done
        assert account.backfill_fetched == len(state)

        ctx, rec = await run_sync(h, aid, pages=2)
        assert rec.fetch_sizes == [("INBOX", INBOX_SIZE - held),
                                   ("Archive", ARCHIVE_SIZE - PAGE_SIZE)]
        assert not ctx.more_work
        assert await store_state(h.services, aid) == expected

        async with h.services.db.read() as conn:
            account = await account_store.get(conn, aid)
            folders = {f.remote_id: f for f in await mail_store.list_folders(conn, aid)}
        assert account.backfill_done
        assert account.backfill_fetched == TOTAL
        for name in ("INBOX", "Archive", "Sent"):
            status = server_status(big.dovecot, big.user, name)
            row = folders[name]
            assert (row.uidvalidity, row.uidnext, row.highestmodseq) == (
                status["UIDVALIDITY"], status["UIDNEXT"], status["HIGHESTMODSEQ"])
            assert row.backfill_done
            assert row.backfill_fetched == len(big.uids[name])

        # Nothing changed: a run fetches no message and writes nothing.
        ctx, rec = await run_sync(h, aid)
        assert rec.fetched == []
        assert ctx.stats.summary() == "added=0 updated=0 removed=0"


async def test_backfill_resumes_after_an_interrupted_run_without_refetching(
    big: BigMailbox, db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    async with imap_harness(db_url, clock, tmp_path, big.dovecot) as h:
        aid = await add_imap_account(h.services, big.dovecot, big.user)
        # Fetches 1-3 are the newest pages, 4 and 5 backfill; the 6th loses the connection.
        with pytest.raises(ProviderUnavailable):
            await run_sync(h, aid, fail_at=6)
        before = await store_state(h.services, aid)
        assert len(before) == FIRST_PAGE_SIZE + SENT_SIZE + PAGE_SIZE + 2 * PAGE_SIZE
        async with h.services.db.read() as conn:
            low = await cursors.get(conn, aid, imap_state.LOW, scope="INBOX")
        assert low == str(folder_uids(before, "INBOX")[0])

        ctx, rec = await run_sync(h, aid)
        refetched = {(f, uid) for f, uid in rec.fetched} & {
            (f, int(rid.rsplit(":", 1)[1])) for rid, (f, _, _) in before.items()}
        assert refetched == set()
        assert len(rec.fetched) == TOTAL - len(before)
        assert not ctx.more_work
        assert await store_state(h.services, aid) == server_state(big.dovecot, big.user)


async def test_a_connection_dropped_mid_sync_fails_transiently_and_the_next_run_completes(
    big: BigMailbox, db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    async with imap_harness(db_url, clock, tmp_path, big.dovecot) as h:
        aid = await add_imap_account(h.services, big.dovecot, big.user)
        killed = 0

        async def kill_after_first_commit() -> None:
            nonlocal killed
            with h.services.bus.subscribe(maxsize=100_000) as sub:
                await sub.get()
                # Drop the server side of the session without a BYE, as a crash would.
                while not killed:
                    killed = await asyncio.to_thread(big.dovecot.kill_sessions, big.user)

        async with asyncio.TaskGroup() as group:
            killer = group.create_task(kill_after_first_commit())
            results = await h.sync()
            killer.cancel()
        assert killed
        [result] = results
        assert (result.status, result.error_kind) == ("degraded", "unavailable")
        assert h.services.connectors.imap.in_use(aid) == 0
        async with h.services.db.read() as conn:
            account = await account_store.get(conn, aid)
        assert account.state is AccountState.DEGRADED
        assert account.retry_at is not None
        partial = await store_state(h.services, aid)
        assert 0 < len(partial) < TOTAL

        clock.advance((account.retry_at - clock.now()).total_seconds() + 1)
        results = await h.sync_until_idle()
        assert [r.status for r in results] == ["ok"]
        state = await store_state(h.services, aid)
        assert state == server_state(big.dovecot, big.user)
        async with h.services.db.read() as conn:
            stored = await conn.scalar(select(func.count()).select_from(messages))
        assert stored == TOTAL


# -- Trigger backfill ----------------------------------------------------------------------------


async def test_trigger_backfill_fetches_every_uid_of_the_folder_we_do_not_hold(
    big: BigMailbox, db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    async with imap_harness(db_url, clock, tmp_path, big.dovecot) as h:
        aid = await add_imap_account(h.services, big.dovecot, big.user)
        await run_sync(h, aid, pages=1)
        async with h.services.db.transaction() as conn:
            archive = (await mail_store.folder_map(conn, aid))["Archive"]
            await mail_store.request_folder_backfill(conn, archive)

        # The requested folder goes before the ordinary backfill of the inbox.
        ctx, rec = await run_sync(h, aid, pages=1)
        assert rec.fetch_sizes == [("Archive", ARCHIVE_SIZE - PAGE_SIZE)]
        assert ctx.more_work  # the inbox's backfill is still owed
        async with h.services.db.read() as conn:
            row = next(f for f in await mail_store.list_folders(conn, aid) if f.id == archive)
            deep = await cursors.get(conn, aid, imap_state.DEEP, scope="Archive")
        assert (row.backfill_requested, row.backfill_done) == (False, True)
        assert row.backfill_fetched == ARCHIVE_SIZE - PAGE_SIZE
        assert deep is None
        state = await store_state(h.services, aid)
        assert folder_uids(state, "Archive") == big.uids["Archive"]

        # Messages missing inside the window (lost locally) are found again, and only they.
        await run_sync(h, aid)
        async with h.services.db.read() as conn:
            validity = next(f.uidvalidity for f in await mail_store.list_folders(conn, aid)
                            if f.remote_id == "INBOX")
        lost = [f"INBOX:{validity}:{uid}" for uid in big.uids["INBOX"][100:1300:200]]
        async with h.services.db.transaction() as conn:
            await mail_store.apply_messages(conn, aid, [], lost, {}, clock.now())
            inbox = (await mail_store.folder_map(conn, aid))["INBOX"]
            await mail_store.request_folder_backfill(conn, inbox)
        ctx, rec = await run_sync(h, aid, pages=1)
        assert sorted(uid for _, uid in rec.fetched) == big.uids["INBOX"][100:1300:200]
        assert await store_state(h.services, aid) == server_state(big.dovecot, big.user)
        async with h.services.db.read() as conn:
            row = next(f for f in await mail_store.list_folders(conn, aid) if f.id == inbox)
        assert (row.backfill_requested, row.backfill_done, row.backfill_fetched) == (
            False, True, len(lost))


async def test_trigger_backfill_resumes_where_it_stopped(
    big: BigMailbox, db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    async with imap_harness(db_url, clock, tmp_path, big.dovecot) as h:
        aid = await add_imap_account(h.services, big.dovecot, big.user)
        await run_sync(h, aid, pages=0)  # only the newest pages: 50 of the inbox
        async with h.services.db.transaction() as conn:
            inbox = (await mail_store.folder_map(conn, aid))["INBOX"]
            await mail_store.request_folder_backfill(conn, inbox)
        ctx, rec = await run_sync(h, aid, pages=1)
        assert rec.fetch_sizes == [("INBOX", PAGE_SIZE)]
        assert ctx.more_work
        async with h.services.db.read() as conn:
            deep = await cursors.get(conn, aid, imap_state.DEEP, scope="INBOX")
        assert deep == str(big.uids["INBOX"][-FIRST_PAGE_SIZE - PAGE_SIZE])
        _, rec = await run_sync(h, aid, pages=1)
        assert rec.fetch_sizes == [("INBOX", PAGE_SIZE)]
        _, rec = await run_sync(h, aid, pages=1)
        assert rec.fetch_sizes[0] == ("INBOX", INBOX_SIZE - FIRST_PAGE_SIZE - 2 * PAGE_SIZE)
        state = await store_state(h.services, aid)
        assert folder_uids(state, "INBOX") == big.uids["INBOX"]
        async with h.services.db.read() as conn:
            row = next(f for f in await mail_store.list_folders(conn, aid) if f.id == inbox)
        assert not row.backfill_requested
        assert row.backfill_done


# -- roles and the runner ------------------------------------------------------------------------


async def test_special_folders_get_their_roles(
    dovecot: DovecotServer, db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    user = dovecot.new_user()
    async with imap_harness(db_url, clock, tmp_path, dovecot) as h:
        aid = await add_imap_account(h.services, dovecot, user)
        [result] = await h.sync()
        assert result.status == "ok"
        async with h.services.db.read() as conn:
            roles = {f.remote_id: f.role for f in await mail_store.list_folders(conn, aid)}
    if dovecot.flavour is Flavour.FULL:  # by SPECIAL-USE attribute
        assert roles == {"INBOX": FolderRole.INBOX, "Sent": FolderRole.SENT,
                         "Drafts": FolderRole.DRAFTS, "Trash": FolderRole.TRASH,
                         "Junk": FolderRole.SPAM, "Archive": FolderRole.ARCHIVE}
    else:  # by name (no SPECIAL-USE)
        assert roles == {"INBOX": FolderRole.INBOX, "Sent Items": FolderRole.SENT,
                         "Drafts": FolderRole.DRAFTS, "Deleted Items": FolderRole.TRASH,
                         "Junk Email": FolderRole.SPAM, "Archive": FolderRole.ARCHIVE}


async def test_the_runner_syncs_an_imap_mailbox_end_to_end(
    dovecot: DovecotServer, db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    user = dovecot.new_user()
    with dovecot.admin(user):
        pass
    dovecot.deliver(user, "INBOX", (make_message(i) for i in range(12)))
    dovecot.deliver(user, dovecot.sent_folder, (make_message(100 + i) for i in range(3)),
                    seen=True)
    async with imap_harness(db_url, clock, tmp_path, dovecot, prefetch_bodies=4) as h:
        aid = await add_imap_account(h.services, dovecot, user)
        results = await h.sync_until_idle()
        assert [r.status for r in results] == ["ok"]
        assert results[0].summary == "added=15 updated=0 removed=0"
        assert await store_state(h.services, aid) == server_state(dovecot, user)
        assert h.services.connectors.imap.in_use(aid) == 0
        async with h.services.db.read() as conn:
            account = await account_store.get(conn, aid)
            texts = list((await conn.execute(select(bodies.c.text))).scalars())
        assert account.state is AccountState.OK
        assert (account.initial_sync_done, account.backfill_done) == (True, True)
        # The body prefetch ran over the same session (bodies of new mail, newest first).
        assert len(texts) == 4
        assert all(t.startswith("Body of message ") for t in texts)

        with dovecot.admin(user) as admin:
            admin.append("INBOX", [make_message(50, subject="Fresh")])
        async with h.services.db.transaction() as conn:
            await account_store.request_sync(conn, aid, reason="test", now=clock.now())
        [result] = await h.sync()
        assert (result.status, result.summary) == ("ok", "added=1 updated=0 removed=0")
        assert await store_state(h.services, aid) == server_state(dovecot, user)
        async with h.services.db.read() as conn:
            inbox = next(f for f in await mail_store.list_folders(conn, aid)
                         if f.remote_id == "INBOX")
        assert inbox.uidnext == server_status(dovecot, user, "INBOX")["UIDNEXT"]
