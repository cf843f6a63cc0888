"""One attempt to send one outbox row, and what its outcome does.

An attempt first *claims* the row (a conditional UPDATE to ``sending`` with a deadline), so
two workers never send the same row; a crash leaves it ``sending`` and the outbox job tries
again once the deadline passed. Outcomes:

* sent → ``sent``; a sync of the mailbox is requested at once, so the provider's copy
  replaces the local Sent entry within seconds; where the server keeps no copy (classic IMAP)
  we APPEND ours to the Sent folder first (``copy_pending`` until that worked);
* transient (``TransientError``: network, timeouts, 4xx, rate limits) → ``retrying`` after a
  jittered backoff, until ``MAILDESK_SEND_MAX_ATTEMPTS``; then as permanent;
* permanent (5xx, refused sign-in, bad configuration …) → ``failed``: the local entry moves
  from Sent to Drafts with the error; "Try sending again" resends the very same message.

Before each attempt we look for the provider's copy of the Message-ID: if an earlier attempt
did go out (its answer was lost), the row is marked sent instead of sending twice.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.clock import Clock
from maildesk.config import Settings
from maildesk.domain.accounts import ProviderKind
from maildesk.domain.backoff import Backoff
from maildesk.domain.compose import Draft, OutboxState, is_local_folder, recipients_of
from maildesk.domain.events import MailEvent
from maildesk.domain.mail import FolderRole
from maildesk.errors import MailDeskError, NotFound, TransientError
from maildesk.live.bus import LiveBus
from maildesk.send import entries
from maildesk.send.senders import (
    Outgoing,
    append_sent_copy,
    keeps_sent_copy,
    sender_for,
)
from maildesk.store import accounts as account_store
from maildesk.store import mail as mail_store
from maildesk.store import outbox as outbox_store
from maildesk.store.accounts import AccountRow
from maildesk.store.database import Database
from maildesk.store.outbox import OutboxRow
from maildesk.sync.connectors import Connectors

log = logging.getLogger(__name__)

# An attempt still ``sending`` after this is taken for crashed and tried again. Far above the
# longest attempt (SMTP connect + a few bounded command waits; HTTP with its retries).
SENDING_DEADLINE = timedelta(minutes=15)
RETRY_BACKOFF = Backoff(base=30.0, cap=1800.0)
# An owed IMAP Sent copy is retried every few minutes for a day, then given up (the message
# was sent; only the server-side copy is missing, and the local entry stays in Sent).
COPY_RETRY = timedelta(minutes=5)
COPY_GIVE_UP = timedelta(days=1)


class Delivery:
    """Sends outbox rows. Built from the long-lived services; holds no state of its own."""

    def __init__(
        self,
        *,
        db: Database,
        clock: Clock,
        settings: Settings,
        bus: LiveBus,
        connectors: Connectors,
        wake: Callable[[], None],
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
        self.bus = bus
        self.connectors = connectors
        self.wake = wake
        self.rng = rng or random.Random()

    def publish(self, events: Sequence[MailEvent]) -> None:
        if events:
            self.bus.publish(list(events))

    # ------------------------------------------------------------------------ attempts
    async def attempt(
        self,
        outbox_id: int,
        *,
        states: Sequence[OutboxState],
        due_only: bool,
        again: bool = False,
    ) -> OutboxRow:
        """Claim the row (from ``states``) and send it once; the row as it is afterwards.
        ``again`` ("Try sending again"): attempts start over and the entry returns to Sent."""
        now = self.clock.now()
        events: list[MailEvent] = []
        async with self.db.transaction() as conn:
            row = await outbox_store.get(conn, outbox_id)
            if again and row.state in states:
                await outbox_store.update_row(conn, outbox_id, now, attempts=0, error=None,
                                              error_kind=None)
            claimed = await outbox_store.claim(conn, outbox_id, states=states, now=now,
                                               until=now + SENDING_DEADLINE, due_only=due_only)
            if claimed:
                row = await outbox_store.get(conn, outbox_id)
                account = await account_store.get(conn, row.account_id)
                if again:
                    events = await self._place(conn, row, FolderRole.SENT, now)
                copy = await outbox_store.provider_copy(conn, row.account_id,
                                                        row.message_id_header)
        self.publish(events)
        if not claimed:
            return row
        if copy is not None:
            # An earlier attempt went out after all and its copy is synced: never send twice.
            log.info("outbox %s: the provider already has the message; marked sent", row.id)
            return await self._sent(row, account, copy_owed=False)
        try:
            await sender_for(self.connectors, self.settings, account).send(
                self._outgoing(row, account))
        except TransientError as exc:
            return await self._transient(row, exc)
        except MailDeskError as exc:
            return await self._failed(row, exc.kind, str(exc))
        except Exception as exc:  # a bug must not leave the message in limbo
            log.exception("outbox %s: sending failed unexpectedly", row.id)
            return await self._failed(row, "internal", f"internal error ({type(exc).__name__})")
        log.info("outbox %s: sent from account %s (attempt %d)", row.id, account.id, row.attempts)
        return await self._sent(row, account, copy_owed=not keeps_sent_copy(account))

    def _outgoing(self, row: OutboxRow, account: AccountRow) -> Outgoing:
        recipients = recipients_of(Draft(to=row.to, cc=row.cc, bcc=row.bcc))
        return Outgoing(
            message=row.mime,
            sender=entries.from_address(account).addr_spec,
            envelope=recipients.envelope,
            bcc=row.bcc,
            thread_id=row.thread_id if account.provider is ProviderKind.GMAIL else "",
        )

    async def _place(self, conn: AsyncConnection, row: OutboxRow, role: FolderRole,
                     now: datetime) -> list[MailEvent]:
        entry = entries.entry_of(row, row.thread_id or row.message_id_header)
        return await outbox_store.put_local_entry(conn, row, entry, role, now)

    async def _sent(self, row: OutboxRow, account: AccountRow, *, copy_owed: bool) -> OutboxRow:
        now = self.clock.now()
        async with self.db.transaction() as conn:
            await outbox_store.update_row(
                conn, row.id, now, state=OutboxState.SENT, sent_at=now, error=None,
                error_kind=None, copy_pending=copy_owed, next_attempt_at=None,
            )
            # The provider's copy replaces the local entry on this sync (store.mail).
            await account_store.request_sync(conn, row.account_id, reason="sent", now=now)
        self.wake()
        if copy_owed:
            await self.file_copy(row.id, account)
        async with self.db.read() as conn:
            return await outbox_store.get(conn, row.id)

    async def _transient(self, row: OutboxRow, exc: TransientError) -> OutboxRow:
        if row.attempts >= self.settings.send_max_attempts:
            return await self._failed(
                row, exc.kind, f"{exc} (gave up after {row.attempts} attempts)")
        now = self.clock.now()
        delay = RETRY_BACKOFF.delay(row.attempts, self.rng, exc.retry_after)
        log.info("outbox %s: attempt %d failed (%s), next in %.0f s", row.id, row.attempts,
                 exc.kind, delay)
        async with self.db.transaction() as conn:
            await outbox_store.update_row(
                conn, row.id, now, state=OutboxState.RETRYING, error=str(exc),
                error_kind=exc.kind, next_attempt_at=now + timedelta(seconds=delay),
            )
            return await outbox_store.get(conn, row.id)

    async def _failed(self, row: OutboxRow, kind: str, error: str) -> OutboxRow:
        """Permanent: the message waits in Drafts with its error (nothing is lost)."""
        now = self.clock.now()
        log.info("outbox %s: not sent (%s); kept in Drafts", row.id, kind)
        async with self.db.transaction() as conn:
            await outbox_store.update_row(conn, row.id, now, state=OutboxState.FAILED,
                                          error=error, error_kind=kind, next_attempt_at=None)
            current = await outbox_store.get(conn, row.id)
            events = await self._place(conn, current, FolderRole.DRAFTS, now)
            current = await outbox_store.get(conn, row.id)
        self.publish(events)
        return current

    # ---------------------------------------------------------------------- Sent copies
    async def file_copy(self, outbox_id: int, account: AccountRow) -> None:
        """APPEND the owed copy to the IMAP Sent folder (claimed, so only one worker does)."""
        now = self.clock.now()
        async with self.db.transaction() as conn:
            if not await outbox_store.claim_copy(conn, outbox_id, now=now,
                                                 until=now + SENDING_DEADLINE):
                return
            row = await outbox_store.get(conn, outbox_id)
            folder = await _sent_folder(conn, row.account_id)
        try:
            await append_sent_copy(self.connectors, account, row.mime, row.bcc, folder)
        except MailDeskError as exc:
            now = self.clock.now()
            give_up = not isinstance(exc, TransientError) or (
                row.sent_at is not None and now - row.sent_at >= COPY_GIVE_UP)
            log.info("outbox %s: the Sent copy was not saved (%s)%s", row.id, exc.kind,
                     "; giving up" if give_up else "; will retry")
            async with self.db.transaction() as conn:
                await outbox_store.update_row(
                    conn, row.id, now, copy_pending=not give_up, error_kind=exc.kind,
                    error=f"sent, but the copy in Sent was not saved: {exc}",
                    next_attempt_at=None if give_up else now + COPY_RETRY,
                )
            return
        log.info("outbox %s: copy saved in the Sent folder", row.id)
        now = self.clock.now()
        async with self.db.transaction() as conn:
            await outbox_store.update_row(conn, row.id, now, copy_pending=False,
                                          next_attempt_at=None, error=None, error_kind=None)
            await account_store.request_sync(conn, row.account_id, reason="sent", now=now)
        self.wake()

    # -------------------------------------------------------------------- the periodic job
    async def run_due(self, limit: int = 50) -> dict[str, int]:
        """Due retries, crashed attempts, owed Sent copies; local entries put back."""
        counts = {"attempted": 0, "sent": 0, "copies": 0, "restored": 0}
        async with self.db.read() as conn:
            due = await outbox_store.due(conn, self.clock.now(), limit)
        for outbox_id in due:
            try:
                async with self.db.read() as conn:
                    row = await outbox_store.get(conn, outbox_id)
                    account = await account_store.get(conn, row.account_id)
            except NotFound:
                continue  # the mailbox was removed meanwhile
            if row.state is OutboxState.SENT:
                counts["copies"] += 1
                await self.file_copy(row.id, account)
                continue
            counts["attempted"] += 1
            after = await self.attempt(
                row.id, states=(OutboxState.RETRYING, OutboxState.SENDING), due_only=True)
            counts["sent"] += after.state is OutboxState.SENT
        counts["restored"] = await self.restore(limit)
        return counts

    async def restore(self, limit: int = 50) -> int:
        """Unsent rows whose local entry is gone: the provider's copy replaced it (the send
        went out although its answer was lost: mark it sent), or something else removed it (put
        it back: an unsent message must stay visible). Provider sweeps never touch local entries
        (``store.mail.provider_messages``)."""
        restored = 0
        async with self.db.read() as conn:
            detached = await outbox_store.detached(conn, limit)
        for row in detached:
            if row.state is OutboxState.SENDING:
                continue  # an attempt is under way; it places the entry itself
            now = self.clock.now()
            events: list[MailEvent] = []
            async with self.db.transaction() as conn:
                if await outbox_store.provider_copy(conn, row.account_id,
                                                    row.message_id_header) is not None:
                    await outbox_store.update_row(
                        conn, row.id, now, state=OutboxState.SENT, sent_at=row.sent_at or now,
                        error=None, error_kind=None, next_attempt_at=None)
                else:
                    role = FolderRole.DRAFTS if row.state is OutboxState.FAILED \
                        else FolderRole.SENT
                    events = await self._place(conn, row, role, now)
                    restored += 1
            self.publish(events)
        return restored


async def _sent_folder(conn: AsyncConnection, account_id: int) -> str | None:
    """The IMAP path of the mailbox's Sent folder, if its folders are listed."""
    for folder in await mail_store.list_folders(conn, account_id):
        if folder.role is FolderRole.SENT and not is_local_folder(folder.remote_id):
            return folder.remote_id
    return None
