"""Outlook sync (`sync/outlook.py`) against an in-memory Graph mailbox, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from maildesk.clock import ManualClock
from maildesk.config import Settings
from maildesk.domain.accounts import ProviderKind
from maildesk.domain.compose import local_remote_id
from maildesk.domain.events import ChangeKind, MailEvent
from maildesk.domain.mail import RemoteMessage
from maildesk.errors import ProviderRejected, ProviderUnavailable, RateLimited
from maildesk.live.bus import LiveBus
from maildesk.store import accounts as account_store
from maildesk.store import bodies
from maildesk.store import cursors as cursor_store
from maildesk.store import mail as mail_store
from maildesk.store.database import Database
from maildesk.store.tables import changes, cursors, folders, message_folders, messages
from maildesk.sync.context import SyncContext
from maildesk.sync.outlook import DELTA, NEXT, ORPHANS, ROUND, OutlookEngine, OutlookSync
from tests.support.fake_graph import FakeGraph

INBOX, ARCHIVE, SENT, TRASH = "inbox-id", "archive-id", "sent-id", "trash-id"


class Rig:
    """One Outlook account on a real database, synced by ``OutlookSync`` runs."""

    def __init__(self, db: Database, clock: ManualClock, graph: FakeGraph, account_id: int,
                 *, pages: int, page_size: int) -> None:
        self.db = db
        self.clock = clock
        self.bus = LiveBus()
        self.graph = graph
        self.account_id = account_id
        self.pages = pages
        self.page_size = page_size
        self.events: list[MailEvent] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, db_url: str, clock: ManualClock, graph: FakeGraph | None = None,
                   *, pages: int = 50, page_size: int = 10) -> AsyncIterator[Rig]:
        db = Database(db_url)
        try:
            async with db.transaction() as conn:
                aid = await account_store.create(
                    conn, provider=ProviderKind.OUTLOOK, email="olive@example.com",
                    now=clock.now(),
                )
            yield cls(db, clock, graph or FakeGraph(), aid, pages=pages, page_size=page_size)
        finally:
            await db.dispose()

    @contextlib.asynccontextmanager
    async def context(self, owner: str = "worker-1") -> AsyncIterator[SyncContext]:
        lease = timedelta(minutes=5)
        async with self.db.transaction() as conn:
            claim = await account_store.claim_one(
                conn, self.account_id, owner=owner, now=self.clock.now(), lease=lease
            )
        assert claim is not None
        ctx = SyncContext(self.db, self.clock, self.bus, self.account_id, owner, lease)
        with self.bus.subscribe(maxsize=1_000_000) as sub:
            try:
                yield ctx
            finally:
                async with self.db.transaction() as conn:
                    await account_store.release(conn, claim, owner=owner, now=self.clock.now(),
                                                values={},
                                                clear_request=False)
                while not sub.queue.empty():
                    event = sub.queue.get_nowait()
                    assert event is not None
                    self.events.append(event)

    async def run(self, *, pages: int | None = None) -> SyncContext:
        async with self.context() as ctx:
            await OutlookSync(self.graph, ctx, backfill_pages=pages or self.pages,
                              page_size=self.page_size).run()
        self.clock.advance(30)
        return ctx

    async def run_until_idle(self, rounds: int = 100) -> int:
        """Run until a run neither has work left nor leaves orphans waiting. Returns runs."""
        for n in range(1, rounds + 1):
            ctx = await self.run()
            if not ctx.more_work and await self.cursor(ORPHANS) is None:
                return n
        raise AssertionError("still syncing after many runs")

    async def state(self) -> dict[str, list[str]]:
        """remote id -> sorted folder remote ids, as the store has it."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(messages.c.remote_id, folders.c.remote_id.label("folder"))
                .select_from(messages)
                .outerjoin(message_folders, message_folders.c.message_id == messages.c.id)
                .outerjoin(folders, folders.c.id == message_folders.c.folder_id)
                .where(messages.c.account_id == self.account_id)
            )
            state: dict[str, list[str]] = {}
            for remote_id, folder in rows:
                state.setdefault(remote_id, [])
                if folder is not None:
                    state[remote_id].append(folder)
        return {k: sorted(v) for k, v in state.items()}

    async def local_ids(self) -> dict[str, int]:
        async with self.db.read() as conn:
            rows = await conn.execute(select(messages.c.remote_id, messages.c.id).where(
                messages.c.account_id == self.account_id))
            return {r.remote_id: int(r.id) for r in rows}

    async def row(self, remote_id: str) -> tuple[bool, bool]:
        """(unread, starred) of a stored message."""
        async with self.db.read() as conn:
            r = (await conn.execute(select(messages.c.unread, messages.c.starred).where(
                messages.c.remote_id == remote_id))).one()
            return bool(r.unread), bool(r.starred)

    async def logged(self) -> list[tuple[str, str]]:
        """(kind, remote id) of every change-log row, in order."""
        async with self.db.read() as conn:
            rows = await conn.execute(select(changes.c.kind, changes.c.remote_id)
                                      .order_by(changes.c.id))
            return [(r.kind, r.remote_id) for r in rows]

    async def message_rows(self) -> int:
        async with self.db.read() as conn:
            return int(await conn.scalar(select(func.count()).select_from(messages)) or 0)

    async def cursor(self, name: str, scope: str = "") -> str | None:
        async with self.db.read() as conn:
            return await cursor_store.get(conn, self.account_id, name, scope=scope)

    async def cursor_rows(self, scope: str) -> list[str]:
        async with self.db.read() as conn:
            rows = await conn.execute(select(cursors.c.name).where(cursors.c.scope == scope))
            return sorted(rows.scalars())

    async def account(self) -> account_store.AccountRow:
        async with self.db.read() as conn:
            return await account_store.get(conn, self.account_id)

    async def folder_rows(self) -> dict[str, mail_store.FolderRow]:
        async with self.db.read() as conn:
            return {f.remote_id: f for f in await mail_store.list_folders(conn, self.account_id)}

    def kinds(self, remote_id: str) -> list[ChangeKind]:
        return [e.kind for e in self.events if e.remote_id == remote_id]


def _assert_exactly_once(logged: list[tuple[str, str]]) -> None:
    added = [rid for kind, rid in logged if kind == "added"]
    assert len(added) == len(set(added)), "a message was added twice"


async def test_initial_sync_inbox_newest_first_then_resumable_backfill(
    db_url: str, clock: ManualClock
) -> None:
    graph = FakeGraph()
    graph.seed(ARCHIVE, 30)
    graph.seed(SENT, 8)
    inbox = graph.seed(INBOX, 120)
    async with Rig.open(db_url, clock, graph, pages=3, page_size=10) as rig:
        ctx = await rig.run()
        # The newest 50 of the inbox are committed first, newest first, before any listing.
        assert [e.remote_id for e in rig.events[:50]] == list(reversed(inbox))[:50]
        assert all(e.kind is ChangeKind.ADDED for e in rig.events[:50])
        assert [c[0] for c in graph.calls[:3]] == ["folders", "newest", "delta"]
        assert ctx.more_work, "the page budget was spent"
        assert graph.delta_calls(INBOX) == [None, "next:1", "next:2"]
        assert graph.delta_calls(ARCHIVE) == [], "other folders are listed after the inbox"
        stored_next = await rig.cursor(NEXT, INBOX)
        assert stored_next is not None
        account = await rig.account()
        assert not account.initial_sync_done
        assert account.backfill_fetched == 0, "pages 1-3 repeat the newest 50"

        # The next run continues at the stored nextLink.
        graph.calls.clear()
        await rig.run()
        assert graph.delta_calls(INBOX)[0] == stored_next

        runs = await rig.run_until_idle()
        assert runs >= 4
        assert await rig.state() == graph.state()
        account = await rig.account()
        assert account.initial_sync_done
        assert account.backfill_done
        assert account.backfill_fetched == 120 - 50 + 30 + 8
        rows = await rig.folder_rows()
        assert all(row.backfill_done for row in rows.values())
        assert (rows[INBOX].backfill_fetched, rows[ARCHIVE].backfill_fetched) == (70, 30)

        # "Trigger backfill" on a folder: its completed delta round already covers it all.
        async with rig.db.transaction() as conn:
            await mail_store.request_folder_backfill(conn, rows[ARCHIVE].id)
        await rig.run()
        archive = (await rig.folder_rows())[ARCHIVE]
        assert archive.backfill_done
        assert not archive.backfill_requested
        _assert_exactly_once(await rig.logged())
        for scope in (INBOX, ARCHIVE, SENT, TRASH):
            assert await rig.cursor_rows(scope) == [DELTA], "rounds and seen rows are dropped"


async def test_crash_between_pages_resumes_at_the_stored_next_link(
    db_url: str, clock: ManualClock
) -> None:
    graph = FakeGraph()
    graph.seed(INBOX, 65)
    graph.seed(ARCHIVE, 25)
    graph.fail("delta", RuntimeError("worker crashed"), folder=INBOX, skip=3)
    async with Rig.open(db_url, clock, graph, page_size=10) as rig:
        with pytest.raises(RuntimeError, match="crashed"):
            await rig.run()
        stored = await rig.cursor(NEXT, INBOX)
        assert stored == "next:3", "the third page was committed with its nextLink"
        before = await rig.local_ids()

        # A new worker continues at the stored nextLink, not at the start.
        graph.calls.clear()
        await rig.run_until_idle()
        assert graph.delta_calls(INBOX)[0] == stored
        assert None not in graph.delta_calls(INBOX)
        assert await rig.state() == graph.state()
        after = await rig.local_ids()
        assert {k: after[k] for k in before} == before, "local ids survive the crash"
        assert await rig.message_rows() == 90
        _assert_exactly_once(await rig.logged())


async def test_adds_updates_deletes_and_moves(db_url: str, clock: ManualClock) -> None:
    graph = FakeGraph()
    ids = graph.seed(INBOX, 20)
    kept = graph.seed(ARCHIVE, 5)
    async with Rig.open(db_url, clock, graph) as rig:
        await rig.run_until_idle()
        local = await rig.local_ids()
        rig.events.clear()
        new = graph.add(INBOX, "fresh")
        graph.update(ids[0], unread=False)
        graph.update(ids[1], starred=True)
        graph.delete(ids[2])
        graph.move(ids[3], ARCHIVE)  # @removed in the inbox (read first), then added in Archive
        graph.move(kept[0], INBOX)  # added in the inbox first, then @removed in Archive
        graph.move(ids[4], TRASH)  # "delete" in Outlook: a move to Deleted Items

        first = await rig.run()
        assert first.more_work, "the follow-up run that deletes is asked for at once"
        state = await rig.state()
        assert state[new] == [INBOX]
        assert await rig.row(ids[0]) == (False, False)
        assert await rig.row(ids[1]) == (True, True)
        assert state[ids[2]] == [], "unlinked now, deleted once no move can still arrive"
        assert state[ids[3]] == [ARCHIVE]
        assert state[kept[0]] == [INBOX]
        assert state[ids[4]] == [TRASH]

        second = await rig.run()
        assert not second.more_work, "no orphan is left waiting"
        assert await rig.state() == graph.state()
        after = await rig.local_ids()
        for moved in (ids[3], kept[0], ids[4]):
            assert after[moved] == local[moved], "a move keeps the local message"
            assert ChangeKind.REMOVED not in rig.kinds(moved)
        assert rig.kinds(new) == [ChangeKind.ADDED]
        assert rig.kinds(ids[0]) == [ChangeKind.UPDATED]
        assert rig.kinds(ids[2]) == [ChangeKind.UPDATED, ChangeKind.REMOVED]
        assert await rig.cursor(ORPHANS) is None


async def test_a_move_seen_by_the_target_only_in_the_next_run_is_not_a_delete(
    db_url: str, clock: ManualClock
) -> None:
    graph = FakeGraph()
    projects = graph.add_folder("Projects")
    graph.seed(INBOX, 5)
    moving = graph.seed(projects, 3)[0]
    async with Rig.open(db_url, clock, graph) as rig:
        await rig.run_until_idle()
        local = (await rig.local_ids())[moving]
        rig.events.clear()
        # The inbox is read before Projects; the move happens in between, so this run sees
        # only the @removed in Projects and the inbox reports the message one run later.
        graph.before("delta", lambda: graph.move(moving, INBOX), folder=projects)
        await rig.run()
        assert (await rig.state())[moving] == []
        await rig.run()
        assert (await rig.state())[moving] == [INBOX]
        assert (await rig.local_ids())[moving] == local
        assert rig.kinds(moving) == [ChangeKind.UPDATED, ChangeKind.UPDATED]
        assert await rig.state() == graph.state()


async def test_replayed_and_duplicated_delta_items_change_nothing(
    db_url: str, clock: ManualClock
) -> None:
    graph = FakeGraph()
    ids = graph.seed(INBOX, 30)
    graph.seed(ARCHIVE, 12)
    graph.echo = True  # every page repeats its items and the previous page's
    async with Rig.open(db_url, clock, graph, page_size=7) as rig:
        await rig.run_until_idle()
        old = {scope: await rig.cursor(DELTA, scope) for scope in (INBOX, ARCHIVE)}
        graph.update(ids[5], starred=True)
        graph.move(ids[6], ARCHIVE)
        graph.delete(ids[7])
        graph.add(INBOX, "late")
        await rig.run_until_idle()
        expected = await rig.state()
        assert expected == graph.state()
        logged = await rig.logged()
        _assert_exactly_once(logged)

        for _ in range(3):
            # Rewind every folder: the same changes are read and applied again.
            async with rig.db.transaction() as conn:
                for scope, link in old.items():
                    assert link is not None
                    await cursor_store.put(conn, rig.account_id, DELTA, link, clock.now(),
                                           scope=scope)
            await rig.run_until_idle()
        assert await rig.state() == expected
        assert await rig.logged() == logged, "a replay logs no change"
        assert await rig.message_rows() == len(expected)


async def test_expired_token_mid_listing_relists_and_sweeps(
    db_url: str, clock: ManualClock
) -> None:
    graph = FakeGraph()
    ids = graph.seed(INBOX, 80)
    async with Rig.open(db_url, clock, graph, pages=3, page_size=10) as rig:
        await rig.run()
        assert await rig.cursor(ROUND, INBOX) is not None
        local = await rig.local_ids()
        # Listed already (newest 50 + three pages): deleted and moved while the token dies.
        graph.delete(ids[-1])
        graph.delete(ids[-45])  # stored by newest(), never reported by the new listing
        graph.move(ids[-2], ARCHIVE)
        graph.expire(INBOX)
        await rig.run_until_idle()
        assert graph.delta_calls(INBOX).count(None) == 2, "the inbox was listed again"
        assert await rig.state() == graph.state()
        assert (await rig.local_ids())[ids[-2]] == local[ids[-2]]
        assert await rig.cursor_rows(INBOX) == [DELTA]
        _assert_exactly_once(await rig.logged())


async def test_a_relisted_folder_keeps_the_local_entry_of_a_message_being_sent(
    db_url: str, clock: ManualClock
) -> None:
    graph = FakeGraph()
    graph.seed(SENT, 5)
    async with Rig.open(db_url, clock, graph, page_size=10) as rig:
        await rig.run_until_idle()
        entry = RemoteMessage(remote_id=local_remote_id(1), thread_id="", received_at=clock.now(),
                              folder_ids=frozenset({SENT}), message_id_header="<ours@x.example>")
        async with rig.db.transaction() as conn:
            fmap = await mail_store.folder_map(conn, rig.account_id)
            await mail_store.apply_messages(conn, rig.account_id, [entry], [], fmap, clock.now())
        graph.expire(SENT)  # the relisting sweeps what it did not list out of the folder
        await rig.run_until_idle()
        state = await rig.state()
        assert state.pop(local_remote_id(1)) == [SENT], "the entry stays in Sent"
        assert state == graph.state()


async def test_expired_token_after_completion_relists_to_the_same_state(
    db_url: str, clock: ManualClock
) -> None:
    graph = FakeGraph()
    ids = graph.seed(INBOX, 45)
    graph.seed(ARCHIVE, 10)
    async with Rig.open(db_url, clock, graph, page_size=10) as rig:
        await rig.run_until_idle()
        local = await rig.local_ids()
        logged = len(await rig.logged())
        # These changes are only ever reported to the dead token: the relisting must find them.
        graph.delete(ids[0])
        graph.delete(ids[1])
        graph.move(ids[2], ARCHIVE)
        graph.update(ids[3], unread=False)
        new = graph.add(INBOX, "arrived meanwhile")
        graph.log = [entry for entry in graph.log if entry[1] != INBOX]
        graph.expire(INBOX)
        rig.events.clear()
        await rig.run_until_idle()
        assert await rig.state() == graph.state()
        assert (await rig.local_ids())[ids[2]] == local[ids[2]]
        assert await rig.row(ids[3]) == (False, False)
        assert rig.kinds(new) == [ChangeKind.ADDED]
        # Only the real changes are logged: the relisting of unchanged mail writes nothing.
        assert len(await rig.logged()) - logged == len(rig.events) == 2 + 2 + 1 + 1 + 1
        assert await rig.cursor_rows(INBOX) == [DELTA]


async def test_new_mail_shows_during_a_long_initial_listing_without_flashing(
    db_url: str, clock: ManualClock
) -> None:
    graph = FakeGraph()
    graph.seed(INBOX, 100)
    async with Rig.open(db_url, clock, graph, pages=1, page_size=10) as rig:
        await rig.run()
        new = graph.add(INBOX, "urgent")
        await rig.run()
        assert (await rig.state())[new] == [INBOX], "new mail shows before the listing ends"
        await rig.run_until_idle()
        assert await rig.state() == graph.state()
        assert rig.kinds(new) == [ChangeKind.ADDED], "never unlinked by the sweep"


async def test_one_failing_folder_does_not_block_the_others(
    db_url: str, clock: ManualClock
) -> None:
    graph = FakeGraph()
    graph.seed(INBOX, 10)
    graph.seed(ARCHIVE, 10)
    graph.seed(TRASH, 4)
    graph.fail("delta", ProviderRejected("400 ErrorInvalidRequest", status=400), folder=ARCHIVE)
    async with Rig.open(db_url, clock, graph) as rig:
        with pytest.raises(ProviderRejected, match="Archive"):
            await rig.run()
        state = await rig.state()
        # Deleted Items is read after Archive.
        assert sum(1 for f in state.values() if f == [TRASH]) == 4, "later folders still synced"
        assert sum(1 for f in state.values() if f == [ARCHIVE]) == 0
        assert (await rig.account()).initial_sync_done

        # A steady mailbox: one folder fails while a message is hard-deleted elsewhere.
        await rig.run_until_idle()
        gone = next(m for m, f in graph.state().items() if f == [INBOX])
        graph.delete(gone)
        new = graph.add(TRASH, "still arrives")
        graph.fail("delta", ProviderRejected("400", status=400), folder=ARCHIVE, count=2)
        for _ in range(2):
            with pytest.raises(ProviderRejected):
                await rig.run()
        state = await rig.state()
        assert state[new] == [TRASH]
        assert state[gone] == [], "no orphan is deleted while a folder could not be read"
        await rig.run_until_idle()
        assert await rig.state() == graph.state()


async def test_rate_limit_propagates_typed_and_keeps_what_was_committed(
    db_url: str, clock: ManualClock
) -> None:
    graph = FakeGraph()
    graph.seed(INBOX, 70)
    graph.seed(ARCHIVE, 5)
    graph.fail("delta", RateLimited("429 throttled", retry_after=42.0), folder=INBOX, skip=2)
    async with Rig.open(db_url, clock, graph, page_size=10) as rig:
        with pytest.raises(RateLimited) as caught:
            await rig.run()
        assert caught.value.retry_after == 42.0
        assert graph.delta_calls(ARCHIVE) == [], "a throttled mailbox is not hammered further"
        assert await rig.cursor(NEXT, INBOX) == "next:2"
        graph.fail("delta", ProviderUnavailable("503"), folder=ARCHIVE)
        with pytest.raises(ProviderUnavailable):
            await rig.run()
        await rig.run_until_idle()
        assert await rig.state() == graph.state()
        _assert_exactly_once(await rig.logged())


async def test_unselected_folders_and_folder_tree_changes(
    db_url: str, clock: ManualClock
) -> None:
    graph = FakeGraph()
    projects = graph.add_folder("Projects")
    old = graph.add_folder("Old stuff")
    graph.seed(INBOX, 6)
    doomed = graph.seed(old, 4)
    graph.seed(projects, 3)
    async with Rig.open(db_url, clock, graph) as rig:
        await rig.run_until_idle()
        async with rig.db.transaction() as conn:
            await conn.execute(update(folders).where(folders.c.remote_id == projects)
                               .values(selected=False))
        calls = len(graph.delta_calls(projects))
        to_unselected = next(m for m, f in graph.state().items() if f == [INBOX])
        graph.move(to_unselected, projects)
        graph.rename_folder(INBOX, "Posteingang")
        graph.remove_folder(old)
        rig.events.clear()
        clock.advance(601)  # the folder tree is refreshed every 10 minutes
        await rig.run_until_idle()
        assert len(graph.delta_calls(projects)) == calls, "an unselected folder is not synced"
        state = await rig.state()
        assert to_unselected not in state, "moved where we do not sync: gone here"
        for mid in doomed:
            assert mid not in state
            assert rig.kinds(mid) == [ChangeKind.UPDATED, ChangeKind.REMOVED]
        rows = await rig.folder_rows()
        assert old not in rows
        assert rows[INBOX].name == "Posteingang"
        assert await rig.cursor_rows(old) == []


async def test_a_folder_answering_404_is_dropped_without_an_error(
    db_url: str, clock: ManualClock
) -> None:
    graph = FakeGraph()
    old = graph.add_folder("Temp")
    graph.seed(old, 3)
    graph.seed(INBOX, 3)
    async with Rig.open(db_url, clock, graph) as rig:
        await rig.run_until_idle()
        graph.remove_folder(old)
        await rig.run_until_idle()  # raises if the 404 surfaced
        assert old not in await rig.folder_rows()
        assert await rig.state() == graph.state()


async def test_engine_runs_and_prefetches_bodies(
    db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    graph = FakeGraph()
    graph.seed(INBOX, 8)
    settings = Settings(data_dir=tmp_path, secret_key="k").replace(graph_delta_page_size=3)
    async with Rig.open(db_url, clock, graph) as rig, rig.context() as ctx:
        engine = OutlookEngine(graph, ctx, settings)
        await engine.run()
        assert ctx.stats.added == 8
        assert await engine.prefetch(ctx.stats.new_message_ids, 5) == 5
        async with rig.db.read() as conn:
            cached = await bodies.get(conn, ctx.stats.new_message_ids[0])
        assert cached is not None
        assert "message" in cached.text
