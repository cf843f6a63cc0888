"""Outlook sync over Microsoft Graph: the folder tree, then one delta round per selected folder.

Cursors (``store/cursors.py``, scope = the folder's Graph id) are written only in the
transaction that applied the page they stand for, so a crash anywhere replays from the previous
page and applying is idempotent (DESIGN §4.1):

- ``graph_next``: the nextLink of a round in progress. A restart or the next run continues
  there, so a long initial listing is resumable page by page.
- ``graph_delta``: the deltaLink of the last completed round; every run follows it to the next
  deltaLink (usually one call).
- ``graph_round`` + ``graph_seen:N``: a *from-scratch* round is open (the first sync of a folder,
  or a restart after a dead token). Every applied page also stores the ids it reported present
  (one cursor row per page, so the seen set survives restarts and costs one small row per page,
  not a write per message). When the listing reaches its deltaLink we do not sweep yet: we
  follow that deltaLink once (the *catch-up*), because mail that arrived or moved in while we
  listed is reported there, not in the listing. When the catch-up reaches its deltaLink, the
  messages linked to the folder that neither reported are unlinked (the sweep), in the same
  transaction that drops the round. So a 410 mid-round or after completion converges to the
  provider's state with no duplicates (upserts are keyed by remote id) and nothing stale.

Initial sync: the folder tree, then ``newest(inbox, 50)`` is committed first so the inbox shows
at once (newest first); then the Inbox's round, then the other folders' rounds. Pages of
from-scratch listings are bounded per run (``backfill_pages``); when the budget is spent the run
sets ``ctx.more_work`` and the next claim continues at the stored nextLink. While the Inbox has
no deltaLink yet (initial sync, or a resync after an expired token), every run re-reads
``newest(inbox, 50)`` first, so new mail still shows within one run of its arrival. Folders
that are already incremental are synced before any from-scratch listing, so a long listing
never delays their new mail either; a folder whose token turns out dead is relisted after them
too (a message moved out of it meanwhile is then already linked to its new folder, so the sweep
does not flash it). The seen rows are what a sweep needs and no more: one row per page, read
once at the end, so a 100k-message folder costs a few hundred small rows for the round's life.

Moves. An Outlook message is in exactly one folder, and with immutable ids a move is
``@removed`` in folder A's delta plus an item in folder B's delta, in either order and possibly
in different runs. A move must not become delete + add (that flashes in the live UI, changes
the local id and drops the cached body), so:

- an item reported present in folder F sets the message's folders to {F};
- ``@removed`` unlinks it from F only (``UPDATED``; with no folder left it is an *orphan*,
  recorded in ``graph_orphans`` in the same transaction);
- an orphan is deleted (``REMOVED``) only at the end of a run that started after it last became
  an orphan and in which every selected folder's delta reached its deltaLink (an orphan from
  before the run that this run linked again and orphaned again waits for the next run). Every
  folder was then read completely after the unlink, so had the message moved to a folder we
  sync, that folder would have linked it again. (Waiting only for "a steady run" is not enough:
  a move that happens after folder B was read but before folder A was read in the same run would
  delete the message, and B would re-add it with a new local id on the next run.) A message
  moved to a folder we do not sync is therefore deleted locally one run later, which is right.

Folders are refreshed on the first run and then every 10 minutes (renames carry no delta), and
at once when a folder's delta answers 404. A folder gone at the provider: its messages are
unlinked (``UPDATED``, orphans as above), its cursors dropped, its row removed. Only folders
with ``selected`` are synced; a requested folder backfill is done once the folder's first round
is complete (a Graph delta round already covers the whole folder).

Failures (DESIGN §4.3/4.4): auth errors, ``RateLimited`` and ``ProviderUnavailable`` end the run
at once with their type (Graph throttles per mailbox, so carrying on with other folders would
only dig deeper; the runner backs off, honouring Retry-After). Any other provider error is
folder-local: it is logged, the other folders are synced, orphans are kept, and the first such
error is raised at the end (its message names the folder) so the operator sees it.

Within one page, an id reported both present and removed counts as present (the page type does
not keep their order; a later round settles it). ``DeltaPage`` does not carry the ``@removed``
reason either; with it, ``deleted`` could delete at once instead of waiting like a move.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.config import Settings
from maildesk.domain.events import ChangeKind, MailEvent
from maildesk.domain.mail import FolderRole
from maildesk.errors import AuthError, CursorExpired, MessageGone, ProviderError, TransientError
from maildesk.providers.graph_types import DeltaPage, GraphApi
from maildesk.store import accounts as account_store
from maildesk.store import cursors
from maildesk.store import mail as mail_store
from maildesk.store.mail import FolderRow
from maildesk.sync.context import SyncContext
from maildesk.sync.prefetch import prefetch_bodies

log = logging.getLogger(__name__)

NEXT = "graph_next"
DELTA = "graph_delta"
ROUND = "graph_round"
SEEN = "graph_seen:"
FOLDERS_AT = "graph_folders_at"
ORPHANS = "graph_orphans"
FOLDER_REFRESH_SECONDS = 600
NEWEST = 50
# Incremental rounds are not budgeted (they carry new mail), but a provider that never ends a
# round must not hold a worker forever: stop, keep the nextLink, come back next claim.
MAX_PAGES_PER_FOLDER_RUN = 1000
# Which folders' listings go first after the Inbox (user folders sit with NONE).
_ORDER = {FolderRole.INBOX: 0, FolderRole.SENT: 1, FolderRole.ARCHIVE: 2, FolderRole.DRAFTS: 3,
          FolderRole.NONE: 4, FolderRole.SPAM: 5, FolderRole.TRASH: 6}


@dataclass(frozen=True, slots=True)
class _Position:
    """Where a folder's delta stands. ``chunks`` is None unless a from-scratch round is open
    (then: how many ``graph_seen:N`` rows it has written)."""

    next: str | None = None
    delta: str | None = None
    chunks: int | None = None

    @property
    def listing(self) -> bool:
        """The next page belongs to a from-scratch listing (budgeted)."""
        return self.delta is None


class OutlookSync:
    """Brings one Outlook mailbox's store up to date. One instance per sync run."""

    def __init__(
        self, api: GraphApi, ctx: SyncContext, *, backfill_pages: int = 20, page_size: int = 200
    ) -> None:
        self.api = api
        self.ctx = ctx
        self.page_size = page_size
        self._budget = backfill_pages
        self._fmap: dict[str, int] | None = None
        # Where each selected folder's delta stands now (kept current as pages are applied).
        self._positions: dict[str, _Position] = {}
        # Messages this run left in no folder (added to ``graph_orphans`` as they were).
        self._orphaned: set[int] = set()

    # ------------------------------------------------------------------ entry point
    async def run(self) -> None:
        aid = self.ctx.account_id
        async with self.ctx.db.read() as conn:
            folders_at = await cursors.get(conn, aid, FOLDERS_AT)
            pending = _ids(await cursors.get(conn, aid, ORPHANS))
        if folders_at is None or (
            self.ctx.clock.now().timestamp() - float(folders_at) > FOLDER_REFRESH_SECONDS
        ):
            await self._refresh_folders()
        async with self.ctx.db.read() as conn:
            chosen = sorted(
                (f for f in await mail_store.list_folders(conn, aid) if f.selected),
                key=lambda f: (_ORDER.get(f.role, 4), f.name.casefold(), f.id),
            )
            stored = await cursors.get_named(conn, aid, frozenset({ROUND, NEXT, DELTA}))
            positions = {f.remote_id: _position(stored, f.remote_id) for f in chosen}
        self._positions = positions
        inbox = next((f for f in chosen if f.role is FolderRole.INBOX), None)
        errors: dict[str, tuple[FolderRow, ProviderError]] = {}
        steady: set[str] = set()
        if inbox is not None and positions[inbox.remote_id].listing:
            await self._guard(inbox, errors, self._newest(inbox))
        # Incremental folders first: a long listing must not delay their new mail. A folder
        # whose token died is relisted with the listings, after the others reported their
        # moves (a message moved out of it is then linked to its new folder before the sweep).
        relist: dict[str, _Position] = {}
        for folder in chosen:
            pos = positions[folder.remote_id]
            if not pos.listing and await self._guard(
                folder, errors, self._sync_folder(folder, pos, expired=relist)
            ):
                steady.add(folder.remote_id)
        positions.update(relist)
        for folder in chosen:
            if (positions[folder.remote_id].listing and folder.remote_id not in errors
                    and await self._guard(
                        folder, errors, self._sync_folder(folder, positions[folder.remote_id])
                    )):
                steady.add(folder.remote_id)
        if any(isinstance(exc, MessageGone) for _, exc in errors.values()):
            # A folder that answers 404 was probably deleted: the refreshed tree tells.
            await self._refresh_folders()
            async with self.ctx.db.read() as conn:
                still = set((await mail_store.folder_map(conn, aid)).keys())
            chosen = [f for f in chosen if f.remote_id in still]
            errors = {k: v for k, v in errors.items() if k in still}
        await self._finish(chosen, inbox, steady, pending, failed=bool(errors))
        if errors:
            folder, exc = next(iter(errors.values()))
            prefix = f"folder {folder.name!r}: "
            if not exc.message.startswith(prefix):
                exc.message = prefix + exc.message
                exc.args = (exc.message,)
            raise exc

    async def _guard(
        self,
        folder: FolderRow,
        errors: dict[str, tuple[FolderRow, ProviderError]],
        work: Awaitable[bool],
    ) -> bool:
        """Await ``work`` for one folder; a folder-local failure is recorded, not raised."""
        try:
            return await work
        except (AuthError, TransientError):
            raise
        except ProviderError as exc:
            log.warning("account %s: folder %s failed (%s): %s", self.ctx.account_id,
                        folder.id, exc.kind, exc.message)
            errors.setdefault(folder.remote_id, (folder, exc))
            return False

    # ------------------------------------------------------------------ folders
    async def _refresh_folders(self) -> None:
        aid = self.ctx.account_id
        remote = await self.api.folders()
        self.ctx.stats.provider_calls += 1
        wanted = {f.remote_id for f in remote}
        async with self.ctx.write() as conn:
            now = self.ctx.clock.now()
            events: list[MailEvent] = []
            for row in await mail_store.list_folders(conn, aid):
                if row.remote_id in wanted:
                    continue
                linked = await mail_store.folder_remote_ids(conn, row.id)
                events += await mail_store.unlink_messages(conn, aid, row.id, linked, now)
                await self._drop_round(conn, row.remote_id)
                for name in (NEXT, DELTA):
                    await cursors.drop(conn, aid, name, scope=row.remote_id)
            self._fmap = await mail_store.upsert_folders(conn, aid, remote)
            await cursors.put(conn, aid, FOLDERS_AT, str(now.timestamp()), now)
            await self._note_orphans(conn, events)
        self.ctx.committed(events)

    async def _folder_map(self, conn: AsyncConnection) -> dict[str, int]:
        if self._fmap is None:
            self._fmap = await mail_store.folder_map(conn, self.ctx.account_id)
        return self._fmap

    # ------------------------------------------------------------------ inbox first
    async def _newest(self, inbox: FolderRow) -> bool:
        found = await self.api.newest(inbox.remote_id, NEWEST)
        self.ctx.stats.provider_calls += 1
        self.ctx.stats.fetched += len(found)
        place = frozenset({inbox.remote_id})
        async with self.ctx.write() as conn:
            events = await mail_store.apply_messages(
                conn, self.ctx.account_id,
                [dataclasses.replace(m, folder_ids=place) for m in found], [],
                await self._folder_map(conn), self.ctx.clock.now(),
            )
        self.ctx.committed(events)
        return True

    # ------------------------------------------------------------------ one folder's delta
    async def _sync_folder(
        self, folder: FolderRow, pos: _Position, *, expired: dict[str, _Position] | None = None
    ) -> bool:
        """Follow the folder's delta. True when it ended at a deltaLink with no round open.
        A dead token restarts the listing at once, or, given ``expired``, is noted there (with
        the position to relist from) for the caller to relist later in the run."""
        restarted = False
        pages = 0
        while True:
            if (pos.listing and self._budget <= 0) or pages >= MAX_PAGES_PER_FOLDER_RUN:
                self.ctx.more_work = True
                return False
            link = pos.next or pos.delta
            try:
                page = await self.api.delta(folder.remote_id, link, page_size=self.page_size)
            except CursorExpired:
                if link is None or restarted:
                    raise
                log.info("account %s: delta token of folder %s expired, relisting it",
                         self.ctx.account_id, folder.id)
                restarted = True
                pos = _Position(chunks=pos.chunks)  # the stale seen rows are dropped with page 1
                if expired is not None:
                    expired[folder.remote_id] = pos
                    return False
                continue
            self.ctx.stats.provider_calls += 1
            self.ctx.stats.fetched += len(page.messages)
            pages += 1
            if pos.listing:
                self._budget -= 1
            pos = await self._apply_page(folder, pos, fresh=link is None, page=page)
            self._positions[folder.remote_id] = pos
            if page.delta_link is not None and pos.chunks is None:
                return True

    async def _apply_page(
        self, folder: FolderRow, pos: _Position, *, fresh: bool, page: DeltaPage
    ) -> _Position:
        aid, scope = self.ctx.account_id, folder.remote_id
        place = frozenset({scope})
        present = {m.remote_id: dataclasses.replace(m, folder_ids=place) for m in page.messages}
        removed = [r for r in dict.fromkeys(page.removed) if r not in present]
        chunks = 0 if fresh else pos.chunks
        # The catch-up round after a listing reached its end: sweep what nobody reported.
        sweep = chunks is not None and not fresh and pos.delta is not None \
            and page.delta_link is not None
        async with self.ctx.write() as conn:
            now = self.ctx.clock.now()
            events = await mail_store.apply_messages(
                conn, aid, list(present.values()), [], await self._folder_map(conn), now
            )
            events += await mail_store.unlink_messages(conn, aid, folder.id, removed, now)
            if fresh:
                await self._drop_round(conn, scope, pos.chunks)
            if chunks is not None:
                if present:
                    chunks += 1
                    await cursors.put(conn, aid, SEEN + str(chunks), "\n".join(sorted(present)),
                                      now, scope=scope)
                if sweep:
                    seen = await _seen(conn, aid, scope, chunks)
                    stale = await mail_store.folder_remote_ids(conn, folder.id) - seen
                    events += await mail_store.unlink_messages(conn, aid, folder.id, stale, now)
                    await self._drop_round(conn, scope, chunks)
                    chunks = None
                else:
                    await cursors.put(conn, aid, ROUND, str(chunks), now, scope=scope)
            if page.next_link is not None:
                await cursors.put(conn, aid, NEXT, page.next_link, now, scope=scope)
            else:
                await cursors.drop(conn, aid, NEXT, scope=scope)
            if page.delta_link is not None:
                await cursors.put(conn, aid, DELTA, page.delta_link, now, scope=scope)
            elif fresh:
                await cursors.drop(conn, aid, DELTA, scope=scope)
            if pos.listing:
                await self._record_listing(conn, folder, events, done=page.delta_link is not None)
            await self._note_orphans(conn, events)
        self.ctx.committed(events)
        return _Position(page.next_link, page.delta_link or pos.delta, chunks)

    async def _record_listing(
        self, conn: AsyncConnection, folder: FolderRow, events: Sequence[MailEvent], *, done: bool
    ) -> None:
        """Progress of a from-scratch listing, for the UI and CLI summaries."""
        aid = self.ctx.account_id
        added = sum(1 for e in events if e.kind is ChangeKind.ADDED)
        if not folder.backfill_done:
            await mail_store.record_folder_backfill(conn, folder.id, added, done=done)
        account = await account_store.get(conn, aid)
        values: dict[str, object] = {}
        if added and not account.backfill_done:
            values["backfill_fetched"] = account.backfill_fetched + added
        if done and folder.role is FolderRole.INBOX and not account.initial_sync_done:
            values["initial_sync_done"] = True
        if values:
            await account_store.update_fields(conn, aid, **values)

    async def _drop_round(
        self, conn: AsyncConnection, scope: str, chunks: int | None = None
    ) -> None:
        aid = self.ctx.account_id
        if chunks is None:
            stored = await cursors.get(conn, aid, ROUND, scope=scope)
            chunks = int(stored) if stored is not None else 0
        for n in range(1, chunks + 1):
            await cursors.drop(conn, aid, SEEN + str(n), scope=scope)
        await cursors.drop(conn, aid, ROUND, scope=scope)

    # ------------------------------------------------------------------ orphans, summaries
    async def _note_orphans(self, conn: AsyncConnection, events: Sequence[MailEvent]) -> None:
        orphaned = {e.message_id for e in events
                    if e.kind is ChangeKind.UPDATED and not e.folder_ids}
        if orphaned:
            self._orphaned |= orphaned
            aid = self.ctx.account_id
            known = _ids(await cursors.get(conn, aid, ORPHANS))
            await cursors.put(conn, aid, ORPHANS, _join(known | orphaned), self.ctx.clock.now())

    async def _finish(
        self,
        chosen: list[FolderRow],
        inbox: FolderRow | None,
        steady: set[str],
        pending: set[int],
        *,
        failed: bool,
    ) -> None:
        aid = self.ctx.account_id
        settled = not failed and not self.ctx.more_work and all(
            f.remote_id in steady for f in chosen
        )
        # Orphaned before this run began and not again during it: every folder was read
        # since. One orphaned again by this run (linked somewhere, then unlinked) waits: the
        # folder it went to may be read only by the next run.
        deletable = pending - self._orphaned if settled else set()
        # What ``graph_orphans`` holds after this run: deletions wait for a run that starts
        # after them, so ask for that run now (a deleted message is gone in seconds rather
        # than at the next poll). A failed run is retried by the runner's backoff instead.
        waiting = (pending | self._orphaned) - deletable
        if waiting and not failed:
            self.ctx.more_work = True
        listed = {f.remote_id for f in chosen if self._positions[f.remote_id].delta is not None}
        requested = [f for f in chosen if f.backfill_requested and f.remote_id in listed]
        async with self.ctx.db.read() as conn:
            account = await account_store.get(conn, aid)
        values: dict[str, object] = {}
        if not account.initial_sync_done and (inbox is None or inbox.remote_id in listed):
            values["initial_sync_done"] = True
        if not account.backfill_done and all(f.remote_id in listed for f in chosen):
            values["backfill_done"] = True
        if not values and not requested and not deletable:
            return
        events: list[MailEvent] = []
        async with self.ctx.write() as conn:
            now = self.ctx.clock.now()
            if values:
                await account_store.update_fields(conn, aid, **values)
            for f in requested:
                # A Graph round covers the whole folder: its first completed round is the
                # deep fetch a folder backfill asks for.
                await mail_store.record_folder_backfill(conn, f.id, 0, done=True)
            if deletable:
                # Those linked again meanwhile are kept by ``delete_orphans``.
                events = await mail_store.delete_orphans(conn, aid, deletable, now)
                left = _ids(await cursors.get(conn, aid, ORPHANS)) - deletable
                if left:
                    await cursors.put(conn, aid, ORPHANS, _join(left), now)
                else:
                    await cursors.drop(conn, aid, ORPHANS)
        self.ctx.committed(events)


class OutlookEngine:
    """The ``MailboxEngine`` for an Outlook mailbox (wired in ``sync/connectors.py``)."""

    def __init__(self, api: GraphApi, ctx: SyncContext, settings: Settings) -> None:
        self._api = api
        self._ctx = ctx
        self._sync = OutlookSync(api, ctx, backfill_pages=settings.backfill_pages_per_run,
                                 page_size=settings.graph_delta_page_size)

    async def run(self) -> None:
        await self._sync.run()

    async def prefetch(self, message_ids: Sequence[int], limit: int) -> int:
        return await prefetch_bodies(self._api.get_body, self._ctx, message_ids, limit=limit)

    async def aclose(self) -> None:
        pass


# ---------------------------------------------------------------------- cursor helpers
def _position(stored: dict[tuple[str, str], str], scope: str) -> _Position:
    """A folder's delta position from the account's cursors (read in one query per run)."""
    chunks = stored.get((scope, ROUND))
    return _Position(
        next=stored.get((scope, NEXT)),
        delta=stored.get((scope, DELTA)),
        chunks=None if chunks is None else int(chunks),
    )


async def _seen(conn: AsyncConnection, account_id: int, scope: str, chunks: int) -> set[str]:
    seen: set[str] = set()
    for n in range(1, chunks + 1):
        value = await cursors.get(conn, account_id, SEEN + str(n), scope=scope)
        if value:
            seen.update(value.split("\n"))
    return seen


def _ids(value: str | None) -> set[int]:
    return {int(v) for v in value.split()} if value else set()


def _join(ids: set[int]) -> str:
    return " ".join(map(str, sorted(ids)))
