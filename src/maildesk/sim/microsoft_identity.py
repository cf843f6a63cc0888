"""Microsoft identity platform state: app registrations, grants, rotating refresh tokens,
JWT-shaped access tokens, authorization codes, queued AADSTS errors and the exchange log.

Every refresh returns a new refresh token. With ``rotation="lenient"`` (Microsoft's behaviour)
the older tokens of the grant keep working; with ``"strict"`` only the newest one does, and an
older one is refused with ``invalid_grant`` AADSTS70008 — so a test can prove the client stored
the rotated token.
"""

from __future__ import annotations

import base64
import functools
import hmac
import json
import random
import uuid
from collections import deque
from collections.abc import Iterable
from datetime import datetime, timedelta

from maildesk.clock import Clock
from maildesk.errors import InputError
from maildesk.sim.auth_codes import AuthCode
from maildesk.sim.graph_wire import AAD_ERRORS
from maildesk.sim.microsoft_identity_types import (
    ACCESS_TOKEN_SECONDS,
    GRAPH,
    AadFailure,
    MicrosoftApp,
    MsAccessToken,
    MsGrant,
    QueuedError,
    TokenExchange,
    normalize_scope,
    resource_of,
)


class IdentityRegistry:
    """Everything the simulated identity platform remembers."""

    def __init__(self, clock: Clock, rng: random.Random, tenant_id: str) -> None:
        self.clock = clock
        self.rng = rng
        self.tenant_id = tenant_id
        self.rotation = "lenient"
        self.scope_style = "url"  # or "bare": how the token response writes Graph scopes
        self.opaque_tokens = False  # consumer accounts may get opaque (non-JWT) access tokens
        self.apps: dict[str, MicrosoftApp] = {}
        self.grants: dict[str, MsGrant] = {}  # every refresh token ever issued -> its grant
        self.tokens: dict[str, MsAccessToken] = {}
        self.codes: dict[str, AuthCode] = {}
        self.queued: list[QueuedError] = []
        self.log: deque[TokenExchange] = deque(maxlen=10_000)
        # Users who decline consent on the authorize screen; everyone else consents at once.
        self.consent_denied: set[str] = set()

    def _random(self, prefix: str, size: int) -> str:
        return prefix + base64.urlsafe_b64encode(self.rng.randbytes(size)).decode().rstrip("=")

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    # -- apps and grants -------------------------------------------------------------------

    def create_app(
        self, client_id: str | None, client_secret: str | None, redirect_uris: Iterable[str]
    ) -> MicrosoftApp:
        """Register (or replace) an app; missing credentials are generated."""
        app = MicrosoftApp(
            client_id or self._uuid(),
            client_secret or self._random("sim~", 30).replace("-", "."),
            tuple(redirect_uris),
        )
        self.apps[app.client_id] = app
        return app

    def create_grant(self, email: str, client_id: str, scopes: Iterable[str]) -> MsGrant:
        """A new grant with its first refresh token."""
        grant = MsGrant(email, client_id, tuple(normalize_scope(s) for s in scopes))
        self._new_refresh_token(grant)
        return grant

    def _new_refresh_token(self, grant: MsGrant) -> str:
        token = self._random("0.AXsA", 180)
        grant.refresh_tokens.append(token)
        self.grants[token] = grant
        return token

    def revoke(self, email: str, code: str = "50173") -> int:
        """Revoke every grant of ``email``; refreshes then fail with ``code``. Returns how many."""
        if code not in ("70008", "700082", "50173"):
            raise InputError("code must be 70008, 700082 or 50173")
        revoked = {
            id(g): g for g in self.grants.values() if g.email == email and not g.revoked_code
        }
        for grant in revoked.values():
            grant.revoked_code = code
        for key in [k for k, t in self.tokens.items() if id(t.grant) in revoked]:
            del self.tokens[key]
        return len(revoked)

    def queue_error(self, name: str, count: int = 1, email: str | None = None) -> None:
        """The next ``count`` refreshes (of ``email``) fail with ``AAD_ERRORS[name]``."""
        if name not in AAD_ERRORS:
            raise InputError(f"unknown token error {name!r}; known: {sorted(AAD_ERRORS)}")
        if count < 1:
            raise InputError("count must be >= 1")
        self.queued.append(QueuedError(name, count, email))

    def _take_queued(self, email: str | None) -> str | None:
        for queued in self.queued:
            if queued.count > 0 and (queued.email is None or queued.email == email):
                queued.count -= 1
                if queued.count == 0:
                    self.queued.remove(queued)
                return queued.name
        return None

    # -- the token endpoint ----------------------------------------------------------------

    def check_client(self, client_id: str, client_secret: str) -> MicrosoftApp:
        """The app, or ``AadFailure`` (AADSTS700016 unknown app, 7000215 wrong secret)."""
        app = self.apps.get(client_id)
        if app is None:
            raise AadFailure(
                status=400,
                error="unauthorized_client",
                code=700016,
                description=f"Application with identifier '{client_id}' was not found in the "
                "directory.",
            )
        if not hmac.compare_digest(app.client_secret, client_secret):
            raise AadFailure("invalid_client")
        return app

    def refresh(
        self, app: MicrosoftApp, refresh_token: str, scope: str
    ) -> tuple[MsAccessToken, str]:
        """``grant_type=refresh_token``: (access token, the new refresh token) or
        ``AadFailure``. Logs the exchange either way."""
        grant = self.grants.get(refresh_token)
        try:
            queued = self._take_queued(grant.email if grant else None)
            if queued is not None:
                raise AadFailure(queued)
            if grant is None:
                raise AadFailure(
                    status=400,
                    error="invalid_grant",
                    code=9002313,
                    description="Invalid request. Request is malformed or invalid.",
                )
            if grant.revoked_code is not None:
                raise AadFailure(grant.revoked_code)
            if self.rotation == "strict" and refresh_token != grant.current:
                raise AadFailure("70008")
            if grant.client_id != app.client_id:
                raise AadFailure(
                    status=400,
                    error="invalid_grant",
                    code=70000,
                    description="Provided grant is invalid or malformed.",
                )
            access = self._access_for(grant, scope)
            issued = self._new_refresh_token(grant)
        except AadFailure as exc:
            self._log("refresh_token", app.client_id, refresh_token, None, grant, exc)
            raise
        self._log("refresh_token", app.client_id, refresh_token, issued, grant, None)
        return access, issued

    def _access_for(self, grant: MsGrant, scope: str) -> MsAccessToken:
        requested = [normalize_scope(s) for s in scope.split()]
        if not requested:
            raise AadFailure(
                status=400,
                error="invalid_request",
                code=90014,
                description="The required field 'scope' is missing from the credential.",
            )
        resources = {resource_of(s) for s in requested} - {None}
        if len(resources) > 1:
            raise AadFailure(
                status=400,
                error="invalid_scope",
                code=28000,
                description="Provided value for the input parameter scope is not valid because "
                "it contains more than one resource.",
            )
        resource = next(iter(resources), grant.resource)
        consented = [s for s in grant.scopes if resource_of(s) == resource]
        missing = [s for s in requested if resource_of(s) and s not in grant.scopes]
        if not consented or missing:
            raise AadFailure(
                status=400,
                error="invalid_grant",
                code=65001,
                description="The user or administrator has not consented to use the "
                f"application for {', '.join(missing) or resource}.",
            )
        return self.issue_access_token(grant, resource)

    def issue_access_token(self, grant: MsGrant, resource: str | None = None) -> MsAccessToken:
        """A fresh access token for ``grant`` (its own resource unless told)."""
        audience = resource or grant.resource
        scopes = tuple(s.rsplit("/", 1)[1] for s in grant.scopes if resource_of(s) == audience)
        now = self.clock.now()
        expires = now + timedelta(seconds=ACCESS_TOKEN_SECONDS)
        if self.opaque_tokens:
            text = self._random("EwA4A", 240)
        else:
            text = self._jwt(grant, audience, scopes, now, expires)
        token = MsAccessToken(text, grant, audience, scopes, expires)
        self.tokens[text] = token
        return token

    def _jwt(
        self,
        grant: MsGrant,
        audience: str,
        scopes: tuple[str, ...],
        now: datetime,
        expires: datetime,
    ) -> str:
        header = {"typ": "JWT", "alg": "RS256", "kid": "sim-ms-key-1"}
        claims = {
            "aud": audience,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int(expires.timestamp()),
            "appid": grant.client_id,
            "scp": " ".join(scopes),
            "tid": self.tenant_id,
            "upn": grant.email,
            "unique_name": grant.email,
            "uti": self._random("", 16),
            "ver": "1.0",
        }
        parts = [_b64json(header), _b64json(claims), self._random("", 256)]
        return ".".join(parts)

    def authenticate(self, token: str) -> MsAccessToken | None:
        """The live access token, or None if unknown, expired or revoked."""
        found = self.tokens.get(token)
        if found is None or found.grant.revoked_code or found.expires_at <= self.clock.now():
            return None
        return found

    def expire_access_tokens(self, email: str | None = None) -> int:
        """Make live access tokens (of ``email``, or all) expire now; returns how many."""
        now = self.clock.now()
        hit = [t for t in self.tokens.values() if (email in (None, t.email)) and t.expires_at > now]
        for token in hit:
            token.expires_at = now
        return len(hit)

    def response_scope(self, access: MsAccessToken) -> str:
        """The ``scope`` string of a token response, in the configured style."""
        if self.scope_style == "bare" and access.audience == GRAPH:
            return " ".join(access.scopes)
        return " ".join(f"{access.audience}/{s}" for s in access.scopes)

    # -- authorization code + PKCE ---------------------------------------------------------

    def create_code(
        self,
        app: MicrosoftApp,
        *,
        redirect_uri: str,
        email: str,
        scopes: Iterable[str],
        code_challenge: str | None,
        code_challenge_method: str | None,
    ) -> AuthCode:
        """Record consent and return the code for the redirect."""
        code = AuthCode.issue(
            functools.partial(self._random, "0.AXsA-code.", 96),
            client_id=app.client_id,
            redirect_uri=redirect_uri,
            email=email,
            scopes=(normalize_scope(s) for s in scopes),
            code_challenge=code_challenge,
            code_challenge_method=code_challenge_method,
            now=self.clock.now(),
        )
        self.codes[code.code] = code
        return code

    def exchange_code(
        self, app: MicrosoftApp, code: str, redirect_uri: str, verifier: str | None, scope: str
    ) -> tuple[MsAccessToken, str]:
        """``grant_type=authorization_code``: check code and PKCE; a new grant's tokens."""
        pending = self.codes.pop(code, None)
        try:
            if pending is None or pending.expires_at <= self.clock.now():
                raise AadFailure(
                    status=400,
                    error="invalid_grant",
                    code=70008,
                    description="The provided authorization code or refresh token has expired.",
                )
            if pending.client_id != app.client_id or pending.redirect_uri != redirect_uri:
                raise AadFailure(
                    status=400,
                    error="invalid_grant",
                    code=50148,
                    description="The code_verifier does not match the code_challenge supplied in "
                    "the authorization request, or the redirect URI differs.",
                )
            if not pending.verified_by(verifier):
                raise AadFailure(
                    status=400,
                    error="invalid_grant",
                    code=501481,
                    description="The Code_Verifier does not match the code_challenge supplied in "
                    "the authorization request.",
                )
            grant = self.create_grant(pending.email, app.client_id, pending.scopes)
            access = self._access_for(grant, scope or " ".join(pending.scopes))
        except AadFailure as exc:
            self._log("authorization_code", app.client_id, None, None, None, exc)
            raise
        self._log("authorization_code", app.client_id, None, grant.current, grant, None)
        return access, grant.current

    def _log(
        self,
        grant_type: str,
        client_id: str,
        used: str | None,
        issued: str | None,
        grant: MsGrant | None,
        failure: AadFailure | None,
    ) -> None:
        error = None if failure is None else f"{failure.error} AADSTS{failure.code}"
        email = None if grant is None else grant.email
        self.log.append(
            TokenExchange(self.clock.now(), grant_type, client_id, used, issued, email, error)
        )


def _b64json(value: object) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
