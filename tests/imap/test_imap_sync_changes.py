"""Changes after the initial sync, against a real Dovecot: flags and expunges through QRESYNC,
CONDSTORE alone and the plain UID diff; a UIDVALIDITY change refetched without duplicates and
the loop guard against a folder that keeps changing it; folders created and deleted on the
server. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import func, select

from maildesk.clock import ManualClock
from maildesk.domain.events import ChangeKind, MailEvent
from maildesk.errors import CursorExpired
from maildesk.store import cursors, imap_state
from maildesk.store import mail as mail_store
from maildesk.store.tables import changes, folders
from maildesk.sync.imap_folder import EPOCH_LIMIT, EPOCH_PERIOD
from tests.support.dovecot import DovecotServer, MailboxAdmin, make_message
from tests.support.harness import Harness

from .accounts import add_imap_account, imap_harness, run_sync, server_state, store_state


def fresh_user(dovecot: DovecotServer, inbox: int = 30, archive: int = 10) -> str:
    user = dovecot.new_user()
    with dovecot.admin(user):  # creates the auto folders
        pass
    dovecot.deliver(user, "INBOX", (make_message(i) for i in range(inbox)))
    dovecot.deliver(user, "Archive", (make_message(500 + i) for i in range(archive)), seen=True)
    return user


async def admin(dovecot: DovecotServer, user: str) -> MailboxAdmin:
    return await asyncio.to_thread(dovecot.admin, user)


async def change_count(h: Harness, account_id: int) -> int:
    async with h.services.db.read() as conn:
        count = await conn.scalar(
            select(func.count()).select_from(changes).where(changes.c.account_id == account_id))
    return int(count or 0)


@pytest.mark.parametrize("mode", ["qresync", "condstore", "plain"])
async def test_flag_changes_and_expunges_reach_the_store(
    mode: str, dovecot_full: DovecotServer, dovecot_basic: DovecotServer,
    db_url: str, clock: ManualClock, tmp_path: Path,
) -> None:
    dovecot = dovecot_basic if mode == "plain" else dovecot_full
    user = fresh_user(dovecot)
    enable = mode != "condstore"  # without ENABLE QRESYNC the client selects with CONDSTORE
    async with imap_harness(db_url, clock, tmp_path, dovecot) as h:
        aid = await add_imap_account(h.services, dovecot, user)
        await run_sync(h, aid, enable_sync=enable)
        assert await store_state(h.services, aid) == server_state(dovecot, user)

        with await admin(dovecot, user) as box:
            uids = box.uids("INBOX")
            box.set_flags("INBOX", uids[0:5], r"\Seen")
            box.set_flags("INBOX", uids[5:8], r"\Flagged")
            box.expunge("INBOX", uids[10:14])
            archived = box.uids("Archive")
            box.set_flags("Archive", archived[:2], r"\Seen", add=False)
            box.expunge("Archive", archived[-1:])
            box.append("INBOX", [make_message(900), make_message(901)])
        with h.services.bus.subscribe(maxsize=1000) as sub:
            ctx, rec = await run_sync(h, aid, enable_sync=enable)
            events: list[MailEvent] = []
            while not sub.queue.empty():
                event = sub.queue.get_nowait()
                assert event is not None
                events.append(event)
        assert await store_state(h.services, aid) == server_state(dovecot, user)
        assert ctx.stats.summary() == "added=2 updated=10 removed=5"
        assert sorted(e.kind for e in events).count(ChangeKind.UPDATED) == 10
        # Only the two new messages' metadata is fetched; flags come from the change report.
        assert [uid for _, uid in rec.fetched] == [uids[-1] + 1, uids[-1] + 2]
        if mode == "qresync":
            assert ("resync", "INBOX") in rec.calls
            assert not rec.searched("UNSEEN")
            assert not any(name == "uid_search" for name, _ in rec.calls)
        elif mode == "condstore":
            assert ("fetch_changes", "INBOX") in rec.calls
            assert not rec.searched("UNSEEN")
        else:
            assert rec.searched("UNSEEN")
            assert rec.searched("FLAGGED")

        # Unstarring and marking unread are changes too; a quiet run after them writes nothing.
        with await admin(dovecot, user) as box:
            box.set_flags("INBOX", uids[5:6], r"\Flagged", add=False)
            box.set_flags("INBOX", uids[0:1], r"\Seen", add=False)
        ctx, _ = await run_sync(h, aid, enable_sync=enable)
        assert ctx.stats.summary() == "added=0 updated=2 removed=0"
        assert await store_state(h.services, aid) == server_state(dovecot, user)
        logged = await change_count(h, aid)
        ctx, rec = await run_sync(h, aid, enable_sync=enable)
        assert ctx.stats.summary() == "added=0 updated=0 removed=0"
        assert rec.fetched == []
        assert await change_count(h, aid) == logged


async def test_a_changed_uidvalidity_refetches_the_folder_without_duplicates(
    dovecot: DovecotServer, db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    user = fresh_user(dovecot, inbox=5, archive=20)
    async with imap_harness(db_url, clock, tmp_path, dovecot) as h:
        aid = await add_imap_account(h.services, dovecot, user)
        await run_sync(h, aid)
        before = await store_state(h.services, aid)
        old = {rid for rid, (f, _, _) in before.items() if f == "Archive"}
        assert len(old) == 20

        with await admin(dovecot, user) as box:
            box.recreate("Archive")
            box.append("Archive", [make_message(700 + i) for i in range(12)])
        ctx, _ = await run_sync(h, aid)
        after = await store_state(h.services, aid)
        assert after == server_state(dovecot, user)
        assert not old & set(after)
        assert ctx.stats.summary() == "added=12 updated=0 removed=20"
        async with h.services.db.read() as conn:
            row = next(f for f in await mail_store.list_folders(conn, aid)
                       if f.remote_id == "Archive")
        new_validity = {int(rid.split(":")[1]) for rid, (f, _, _) in after.items()
                        if f == "Archive"}
        assert new_validity == {row.uidvalidity}
        # The inbox was not touched.
        assert {k: v for k, v in after.items() if v[0] == "INBOX"} == {
            k: v for k, v in before.items() if v[0] == "INBOX"}


async def test_a_folder_whose_uidvalidity_keeps_changing_is_skipped_with_an_error(
    dovecot_full: DovecotServer, db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    dovecot = dovecot_full
    user = fresh_user(dovecot, inbox=3, archive=4)
    async with imap_harness(db_url, clock, tmp_path, dovecot) as h:
        aid = await add_imap_account(h.services, dovecot, user)
        await run_sync(h, aid)
        for n in range(EPOCH_LIMIT):
            clock.advance(60)
            with await admin(dovecot, user) as box:
                box.recreate("Archive")
                box.append("Archive", [make_message(800 + n)])
            await run_sync(h, aid)
            assert await store_state(h.services, aid) == server_state(dovecot, user)

        clock.advance(60)
        with await admin(dovecot, user) as box:
            box.recreate("Archive")
            box.append("Archive", [make_message(900)])
            box.append("INBOX", [make_message(901)])
        ctx, _ = await run_sync(h, aid)  # the other folders are synced: the run succeeds
        assert ctx.stats.summary() == "added=1 updated=0 removed=0"
        state = await store_state(h.services, aid)
        expected = server_state(dovecot, user)
        assert {k: v for k, v in state.items() if v[0] != "Archive"} == {
            k: v for k, v in expected.items() if v[0] != "Archive"}
        async with h.services.db.read() as conn:
            errors = await imap_state.folder_errors(conn, aid)
        assert list(errors) == ["Archive"]
        assert errors["Archive"].kind == CursorExpired.kind
        assert "UIDVALIDITY of 'Archive' changed more than 3 times" in errors["Archive"].message

        # Once the hour is over the folder is refetched and its error cleared.
        clock.advance(EPOCH_PERIOD.total_seconds())
        await run_sync(h, aid)
        assert await store_state(h.services, aid) == server_state(dovecot, user)
        async with h.services.db.read() as conn:
            assert await imap_state.folder_errors(conn, aid) == {}


async def test_folders_created_and_deleted_on_the_server(
    dovecot: DovecotServer, db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    user = fresh_user(dovecot, inbox=2, archive=0)
    async with imap_harness(db_url, clock, tmp_path, dovecot) as h:
        aid = await add_imap_account(h.services, dovecot, user)
        await run_sync(h, aid)
        with await admin(dovecot, user) as box:
            box.create("Projects/2024")
            box.append("Projects/2024", [make_message(600 + i) for i in range(3)])
        ctx, _ = await run_sync(h, aid)
        assert ctx.stats.added == 3
        assert await store_state(h.services, aid) == server_state(dovecot, user)
        async with h.services.db.read() as conn:
            row = next(f for f in await mail_store.list_folders(conn, aid)
                       if f.remote_id == "Projects/2024")
            assert await cursors.get(conn, aid, imap_state.LOW, scope="Projects/2024") == "1"
        assert row.selected
        assert row.name == "2024"

        with await admin(dovecot, user) as box:
            box.delete("Projects/2024")
        ctx, _ = await run_sync(h, aid)
        assert ctx.stats.removed == 3
        assert await store_state(h.services, aid) == server_state(dovecot, user)
        async with h.services.db.read() as conn:
            names = set((await conn.execute(
                select(folders.c.remote_id).where(folders.c.account_id == aid))).scalars())
            assert await cursors.get(conn, aid, imap_state.LOW, scope="Projects/2024") is None
        assert "Projects/2024" not in names


async def test_an_unselected_folder_is_not_synced(
    dovecot_full: DovecotServer, db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    user = fresh_user(dovecot_full, inbox=2, archive=3)
    async with imap_harness(db_url, clock, tmp_path, dovecot_full) as h:
        aid = await add_imap_account(h.services, dovecot_full, user)
        await run_sync(h, aid)
        async with h.services.db.transaction() as conn:
            await conn.execute(folders.update().where(
                folders.c.account_id == aid, folders.c.remote_id == "Archive"
            ).values(selected=False))
        with await admin(dovecot_full, user) as box:
            box.append("Archive", [make_message(300)])
            box.append("INBOX", [make_message(301)])
        _, rec = await run_sync(h, aid)
        assert [f for f, _ in rec.fetched] == ["INBOX"]
        assert ("select", "Archive") not in rec.calls
        state = await store_state(h.services, aid)
        assert sum(1 for f, _, _ in state.values() if f == "Archive") == 3
        assert sum(1 for f, _, _ in state.values() if f == "INBOX") == 3
