"""One sender per provider, behind one Protocol: hand over a composed message, or raise.

* IMAP mailboxes: SMTP through ``providers/smtp.py`` with the mailbox's outgoing server and
  the same sign-in as IMAP (password or XOAUTH2 access token), Bcc in the envelope only;
* Gmail: ``users.messages.send`` (the raw message, Bcc header included; Gmail strips it from
  what recipients get and keeps the copy under SENT), ``threadId`` for a reply;
* Outlook: Graph ``sendMail`` in MIME form, which keeps our Message-ID on the Sent Items copy.

Errors are our exception tree: ``TransientError`` (retry later) or anything else (permanent).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from maildesk.config import Settings
from maildesk.domain.accounts import ProviderKind, TokenKind
from maildesk.domain.compose import with_bcc
from maildesk.domain.mail import FolderRole
from maildesk.domain.mail_servers import MailServers
from maildesk.errors import InputError, MessageGone, ProviderRejected, WrongTokenKind
from maildesk.providers import smtp
from maildesk.store.accounts import AccountRow
from maildesk.sync.connectors import Connectors

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to hand over: ``message`` has no Bcc header; ``envelope`` is every
    recipient (To, Cc, Bcc) as a bare address; ``bcc`` as written, for header-driven APIs."""

    message: bytes
    sender: str
    envelope: tuple[str, ...]
    bcc: tuple[str, ...] = ()
    thread_id: str = ""


class Sender(Protocol):
    async def send(self, outgoing: Outgoing) -> None:
        """Send, or raise: ``TransientError`` when a later attempt may succeed."""
        ...


class SmtpSender:
    def __init__(self, connectors: Connectors, settings: Settings, account: AccountRow) -> None:
        self._connectors = connectors
        self._settings = settings
        self._account = account

    async def send(self, outgoing: Outgoing) -> None:
        servers = MailServers.of_account(self._account.settings)
        if servers.smtp is None:
            raise InputError("SMTP server: none is configured for this mailbox; add the "
                             "outgoing server in the mailbox settings")
        sessions = self._connectors.imap
        credentials = await sessions.credentials(self._account, servers)
        credentials = dataclasses.replace(credentials, username=servers.smtp_login)
        server = smtp.SmtpServer(
            servers.smtp.host, servers.smtp.port, servers.smtp.security,
            ssl_context=sessions.tls,
            connect_timeout=self._settings.imap_connect_timeout,
            command_timeout=self._settings.imap_timeout,
        )
        await smtp.send_message(server, credentials, outgoing.message, sender=outgoing.sender,
                                recipients=list(outgoing.envelope))


class GmailSender:
    def __init__(self, connectors: Connectors, account: AccountRow) -> None:
        self._connectors = connectors
        self._account = account

    async def send(self, outgoing: Outgoing) -> None:
        client = self._connectors.gmail(self._account.id)
        raw = with_bcc(outgoing.message, outgoing.bcc)
        if not outgoing.thread_id:
            await client.send(raw)
            return
        try:
            await client.send(raw, thread_id=outgoing.thread_id)
        except (ProviderRejected, MessageGone):
            # The thread is gone (deleted meanwhile): Gmail refused the request, so nothing
            # was sent; send it on its own (its References still thread it for everyone).
            log.info("account %s: Gmail refused the reply's thread; sending it unthreaded",
                     self._account.id)
            await client.send(raw)


class GraphSender:
    def __init__(self, connectors: Connectors, account: AccountRow) -> None:
        self._connectors = connectors
        self._account = account

    async def send(self, outgoing: Outgoing) -> None:
        if self._account.token_kind == TokenKind.IMAP.value:
            raise WrongTokenKind(
                "this Outlook mailbox is connected with an IMAP/SMTP token, which cannot call "
                "Microsoft Graph: reconnect with the Microsoft Graph option")
        client = self._connectors.graph(self._account.id, self._account.tenant)
        await client.send_mime(with_bcc(outgoing.message, outgoing.bcc))


def sender_for(connectors: Connectors, settings: Settings, account: AccountRow) -> Sender:
    if account.provider is ProviderKind.GMAIL:
        return GmailSender(connectors, account)
    if account.provider is ProviderKind.OUTLOOK:
        return GraphSender(connectors, account)
    return SmtpSender(connectors, settings, account)


def keeps_sent_copy(account: AccountRow) -> bool:
    """Whether the provider files the sent message in Sent itself (else we APPEND it)."""
    if account.provider is not ProviderKind.IMAP:
        return True
    return not MailServers.of_account(account.settings).appends_sent


async def append_sent_copy(
    connectors: Connectors, account: AccountRow, message: bytes, bcc: Sequence[str],
    folder: str | None,
) -> str:
    """APPEND our copy (``\\Seen``, Bcc header kept: it is the sender's own record) to the
    IMAP Sent folder ``folder``, or, when we know none yet, the one the server's folder list
    names. Returns the folder used; InputError when the server has no Sent folder at all."""
    async with connectors.imap.open(account, enable_sync=False) as client:
        if folder is None:
            listed = await client.list_folders()
            folder = next((f.remote_id for f in listed if f.role is FolderRole.SENT), None)
            if folder is None:
                raise InputError("the IMAP server has no Sent folder to keep a copy in")
        await client.append(folder, with_bcc(message, bcc), flags=["\\Seen"])
    return folder
