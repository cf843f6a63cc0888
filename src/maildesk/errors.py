"""The one exception tree of MailDesk.

Every failure that crosses a module boundary is one of these. Third-party exceptions (httpx,
SQLAlchemy, asyncpg, json, ...) are translated where they are raised, with ``raise ... from exc``,
so callers only ever handle our types::

    MailDeskError
    ├── ConfigError(field)              a setting is missing or invalid; names the field
    ├── InputError                      bad input from an operator, the API or a webhook
    │   └── NotFound                    an account, user or object does not exist
    ├── ProviderError                   anything a mail provider did or failed to do
    │   ├── AuthError                   the credentials cannot be used as they are
    │   │   ├── OAuthInvalid            grant revoked or expired: the mailbox must reconnect
    │   │   ├── ScopeMissing            the grant lacks a scope we need: reconnect and re-consent
    │   │   ├── WrongTokenKind          e.g. an IMAP-only Microsoft token used for Graph
    │   │   ├── OAuthNotConfigured      the app's client id/secret are not configured
    │   │   └── LoginFailed             an IMAP server refused the user name or password
    │   ├── TransientError              retry later; never reported as an auth problem
    │   │   ├── RateLimited(retry_after)
    │   │   └── ProviderUnavailable     5xx, timeouts, connection failures
    │   ├── CursorExpired               history 404 / delta 410 / UIDVALIDITY change: resync
    │   ├── MessageGone                 the object no longer exists at the provider (404)
    │   ├── ProtocolViolation           the provider answered something we cannot parse
    │   ├── CapabilityMissing(capability) the server lacks an extension we need (IDLE, STARTTLS …)
    │   └── ProviderRejected            a 4xx that retrying will not fix (our request was wrong)
    ├── PushError
    │   ├── NotReady(reason)            the readiness guard refused a push registration
    │   └── WebhookRejected(status)     a webhook request we refuse (401/403/413/503 ...)
    └── StoreError
        └── LeaseLost                   another worker took over the account we were syncing

``kind`` is a short stable code stored with an account's last error and shown to operators.
"""

from __future__ import annotations


class MailDeskError(Exception):
    """Base of every MailDesk error."""

    kind = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(MailDeskError):
    """A setting is missing or invalid. ``field`` is the setting's environment variable name."""

    kind = "config"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class InputError(MailDeskError):
    """Bad input from an operator, an API client or a webhook caller."""

    kind = "input"


class NotFound(InputError):
    kind = "not_found"


class ProviderError(MailDeskError):
    """Base for everything a provider did or failed to do."""

    kind = "provider"


class AuthError(ProviderError):
    kind = "auth"


class OAuthInvalid(AuthError):
    """The refresh token was revoked or has expired (``invalid_grant``, AADSTS70008, ...)."""

    kind = "oauth_invalid"


class ScopeMissing(AuthError):
    kind = "scope_missing"


class WrongTokenKind(AuthError):
    kind = "wrong_token_kind"


class OAuthNotConfigured(AuthError):
    """The OAuth app credentials are not configured. ``fields`` names the settings to fix.

    ``message`` replaces the default "missing …" text when a setting is present but was rejected
    (the operator fixes the same setting, so it is the same error).
    """

    kind = "oauth_not_configured"

    def __init__(self, fields: list[str], message: str | None = None) -> None:
        super().__init__(message or "OAuth not configured: missing " + ", ".join(fields))
        self.fields = fields


class LoginFailed(AuthError):
    """An IMAP server refused the user name or password (LOGIN answered NO).

    Not ``OAuthInvalid``: no grant was involved, and the fix is different (enter the new
    password, not reconnect through a consent screen). XOAUTH2 refusals are ``OAuthInvalid``.
    """

    kind = "login_failed"


class TransientError(ProviderError):
    """Temporary: retry with backoff. Never an auth problem."""

    kind = "transient"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(TransientError):
    kind = "rate_limited"


class ProviderUnavailable(TransientError):
    kind = "unavailable"


class CursorExpired(ProviderError):
    """The provider no longer knows our sync cursor; the scope must be resynced from scratch."""

    kind = "cursor_expired"


class MessageGone(ProviderError):
    kind = "gone"


class ProtocolViolation(ProviderError):
    """The provider's answer is malformed (bad JSON, missing or mistyped fields)."""

    kind = "protocol"


class CapabilityMissing(ProviderError):
    """The server does not offer an extension we need (STARTTLS, AUTH=XOAUTH2, IDLE, CONDSTORE…).

    Retrying will not help until the server's configuration changes. ``capability`` names it.
    """

    kind = "capability_missing"

    def __init__(self, capability: str, message: str | None = None) -> None:
        super().__init__(message or f"the server does not offer {capability}")
        self.capability = capability


class ProviderRejected(ProviderError):
    """A 4xx answer that retrying cannot fix."""

    kind = "rejected"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PushError(MailDeskError):
    kind = "push"


class NotReady(PushError):
    """The readiness guard refused a push registration; ``reason`` is shown to the operator."""

    kind = "not_ready"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WebhookRejected(PushError):
    """A webhook request we refuse. ``status`` is the HTTP answer; ``reason`` is for our logs and
    the timeline only (callers get a generic message)."""

    kind = "webhook_rejected"

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class StoreError(MailDeskError):
    kind = "store"


class LeaseLost(StoreError):
    kind = "lease_lost"
