"""Microsoft identity platform (v2.0 endpoints): refresh and code exchange, token kinds.

:class:`MicrosoftOAuth` implements the ``TokenRefresher`` Protocol of :mod:`.oauth`, so the
shared :class:`~maildesk.providers.oauth.AccessTokenCache` caches its access tokens and persists
the refresh token Microsoft rotates on *every* refresh (forgetting that kills a mailbox after
90 days). Failures follow invariant 3:

* ``invalid_grant`` (AADSTS70008, 700082, 50173, ...) and ``interaction_required`` →
  :class:`OAuthInvalid`: only a reconnect helps;
* ``invalid_client`` → :class:`OAuthNotConfigured` naming ``MAILDESK_MICROSOFT_CLIENT_SECRET``:
  the operator must fix the app's secret, no user action helps;
* ``temporarily_unavailable``, 5xx, 429, network errors → retried by :class:`ProviderHttp`, then
  :class:`ProviderUnavailable` / :class:`RateLimited`; never an auth error.

Which API a grant can call (:class:`TokenKind`) is read from the access token's ``aud`` claim
when the token is a readable JWT, else from its scopes (consumer accounts get opaque tokens).
Messages name AADSTS codes and settings, never a token or the provider's free text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json as jsonlib
import secrets
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode

import httpx

from maildesk.domain.accounts import (
    GRAPH_SCOPE_READWRITE,
    GRAPH_SCOPE_SEND,
    MS_SCOPE_OFFLINE,
    OUTLOOK_IMAP_SCOPE,
    OUTLOOK_SMTP_SCOPE,
    TokenKind,
)
from maildesk.errors import (
    AuthError,
    OAuthInvalid,
    OAuthNotConfigured,
    ProviderRejected,
    ScopeMissing,
)
from maildesk.providers.http import ProviderHttp, json_body
from maildesk.providers.oauth import (
    TokenGrant,
    parse_token_grant,
    post_token_form,
    require_settings,
)

__all__ = [
    "GRAPH_APP_ID",
    "GRAPH_REQUEST_SCOPES",
    "GRAPH_RESOURCE",
    "IMAP_REQUEST_SCOPES",
    "OIDC_SCOPES",
    "OUTLOOK_RESOURCE",
    "MicrosoftOAuth",
    "MicrosoftOAuthError",
    "jwt_claims",
    "new_pkce_verifier",
    "normalise_scopes",
    "parse_oauth_error",
    "pkce_challenge",
    "scopes_for",
    "token_kind",
]

GRAPH_RESOURCE = "https://graph.microsoft.com"
OUTLOOK_RESOURCE = "https://outlook.office.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
# Office 365 Exchange Online: the audience of IMAP/SMTP tokens when expressed as an app id.
EXCHANGE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"
OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})

GRAPH_REQUEST_SCOPES: tuple[str, ...] = (GRAPH_SCOPE_READWRITE, GRAPH_SCOPE_SEND, MS_SCOPE_OFFLINE)
"""What a Graph connection asks for (docs/microsoft-wire.md, "Token refresh")."""
IMAP_REQUEST_SCOPES: tuple[str, ...] = (OUTLOOK_IMAP_SCOPE, OUTLOOK_SMTP_SCOPE, MS_SCOPE_OFFLINE)
"""What an IMAP/SMTP connection asks for."""

_GRAPH_AUDIENCES = frozenset({GRAPH_RESOURCE, GRAPH_APP_ID, "https://graph.microsoft.us",
                              "https://graph.microsoft.de", "https://microsoftgraph.chinacloudapi.cn"})
_OUTLOOK_AUDIENCES = frozenset({OUTLOOK_RESOURCE, "https://outlook.office365.com",
                                EXCHANGE_APP_ID})
# Codes that mean "a person must sign in again" even when they come as invalid_grant.
_INTERACTIVE_CODES = frozenset({50076, 50079, 50158, 65001, 50074, 50072})
_REVOKED_MEANING = {
    70008: "the grant expired or was revoked",
    700082: "the refresh token expired after 90 days without use",
    50173: "the grant was revoked (password change or sign-out)",
    54005: "the authorization code was already redeemed",
    70000: "the grant is invalid",
}


# --- scopes and token kinds ---------------------------------------------------------------------

def normalise_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """Scopes in one spelling: bare Graph names get the Graph resource prefix.

    Microsoft may answer ``Mail.ReadWrite`` or ``https://graph.microsoft.com/Mail.ReadWrite``;
    bare names other than the OpenID ones (``openid profile email offline_access``, lower-cased)
    mean Graph. Resource-prefixed scopes are kept as sent, except that the resource part is
    lower-cased and a doubled slash collapsed.
    """
    normalised: set[str] = set()
    for raw in scopes:
        scope = raw.strip()
        if not scope:
            continue
        if scope.lower() in OIDC_SCOPES:
            normalised.add(scope.lower())
        elif "://" in scope:
            scheme, _, rest = scope.partition("://")
            host, _, name = rest.partition("/")
            resource = f"{scheme}://{host}".lower()
            normalised.add(f"{resource}/{name.lstrip('/')}" if name else resource)
        else:
            normalised.add(f"{GRAPH_RESOURCE}/{scope}")
    return frozenset(normalised)


def scopes_for(kind: TokenKind) -> tuple[str, ...]:
    """The scopes to request for a connection of ``kind``."""
    return GRAPH_REQUEST_SCOPES if kind is TokenKind.GRAPH else IMAP_REQUEST_SCOPES


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWS compact token, decoded *without* verification; None if unreadable.

    We only inspect our own access token to learn which API it is for; nothing is trusted for
    authentication. Encrypted (5-part) and opaque tokens yield None.
    """
    parts = token.split(".")
    if len(parts) != 3 or not parts[1]:
        return None
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = jsonlib.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        return None
    return claims if isinstance(claims, dict) else None


def _kind_of_audience(claims: Mapping[str, Any]) -> TokenKind | None:
    audience = claims.get("aud")
    values = audience if isinstance(audience, list) else [audience]
    for value in values:
        if not isinstance(value, str):
            continue
        aud = value.strip().rstrip("/").lower()
        if aud in _GRAPH_AUDIENCES:
            return TokenKind.GRAPH
        if aud in _OUTLOOK_AUDIENCES:
            return TokenKind.IMAP
    return None


def token_kind(grant: TokenGrant) -> TokenKind:
    """Which Microsoft API ``grant`` can call: from the JWT ``aud`` if readable, else scopes.

    Raises ScopeMissing when neither names Graph nor Outlook (e.g. only ``openid``): such a
    grant cannot read mail, and only a reconnect with consent fixes that.
    """
    claims = jwt_claims(grant.access_token)
    if claims is not None:
        kind = _kind_of_audience(claims)
        if kind is not None:
            return kind
    scopes = normalise_scopes(grant.scopes) - OIDC_SCOPES
    resources = {scope.lower().partition("://")[2].partition("/")[0] for scope in scopes}
    if "graph.microsoft.com" in resources:
        return TokenKind.GRAPH
    if resources & {"outlook.office.com", "outlook.office365.com"}:
        return TokenKind.IMAP
    raise ScopeMissing(
        "the Microsoft grant names neither Graph nor Outlook IMAP scopes: reconnect the mailbox "
        "and consent to mail access"
    )


# --- PKCE ---------------------------------------------------------------------------------------

def new_pkce_verifier() -> str:
    """A fresh PKCE code verifier (RFC 7636: 43-128 unreserved characters; we use 64)."""
    return secrets.token_urlsafe(48)


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of ``verifier``: base64url(SHA-256), unpadded."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


# --- error bodies -------------------------------------------------------------------------------

class MicrosoftOAuthError(NamedTuple):
    """The parts of an identity-platform error body we act on."""

    error: str
    codes: tuple[int, ...]


def parse_oauth_error(body: bytes) -> MicrosoftOAuthError:
    """``{"error", "error_codes": [n], "error_description": "AADSTSn: …"}``, tolerantly.

    The codes come from ``error_codes``; when that is absent they are read from the leading
    ``AADSTSnnnn`` of the description. A body that is not an error object yields ``("", ())``.
    """
    try:
        payload = jsonlib.loads(body)
    except (ValueError, RecursionError):
        return MicrosoftOAuthError("", ())
    if not isinstance(payload, dict):
        return MicrosoftOAuthError("", ())
    error = payload.get("error")
    codes: list[int] = []
    raw_codes = payload.get("error_codes")
    if isinstance(raw_codes, list):
        codes = [c for c in raw_codes if isinstance(c, int) and not isinstance(c, bool)]
    description = payload.get("error_description")
    if not codes and isinstance(description, str) and description.startswith("AADSTS"):
        digits = description[6:].split(":", 1)[0].strip()
        if digits.isascii() and digits.isdigit():
            codes = [int(digits)]
    return MicrosoftOAuthError(error if isinstance(error, str) else "", tuple(codes))


def _codes_text(codes: tuple[int, ...]) -> str:
    return ", ".join(f"AADSTS{code}" for code in codes) or "no AADSTS code"


# --- the client ---------------------------------------------------------------------------------

class MicrosoftOAuth:
    """Talks to the Microsoft identity platform's token endpoint for one Entra app.

    ``authority_url`` is the bare root (``https://login.microsoftonline.com`` or a simulator),
    ``tenant`` is ``common``, ``organizations``, ``consumers`` or a tenant id, and ``scopes`` are
    requested on every refresh and code exchange (:data:`GRAPH_REQUEST_SCOPES` by default; one
    token serves one resource, so an IMAP connection uses its own instance with
    :data:`IMAP_REQUEST_SCOPES`). Grants come back with :func:`normalise_scopes` applied.
    """

    client_id_setting = "MAILDESK_MICROSOFT_CLIENT_ID"
    client_secret_setting = "MAILDESK_MICROSOFT_CLIENT_SECRET"  # noqa: S105 - a setting's name

    def __init__(
        self,
        http: ProviderHttp,
        *,
        authority_url: str,
        tenant: str,
        client_id: str | None,
        client_secret: str | None,
        scopes: Iterable[str] = GRAPH_REQUEST_SCOPES,
    ) -> None:
        self._http = http
        tenant_path = quote((tenant or "common").strip() or "common", safe="")
        root = f"{authority_url.rstrip('/')}/{tenant_path}/oauth2/v2.0"
        self.token_url = f"{root}/token"
        self.authorize_endpoint = f"{root}/authorize"
        self._client_id = (client_id or "").strip()
        self._client_secret = (client_secret or "").strip()
        self.scopes: tuple[str, ...] = tuple(dict.fromkeys(s for s in scopes if s.strip()))
        if not self.scopes:
            raise ValueError("MicrosoftOAuth needs at least one scope")

    def check_configured(self) -> None:
        """Raise OAuthNotConfigured naming exactly the missing client settings."""
        require_settings(
            (self.client_id_setting, self._client_id),
            (self.client_secret_setting, self._client_secret),
        )

    def authorize_url(
        self,
        state: str,
        code_challenge: str,
        redirect_uri: str,
        login_hint: str | None = None,
    ) -> str:
        """The sign-in URL to send the user to: authorization code flow with PKCE (S256).

        ``code_challenge`` is :func:`pkce_challenge` of a verifier kept server-side for
        :meth:`exchange_code`. Raises OAuthNotConfigured without a client id.
        """
        if not self._client_id:
            raise OAuthNotConfigured([self.client_id_setting])
        params = {
            "client_id": self._client_id,
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "response_mode": "query",
            "scope": " ".join(self.scopes),
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        if login_hint:
            params["login_hint"] = login_hint
        return f"{self.authorize_endpoint}?{urlencode(params, quote_via=quote)}"

    async def refresh(self, refresh_token: str) -> TokenGrant:
        """Exchange a refresh token for new tokens; the answer carries a new refresh token.

        Raises OAuthNotConfigured (settings missing, or the secret rejected), OAuthInvalid
        (grant expired/revoked or interactive sign-in needed), ProviderUnavailable/RateLimited
        (after retries), ProtocolViolation (a 200 we cannot read), ProviderRejected (any other
        refusal).
        """
        self.check_configured()
        return await self._token_request(
            {"grant_type": "refresh_token", "refresh_token": refresh_token},
            what="refresh",
            idempotent=True,
        )

    async def exchange_code(self, code: str, redirect_uri: str, code_verifier: str) -> TokenGrant:
        """Redeem an authorization code (with its PKCE verifier) for the first tokens.

        A code can be redeemed once, so an answer lost in transit is not retried (the user
        signs in again); errors are those of :meth:`refresh`.
        """
        self.check_configured()
        return await self._token_request(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": code_verifier,
            },
            what="code exchange",
            idempotent=False,
        )

    async def _token_request(
        self, form: dict[str, str], *, what: str, idempotent: bool
    ) -> TokenGrant:
        response = await post_token_form(
            self._http,
            self.token_url,
            {
                "client_id": self._client_id,
                "client_secret": self._client_secret,
                "scope": " ".join(self.scopes),
                **form,
            },
            idempotent=idempotent,
        )
        if response.is_success:
            grant = parse_token_grant(json_body(response), provider="Microsoft")
            return TokenGrant(
                access_token=grant.access_token,
                expires_in=grant.expires_in,
                scopes=normalise_scopes(grant.scopes),
                refresh_token=grant.refresh_token,
                token_type=grant.token_type,
            )
        raise self._error(response, what)

    def _error(self, response: httpx.Response, what: str) -> AuthError | ProviderRejected:
        info = parse_oauth_error(response.content)
        status = response.status_code
        codes = _codes_text(info.codes)
        if info.error in {"interaction_required", "consent_required"} or (
            info.error == "invalid_grant" and _INTERACTIVE_CODES.intersection(info.codes)
        ):
            return OAuthInvalid(
                f"reconnect: Microsoft requires interactive sign-in ({codes}; MFA or consent)"
            )
        if info.error == "invalid_grant":
            meaning = next(
                (_REVOKED_MEANING[c] for c in info.codes if c in _REVOKED_MEANING),
                "the grant is no longer valid",
            )
            return OAuthInvalid(
                f"Microsoft refused the {what} (invalid_grant, {codes}): {meaning}. "
                "The mailbox must be reconnected."
            )
        if info.error in {"invalid_client", "unauthorized_client"}:
            setting = (
                self.client_secret_setting
                if info.error == "invalid_client"
                else self.client_id_setting
            )
            # A configured-but-rejected value: same type and field as a missing one (the
            # operator fixes the same setting), with a message that says what happened.
            return OAuthNotConfigured(
                [setting],
                f"Microsoft rejected the app credentials ({info.error}, {codes}, HTTP {status}): "
                f"check {setting} (wrong, expired or for another app)",
            )
        return ProviderRejected(
            f"Microsoft token endpoint answered HTTP {status} to the {what} "
            f"({info.error or 'no error code'}, {codes})",
            status=status,
        )
