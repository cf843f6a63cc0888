"""What sending reads from the store and shows in it: the original of a reply or forward, the
mailbox's own address, and the local Sent/Draft entry of an outbox row."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.domain.accounts import ProviderKind
from maildesk.domain.compose import (
    Original,
    is_local_remote_id,
    message_ids,
    references_of,
)
from maildesk.domain.mail_servers import MailServers
from maildesk.errors import InputError, NotFound
from maildesk.store import bodies
from maildesk.store import outbox as outbox_store
from maildesk.store.accounts import AccountRow
from maildesk.store.outbox import LocalEntry, OutboxRow
from maildesk.store.tables import messages

SNIPPET = 200
_TAG = re.compile(r"<[^>]*>")
_BLOCK = re.compile(r"<\s*(br|/p|/div|/li|/tr|/h\d)\b[^>]*>", re.IGNORECASE)
_HIDDEN = re.compile(r"<\s*(style|script|head)\b.*?<\s*/\s*\1\s*>", re.IGNORECASE | re.DOTALL)


def from_address(account: AccountRow) -> Address:
    """The From of the mailbox's messages: its display name and address."""
    try:
        return Address(display_name=" ".join(account.display_name.split()),
                       addr_spec=account.email)
    except (ValueError, IndexError) as exc:
        raise InputError(f"the mailbox address {account.email!r} cannot be a sender") from exc


def own_addresses(account: AccountRow) -> set[str]:
    """Every address that is the mailbox itself (a reply never goes to these)."""
    own = {account.email.lower()}
    if account.provider is ProviderKind.IMAP:
        try:
            servers = MailServers.of_account(account.settings)
        except InputError:
            return own
        own |= {n.lower() for n in (servers.username, servers.smtp_login) if "@" in n}
    return own


def text_of_html(markup: str) -> str:
    """A readable plain-text rendering of (sanitized) HTML, for quoting."""
    markup = _HIDDEN.sub("", markup)
    markup = _BLOCK.sub("\n", markup)
    text = html.unescape(_TAG.sub("", markup))
    lines = [" ".join(line.split()) for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


@dataclass(frozen=True, slots=True)
class Source:
    """The original of a reply or forward, and its provider thread (Gmail threadId)."""

    original: Original
    thread_id: str
    is_local: bool


async def source(conn: AsyncConnection, account: AccountRow, message_id: int) -> Source:
    """The local message ``message_id`` of ``account`` as an original; NotFound otherwise."""
    r = (await conn.execute(select(messages).where(
        messages.c.id == message_id, messages.c.account_id == account.id))).first()
    if r is None:
        raise NotFound(f"no message with id {message_id} in mailbox {account.id}")
    cached = await bodies.get(conn, message_id)
    text = ""
    if cached is not None:
        text = cached.text.strip() or text_of_html(cached.html)
    if not text:
        text = r.snippet
    references: tuple[str, ...] = ()
    ours = await outbox_store.by_message_id_header(conn, account.id, r.message_id_header)
    if ours is not None:
        references = references_of(ours.mime)
    elif account.provider is ProviderKind.IMAP and message_ids(r.thread_id):
        # The IMAP engine's thread id is the thread's root Message-ID (the first References).
        references = message_ids(r.thread_id)[:1]
    original = Original(
        message_id_header=r.message_id_header, subject=r.subject, sender=r.sender,
        recipients=r.recipients, received_at=r.received_at, text=text, references=references,
    )
    return Source(original, r.thread_id, is_local_remote_id(r.remote_id))


def _decoded(parsed: EmailMessage, *names: str) -> str:
    return ", ".join(str(v) for n in names for v in parsed.get_all(n, []))


def entry_of(row: OutboxRow, thread_id: str) -> LocalEntry:
    """The local entry of an outbox row, read back from the message we compose (so moving it
    between Sent and Drafts changes nothing but its folder)."""
    parsed = BytesParser(policy=policy.default).parsebytes(row.mime)
    assert isinstance(parsed, EmailMessage)
    part = parsed.get_body(("plain",))
    text = part.get_content() if isinstance(part, EmailMessage) else ""
    text = text.replace("\r\n", "\n")
    return LocalEntry(
        subject=str(parsed.get("Subject", "")),
        sender=_decoded(parsed, "From"),
        recipients=_decoded(parsed, "To", "Cc"),
        thread_id=thread_id,
        snippet=" ".join(text.split())[:SNIPPET],
        size=len(row.mime),
        text=text,
    )
