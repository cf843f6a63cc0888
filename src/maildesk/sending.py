"""Sending from a mailbox: what the UI, the API and the CLI share on top of ``send/service.py``.

* ``message_account``: the mailbox a message belongs to (a reply or forward names only the
  message); a message of a mailbox the caller may not see is answered like a missing one;
* ``reply`` / ``forward``: the draft ``service.prepare`` fills in (recipients, subject, quoted
  original), with the sender's own text above the quote;
* ``outcome_sentence``: what became of a send, in the same words on every surface.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from maildesk.domain.compose import ComposeMode, Draft
from maildesk.errors import NotFound
from maildesk.send import service
from maildesk.send.service import OutboxItem, SendOutcome
from maildesk.services import Services
from maildesk.store import mail as mail_store

SENT, RETRYING, FAILED = "sent", "retrying", "failed"


def _may_see(visible: frozenset[int] | None, account_id: int) -> bool:
    return visible is None or account_id in visible


async def message_account(services: Services, message_id: int,
                          visible: frozenset[int] | None = None) -> int:
    """The account holding message ``message_id``; ``NotFound`` when there is none or the caller
    (``visible``: the accounts they may see, None for all) may not see it."""
    async with services.db.read() as conn:
        found = await mail_store.account_of_message(conn, message_id)
    if found is None or not _may_see(visible, found):
        raise NotFound(f"no message with id {message_id}")
    return found


async def outbox_item(services: Services, outbox_id: int,
                      visible: frozenset[int] | None = None) -> OutboxItem:
    """The outbox item, answered like a missing one when its mailbox is not visible."""
    item = await service.outbox_item(services, outbox_id)
    if not _may_see(visible, item.account_id):
        raise NotFound(f"no outbox item with id {outbox_id}")
    return item


def with_own_text(draft: Draft, text: str) -> Draft:
    """The prepared draft with ``text`` above what ``prepare`` put in (the quoted original)."""
    own = text.replace("\r\n", "\n").rstrip()
    quoted = draft.text.strip("\n")
    body = f"{own}\n\n{quoted}" if own and quoted else (own or quoted)
    return replace(draft, text=body)


async def reply(services: Services, *, message_id: int, reply_all: bool, text: str,
                visible: frozenset[int] | None = None, user_id: int | None = None
                ) -> SendOutcome:
    """Reply (to the sender, or to everyone with ``reply_all``) with ``text``."""
    account_id = await message_account(services, message_id, visible)
    mode = ComposeMode.REPLY_ALL if reply_all else ComposeMode.REPLY
    prepared = await service.prepare(services, account_id=account_id, mode=mode,
                                     source_message_id=message_id)
    return await service.send(services, account_id=account_id,
                              draft=with_own_text(prepared, text), user_id=user_id)


async def forward(services: Services, *, message_id: int, to: Sequence[str],
                  cc: Sequence[str] = (), bcc: Sequence[str] = (), text: str = "",
                  visible: frozenset[int] | None = None, user_id: int | None = None
                  ) -> SendOutcome:
    """Forward the message to ``to`` (and ``cc``/``bcc``) with ``text`` above it."""
    account_id = await message_account(services, message_id, visible)
    prepared = await service.prepare(services, account_id=account_id,
                                     mode=ComposeMode.FORWARD, source_message_id=message_id)
    draft = replace(with_own_text(prepared, text), to=tuple(to), cc=tuple(cc), bcc=tuple(bcc))
    return await service.send(services, account_id=account_id, draft=draft, user_id=user_id)


async def next_attempt(services: Services, outcome: SendOutcome) -> datetime | None:
    """When a send that is ``retrying`` is tried next (None for any other state)."""
    if outcome.state != RETRYING:
        return None
    return (await service.outbox_item(services, outcome.outbox_id)).next_attempt_at


def when(value: datetime | None) -> str:
    """A time for one line of text: ``2025-03-01 14:05 UTC`` (or "soon")."""
    if value is None:
        return "soon"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def outcome_sentence(outcome: SendOutcome, next_attempt_at: datetime | None = None) -> str:
    """What became of the send, for people (the CLI's output line, the UI's flash)."""
    reason = outcome.error or "no reason given"
    if outcome.state == SENT:
        return "sent"
    if outcome.state == RETRYING:
        return f"not sent yet ({reason}); retrying at {when(next_attempt_at)}"
    if outcome.state == FAILED:
        return f"failed: {reason}"
    return outcome.state


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def outcome_json(outcome: SendOutcome, next_attempt_at: datetime | None = None
                 ) -> dict[str, Any]:
    return {
        "outbox_id": outcome.outbox_id, "state": outcome.state, "error": outcome.error,
        "local_message_id": outcome.local_message_id,
        "message_id_header": outcome.message_id_header,
        "next_attempt_at": _iso(next_attempt_at),
    }


def item_json(item: OutboxItem) -> dict[str, Any]:
    return {
        "id": item.id, "account_id": item.account_id, "state": item.state,
        "subject": item.subject, "to": list(item.to), "error": item.error,
        "attempts": item.attempts, "next_attempt_at": _iso(item.next_attempt_at),
        "created_at": _iso(item.created_at), "local_message_id": item.local_message_id,
        "message_id_header": item.message_id_header,
    }
