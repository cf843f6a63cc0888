"""Request/response values shared by the simulator's HTTP surfaces, and Google's error shapes.

The Gmail handlers work on these plain values instead of Starlette objects so the same handler
serves a direct HTTP request and a sub-request unpacked from a batch body, and so fault injection
can rewrite an answer (drop fields, replace the body) before it is serialized.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

JSON_TYPE = "application/json; charset=UTF-8"

# Google's canonical status names for the HTTP codes the simulator produces.
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

_DEFAULT_REASONS = {
    400: ("global", "invalidArgument", "Invalid argument."),
    401: ("global", "authError", "Invalid Credentials"),
    403: ("global", "forbidden", "Forbidden"),
    404: ("global", "notFound", "Requested entity was not found."),
    405: ("global", "httpMethodNotAllowed", "Method not allowed."),
    429: ("usageLimits", "rateLimitExceeded", "Resource has been exhausted (e.g. check quota)."),
    500: ("global", "backendError", "Backend Error"),
    502: ("global", "backendError", "Bad Gateway"),
    503: ("global", "backendError", "The service is currently unavailable."),
    504: ("global", "backendError", "Deadline exceeded."),
}

# Reasons Google files under the ``usageLimits`` domain (403 or 429 quota answers).
_USAGE_LIMITS = {
    "rateLimitExceeded": "Rate Limit Exceeded",
    "userRateLimitExceeded": "User Rate Limit Exceeded",
    "dailyLimitExceeded": "Daily Limit Exceeded",
    "quotaExceeded": "Quota Exceeded",
}


@dataclass(slots=True)
class SimRequest:
    """One HTTP request as the handlers see it. Header names are lower-case."""

    method: str
    path: str
    query: Sequence[tuple[str, str]] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    # ``scheme://host[:port]`` the request was addressed to (absolute links are built from it);
    # empty when unknown (batch sub-requests).
    base_url: str = ""

    def json(self) -> Any:
        """The body parsed as JSON; an empty body is ``{}``. Raises ``ValueError`` if malformed."""
        if not self.body.strip():
            return {}
        return json.loads(self.body)


@dataclass(slots=True)
class SimResponse:
    """An answer before serialization: ``payload`` is JSON data, ``content`` raw bytes."""

    status: int = 200
    payload: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = JSON_TYPE

    def body(self) -> bytes:
        """The serialized body."""
        if self.content is not None:
            return self.content
        if self.payload is None:
            return b""
        return json.dumps(self.payload, separators=(",", ":")).encode()


def google_error(
    status: int,
    message: str | None = None,
    *,
    reason: str | None = None,
    domain: str | None = None,
    extra: Mapping[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> SimResponse:
    """A Google API error: ``{"error": {code, message, status, errors: [{domain, reason, ...}]}}``.

    ``extra`` adds fields to the ``errors[0]`` item (Google adds ``location`` for auth errors).
    """
    default_domain, default_reason, default_message = _DEFAULT_REASONS.get(
        status, ("global", "backendError", "Error")
    )
    if reason in _USAGE_LIMITS:
        default_domain, default_message = "usageLimits", _USAGE_LIMITS[reason]
    text = message or default_message
    item: dict[str, str] = {
        "domain": domain or default_domain,
        "reason": reason or default_reason,
        "message": text,
    }
    item.update(extra or {})
    payload = {
        "error": {
            "code": status,
            "message": text,
            "status": _STATUS_NAMES.get(status, "UNKNOWN"),
            "errors": [item],
        }
    }
    return SimResponse(status=status, payload=payload, headers=dict(headers or {}))


def oauth_error(status: int, error: str, description: str) -> SimResponse:
    """An OAuth 2.0 endpoint error (RFC 6749 §5.2 shape, as Google's token endpoint sends it)."""
    return SimResponse(status=status, payload={"error": error, "error_description": description})


def unauthenticated() -> SimResponse:
    """The 401 Gmail answers for a missing, unknown, expired or revoked access token."""
    return google_error(
        401,
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
        "cookie or other valid authentication credential. See "
        "https://developers.google.com/identity/sign-in/web/devconsole-project.",
        reason="authError",
        extra={
            "message": "Invalid Credentials",
            "location": "Authorization",
            "locationType": "header",
        },
        headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
    )
