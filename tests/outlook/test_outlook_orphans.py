"""When the Outlook engine deletes an orphan (a message left in no folder): only at the end of a
settled run that started after the message's *latest* orphaning, on SQLite and PostgreSQL.

The edge: a message orphaned before a run, linked to a folder again during that run and
orphaned again in the same run is both "pending" (orphaned before the run) and "orphaned by
this run". Its newest orphaning happened during the run, so the run must not delete it: the
folder it went to may be read only by the next run.
"""

from __future__ import annotations

from sqlalchemy import update

from maildesk.clock import ManualClock
from maildesk.domain.events import ChangeKind
from maildesk.store.tables import folders
from maildesk.sync.outlook import ORPHANS
from tests.support.fake_graph import FakeGraph
from tests.sync.test_outlook_sync import ARCHIVE, INBOX, Rig


class _Scenario:
    """An Inbox, an Archive and a Projects folder we do not sync. Two messages start in the
    Inbox; the first run after the setup leaves both orphaned (moved to Projects)."""

    def __init__(self) -> None:
        self.graph = FakeGraph()
        self.projects = self.graph.add_folder("Projects")
        self.graph.seed(INBOX, 4)
        self.plain, self.bouncing = self.graph.seed(INBOX, 2)
        self.graph.seed(ARCHIVE, 3)

    async def orphan_both(self, rig: Rig) -> dict[str, int]:
        """Sync fully, stop syncing Projects, move both messages there and run once: both
        are orphans waiting for the next run. Returns the local ids."""
        await rig.run_until_idle()
        async with rig.db.transaction() as conn:
            await conn.execute(update(folders).where(folders.c.remote_id == self.projects)
                               .values(selected=False))
        local = await rig.local_ids()
        self.graph.move(self.plain, self.projects)
        self.graph.move(self.bouncing, self.projects)
        first = await rig.run()
        state = await rig.state()
        assert (state[self.plain], state[self.bouncing]) == ([], [])
        assert first.more_work
        assert _ids(await rig.cursor(ORPHANS)) == {local[self.plain], local[self.bouncing]}
        return local

    def bounce_during_next_run(self) -> None:
        """Before the next run: ``bouncing`` comes back into Archive and Archive's delta
        token dies. That run relists Archive (linking it again), and just before the listing's
        catch-up round it leaves Archive for Projects (orphaned again, in that run)."""
        graph = self.graph
        graph.move(self.bouncing, ARCHIVE)
        graph.expire(ARCHIVE)
        listed = False

        def before_archive_delta() -> None:
            nonlocal listed
            link = graph.calls[-1][2]  # the call being made (recorded before hooks run)
            if listed:
                graph.move(self.bouncing, self.projects)
                return
            listed = link is None
            graph.before("delta", before_archive_delta, folder=ARCHIVE)

        graph.before("delta", before_archive_delta, folder=ARCHIVE)


def _ids(value: str | None) -> set[int]:
    return {int(v) for v in value.split()} if value else set()


async def test_an_orphan_orphaned_again_during_a_run_waits_for_the_next_run(
    db_url: str, clock: ManualClock
) -> None:
    s = _Scenario()
    async with Rig.open(db_url, clock, s.graph) as rig:
        local = await s.orphan_both(rig)
        rig.events.clear()
        s.bounce_during_next_run()

        second = await rig.run()
        assert rig.kinds(s.bouncing) == [ChangeKind.UPDATED, ChangeKind.UPDATED], \
            "linked to Archive by the listing, unlinked by its catch-up"
        state = await rig.state()
        assert s.plain not in state, "an orphan from before the run is deleted (normal path)"
        assert rig.kinds(s.plain) == [ChangeKind.REMOVED]
        assert state[s.bouncing] == [], "orphaned again during the run: it waits"
        assert _ids(await rig.cursor(ORPHANS)) == {local[s.bouncing]}
        assert second.more_work, "the run that may delete it is asked for at once"

        # It went to a folder we do not sync: the next run (started after it) deletes it.
        third = await rig.run()
        assert s.bouncing not in await rig.state()
        assert rig.kinds(s.bouncing)[-1] is ChangeKind.REMOVED
        assert await rig.cursor(ORPHANS) is None
        assert not third.more_work
        assert await rig.state() == {
            mid: folders for mid, folders in s.graph.state().items() if folders != [s.projects]
        }


async def test_an_orphan_orphaned_again_and_then_moved_back_keeps_its_local_message(
    db_url: str, clock: ManualClock
) -> None:
    s = _Scenario()
    async with Rig.open(db_url, clock, s.graph) as rig:
        local = await s.orphan_both(rig)
        rig.events.clear()
        s.bounce_during_next_run()
        await rig.run()

        # Moved back to a synced folder after that run: the next run links it again. Had
        # the run above deleted it, it would come back as a new message (a new local id,
        # a REMOVED then ADDED flash in the live UI, its cached body dropped).
        s.graph.move(s.bouncing, INBOX)
        await rig.run_until_idle()
        assert (await rig.state())[s.bouncing] == [INBOX]
        assert (await rig.local_ids())[s.bouncing] == local[s.bouncing]
        assert ChangeKind.REMOVED not in rig.kinds(s.bouncing)
        assert await rig.cursor(ORPHANS) is None
