"""IMAP sync: the folder list, then every selected folder's window (``sync/imap_folder.py``).

One run, one IMAP session (``ImapEngine`` opens it through ``ImapSessions``, so it counts
against the mailbox's connection limit, and closes it in ``aclose``):

1. ``LIST``: new folders are added (selected for sync by default), renamed roles updated, and
   folders the server no longer has removed together with the messages they held. Roles come
   from SPECIAL-USE attributes, else from names (Sent, Sent Items, Sent Mail, …).
2. A fresh INBOX first gets a small page (its newest ``FIRST_PAGE_SIZE``), so the newest mail
   is committed within a second or so of connecting.
3. Every selected folder, INBOX first: SELECT (with QRESYNC where we can), a UIDVALIDITY check,
   flag changes and expunges inside the held window, then new mail above it. A folder seen for
   the first time (or refetched after a UIDVALIDITY change) gets its newest ``PAGE_SIZE``.
4. Backfill, bounded by ``MAILDESK_BACKFILL_PAGES_PER_RUN`` pages per run across all folders:
   folders an operator asked to backfill first (a deep fetch of every UID we do not hold), then
   older mail of each folder, newest first. When the budget is spent the run sets
   ``ctx.more_work`` so the mailbox is claimed again after others had their turn.

Failures: auth errors, a lost lease and transient ones (a dropped or silent connection is
``ProviderUnavailable``) end the run — the runner backs off and the next run resumes from what
was committed. Any other error is the folder's own: it is recorded on the folder (cursor
``imap_error``, shown on the account page, cleared by the folder's next success) and the other
folders carry on (if the failure dropped the session — an answer we could not parse leaves it in
an unknown state — a new session is opened for them). Only when every selected folder failed
does the run fail with the first error.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from maildesk.config import Settings
from maildesk.domain.compose import is_local_folder
from maildesk.domain.mail import FolderRole, RemoteFolder
from maildesk.errors import AuthError, MailDeskError, StoreError, TransientError
from maildesk.store import accounts as account_store
from maildesk.store import cursors, imap_state
from maildesk.store import mail as mail_store
from maildesk.store.accounts import AccountRow
from maildesk.store.imap_state import ERROR, FOLDER_CURSORS, FolderError
from maildesk.store.mail import FolderRow
from maildesk.sync.context import SyncContext
from maildesk.sync.imap_folder import PAGE_SIZE, FolderState, FolderSync
from maildesk.sync.imap_mailbox import ImapMailbox
from maildesk.sync.imap_sessions import ImapSessions
from maildesk.sync.prefetch import prefetch_bodies

__all__ = ["FIRST_PAGE_SIZE", "PAGE_SIZE", "ImapEngine", "ImapMailbox", "ImapSync"]

log = logging.getLogger(__name__)
T = TypeVar("T")
Reopen = Callable[[], Awaitable[ImapMailbox]]

FIRST_PAGE_SIZE = 50
# New sessions one run may open after folder failures that dropped the session; past that
# the next command fails with ProviderUnavailable and the runner backs off.
MAX_REOPENS = 3
# Which folders go first after the Inbox (user folders sit with NONE).
_ORDER = {FolderRole.INBOX: 0, FolderRole.SENT: 1, FolderRole.ARCHIVE: 2, FolderRole.DRAFTS: 3,
          FolderRole.NONE: 4, FolderRole.SPAM: 5, FolderRole.TRASH: 6}


class ImapSync:
    """Brings one IMAP mailbox's store up to date over one session. One instance per run."""

    def __init__(self, client: ImapMailbox, ctx: SyncContext, *, backfill_pages: int = 20,
                 first_page_size: int = FIRST_PAGE_SIZE, reopen: Reopen | None = None) -> None:
        self.client = client
        self.ctx = ctx
        self.backfill_pages = backfill_pages
        self.first_page_size = first_page_size
        # A folder's failure inside a command (say a FETCH answer we cannot parse) drops the
        # session; ``reopen`` gives a new one so the folders after it are still synced.
        self.reopen = reopen
        self._reopens = MAX_REOPENS
        self._sync: FolderSync | None = None

    async def run(self) -> None:
        aid = self.ctx.account_id
        # One read for everything the run needs: a push-triggered run that finds nothing new
        # costs this read, LIST and one SELECT per folder, and writes nothing.
        async with self.ctx.db.read() as conn:
            account = await account_store.get(conn, aid)
            rows = await mail_store.list_folders(conn, aid)
            fmap = await mail_store.folder_map(conn, aid)
            stored = await cursors.get_named(conn, aid, FOLDER_CURSORS)
        remote = await self.client.list_folders()
        self.ctx.stats.provider_calls += 1
        if _folders_changed(remote, rows):
            rows, fmap = await self._apply_folders(remote, rows)
        # Only folders the server listed: a local stand-in (``local:folder:sent``, where mail
        # sent before the first listing shows) is nobody's to SELECT.
        listed = {f.remote_id for f in remote}
        chosen = [
            FolderState.of(row, stored)
            for row in sorted((r for r in rows if r.selected and r.remote_id in listed),
                              key=_order)
        ]
        sync = self._sync = FolderSync(self.client, self.ctx, fmap, account.backfill_fetched)
        errors: dict[str, MailDeskError] = {}
        done: set[str] = set()

        inbox = next((f for f in chosen if f.row.role is FolderRole.INBOX), None)
        # A fresh inbox gets its newest few first: it is usable after one small page.
        if inbox is not None and inbox.fresh and await self._guard(
            inbox, errors, self._folder(sync, inbox, self.first_page_size)
        ):
            done.add(inbox.path)
        for f in chosen:
            if f.path not in done and f.path not in errors:
                await self._guard(f, errors, self._folder(sync, f, PAGE_SIZE))

        budget = self.backfill_pages
        unfinished = False
        for f in sorted(chosen, key=lambda f: not f.wants_deep):
            if f.path in errors or f.fresh:
                continue
            work = sync.deep(f, budget) if f.wants_deep else sync.backfill(f, budget)
            outcome = await self._guard(f, errors, work)
            if outcome is not None:
                budget, left = outcome
                unfinished = unfinished or left
        if unfinished:
            self.ctx.more_work = True

        await self._finish(account, chosen, errors)
        if errors and len(errors) == len(chosen):
            path, exc = next(iter(errors.items()))
            prefix = f"folder {path!r}: "
            if not exc.message.startswith(prefix):
                exc.message = prefix + exc.message
                exc.args = (exc.message,)
            raise exc

    async def _folder(self, sync: FolderSync, f: FolderState, first_size: int) -> bool:
        selected, changes = await sync.open(f)
        if f.fresh:
            await sync.first_page(f, selected, first_size)
        else:
            await sync.changes(f, selected, changes)
            await sync.new_mail(f, selected)
        return True

    async def _guard(
        self, f: FolderState, errors: dict[str, MailDeskError], work: Awaitable[T]
    ) -> T | None:
        """Await one folder's ``work``; a folder-local failure is recorded, not raised."""
        try:
            return await work
        except (AuthError, TransientError, StoreError):
            raise
        except MailDeskError as exc:
            log.warning("account %s: folder %s failed (%s): %s", self.ctx.account_id,
                        f.row.id, exc.kind, exc.message)
            errors.setdefault(f.path, exc)
            error = FolderError(exc.kind, exc.message, self.ctx.clock.now())
            async with self.ctx.write() as conn:
                await imap_state.put_folder_error(conn, self.ctx.account_id, f.path, error)
            f.failed_before = True
            if self.client.closed and self.reopen is not None and self._reopens > 0:
                self._reopens -= 1
                self.client = await self.reopen()
                if self._sync is not None:
                    self._sync.client = self.client
            return None

    async def _apply_folders(
        self, remote: Sequence[RemoteFolder], rows: Sequence[FolderRow]
    ) -> tuple[list[FolderRow], dict[str, int]]:
        """Store the server's folder list; what vanished goes with its messages and cursors."""
        aid = self.ctx.account_id
        wanted = {f.remote_id for f in remote}
        gone = [r for r in rows if r.remote_id not in wanted and not is_local_folder(r.remote_id)]
        async with self.ctx.write() as conn:
            held = await imap_state.linked_message_ids(conn, [r.id for r in gone])
            fmap = await mail_store.upsert_folders(conn, aid, remote)
            events = await mail_store.delete_orphans(conn, aid, held, self.ctx.clock.now())
            for row in gone:
                await imap_state.drop_folder_cursors(conn, aid, row.remote_id)
            fresh = await mail_store.list_folders(conn, aid)
        self.ctx.committed(events)
        return fresh, fmap

    async def _finish(
        self, account: AccountRow, chosen: list[FolderState], errors: dict[str, MailDeskError]
    ) -> None:
        values: dict[str, object] = {}
        if not account.initial_sync_done and chosen and not any(f.fresh for f in chosen):
            values["initial_sync_done"] = True
        complete = all(f.complete for f in chosen)
        if complete != account.backfill_done:
            values["backfill_done"] = complete
        recovered = [f for f in chosen if f.failed_before and f.path not in errors]
        if not values and not recovered:
            return
        async with self.ctx.write() as conn:
            if values:
                await account_store.update_fields(conn, self.ctx.account_id, **values)
            for f in recovered:
                await cursors.drop(conn, self.ctx.account_id, ERROR, scope=f.path)


class ImapEngine:
    """The ``MailboxEngine`` of an IMAP mailbox (wired in ``sync/connectors.py``): one session
    for the run and the body prefetch after it, logged out in :meth:`aclose`."""

    def __init__(self, sessions: ImapSessions, account: AccountRow, ctx: SyncContext,
                 settings: Settings) -> None:
        self._sessions = sessions
        self._account = account
        self._ctx = ctx
        self._settings = settings
        self._stack = contextlib.AsyncExitStack()
        self._client: ImapMailbox | None = None

    async def _session(self) -> ImapMailbox:
        if self._client is None:
            self._client = await self._stack.enter_async_context(
                self._sessions.open(self._account)
            )
        return self._client

    async def run(self) -> None:
        client = await self._session()
        await ImapSync(client, self._ctx, backfill_pages=self._settings.backfill_pages_per_run,
                       reopen=self._reopen).run()

    async def _reopen(self) -> ImapMailbox:
        """A new session in place of one that was dropped."""
        await self.aclose()
        self._stack = contextlib.AsyncExitStack()
        return await self._session()

    async def prefetch(self, message_ids: Sequence[int], limit: int) -> int:
        if limit <= 0 or not message_ids:
            return 0
        client = await self._session()
        if client.closed:  # dropped by the run's last folder failure
            client = await self._reopen()
        # One session, one command at a time: an IMAP session is not safe for concurrent use.
        return await prefetch_bodies(client.fetch_body, self._ctx, message_ids, limit=limit,
                                     concurrency=1)

    async def aclose(self) -> None:
        """Log the session out (never raises)."""
        self._client = None
        await self._stack.aclose()


def _order(row: FolderRow) -> tuple[int, str, int]:
    return (_ORDER.get(row.role, 4), row.name.casefold(), row.id)


def _folders_changed(remote: Sequence[RemoteFolder], rows: Sequence[FolderRow]) -> bool:
    """Whether the stored folders differ from the server's list. A local stand-in folder is
    not the server's, but one whose role the server now has must be merged into it."""
    have = {r.remote_id: (r.name, r.role.value, r.is_system) for r in rows
            if not is_local_folder(r.remote_id)}
    want = {f.remote_id: (f.name, f.role.value, f.system) for f in remote}
    roles = {f.role for f in remote if f.role is not FolderRole.NONE}
    return have != want or any(is_local_folder(r.remote_id) and r.role in roles for r in rows)
