"""Connectors: the one place that turns settings and an account row into provider clients.

It owns the shared HTTP machinery (one connection pool, the retry policy) and the access-token
caches, and gives each account a token source that reads the account's refresh token from the
store (so a reconnect takes effect at once) and persists a rotated one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

import httpx

from maildesk.clock import Clock
from maildesk.config import Settings
from maildesk.domain.accounts import ProviderKind
from maildesk.errors import InputError, OAuthInvalid
from maildesk.providers.gmail import GmailClient
from maildesk.providers.http import ProviderHttp, TokenSource
from maildesk.providers.oauth import AccessTokenCache, GoogleOAuth
from maildesk.secretbox import SecretBox
from maildesk.store import accounts as account_store
from maildesk.store.accounts import AccountRow
from maildesk.store.database import Database
from maildesk.sync.context import SyncContext
from maildesk.sync.gmail import GmailSync
from maildesk.sync.prefetch import prefetch_bodies


class MailboxEngine(Protocol):
    async def run(self) -> None:
        """Bring the account's store up to date with the provider."""
        ...

    async def prefetch(self, message_ids: Sequence[int], limit: int) -> int:
        """Warm the body cache for newly arrived messages."""
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

    def gmail(self, account_id: int) -> GmailClient:
        key = f"account:{account_id}"

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

        source = self.google_tokens.token_source(key, load_refresh_token=load,
                                                 save_refresh_token=save)
        return self.gmail_with_token(source)

    def gmail_with_token(self, token: TokenSource) -> GmailClient:
        return GmailClient(self.http, api_base=self.settings.gmail_api_url, token=token)

    def forget_tokens(self, account_id: int) -> None:
        """Drop cached access tokens (after a reconnect or removal)."""
        self.google_tokens.invalidate(f"account:{account_id}")

    def engine(self, account: AccountRow, ctx: SyncContext) -> MailboxEngine:
        if account.provider is ProviderKind.GMAIL:
            return _GmailEngine(self.gmail(account.id), ctx, self.settings)
        raise InputError(f"{account.provider} mailboxes are not supported yet")
