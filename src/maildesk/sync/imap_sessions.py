"""IMAP sessions of IMAP mailboxes: server settings, sign-in and a bound on connections.

Every IMAP connection MailDesk opens for a mailbox (the IDLE watcher, a sync run, appending a
sent copy, a connection test of a stored account) goes through :meth:`ImapSessions.open`, which
holds one of ``MAILDESK_IMAP_MAX_CONNECTIONS`` slots for that mailbox while the session lives:
servers limit connections per user (Dovecot's default is 10 per user and IP, Gmail 15), and one
busy mailbox must not use them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from maildesk.config import Settings
from maildesk.domain.accounts import ProviderKind
from maildesk.domain.mail_servers import MailServers, SignIn
from maildesk.errors import InputError, LoginFailed
from maildesk.providers.imap import Credentials, ImapClient, OAuth2Login, PasswordLogin
from maildesk.providers.imap_connection import ImapServer
from maildesk.store.accounts import AccountRow

# Access token of an XOAUTH2 mailbox: (sign-in kind, account) -> token.
AccessToken = Callable[[SignIn, AccountRow], Awaitable[str]]
Decrypt = Callable[[str], str]


def tls_context(settings: Settings) -> ssl.SSLContext:
    """The system trust store, plus ``MAILDESK_TLS_CA_FILE`` when set. Hostnames are checked."""
    context = ssl.create_default_context()
    if settings.tls_ca_file:
        try:
            context.load_verify_locations(cafile=settings.tls_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise InputError(
                f"MAILDESK_TLS_CA_FILE: cannot load {settings.tls_ca_file} ({exc})"
            ) from exc
    return context


@dataclass(frozen=True, slots=True)
class ImapTarget:
    """Everything needed to open a session for one mailbox."""

    account_id: int
    servers: MailServers
    server: ImapServer


class ImapSessions:
    def __init__(
        self, settings: Settings, *, decrypt: Decrypt, access_token: AccessToken
    ) -> None:
        self._settings = settings
        self._decrypt = decrypt
        self._access_token = access_token
        self._tls: ssl.SSLContext | None = None
        self._slots: dict[int, asyncio.Semaphore] = {}
        self._held: dict[int, int] = {}

    @property
    def tls(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = tls_context(self._settings)
        return self._tls

    def server(self, servers: MailServers) -> ImapServer:
        return ImapServer(
            servers.imap.host, servers.imap.port, servers.imap.security,
            ssl_context=self.tls,
            connect_timeout=self._settings.imap_connect_timeout,
            command_timeout=self._settings.imap_timeout,
            idle_keepalive=self._settings.imap_idle_keepalive,
        )

    def target(self, account: AccountRow) -> ImapTarget:
        if account.provider is not ProviderKind.IMAP:
            raise InputError(f"account {account.id} is not an IMAP mailbox")
        servers = MailServers.of_account(account.settings)
        return ImapTarget(account.id, servers, self.server(servers))

    async def credentials(self, account: AccountRow, servers: MailServers) -> Credentials:
        """The sign-in of a stored mailbox: its decrypted password or a fresh access token."""
        if servers.sign_in is SignIn.PASSWORD:
            if not account.password_enc:
                raise LoginFailed("no password is stored: enter the mailbox password again")
            return PasswordLogin(servers.username, self._decrypt(account.password_enc))
        return OAuth2Login(servers.username, await self._access_token(servers.sign_in, account))

    def in_use(self, account_id: int) -> int:
        """Connections the mailbox holds right now (for tests and the status page)."""
        return self._held.get(account_id, 0)

    @contextlib.asynccontextmanager
    async def slot(self, account_id: int) -> AsyncIterator[None]:
        """Hold one of the mailbox's connection slots (waits while all are taken)."""
        gate = self._slots.setdefault(
            account_id, asyncio.Semaphore(self._settings.imap_max_connections)
        )
        async with gate:
            self._held[account_id] = self._held.get(account_id, 0) + 1
            try:
                yield
            finally:
                self._held[account_id] -= 1

    @contextlib.asynccontextmanager
    async def open(self, account: AccountRow, *, enable_sync: bool = True
                   ) -> AsyncIterator[ImapClient]:
        """A signed-in session of the mailbox, logged out when the block ends."""
        target = self.target(account)
        async with self.slot(account.id):
            credentials = await self.credentials(account, target.servers)
            client = await ImapClient.connect(target.server, credentials, enable_sync=enable_sync)
            try:
                yield client
            finally:
                await client.logout()
