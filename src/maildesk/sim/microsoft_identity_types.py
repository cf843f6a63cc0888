"""Values of the simulated Microsoft identity platform: apps, grants, access tokens, codes,
queued errors, the exchange log entries, and the scope helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from maildesk.sim.graph_wire import AAD_ERRORS

GRAPH = "https://graph.microsoft.com"
OUTLOOK = "https://outlook.office.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
ACCESS_TOKEN_SECONDS = 3599
OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})
GRAPH_SCOPES = (f"{GRAPH}/Mail.ReadWrite", f"{GRAPH}/Mail.Send", "offline_access")
IMAP_SCOPES = (f"{OUTLOOK}/IMAP.AccessAsUser.All", f"{OUTLOOK}/SMTP.Send", "offline_access")


class AadFailure(Exception):
    """A token-endpoint failure, answered as ``AAD_ERRORS[name]`` or the explicit fields."""

    def __init__(
        self,
        name: str | None = None,
        *,
        status: int = 400,
        error: str = "",
        code: int = 0,
        description: str = "",
    ) -> None:
        if name is not None:
            status, error, code, description = AAD_ERRORS[name]
        super().__init__(description)
        self.status, self.error, self.code, self.description = status, error, code, description


def normalize_scope(scope: str) -> str:
    """Bare names (other than the OpenID ones) mean Graph: ``Mail.Read`` → the Graph URL."""
    if scope in OIDC_SCOPES or "://" in scope:
        return scope
    return f"{GRAPH}/{scope}"


def resource_of(scope: str) -> str | None:
    """``https://graph.microsoft.com`` for a Graph scope, None for the OpenID ones."""
    scope = normalize_scope(scope)
    if scope in OIDC_SCOPES:
        return None
    return scope.rsplit("/", 1)[0]


@dataclass(slots=True)
class MicrosoftApp:
    """An app registration. An empty ``redirect_uris`` accepts any redirect URI."""

    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...] = ()


@dataclass(slots=True)
class MsGrant:
    """A user's consent to an app: the scopes and the chain of refresh tokens issued so far."""

    email: str
    client_id: str
    scopes: tuple[str, ...]
    refresh_tokens: list[str] = field(default_factory=list)
    revoked_code: str | None = None  # the AAD_ERRORS name a revoked grant answers

    @property
    def current(self) -> str:
        """The newest refresh token."""
        return self.refresh_tokens[-1]

    @property
    def resource(self) -> str:
        """The API the grant is for (Graph or Outlook IMAP/SMTP)."""
        found = {resource_of(s) for s in self.scopes} - {None}
        return OUTLOOK if OUTLOOK in found else GRAPH


@dataclass(slots=True)
class MsAccessToken:
    """A bearer token; dead once expired or once its grant is revoked."""

    token: str
    grant: MsGrant
    audience: str
    scopes: tuple[str, ...]  # bare names, as in the JWT's ``scp``
    expires_at: datetime

    @property
    def email(self) -> str:
        """The mailbox the token opens."""
        return self.grant.email


@dataclass(frozen=True, slots=True)
class TokenExchange:
    """One call of the token endpoint: which refresh token was used and what came of it."""

    at: datetime
    grant_type: str
    client_id: str
    used: str | None  # the refresh token presented (None for authorization_code)
    issued: str | None  # the refresh token returned, None on failure
    email: str | None
    error: str | None  # ``invalid_grant AADSTS70008`` …


@dataclass(slots=True)
class QueuedError:
    """``count`` coming refreshes (of ``email``, or anyone's) fail with ``name``."""

    name: str
    count: int
    email: str | None
