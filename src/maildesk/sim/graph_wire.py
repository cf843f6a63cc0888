"""Microsoft's wire shapes for the simulator: Graph errors, identity (AADSTS) errors, timestamps.

Graph errors are ``{"error": {"code", "message", "innerError": {"date", "request-id",
"client-request-id"}}}``; identity errors are ``{"error", "error_description": "AADSTSnnnn: …",
"error_codes": [n], "timestamp", "trace_id", "correlation_id", "error_uri"}``
(docs/microsoft-wire.md).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from maildesk.sim.faults import FaultRule
from maildesk.sim.wire import SimResponse

JSON_TYPE = "application/json; odata.metadata=minimal; odata.streaming=true; charset=utf-8"
IDENTITY_JSON = "application/json; charset=utf-8"

# Default Graph error code and message for the statuses the simulator produces.
_GRAPH_DEFAULTS = {
    400: ("BadRequest", "Invalid request."),
    401: ("InvalidAuthenticationToken", "Access token is empty."),
    403: ("ErrorAccessDenied", "Access is denied. Check credentials and try again."),
    404: ("ResourceNotFound", "Resource not found for the segment."),
    405: ("Request_BadRequest", "Method not allowed."),
    409: ("Conflict", "The request conflicts with the current state."),
    410: ("SyncStateNotFound", "The sync state generation is not found."),
    429: ("TooManyRequests", "Application is over its MailboxConcurrency limit."),
    500: ("InternalServerError", "An internal server error occurred."),
    502: ("BadGateway", "Bad gateway."),
    503: ("ServiceUnavailable", "The service is temporarily unavailable. Retry later."),
    504: ("GatewayTimeout", "The gateway did not receive a response in time."),
}

# The identity platform's stock answers: name -> (status, error, AADSTS code, description).
AAD_ERRORS: dict[str, tuple[int, str, int, str]] = {
    "70008": (
        400,
        "invalid_grant",
        70008,
        "The provided authorization code or refresh token has expired due to inactivity. "
        "Send a new interactive authorization request for this user and resource.",
    ),
    "700082": (
        400,
        "invalid_grant",
        700082,
        "The refresh token has expired due to inactivity. The token was issued on "
        "2025-08-01T09:00:00.0000000Z and was inactive for 90.00:00:00.",
    ),
    "50173": (
        400,
        "invalid_grant",
        50173,
        "The provided grant has expired due to it being revoked, a fresh auth token is needed. "
        "The user might have changed or reset their password.",
    ),
    "interaction_required": (
        400,
        "interaction_required",
        50076,
        "Due to a configuration change made by your administrator, or because you moved to a "
        "new location, you must use multi-factor authentication to access "
        "'00000003-0000-0000-c000-000000000000'.",
    ),
    "invalid_client": (
        401,
        "invalid_client",
        7000215,
        "Invalid client secret provided. Ensure the secret being sent in the request is the "
        "client secret value, not the client secret ID, for a secret added to app.",
    ),
    "client_secret_expired": (
        401,
        "invalid_client",
        7000222,
        "The provided client secret keys for app are expired. Visit the Azure portal to create "
        "new keys for your app.",
    ),
    "temporarily_unavailable": (
        503,
        "temporarily_unavailable",
        90033,
        "A transient error has occurred. Please try again.",
    ),
}


def graph_time(when: datetime) -> str:
    """``2026-11-21T10:00:00Z``: how Graph writes message times (UTC, whole seconds)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def subscription_time(when: datetime) -> str:
    """``2026-11-27T10:00:00.0000000Z``: how Graph writes subscription expirations."""
    utc = when.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond:06d}0Z"


def parse_time(text: str) -> datetime:
    """An ISO 8601 timestamp (``Z`` or offset, up to 7 fractional digits) as aware UTC.

    ``ValueError`` if malformed or without a zone.
    """
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    head, dot, rest = value.partition(".")
    if dot:  # Python takes at most 6 fractional digits; Graph writes 7.
        digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
        value = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits) :]}"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("the time needs a zone (Z or an offset)")
    return parsed.astimezone(UTC)


def graph_error(
    status: int,
    message: str | None = None,
    *,
    code: str | None = None,
    now: datetime | None = None,
    headers: Mapping[str, str] | None = None,
) -> SimResponse:
    """A Graph error answer with ``innerError`` (date, request ids)."""
    default_code, default_message = _GRAPH_DEFAULTS.get(status, ("UnknownError", "Error."))
    request_id = str(uuid.UUID(int=random.getrandbits(128), version=4))
    payload = {
        "error": {
            "code": code or default_code,
            "message": message or default_message,
            "innerError": {
                "date": graph_time(now or datetime.now(UTC)),
                "request-id": request_id,
                "client-request-id": request_id,
            },
        }
    }
    all_headers = {"request-id": request_id, **(headers or {})}
    return SimResponse(status, payload=payload, headers=all_headers, media_type=JSON_TYPE)


def graph_fault_shape(status: int, rule: FaultRule) -> SimResponse:
    """The Graph error a ``status`` fault rule answers (``reason`` overrides the code)."""
    return graph_error(status, code=rule.reason)


def aad_error(
    status: int, error: str, code: int, description: str, *, now: datetime | None = None
) -> SimResponse:
    """An identity-platform token error, AADSTS code first in the description as Microsoft
    writes it, followed by the trace and correlation ids and the timestamp."""
    when = (now or datetime.now(UTC)).astimezone(UTC)
    trace_id = str(uuid.UUID(int=random.getrandbits(128), version=4))
    correlation_id = str(uuid.UUID(int=random.getrandbits(128), version=4))
    stamp = when.strftime("%Y-%m-%d %H:%M:%SZ")
    text = (
        f"AADSTS{code}: {description} Trace ID: {trace_id} Correlation ID: {correlation_id} "
        f"Timestamp: {stamp}"
    )
    payload = {
        "error": error,
        "error_description": text,
        "error_codes": [code],
        "timestamp": stamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }
    return SimResponse(status, payload=payload, media_type=IDENTITY_JSON)


def aad_named(name: str, *, now: datetime | None = None) -> SimResponse:
    """One of ``AAD_ERRORS`` by name (``"70008"``, ``"interaction_required"`` …)."""
    status, error, code, description = AAD_ERRORS[name]
    return aad_error(status, error, code, description, now=now)


def aad_fault_shape(status: int, rule: FaultRule) -> SimResponse:
    """The identity error a ``status`` fault rule on the token endpoint answers."""
    if status == 429 or status >= 500:
        return aad_error(
            status, "temporarily_unavailable", 90033, "A transient error has occurred."
        )
    if status == 401:
        return aad_named("invalid_client")
    return aad_error(status, rule.reason or "invalid_request", 90014, "Injected fault.")
