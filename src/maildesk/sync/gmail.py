"""Gmail sync: initial sync (INBOX first, newest first), incremental history sync, full resync
after an expired history id, and resumable backfill of older mail.

Cursor rules (DESIGN §4.1):
- ``gmail_history_id`` is written only in the transaction that applied the last history page
  up to it. A crash anywhere replays from the previous cursor; applying is idempotent.
- A full listing first records the mailbox's historyId *before* listing
  (``gmail_full_sync_start``) and keeps it across restarts, so changes made to messages while
  (or after) they were listed are replayed by the incremental sync that follows.
- Backfill keeps its page token in ``gmail_backfill_token``, written with each page it applied:
  a restart or a reconnect continues where it stopped instead of starting over.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.domain.events import MailEvent
from maildesk.domain.mail import RemoteMessage
from maildesk.errors import CursorExpired, ProviderRejected
from maildesk.providers.gmail import GmailApi
from maildesk.store import accounts as account_store
from maildesk.store import cursors
from maildesk.store import mail as mail_store
from maildesk.store.accounts import AccountRow
from maildesk.store.mail import FolderRow
from maildesk.sync.context import SyncContext

log = logging.getLogger(__name__)

HISTORY = "gmail_history_id"
FULL_START = "gmail_full_sync_start"
BACKFILL = "gmail_backfill_token"
LABELS_AT = "gmail_labels_synced_at"
LABEL_REFRESH_SECONDS = 600
INBOX = "INBOX"
PAGE_SIZE = 500
# The first inbox page is small so the newest mail is committed after a single batch.
FIRST_PAGE_SIZE = 50


@dataclass(frozen=True, slots=True)
class _BackfillState:
    done: bool  # the account's whole-mailbox backfill is complete
    token: str | None  # where it resumes
    requested: list[FolderRow]  # folders an operator asked to backfill


class GmailSync:
    """Brings one Gmail mailbox's store up to date. One instance per sync run."""

    def __init__(self, api: GmailApi, ctx: SyncContext, *, backfill_pages: int = 20) -> None:
        self.api = api
        self.ctx = ctx
        self.backfill_pages = backfill_pages
        self._fmap: dict[str, int] | None = None

    # ------------------------------------------------------------------ entry point
    async def run(self) -> None:
        # Everything the run needs to decide what to do, in one read: a push-triggered run
        # that finds nothing new then costs this read and one history call, nothing more.
        aid = self.ctx.account_id
        async with self.ctx.db.read() as conn:
            cursor = await cursors.get(conn, aid, HISTORY)
            account = await account_store.get(conn, aid)
            labels_at = await cursors.get(conn, aid, LABELS_AT)
            backfill: _BackfillState | None = await _backfill_state(conn, aid, account)
        if cursor is None:
            await self.full_sync(initial=not account.initial_sync_done)
            cursor = await self._history_cursor()
            backfill = None  # the listing changed it: read it again
        elif labels_at is None or (
            self.ctx.clock.now().timestamp() - float(labels_at) > LABEL_REFRESH_SECONDS
        ):
            # Label renames and new labels carry no history record: refresh them now and then.
            await self._sync_labels()
        try:
            await self.incremental(int(cursor))
        except CursorExpired:
            log.info("account %s: history id expired, full resync", self.ctx.account_id)
            await self.full_sync(initial=False)
            await self.incremental(int(await self._history_cursor()))
            backfill = None
        await self.backfill(backfill)

    # ------------------------------------------------------------------ full listing
    async def full_sync(self, *, initial: bool) -> None:
        """Initial sync (INBOX newest first, the rest left to backfill) or, after an expired
        history id, a resync of everything that also removes what the provider no longer has."""
        aid = self.ctx.account_id
        await self._sync_labels()
        async with self.ctx.db.read() as conn:
            start = await cursors.get(conn, aid, FULL_START)
        if start is None:
            profile = await self.api.profile()
            start = str(profile.history_id)
            async with self.ctx.write() as conn:
                await cursors.put(conn, aid, FULL_START, start, self.ctx.clock.now())
        if initial:
            await self._list_and_apply([INBOX], include_spam_trash=False, refetch_known=False)
        else:
            seen = await self._list_and_apply(None, include_spam_trash=True, refetch_known=True)
            async with self.ctx.db.read() as conn:
                local = await mail_store.all_remote_ids(conn, aid)
            stale = sorted(local - seen)
            if stale:
                await self._apply([], stale)
        async with self.ctx.write() as conn:
            now = self.ctx.clock.now()
            await cursors.put(conn, aid, HISTORY, start, now)
            await cursors.drop(conn, aid, FULL_START)
            done = {"initial_sync_done": True}
            if not initial:
                # A resync listed everything: there is nothing older left to backfill.
                await cursors.drop(conn, aid, BACKFILL)
                done["backfill_done"] = True
            await account_store.update_fields(conn, aid, **done)

    async def _list_and_apply(
        self, label_ids: list[str] | None, *, include_spam_trash: bool, refetch_known: bool
    ) -> set[str]:
        seen: set[str] = set()
        token: str | None = None
        while True:
            size = FIRST_PAGE_SIZE if token is None else PAGE_SIZE
            page = await self.api.list_message_ids(label_ids, token, size, include_spam_trash)
            self.ctx.stats.provider_calls += 1
            seen.update(page.ids)
            await self._apply(*await self._fetch(page.ids, refetch_known=refetch_known))
            if page.next_page_token is None:
                return seen
            token = page.next_page_token

    # ------------------------------------------------------------------ incremental
    async def incremental(self, start: int) -> None:
        """Apply history since ``start``; the new cursor is written with the last page.

        A single page with no records that leaves the history id where it was (a duplicate or
        late notification: the common case under push) writes nothing at all."""
        token: str | None = None
        while True:
            page = await self.api.history(start, token)
            self.ctx.stats.provider_calls += 1
            deleted: set[str] = set()
            touched: list[str] = []
            for record in page.records:
                deleted.update(record.deleted)
                touched += record.added
                touched += [mid for mid, _ in record.labels_added]
                touched += [mid for mid, _ in record.labels_removed]
            # We re-read the current state of every touched message instead of replaying the
            # label deltas: the result is the same whatever order or how often pages arrive.
            wanted = sorted(set(touched) - deleted)
            upserts, gone = await self._metadata(wanted)
            last = page.next_page_token is None
            if last and token is None and not page.records and page.history_id == start:
                return
            await self._apply(
                upserts, sorted(deleted | gone), cursor=str(page.history_id) if last else None
            )
            if last:
                return
            token = page.next_page_token

    # ------------------------------------------------------------------ backfill
    async def backfill(self, state: _BackfillState | None = None) -> None:
        """Fetch older mail, a bounded number of pages per run, resumable at the page.
        ``state``: what the run read at its start, if nothing changed it since."""
        aid = self.ctx.account_id
        if state is None:
            async with self.ctx.db.read() as conn:
                state = await _backfill_state(conn, aid, await account_store.get(conn, aid))
        budget = self.backfill_pages
        if not state.done:
            budget = await self._backfill_scope(None, "", state.token, budget)
        for folder in state.requested:
            if budget <= 0:
                break
            async with self.ctx.db.read() as conn:
                ftoken = await cursors.get(conn, aid, BACKFILL, scope=folder.remote_id)
            budget = await self._backfill_scope(
                [folder.remote_id], folder.remote_id, ftoken, budget, folder_id=folder.id
            )
        if budget <= 0:
            self.ctx.more_work = True

    async def _backfill_scope(
        self,
        label_ids: list[str] | None,
        scope: str,
        token: str | None,
        budget: int,
        folder_id: int | None = None,
    ) -> int:
        aid = self.ctx.account_id
        restarted = False
        while budget > 0:
            try:
                page = await self.api.list_message_ids(label_ids, token, PAGE_SIZE, True)
            except ProviderRejected:
                if token is None or restarted:
                    raise
                # An old page token can be refused; skipping known ids makes a restart cheap.
                log.info("account %s: backfill page token refused, restarting the listing", aid)
                token, restarted = None, True
                continue
            self.ctx.stats.provider_calls += 1
            budget -= 1
            upserts, gone = await self._fetch(page.ids, refetch_known=False)
            token = page.next_page_token
            async with self.ctx.write() as conn:
                events = await self._apply_in(conn, upserts, gone)
                now = self.ctx.clock.now()
                if token is None:
                    await cursors.drop(conn, aid, BACKFILL, scope=scope)
                else:
                    await cursors.put(conn, aid, BACKFILL, token, now, scope=scope)
                added = len(upserts)
                if folder_id is None:
                    account = await account_store.get(conn, aid)
                    await account_store.update_fields(
                        conn, aid, backfill_fetched=account.backfill_fetched + added,
                        backfill_done=token is None,
                    )
                else:
                    await mail_store.record_folder_backfill(
                        conn, folder_id, added, done=token is None
                    )
            self.ctx.committed(events)
            if token is None:
                break
        return budget

    # ------------------------------------------------------------------ helpers
    async def _history_cursor(self) -> str:
        async with self.ctx.db.read() as conn:
            cursor = await cursors.get(conn, self.ctx.account_id, HISTORY)
        if cursor is None:
            raise AssertionError("a full sync always leaves a history cursor")
        return cursor

    async def _sync_labels(self) -> None:
        labels = await self.api.labels()
        self.ctx.stats.provider_calls += 1
        async with self.ctx.write() as conn:
            self._fmap = await mail_store.upsert_folders(conn, self.ctx.account_id, labels)
            now = self.ctx.clock.now()
            await cursors.put(conn, self.ctx.account_id, LABELS_AT, str(now.timestamp()), now)

    async def _metadata(self, ids: Sequence[str]) -> tuple[list[RemoteMessage], set[str]]:
        if not ids:
            return [], set()
        found = await self.api.get_metadata(list(ids))
        self.ctx.stats.provider_calls += 1
        self.ctx.stats.fetched += len(ids)
        upserts = [m for m in found.values() if m is not None]
        # Asked for but not returned, or 404: the message no longer exists.
        gone = {i for i in ids if found.get(i) is None}
        return upserts, gone

    async def _fetch(
        self, ids: Sequence[str], *, refetch_known: bool
    ) -> tuple[list[RemoteMessage], list[str]]:
        """Current metadata of ``ids`` (skipping ones we already store unless asked)."""
        if refetch_known:
            wanted = list(ids)
        else:
            async with self.ctx.db.read() as conn:
                known = await mail_store.known_remote_ids(conn, self.ctx.account_id, ids)
            wanted = [i for i in ids if i not in known]
        upserts, gone = await self._metadata(wanted)
        return upserts, sorted(gone)

    async def _apply(
        self, upserts: Sequence[RemoteMessage], deletions: Sequence[str], cursor: str | None = None
    ) -> None:
        async with self.ctx.write() as conn:
            events = await self._apply_in(conn, upserts, deletions)
            if cursor is not None:
                await cursors.put(conn, self.ctx.account_id, HISTORY, cursor, self.ctx.clock.now())
        self.ctx.committed(events)

    async def _apply_in(
        self, conn: AsyncConnection, upserts: Sequence[RemoteMessage], deletions: Sequence[str]
    ) -> list[MailEvent]:
        if self._fmap is None:
            self._fmap = await mail_store.folder_map(conn, self.ctx.account_id)
        return await mail_store.apply_messages(
            conn, self.ctx.account_id, upserts, deletions, self._fmap, self.ctx.clock.now()
        )


async def _backfill_state(
    conn: AsyncConnection, account_id: int, account: AccountRow
) -> _BackfillState:
    return _BackfillState(
        account.backfill_done,
        None if account.backfill_done else await cursors.get(conn, account_id, BACKFILL),
        [f for f in await mail_store.list_folders(conn, account_id) if f.backfill_requested],
    )
