"""Sending, as the UI, the API and the CLI use it.

``send`` composes the message, stores it in the outbox together with a local entry in the
mailbox's Sent folder (one transaction, published on the live bus, so open inboxes show it at
once), and sends it right away. What happens next is ``delivery.py``'s: sent (the provider's
copy replaces the local entry on the sync requested right after), retried with backoff, or left
in Drafts with its error; ``resend`` is "Try sending again".
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from maildesk.domain.compose import (
    ComposeMode,
    Draft,
    OutboxState,
    build,
    new_message_id,
    prefill,
)
from maildesk.domain.events import MailEvent
from maildesk.domain.mail import FolderRole
from maildesk.errors import InputError
from maildesk.send import entries
from maildesk.send.delivery import Delivery
from maildesk.send.entries import Source
from maildesk.services import Services
from maildesk.store import accounts as account_store
from maildesk.store import outbox as outbox_store
from maildesk.store.outbox import OutboxRow

__all__ = [
    "OutboxItem",
    "SendOutcome",
    "for_message",
    "outbox",
    "outbox_item",
    "prepare",
    "resend",
    "send",
]


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What became of a send right away. ``state``: ``sent``, ``retrying`` (a transient
    failure; the outbox job tries again) or ``failed`` (the message is in Drafts with
    ``error``). ``local_message_id`` is the local Sent/Draft entry (None once the provider's
    copy replaced it)."""

    outbox_id: int
    state: str
    error: str | None
    local_message_id: int | None
    message_id_header: str


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """An outbox row for listings. ``state``: queued, sending, retrying, sent or failed."""

    id: int
    account_id: int
    state: str
    subject: str
    to: tuple[str, ...]
    error: str | None
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    local_message_id: int | None
    message_id_header: str


def delivery(services: Services) -> Delivery:
    return Delivery(db=services.db, clock=services.clock, settings=services.settings,
                    bus=services.bus, connectors=services.connectors, wake=services.wake)


def _outcome(row: OutboxRow) -> SendOutcome:
    state = row.state.value
    if row.state in (OutboxState.QUEUED, OutboxState.SENDING):
        state = OutboxState.RETRYING.value  # not sent yet; it will be (again) tried
    return SendOutcome(row.id, state, row.error, row.local_message_id, row.message_id_header)


def _item(row: OutboxRow) -> OutboxItem:
    return OutboxItem(
        id=row.id, account_id=row.account_id, state=row.state.value, subject=row.subject,
        to=row.to, error=row.error, attempts=row.attempts, next_attempt_at=row.next_attempt_at,
        created_at=row.created_at, local_message_id=row.local_message_id,
        message_id_header=row.message_id_header,
    )


async def prepare(
    services: Services, *, account_id: int, mode: ComposeMode,
    source_message_id: int | None = None,
) -> Draft:
    """The draft a new message, reply, reply-all or forward starts from: recipients, subject
    (``Re:``/``Fwd:`` once) and the quoted original. NotFound when the message is not in
    that mailbox."""
    async with services.db.read() as conn:
        account = await account_store.get(conn, account_id)
        if mode is ComposeMode.NEW:
            return Draft(to=())
        if source_message_id is None:
            raise InputError("source_message_id: required to reply to or forward a message")
        found = await entries.source(conn, account, source_message_id)
    return prefill(mode, found.original, source_message_id=source_message_id,
                   own=entries.own_addresses(account))


async def send(
    services: Services, *, account_id: int, draft: Draft, user_id: int | None = None
) -> SendOutcome:
    """Send ``draft`` from the mailbox now. InputError (naming the field) for missing or bad
    recipients; every later failure is in the outcome, never lost."""
    found: Source | None = None
    async with services.db.read() as conn:
        account = await account_store.get(conn, account_id)
        if draft.mode is not ComposeMode.NEW:
            if draft.source_message_id is None:
                raise InputError("source_message_id: required to reply to or forward a message")
            found = await entries.source(conn, account, draft.source_message_id)
    sender = entries.from_address(account)
    composed = build(
        draft, sender=sender,
        message_id=new_message_id(f"maildesk.{secrets.token_hex(16)}", account.email),
        date=services.clock.now(), original=None if found is None else found.original,
    )
    # The provider thread of a reply (Gmail's threadId); a local entry has none yet.
    thread_id = found.thread_id if found is not None and not found.is_local else ""
    now = services.clock.now()
    events: list[MailEvent] = []
    async with services.db.transaction() as conn:
        outbox_id = await outbox_store.insert_row(
            conn, account_id=account.id, user_id=user_id, mode=draft.mode.value,
            source_message_id=draft.source_message_id if found is not None else None,
            thread_id=thread_id, message_id_header=composed.message_id,
            subject=composed.subject, to=draft.to, cc=draft.cc, bcc=draft.bcc,
            mime=composed.message, now=now,
        )
        row = await outbox_store.get(conn, outbox_id)
        entry = entries.entry_of(row, thread_id or composed.message_id)
        events = await outbox_store.put_local_entry(conn, row, entry, FolderRole.SENT, now)
    if events:
        services.bus.publish(events)
    row = await delivery(services).attempt(outbox_id, states=(OutboxState.QUEUED,),
                                           due_only=False)
    return _outcome(row)


async def resend(services: Services, *, outbox_id: int) -> SendOutcome:
    """"Try sending again": the same message (same Message-ID) from the start: attempts
    start over and the entry moves from Drafts back to Sent while it is sent."""
    async with services.db.read() as conn:
        row = await outbox_store.get(conn, outbox_id)
    if row.state is OutboxState.SENT:
        raise InputError("this message was sent already")
    if row.state in (OutboxState.QUEUED, OutboxState.SENDING):
        raise InputError("this message is being sent right now")
    row = await delivery(services).attempt(
        outbox_id, states=(OutboxState.FAILED, OutboxState.RETRYING), due_only=False,
        again=True)
    return _outcome(row)


async def outbox(services: Services, account_id: int) -> list[OutboxItem]:
    """The mailbox's outbox, newest first (sent items stay listed for a week)."""
    async with services.db.read() as conn:
        await account_store.get(conn, account_id)
        rows = await outbox_store.list_for_account(conn, account_id)
    return [_item(r) for r in rows]


async def outbox_item(services: Services, outbox_id: int) -> OutboxItem:
    async with services.db.read() as conn:
        return _item(await outbox_store.get(conn, outbox_id))


async def for_message(services: Services, message_id: int) -> OutboxItem | None:
    """The outbox item behind a local Sent/Draft entry (its state and error), if any."""
    async with services.db.read() as conn:
        row = await outbox_store.by_local_message(conn, message_id)
    return None if row is None else _item(row)
