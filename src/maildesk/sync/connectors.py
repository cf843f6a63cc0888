"""Connectors: the one place that turns settings and an account row into provider clients.

It owns the shared HTTP machinery (one connection pool, the retry policy) and the access-token
caches, and gives each account a token source that reads the account's refresh token from the
store (so a reconnect takes effect at once) and persists a rotated one.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import httpx

from maildesk.clock import Clock
from maildesk.config import Settings
from maildesk.domain.accounts import ProviderKind, TokenKind
from maildesk.domain.mail_servers import SignIn
from maildesk.errors import InputError, OAuthInvalid, WrongTokenKind
from maildesk.providers.gmail import GmailClient
from maildesk.providers.graph import GraphClient
from maildesk.providers.http import ProviderHttp, TokenSource
from maildesk.providers.microsoft_oauth import MicrosoftOAuth, scopes_for
from maildesk.providers.oauth import AccessTokenCache, GoogleOAuth
from maildesk.secretbox import SecretBox
from maildesk.store import accounts as account_store
from maildesk.store.accounts import AccountRow
from maildesk.store.database import Database
from maildesk.sync.context import SyncContext
from maildesk.sync.gmail import GmailSync
from maildesk.sync.imap import ImapEngine
from maildesk.sync.imap_sessions import ImapSessions
from maildesk.sync.outlook import OutlookEngine
from maildesk.sync.prefetch import prefetch_bodies


class MailboxEngine(Protocol):
    async def run(self) -> None:
        """Bring the account's store up to date with the provider."""
        ...

    async def prefetch(self, message_ids: Sequence[int], limit: int) -> int:
        """Warm the body cache for newly arrived messages."""
        ...

    async def aclose(self) -> None:
        """Release what the run held (an IMAP session); called once, always, after it."""
        ...


class _GmailEngine:
    def __init__(self, client: GmailClient, ctx: SyncContext, settings: Settings) -> None:
        self._client = client
        self._ctx = ctx
        self._sync = GmailSync(client, ctx, backfill_pages=settings.backfill_pages_per_run)

    async def run(self) -> None:
        await self._sync.run()

    async def prefetch(self, message_ids: Sequence[int], limit: int) -> int:
        return await prefetch_bodies(self._client.get_body, self._ctx, message_ids, limit=limit)

    async def aclose(self) -> None:
        pass


class Connectors:
    def __init__(
        self,
        settings: Settings,
        *,
        db: Database,
        clock: Clock,
        secrets: SecretBox,
        http_client: httpx.AsyncClient,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.secrets = secrets
        self.http = ProviderHttp(
            http_client,
            clock=clock,
            rng=rng,
            max_inline_wait=settings.max_inline_retry_wait,
            timeout=httpx.Timeout(settings.http_timeout, connect=settings.http_connect_timeout),
        )
        self.google_oauth = GoogleOAuth(
            self.http,
            token_url=settings.google_token_url,
            revoke_url=settings.google_revoke_url,
            client_id=settings.google_client_id,
            client_secret=settings.google_client_secret,
        )
        self.google_tokens = AccessTokenCache(self.google_oauth, clock)
        self._clock = clock
        # Microsoft grants are bound to a tenant: one OAuth client and token cache per tenant.
        self._microsoft: dict[tuple[str, TokenKind], tuple[MicrosoftOAuth, AccessTokenCache]] = {}
        self.imap = ImapSessions(settings, decrypt=secrets.decrypt,
                                 access_token=self._imap_access_token)

    def microsoft_oauth(
        self, tenant: str | None = None, kind: TokenKind = TokenKind.GRAPH
    ) -> MicrosoftOAuth:
        """The token client of a tenant, asking for the scopes of a Graph or an IMAP grant."""
        return self._microsoft_for(tenant, kind)[0]

    def _microsoft_for(
        self, tenant: str | None, kind: TokenKind = TokenKind.GRAPH
    ) -> tuple[MicrosoftOAuth, AccessTokenCache]:
        tenant = (tenant or self.settings.microsoft_tenant).strip()
        entry = self._microsoft.get((tenant, kind))
        if entry is None:
            oauth = MicrosoftOAuth(
                self.http,
                authority_url=self.settings.microsoft_authority_url,
                tenant=tenant,
                client_id=self.settings.microsoft_client_id,
                client_secret=self.settings.microsoft_client_secret,
                scopes=scopes_for(kind),
            )
            entry = (oauth, AccessTokenCache(oauth, self._clock))
            self._microsoft[(tenant, kind)] = entry
        return entry

    def _stored_token(self, account_id: int) -> tuple[
            Callable[[], Awaitable[str]], Callable[[str], Awaitable[None]]]:
        """Load and save callbacks for the account's encrypted refresh token: loading reads the
        store each time (a reconnect takes effect at once), saving keeps a rotated token."""

        async def load() -> str:
            async with self.db.read() as conn:
                account = await account_store.get(conn, account_id)
            if not account.refresh_token_enc:
                raise OAuthInvalid("no refresh token is stored: connect the mailbox")
            return self.secrets.decrypt(account.refresh_token_enc)

        async def save(token: str) -> None:
            async with self.db.transaction() as conn:
                await account_store.store_refresh_token(
                    conn, account_id, self.secrets.encrypt(token)
                )

        return load, save

    async def _imap_access_token(self, sign_in: SignIn, account: AccountRow) -> str:
        """An access token for XOAUTH2 sign-in to Gmail's or Microsoft 365's IMAP/SMTP."""
        load, save = self._stored_token(account.id)
        if sign_in is SignIn.GOOGLE:
            cache = self.google_tokens
        else:
            cache = self._microsoft_for(account.tenant, TokenKind.IMAP)[1]
        source = cache.token_source(f"account:{account.id}", load_refresh_token=load,
                                    save_refresh_token=save)
        return await source()

    def gmail(self, account_id: int) -> GmailClient:
        load, save = self._stored_token(account_id)
        source = self.google_tokens.token_source(f"account:{account_id}",
                                                 load_refresh_token=load, save_refresh_token=save)
        return self.gmail_with_token(source)

    def graph(self, account_id: int, tenant: str | None = None) -> GraphClient:
        """The Graph client of an Outlook mailbox; Microsoft rotates the refresh token on every
        exchange and the new one is stored every time."""
        load, save = self._stored_token(account_id)
        cache = self._microsoft_for(tenant)[1]
        source = cache.token_source(f"account:{account_id}", load_refresh_token=load,
                                    save_refresh_token=save)
        return self.graph_with_token(source)

    def graph_with_token(self, token: TokenSource) -> GraphClient:
        return GraphClient(self.http, api_base=self.settings.graph_api_url, token=token)

    def gmail_with_token(self, token: TokenSource) -> GmailClient:
        return GmailClient(self.http, api_base=self.settings.gmail_api_url, token=token)

    def forget_tokens(self, account_id: int) -> None:
        """Drop cached access tokens (after a reconnect or removal)."""
        self.google_tokens.invalidate(f"account:{account_id}")
        for _, cache in self._microsoft.values():
            cache.invalidate(f"account:{account_id}")

    def engine(self, account: AccountRow, ctx: SyncContext) -> MailboxEngine:
        if account.provider is ProviderKind.GMAIL:
            return _GmailEngine(self.gmail(account.id), ctx, self.settings)
        if account.provider is ProviderKind.OUTLOOK:
            if account.token_kind == TokenKind.IMAP.value:
                raise WrongTokenKind(
                    "this Outlook mailbox is connected with an IMAP/SMTP token, which cannot "
                    "call Microsoft Graph: reconnect with the Microsoft Graph option")
            graph = self.graph(account.id, account.tenant)
            return OutlookEngine(graph, ctx, self.settings)
        if account.provider is ProviderKind.IMAP:
            return ImapEngine(self.imap, account, ctx, self.settings)
        raise InputError(f"{account.provider} mailboxes are not supported yet")
