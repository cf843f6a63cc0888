"""One IMAP folder's sync: its UID window, new mail, flag changes, expunges, backfill, resets.

**The window.** For each folder we hold every message whose UID lies in ``[low, top)`` of the
folder's current UIDVALIDITY epoch (as of when we last looked): ``top`` is ``folders.uidnext``,
``low`` the ``imap_low`` cursor. New mail is what lies at or above ``top``; backfill walks
``low`` down, a page of the newest older UIDs at a time, until ``low`` is 1. Every change to the
window is written in the transaction that applied the messages it covers, so a crash anywhere
leaves a window that is true, and the next run continues from it (replaying is harmless:
applying is idempotent).

**Changes inside the window.**

- QRESYNC: the SELECT itself (``QRESYNC (uidvalidity modseq known-uids)``) reports the flags of
  every message changed since our ``highestmodseq`` and the UIDs that VANISHED.
- CONDSTORE only: ``UID FETCH window (FLAGS) (CHANGEDSINCE m)`` for flags; expunges by
  comparing ``UID SEARCH UID window`` with the UIDs we hold.
- Neither: the plain diff. ``UID SEARCH UID window`` (expunges), and ``… UNSEEN`` and
  ``… FLAGGED`` for the two flags we keep (unread, starred). Three compact UID lists instead of
  a FETCH of every message's FLAGS.

The ``highestmodseq`` we store is the SELECT's, taken before anything was fetched, so a change
made while we fetched is reported again next time rather than missed.

**UIDVALIDITY changes.** Our remote ids carry the epoch (``folder:uidvalidity:uid``). When the
server's UIDVALIDITY differs from the stored one, the old epoch's rows are deleted in the same
transaction that records the new epoch, and the folder is refetched newest first — no
duplicates, nothing stale. A folder that keeps changing epoch (more than ``EPOCH_LIMIT`` times
within ``EPOCH_PERIOD``) is not refetched again: it fails with a :class:`CursorExpired` naming
the folder, shown on the account page, until the period has passed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.domain.events import ChangeKind, MailEvent
from maildesk.errors import CursorExpired
from maildesk.providers.imap import Changes, ImapMessage, QresyncState
from maildesk.providers.imap_fetch import make_remote_id, parse_remote_id
from maildesk.providers.imap_folders import SelectedFolder
from maildesk.providers.imap_wire import UidSet
from maildesk.store import accounts as account_store
from maildesk.store import cursors, imap_state
from maildesk.store import mail as mail_store
from maildesk.store.imap_state import DEEP, EPOCHS, ERROR, LOW
from maildesk.store.mail import FolderRow
from maildesk.sync.context import SyncContext
from maildesk.sync.imap_mailbox import ImapMailbox

log = logging.getLogger(__name__)

PAGE_SIZE = 500
EPOCH_LIMIT = 3
EPOCH_PERIOD = timedelta(hours=1)
# Above this many vanished UIDs we intersect with what we hold instead of listing ids.
_VANISHED_LISTED = 5000


@dataclass(slots=True)
class FolderState:
    """Where one folder's sync stands (from its row and cursors, kept current as we write)."""

    row: FolderRow
    uidvalidity: int | None
    top: int | None
    modseq: int | None
    low: int | None
    deep: int | None = None
    epochs: list[datetime] = field(default_factory=list)
    failed_before: bool = False

    @classmethod
    def of(cls, row: FolderRow, stored: dict[tuple[str, str], str]) -> FolderState:
        scope = row.remote_id
        low = stored.get((scope, LOW))
        deep = stored.get((scope, DEEP))
        epochs = [datetime.fromisoformat(t) for t in json.loads(stored.get((scope, EPOCHS), "[]"))]
        return cls(
            row=row, uidvalidity=row.uidvalidity, top=row.uidnext, modseq=row.highestmodseq,
            low=int(low) if low is not None else None,
            deep=int(deep) if deep is not None else None,
            epochs=epochs, failed_before=(scope, ERROR) in stored,
        )

    @property
    def path(self) -> str:
        return self.row.remote_id

    @property
    def fresh(self) -> bool:
        """No window yet: the folder's newest page has not been fetched in this epoch."""
        return self.uidvalidity is None or self.top is None or self.low is None

    @property
    def complete(self) -> bool:
        """Nothing older is left to backfill."""
        return not self.fresh and self.low == 1

    @property
    def wants_deep(self) -> bool:
        return self.row.backfill_requested


class FolderSync:
    """Operations on the folders of one mailbox during one sync run (one IMAP session)."""

    def __init__(self, client: ImapMailbox, ctx: SyncContext, fmap: dict[str, int],
                 backfill_fetched: int) -> None:
        self.client = client
        self.ctx = ctx
        self.fmap = fmap
        # The account's running count of messages listings added (written with each page).
        self.backfill_fetched = backfill_fetched

    # ------------------------------------------------------------------ select, epochs
    async def open(self, f: FolderState) -> tuple[SelectedFolder, Changes | None]:
        """SELECT the folder (with QRESYNC when we can); handle a changed UIDVALIDITY."""
        changes: Changes | None = None
        if f.uidvalidity is not None and not f.fresh and f.modseq and self.client.qresync:
            assert f.top is not None
            assert f.low is not None
            base = 1 if f.deep is not None else f.low
            known = UidSet([(base, f.top - 1)]) if base < f.top else None
            try:
                selected, changes = await self.client.resync(
                    f.path, QresyncState(f.uidvalidity, f.modseq, known)
                )
            except CursorExpired:
                selected = await self.client.select(f.path)
        else:
            selected = await self.client.select(f.path)
        self.ctx.stats.provider_calls += 1
        if f.uidvalidity is not None and selected.uidvalidity != f.uidvalidity:
            await self._new_epoch(f, selected)
            changes = None
        return selected, changes

    async def _new_epoch(self, f: FolderState, selected: SelectedFolder) -> None:
        now = self.ctx.clock.now()
        recent = [t for t in f.epochs if now - t < EPOCH_PERIOD]
        if len(recent) >= EPOCH_LIMIT:
            until = min(recent) + EPOCH_PERIOD
            raise CursorExpired(
                f"UIDVALIDITY of {f.path!r} changed more than {EPOCH_LIMIT} times within "
                f"{EPOCH_PERIOD.total_seconds() / 3600:g} h (now {selected.uidvalidity}); "
                f"the folder is not refetched again before {until:%Y-%m-%d %H:%M} UTC"
            )
        log.info("account %s: folder %s has a new UIDVALIDITY, refetching it",
                 self.ctx.account_id, f.row.id)
        aid = self.ctx.account_id
        recent.append(now)
        async with self.ctx.write() as conn:
            held = await mail_store.folder_remote_ids(conn, f.row.id)
            # The old epoch's rows (``folder_remote_ids`` holds provider rows only).
            stale = sorted(rid for rid in held
                           if _epoch(rid) not in (None, selected.uidvalidity))
            events = await mail_store.apply_messages(conn, aid, [], stale, self.fmap, now)
            await imap_state.set_folder_sync(
                conn, f.row.id, uidvalidity=selected.uidvalidity, uidnext=None,
                highestmodseq=None,
            )
            await imap_state.drop_folder_cursors(conn, aid, f.path, (LOW, DEEP))
            await cursors.put(conn, aid, EPOCHS, json.dumps([t.isoformat() for t in recent]),
                              now, scope=f.path)
            await imap_state.record_progress(conn, f.row.id, 0, done=False)
        self.ctx.committed(events)
        f.uidvalidity, f.top, f.modseq, f.low, f.deep = selected.uidvalidity, None, None, None, None
        f.epochs = recent

    # ------------------------------------------------------------------ first page
    async def first_page(self, f: FolderState, selected: SelectedFolder, size: int) -> None:
        """The folder's newest ``size`` messages: the window starts here."""
        uids = await self._search("ALL")
        page = uids[-size:]
        fetched = await self.fetch(page)
        top = max(selected.uidnext or 1, uids[-1] + 1 if uids else 1)
        low = 1 if len(page) == len(uids) else page[0]
        await self.apply(f, fetched, uidvalidity=selected.uidvalidity, top=top,
                         modseq=selected.highest_modseq, low=low, listing=True)

    # ------------------------------------------------------------------ incremental
    async def changes(
        self, f: FolderState, selected: SelectedFolder, changes: Changes | None
    ) -> None:
        """Flag changes and expunges inside the window (see the module docstring)."""
        assert f.top is not None
        assert f.low is not None
        assert f.uidvalidity is not None
        flags: dict[str, tuple[bool, bool]] = {}
        gone: list[str] = []
        modseq = selected.highest_modseq
        if changes is not None:
            flags = self._flags(f, changes)
            gone = await self._vanished(f, changes.vanished)
        elif (held := await self._held(f)) or f.low < f.top:
            # The window, widened to anything a deep fetch put below its low end.
            window = f"{min([f.low, *held])}:{f.top - 1}"
            if self.client.condstore and f.modseq is not None and modseq is not None:
                if modseq != f.modseq:
                    found = await self.client.fetch_changes(f.modseq, window)
                    self.ctx.stats.provider_calls += 1
                    flags = self._flags(f, found)
                present = set(await self._search(f"UID {window}"))
                gone = [rid for uid, (rid, _) in held.items() if uid not in present]
            else:
                present = set(await self._search(f"UID {window}"))
                unseen = set(await self._search(f"UID {window} UNSEEN"))
                flagged = set(await self._search(f"UID {window} FLAGGED"))
                for uid, (rid, have) in held.items():
                    if uid not in present:
                        gone.append(rid)
                    elif have != (want := (uid in unseen, uid in flagged)):
                        flags[rid] = want
        if not flags and not gone and modseq == f.modseq:
            return
        async with self.ctx.write() as conn:
            now = self.ctx.clock.now()
            events = await mail_store.update_flags(conn, self.ctx.account_id, flags, now)
            events += await mail_store.apply_messages(
                conn, self.ctx.account_id, [], gone, self.fmap, now
            )
            await imap_state.set_folder_sync(conn, f.row.id, uidvalidity=f.uidvalidity,
                                             uidnext=f.top, highestmodseq=modseq)
        self.ctx.committed(events)
        f.modseq = modseq

    def _flags(self, f: FolderState, changes: Changes) -> dict[str, tuple[bool, bool]]:
        assert f.uidvalidity is not None
        out: dict[str, tuple[bool, bool]] = {}
        for m in changes.changed:
            if m.uid is None or m.flags is None:
                continue
            lowered = {flag.lower() for flag in m.flags}
            out[make_remote_id(f.path, f.uidvalidity, m.uid)] = (
                "\\seen" not in lowered, "\\flagged" in lowered
            )
        return out

    async def _vanished(self, f: FolderState, vanished: UidSet) -> list[str]:
        assert f.uidvalidity is not None
        if not vanished:
            return []
        if len(vanished) <= _VANISHED_LISTED:
            return [make_remote_id(f.path, f.uidvalidity, uid) for uid in vanished]
        return [rid for uid, (rid, _) in (await self._held(f)).items() if uid in vanished]

    async def new_mail(self, f: FolderState, selected: SelectedFolder) -> None:
        """Fetch what arrived at or above the window's top, oldest first, page by page."""
        assert f.top is not None
        top = f.top
        if selected.uidnext is not None and selected.uidnext <= top:
            return
        if selected.uidnext is not None and selected.uidnext - top <= PAGE_SIZE:
            # The usual case (a few new messages): one FETCH, no SEARCH.
            fetched = [m for m in await self._fetch_raw(f"{top}:*") if m.uid >= top]
            last = max((m.uid for m in fetched), default=0)
            await self.apply(f, fetched, top=max(selected.uidnext, last + 1, top))
            return
        uids = [uid for uid in await self._search(f"UID {top}:*") if uid >= top]
        if not uids and selected.uidnext is not None:
            await self.apply(f, [], top=selected.uidnext)
            return
        pages = [uids[start:start + PAGE_SIZE] for start in range(0, len(uids), PAGE_SIZE)]

        async def apply(index: int, fetched: list[ImapMessage]) -> None:
            new_top = pages[index][-1] + 1
            if index == len(pages) - 1:
                new_top = max(new_top, selected.uidnext or 0)
            await self.apply(f, fetched, top=new_top)

        await self._pipelined(pages, apply)

    # ------------------------------------------------------------------ backfill
    async def backfill(self, f: FolderState, budget: int) -> tuple[int, bool]:
        """Older mail below the window, newest first, at most ``budget`` pages.
        Returns the budget left and whether the folder still has older mail."""
        assert f.low is not None
        if f.low <= 1:
            return budget, False
        if budget <= 0:
            return budget, True
        if not await self._reselect(f):
            return budget, False
        older = [uid for uid in await self._search(f"UID 1:{f.low - 1}") if uid < f.low]
        if not older:
            await self.apply(f, [], low=1, listing=True)
            return budget, False
        pages, older = _newest_pages(older, budget)

        async def apply(index: int, fetched: list[ImapMessage]) -> None:
            last = index == len(pages) - 1
            await self.apply(f, fetched, low=1 if last and not older else pages[index][0],
                             listing=True)

        await self._pipelined(pages, apply)
        return budget - len(pages), bool(older)

    async def deep(self, f: FolderState, budget: int) -> tuple[int, bool]:
        """"Trigger backfill": every UID of the folder we do not hold, from the newest down,
        resumable (``imap_deep``). Clears the request when done. Returns (budget, unfinished)."""
        assert f.top is not None
        if budget <= 0:
            return budget, True
        if not await self._reselect(f):
            return budget, False
        start = f.deep if f.deep is not None else f.top
        held = set(await self._held(f))
        below = await self._search(f"UID 1:{start - 1}") if start > 1 else []
        missing = [uid for uid in below if uid < start and uid not in held]
        if not missing:
            await self._deep_page(f, [], None)
            return budget, False
        pages, missing = _newest_pages(missing, budget)

        async def apply(index: int, fetched: list[ImapMessage]) -> None:
            last = index == len(pages) - 1
            await self._deep_page(f, fetched, None if last and not missing else pages[index][0])

        await self._pipelined(pages, apply)
        return budget - len(pages), bool(missing)

    async def _deep_page(
        self, f: FolderState, fetched: Sequence[ImapMessage], resume: int | None
    ) -> None:
        aid = self.ctx.account_id
        async with self.ctx.write() as conn:
            now = self.ctx.clock.now()
            events = await mail_store.apply_messages(
                conn, aid, [m.message for m in fetched], [], self.fmap, now
            )
            added = _added(events)
            done = resume is None
            await mail_store.record_folder_backfill(conn, f.row.id, added, done=done)
            if done:
                await cursors.drop(conn, aid, DEEP, scope=f.path)
                await cursors.put(conn, aid, LOW, "1", now, scope=f.path)
            else:
                await cursors.put(conn, aid, DEEP, str(resume), now, scope=f.path)
            await self._count(conn, added)
        self.ctx.committed(events)
        f.deep = resume
        if resume is None:
            f.low = 1

    async def _pipelined(
        self,
        pages: Sequence[Sequence[int]],
        apply: Callable[[int, list[ImapMessage]], Awaitable[None]],
    ) -> None:
        """Fetch and apply ``pages`` in order, fetching page n+1 while page n is applied (the
        wait for the server overlaps the database's). One FETCH at a time on the session; a
        fetch still running when applying fails is cancelled (which drops the connection:
        half a command leaves it unusable) and awaited."""
        if not pages:
            return
        pending = asyncio.create_task(self.fetch(pages[0]))
        try:
            for index in range(len(pages)):
                fetched = await pending
                if index + 1 < len(pages):
                    pending = asyncio.create_task(self.fetch(pages[index + 1]))
                await apply(index, fetched)
        finally:
            if not pending.done():
                pending.cancel()
                await asyncio.wait([pending])
            if not pending.cancelled():
                pending.exception()  # retrieved: it is raised above or superseded

    async def _reselect(self, f: FolderState) -> bool:
        """SELECT for backfill; False if the epoch changed since (the next run resets it)."""
        selected = await self.client.select(f.path)
        self.ctx.stats.provider_calls += 1
        return selected.uidvalidity == f.uidvalidity

    # ------------------------------------------------------------------ IMAP helpers
    async def _search(self, criteria: str) -> list[int]:
        found = await self.client.uid_search(criteria)
        self.ctx.stats.provider_calls += 1
        return found

    async def fetch(self, uids: Sequence[int]) -> list[ImapMessage]:
        if not uids:
            return []
        return await self._fetch_raw(UidSet.of(uids))

    async def _fetch_raw(self, uids: UidSet | str) -> list[ImapMessage]:
        found = await self.client.fetch_messages(uids)
        self.ctx.stats.provider_calls += 1
        self.ctx.stats.fetched += len(found)
        return found

    async def _held(self, f: FolderState) -> dict[int, tuple[str, tuple[bool, bool]]]:
        """UID → (remote id, (unread, starred)) of the folder's stored messages of this epoch."""
        async with self.ctx.db.read() as conn:
            stored = await imap_state.held_flags(conn, f.row.id)
        out: dict[int, tuple[str, tuple[bool, bool]]] = {}
        for rid, flags in stored.items():
            try:
                _, validity, uid = parse_remote_id(rid)
            except ValueError:
                continue
            if validity == f.uidvalidity:
                out[uid] = (rid, flags)
        return out

    # ------------------------------------------------------------------ writing
    async def apply(
        self,
        f: FolderState,
        fetched: Sequence[ImapMessage],
        *,
        uidvalidity: int | None = None,
        top: int | None = None,
        modseq: int | None = None,
        low: int | None = None,
        listing: bool = False,
    ) -> None:
        """Apply one page and move the window in the same transaction."""
        aid = self.ctx.account_id
        validity = uidvalidity if uidvalidity is not None else f.uidvalidity
        new_top = top if top is not None else f.top
        new_modseq = modseq if uidvalidity is not None else f.modseq
        async with self.ctx.write() as conn:
            now = self.ctx.clock.now()
            events = await mail_store.apply_messages(
                conn, aid, [m.message for m in fetched], [], self.fmap, now
            )
            if (validity, new_top, new_modseq) != (f.uidvalidity, f.top, f.modseq):
                await imap_state.set_folder_sync(conn, f.row.id, uidvalidity=validity,
                                                 uidnext=new_top, highestmodseq=new_modseq)
            if low is not None and low != f.low:
                await cursors.put(conn, aid, LOW, str(low), now, scope=f.path)
            if listing:
                added = _added(events)
                await imap_state.record_progress(
                    conn, f.row.id, added, done=None if low is None else low == 1
                )
                await self._count(conn, added)
        self.ctx.committed(events)
        f.uidvalidity, f.top, f.modseq = validity, new_top, new_modseq
        if low is not None:
            f.low = low

    async def _count(self, conn: AsyncConnection, added: int) -> None:
        if added:
            self.backfill_fetched += added
            await account_store.update_fields(conn, self.ctx.account_id,
                                              backfill_fetched=self.backfill_fetched)


def _newest_pages(uids: list[int], budget: int) -> tuple[list[list[int]], list[int]]:
    """Up to ``budget`` pages of the newest ``uids`` (ascending), newest page first, and the
    older UIDs left over."""
    pages: list[list[int]] = []
    while uids and len(pages) < budget:
        pages.append(uids[-PAGE_SIZE:])
        uids = uids[:-PAGE_SIZE]
    return pages, uids


def _added(events: Sequence[MailEvent]) -> int:
    return sum(1 for e in events if e.kind is ChangeKind.ADDED)


def _epoch(remote_id: str) -> int | None:
    try:
        return parse_remote_id(remote_id)[1]
    except ValueError:
        return None
