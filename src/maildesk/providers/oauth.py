"""Google OAuth 2.0: refresh and revoke tokens, and cache access tokens per account.

Only ``invalid_grant`` means "the mailbox must reconnect" (:class:`OAuthInvalid`). A rejected
client id/secret is an operator problem (:class:`AuthError`), missing client settings are
:class:`OAuthNotConfigured`, and everything network- or server-side is transient, retried by
:class:`ProviderHttp` and finally :class:`ProviderUnavailable`.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import httpx

from maildesk.clock import Clock
from maildesk.errors import (
    AuthError,
    OAuthInvalid,
    OAuthNotConfigured,
    ProtocolViolation,
    ProviderRejected,
    TransientError,
)
from maildesk.providers.http import ProviderHttp, TokenSource, json_body

# OAuth error codes that mean "the server had a problem, ask again later" (RFC 6749 §5.2 and
# Google's token endpoint); they may arrive with a 4xx status, so status alone cannot tell.
_TRANSIENT_OAUTH_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
_CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client"})

RefreshTokenLoader = Callable[[], Awaitable[str]]
"""Loads (decrypts) the stored refresh token of one account."""
RefreshTokenSaver = Callable[[str], Awaitable[None]]
"""Persists (encrypts) a new refresh token of one account."""


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """A token endpoint answer. ``refresh_token`` is None when the old one stays valid."""

    access_token: str = field(repr=False)
    expires_in: int
    scopes: frozenset[str]
    refresh_token: str | None = field(repr=False)
    token_type: str


def parse_token_grant(payload: dict[str, Any], *, provider: str = "Google") -> TokenGrant:
    """Read a 200 answer of a token endpoint; ProtocolViolation names a bad field.

    ``provider`` only names the answer's source in error messages (the shape is RFC 6749's).
    """
    where = f"{provider} token answer"
    access_token = payload.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise ProtocolViolation(f"{where}: field 'access_token' is missing or empty")
    # RFC 6749 makes expires_in optional; Google always sends ~3599. Assume an hour if absent.
    expires_in = payload.get("expires_in", 3600)
    if isinstance(expires_in, str) and expires_in.isascii() and expires_in.isdigit():
        expires_in = int(expires_in)
    if not isinstance(expires_in, int) or isinstance(expires_in, bool) or expires_in < 0:
        raise ProtocolViolation(f"{where}: field 'expires_in' is not a number")
    scope = payload.get("scope", "")
    if not isinstance(scope, str):
        raise ProtocolViolation(f"{where}: field 'scope' is not a string")
    refresh_token = payload.get("refresh_token")
    if refresh_token is not None and not isinstance(refresh_token, str):
        raise ProtocolViolation(f"{where}: field 'refresh_token' is not a string")
    token_type = payload.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise ProtocolViolation(f"{where}: field 'token_type' is not 'Bearer'")
    return TokenGrant(
        access_token=access_token,
        expires_in=expires_in,
        scopes=frozenset(scope.split()),
        refresh_token=refresh_token or None,
        token_type=token_type,
    )


def oauth_error_code(response: httpx.Response) -> str:
    """The ``error`` code of an OAuth error body, or "" when the body is not one."""
    try:
        payload = jsonlib.loads(response.content)
    except (ValueError, RecursionError):
        return ""
    code = payload.get("error") if isinstance(payload, dict) else None
    return code if isinstance(code, str) else ""


def is_transient_oauth_error(response: httpx.Response) -> bool:
    """A 4xx whose OAuth error code says "try again later" (``retry_if`` for ProviderHttp)."""
    return response.is_client_error and oauth_error_code(response) in _TRANSIENT_OAUTH_ERRORS


def require_settings(*settings: tuple[str, str]) -> None:
    """Raise OAuthNotConfigured naming exactly the settings (name, value) whose value is empty."""
    missing = [name for name, value in settings if not value]
    if missing:
        raise OAuthNotConfigured(missing)


async def post_token_form(
    http: ProviderHttp, token_url: str, form: dict[str, str], *, idempotent: bool
) -> httpx.Response:
    """POST ``form`` to an OAuth token endpoint, retrying transient OAuth errors."""
    return await http.request(
        "POST",
        token_url,
        data=form,
        headers={"Accept": "application/json"},
        retry_if=is_transient_oauth_error,
        idempotent=idempotent,
    )


class GoogleOAuth:
    """Talks to Google's token and revocation endpoints for one OAuth client (app)."""

    client_id_setting = "MAILDESK_GOOGLE_CLIENT_ID"
    client_secret_setting = "MAILDESK_GOOGLE_CLIENT_SECRET"  # noqa: S105 - a setting's name

    def __init__(
        self,
        http: ProviderHttp,
        *,
        token_url: str,
        revoke_url: str,
        client_id: str | None,
        client_secret: str | None,
    ) -> None:
        self._http = http
        self._token_url = token_url
        self._revoke_url = revoke_url
        self._client_id = (client_id or "").strip()
        self._client_secret = (client_secret or "").strip()

    def check_configured(self) -> None:
        """Raise OAuthNotConfigured naming exactly the missing client settings."""
        require_settings(
            (self.client_id_setting, self._client_id),
            (self.client_secret_setting, self._client_secret),
        )

    async def refresh(self, refresh_token: str) -> TokenGrant:
        """Exchange a refresh token for a new access token.

        Raises OAuthNotConfigured, OAuthInvalid (``invalid_grant``: reconnect), AuthError (the
        client id/secret were rejected), ProviderUnavailable/RateLimited (after retries),
        ProtocolViolation (a 200 we cannot read) or ProviderRejected (any other refusal).
        """
        self.check_configured()
        return await self._token_request(
            {"refresh_token": refresh_token, "grant_type": "refresh_token"},
            # Google's own wording; never echo the token itself.
            invalid_grant="Google refused the refresh token (invalid_grant): Token has been "
            "expired or revoked. The mailbox must be reconnected.",
            idempotent=True,
        )

    def authorize_url(
        self,
        endpoint: str,
        *,
        state: str,
        code_challenge: str,
        redirect_uri: str,
        scopes: tuple[str, ...],
        login_hint: str | None = None,
    ) -> str:
        """The Google sign-in URL (``endpoint`` is ``MAILDESK_GOOGLE_AUTHORIZE_URL``):
        authorization code flow with PKCE (S256), offline access and a consent prompt, so the
        answer carries a refresh token. Raises OAuthNotConfigured naming missing settings."""
        self.check_configured()
        params = {
            "client_id": self._client_id,
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "scope": " ".join(scopes),
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            "access_type": "offline",
            "prompt": "consent",
            "include_granted_scopes": "true",
        }
        if login_hint:
            params["login_hint"] = login_hint
        separator = "&" if "?" in endpoint else "?"
        return f"{endpoint}{separator}{urlencode(params, quote_via=quote)}"

    async def exchange_code(self, code: str, redirect_uri: str, code_verifier: str) -> TokenGrant:
        """Redeem an authorization code (with its PKCE verifier) for the first tokens.

        A code is single-use, so a lost answer is not retried; errors are those of
        :meth:`refresh` (``invalid_grant`` here: the code expired, was used, or the verifier
        does not match — sign in again).
        """
        self.check_configured()
        return await self._token_request(
            {
                "code": code,
                "code_verifier": code_verifier,
                "redirect_uri": redirect_uri,
                "grant_type": "authorization_code",
            },
            invalid_grant="Google refused the authorization code (invalid_grant): it expired or "
            "was already used. Sign in again.",
            idempotent=False,
        )

    async def _token_request(
        self, form: dict[str, str], *, invalid_grant: str, idempotent: bool
    ) -> TokenGrant:
        """POST ``form`` with the client credentials; ``invalid_grant`` is the OAuthInvalid
        message for that error code."""
        response = await post_token_form(
            self._http,
            self._token_url,
            {"client_id": self._client_id, "client_secret": self._client_secret, **form},
            idempotent=idempotent,
        )
        if response.is_success:
            return parse_token_grant(json_body(response))
        code = oauth_error_code(response)
        status = response.status_code
        if code == "invalid_grant":
            raise OAuthInvalid(invalid_grant)
        if code in _CLIENT_ERRORS:
            raise AuthError(
                f"Google rejected the OAuth client id/secret ({code}, HTTP {status}): check "
                f"{self.client_id_setting} and {self.client_secret_setting}"
            )
        raise ProviderRejected(
            f"Google token endpoint answered HTTP {status} ({code or 'no error code'})",
            status=status,
        )

    async def revoke(self, token: str) -> bool:
        """Revoke an access or refresh token (and with it the whole grant).

        Returns True when Google revoked it now, False when Google answered that the token was
        already invalid (the goal, an unusable grant, holds either way). Other refusals raise
        ProviderRejected; transient failures raise as in :meth:`refresh`.
        """
        response = await self._http.request(
            "POST",
            self._revoke_url,
            params={"token": token},
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            retry_if=is_transient_oauth_error,
        )
        if response.is_success:
            return True
        code = oauth_error_code(response)
        if response.status_code == 400 and code in {"invalid_token", "invalid_grant"}:
            return False
        raise ProviderRejected(
            f"Google revoke endpoint answered HTTP {response.status_code} "
            f"({code or 'no error code'})",
            status=response.status_code,
        )


class TokenRefresher(Protocol):
    """What :class:`AccessTokenCache` needs from an OAuth client (GoogleOAuth, or a fake)."""

    async def refresh(self, refresh_token: str) -> TokenGrant: ...


@dataclass(frozen=True, slots=True)
class _CachedToken:
    grant: TokenGrant
    expires_at: datetime


class AccessTokenCache:
    """Access tokens per account key, refreshed when less than ``min_remaining`` seconds remain.

    Concurrent callers for one account share a single refresh (one lock per key), including
    callers that all saw a 401 with the same old token and ask for ``force_refresh``. The app
    owns one instance; nothing is kept at module level.
    """

    def __init__(
        self, refresher: TokenRefresher, clock: Clock, *, min_remaining: float = 60.0
    ) -> None:
        self._refresher = refresher
        self._clock = clock
        self._min_remaining = timedelta(seconds=min_remaining)
        self._entries: dict[str, _CachedToken] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _fresh(self, entry: _CachedToken) -> bool:
        return entry.expires_at - self._clock.now() > self._min_remaining

    async def access_token(
        self,
        key: str,
        load_refresh_token: RefreshTokenLoader,
        save_refresh_token: RefreshTokenSaver,
        *,
        force_refresh: bool = False,
    ) -> str:
        """A usable access token for ``key``, refreshing (and persisting a new refresh token
        if Google returns one) when needed. Raises what :meth:`GoogleOAuth.refresh` raises."""
        seen = self._entries.get(key)
        if seen is not None and not force_refresh and self._fresh(seen):
            return seen.grant.access_token
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            current = self._entries.get(key)
            # Someone refreshed while we waited: that token is newer than the one we rejected.
            if current is not None and self._fresh(current) and (
                not force_refresh or current is not seen
            ):
                return current.grant.access_token
            refresh_token = await load_refresh_token()
            try:
                grant = await self._refresher.refresh(refresh_token)
            except OAuthInvalid:
                self._entries.pop(key, None)
                raise
            except TransientError:
                # Refreshing early failed, but the old token still works for a while.
                if (
                    current is not None
                    and not force_refresh
                    and current.expires_at > self._clock.now()
                ):
                    return current.grant.access_token
                raise
            if grant.refresh_token is not None and grant.refresh_token != refresh_token:
                await save_refresh_token(grant.refresh_token)
            expires_at = self._clock.now() + timedelta(seconds=grant.expires_in)
            self._entries[key] = _CachedToken(grant, expires_at)
            return grant.access_token

    def scopes(self, key: str) -> frozenset[str] | None:
        """Scopes of the last grant for ``key`` (None before the first refresh)."""
        entry = self._entries.get(key)
        return entry.grant.scopes if entry is not None else None

    def invalidate(self, key: str) -> None:
        """Forget the access token of ``key`` (e.g. after a reconnect or a disconnect)."""
        self._entries.pop(key, None)

    def token_source(
        self,
        key: str,
        *,
        load_refresh_token: RefreshTokenLoader,
        save_refresh_token: RefreshTokenSaver,
    ) -> TokenSource:
        """A :class:`TokenSource` for one account, for ``GmailClient`` and ``ProviderHttp``."""
        return _AccountTokenSource(self, key, load_refresh_token, save_refresh_token)


class _AccountTokenSource:
    def __init__(
        self,
        cache: AccessTokenCache,
        key: str,
        load_refresh_token: RefreshTokenLoader,
        save_refresh_token: RefreshTokenSaver,
    ) -> None:
        self._cache = cache
        self._key = key
        self._load = load_refresh_token
        self._save = save_refresh_token

    async def __call__(self, *, force_refresh: bool = False) -> str:
        return await self._cache.access_token(
            self._key, self._load, self._save, force_refresh=force_refresh
        )
