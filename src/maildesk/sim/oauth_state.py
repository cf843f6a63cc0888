"""Google OAuth 2.0 state: clients, grants (refresh tokens), access tokens, authorization codes."""

from __future__ import annotations

import base64
import functools
import hmac
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from maildesk.clock import Clock
from maildesk.errors import InputError, NotFound
from maildesk.sim.auth_codes import AuthCode

ACCESS_TOKEN_SECONDS = 3599


@dataclass(slots=True)
class OAuthClient:
    """A registered OAuth app. An empty ``redirect_uris`` accepts any redirect URI."""

    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...] = ()


@dataclass(slots=True)
class Grant:
    """A user's consent to a client: the refresh token and what it allows."""

    refresh_token: str
    email: str
    scopes: tuple[str, ...]
    client_id: str | None
    revoked: bool = False


@dataclass(slots=True)
class AccessToken:
    """A bearer token; dead once expired or once its grant is revoked."""

    token: str
    grant: Grant
    expires_at: datetime

    @property
    def email(self) -> str:
        """The mailbox the token opens."""
        return self.grant.email

    @property
    def scopes(self) -> tuple[str, ...]:
        """What the token allows (its grant's scopes)."""
        return self.grant.scopes


class OAuthError(Exception):
    """A token-endpoint failure: ``error`` is the OAuth error code, ``status`` the HTTP status."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


@dataclass(slots=True)
class OAuthRegistry:
    """Everything Google's OAuth endpoints remember."""

    clock: Clock
    rng: random.Random
    clients: dict[str, OAuthClient] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)
    tokens: dict[str, AccessToken] = field(default_factory=dict)
    codes: dict[str, AuthCode] = field(default_factory=dict)
    # What each user does on the consent screen: email -> None (deny) or the scopes they tick
    # (a subset, as Google's granular consent allows). Unlisted users grant what is asked.
    consent: dict[str, tuple[str, ...] | None] = field(default_factory=dict)

    def _random(self, prefix: str, size: int) -> str:
        return prefix + base64.urlsafe_b64encode(self.rng.randbytes(size)).decode().rstrip("=")

    def create_client(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        redirect_uris: Iterable[str] = (),
    ) -> OAuthClient:
        """Register (or replace) a client; missing credentials are generated."""
        cid = client_id or f"{self.rng.randrange(10**11, 10**12)}-sim.apps.googleusercontent.com"
        client = OAuthClient(
            cid, client_secret or self._random("GOCSPX-", 21), tuple(redirect_uris)
        )
        self.clients[cid] = client
        return client

    def create_grant(
        self, email: str, scopes: Iterable[str], client_id: str | None = None
    ) -> Grant:
        """A new grant; with ``client_id`` only that client may use its refresh token."""
        grant = Grant(self._random("1//0g", 72), email, tuple(scopes), client_id)
        self.grants[grant.refresh_token] = grant
        return grant

    def revoke(self, token: str) -> Grant:
        """Revoke the grant of a refresh or access token (Google revokes the whole grant)."""
        grant = self.grants.get(token)
        if grant is None and token in self.tokens:
            grant = self.tokens[token].grant
        if grant is None or grant.revoked:
            raise NotFound("unknown or already revoked token")
        grant.revoked = True
        # Dead tokens are dropped so the token table does not grow with revoked grants.
        for key in [k for k, t in self.tokens.items() if t.grant is grant]:
            del self.tokens[key]
        return grant

    def issue_access_token(self, grant: Grant) -> AccessToken:
        """A fresh access token for ``grant`` (valid ``ACCESS_TOKEN_SECONDS`` from now)."""
        token = AccessToken(
            self._random("ya29.a0", 96),
            grant,
            self.clock.now() + timedelta(seconds=ACCESS_TOKEN_SECONDS),
        )
        self.tokens[token.token] = token
        return token

    def expire_access_tokens(self, email: str | None = None) -> int:
        """Make live access tokens (of ``email``, or all) expired now; returns how many."""
        now = self.clock.now()
        count = 0
        for token in self.tokens.values():
            if (email is None or token.email == email) and token.expires_at > now:
                token.expires_at = now
                count += 1
        return count

    def authenticate(self, token: str) -> AccessToken | None:
        """The live access token, or ``None`` if unknown, expired or revoked."""
        found = self.tokens.get(token)
        if found is None or found.grant.revoked or found.expires_at <= self.clock.now():
            return None
        return found

    def check_client(self, client_id: str, client_secret: str) -> OAuthClient:
        """The client, or ``OAuthError(401, invalid_client)``."""
        client = self.clients.get(client_id)
        if client is None or not hmac.compare_digest(client.client_secret, client_secret):
            raise OAuthError(401, "invalid_client", "The OAuth client was not found.")
        return client

    def refresh(self, client: OAuthClient, refresh_token: str) -> AccessToken:
        """``grant_type=refresh_token``: a new access token, or ``OAuthError``."""
        grant = self.grants.get(refresh_token)
        if grant is None or grant.revoked:
            raise OAuthError(400, "invalid_grant", "Token has been expired or revoked.")
        if grant.client_id is not None and grant.client_id != client.client_id:
            raise OAuthError(400, "unauthorized_client", "Unauthorized")
        return self.issue_access_token(grant)

    def create_code(
        self,
        client: OAuthClient,
        *,
        redirect_uri: str,
        email: str,
        scopes: Iterable[str],
        code_challenge: str | None,
        code_challenge_method: str | None,
    ) -> AuthCode:
        """Record the user's consent and return the code to send to the redirect URI."""
        if client.redirect_uris and redirect_uri not in client.redirect_uris:
            raise InputError("redirect_uri_mismatch")
        code = AuthCode.issue(
            functools.partial(self._random, "4/0A", 48),
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            email=email,
            scopes=scopes,
            code_challenge=code_challenge,
            code_challenge_method=code_challenge_method,
            now=self.clock.now(),
        )
        self.codes[code.code] = code
        return code

    def exchange_code(
        self, client: OAuthClient, code: str, redirect_uri: str, code_verifier: str | None
    ) -> tuple[Grant, AccessToken]:
        """``grant_type=authorization_code``: check the code and PKCE, create the grant."""
        pending = self.codes.pop(code, None)
        if pending is None or pending.expires_at <= self.clock.now():
            raise OAuthError(400, "invalid_grant", "Malformed auth code.")
        if pending.client_id != client.client_id or pending.redirect_uri != redirect_uri:
            raise OAuthError(400, "invalid_grant", "Bad Request")
        if pending.code_challenge is not None and not code_verifier:
            raise OAuthError(400, "invalid_grant", "Missing code verifier.")
        if not pending.verified_by(code_verifier):
            raise OAuthError(400, "invalid_grant", "Invalid code verifier.")
        grant = self.create_grant(pending.email, pending.scopes, client.client_id)
        return grant, self.issue_access_token(grant)
