"""HTTP to mail providers: timeouts, retries with backoff, ``Retry-After`` and token refresh.

Every provider client sends through :class:`ProviderHttp`, so the failure rules of invariant 3
live in one place:

* network errors, timeouts, 408 and 5xx are retried with jittered backoff, then raise
  :class:`~maildesk.errors.ProviderUnavailable` (never an auth error);
* 429 and Google's 403 ``rateLimitExceeded``/``userRateLimitExceeded`` are retried honoring
  ``Retry-After``, then raise :class:`~maildesk.errors.RateLimited`;
* a wait longer than ``max_inline_wait`` is not slept through: the transient error is raised at
  once with ``retry_after`` so the scheduler defers the account instead of parking a worker;
* a 401 on an authorized request refreshes the token once; a second 401 is
  :class:`~maildesk.errors.OAuthInvalid`.

Any other answer (2xx, 3xx, the remaining 4xx) is returned for the caller to interpret, because
only the caller knows what a 404 or a 400 means for its endpoint.

Secrets never reach the log: only the method, host and path (no query: the revoke endpoint carries
a token there), the status and the attempt number are logged.
"""

from __future__ import annotations

import email.utils
import json as jsonlib
import logging
import math
import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from maildesk.clock import Clock
from maildesk.domain.backoff import Backoff
from maildesk.errors import (
    AuthError,
    OAuthInvalid,
    ProtocolViolation,
    ProviderUnavailable,
    RateLimited,
    TransientError,
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
"""Applied to every request: connect 5 s; read, write and pool 30 s."""

GOOGLE_RATE_LIMIT_REASONS = frozenset(
    {"rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED"}
)

# A request that may have reached the server must not be repeated unless it is idempotent
# (sending mail twice is worse than failing once); these errors prove it never left us.
_UNSENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class TokenSource(Protocol):
    """Hands out a current access token for one account.

    ``force_refresh=True`` means the last token was rejected: get a new one from the provider.
    Later calls without the flag must return the refreshed token.
    """

    async def __call__(self, *, force_refresh: bool = False) -> str: ...


def default_client(**kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` with our default timeout; the caller owns (and closes) it."""
    kwargs.setdefault("timeout", DEFAULT_TIMEOUT)
    return httpx.AsyncClient(**kwargs)


def describe(url: httpx.URL | str) -> str:
    """``host/path`` of a URL, safe to log: no query string, no userinfo."""
    parsed = httpx.URL(url)
    return f"{parsed.host}{parsed.path}"


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP-date).

    A date in the past means "now" (0). Anything unparseable is ignored (None).
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - now).total_seconds())
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def google_error_reasons(body: bytes) -> frozenset[str]:
    """Every ``reason`` in a Google error body (``errors[]`` and ``details[]``), tolerantly.

    Used to classify a response, so a body that is not Google's error shape yields nothing rather
    than an exception.
    """
    try:
        payload = jsonlib.loads(body)
    except (ValueError, RecursionError):
        return frozenset()
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return frozenset()
    reasons: set[str] = set()
    for key in ("errors", "details"):
        items = error.get(key)
        if isinstance(items, list):
            reasons.update(
                item["reason"]
                for item in items
                if isinstance(item, dict) and isinstance(item.get("reason"), str)
            )
    return frozenset(reasons)


def is_rate_limited(status: int, body: bytes) -> bool:
    """429, or Google's 403 whose reason says "slow down" (not a permission problem)."""
    return status == 429 or (
        status == 403 and bool(google_error_reasons(body) & GOOGLE_RATE_LIMIT_REASONS)
    )


def is_transient(status: int, body: bytes) -> bool:
    """Whether retrying the same request later can succeed: 408, 5xx and rate limits."""
    return status == 408 or status >= 500 or is_rate_limited(status, body)


def json_body(response: httpx.Response) -> dict[str, Any]:
    """The response body as a JSON object, or :class:`ProtocolViolation`."""
    where = _where(response)
    try:
        payload = jsonlib.loads(response.content)
    except (ValueError, RecursionError) as exc:
        raise ProtocolViolation(f"{where}: the answer is not valid JSON") from exc
    if not isinstance(payload, dict):
        raise ProtocolViolation(f"{where}: expected a JSON object, got {type(payload).__name__}")
    return payload


def _where(response: httpx.Response) -> str:
    try:
        request = response.request
    except RuntimeError:  # a Response built by hand has no request
        return "provider"
    return f"{request.method} {describe(request.url)}"


class ProviderHttp:
    """Sends provider requests with the retry, throttling and token-refresh rules above.

    ``client`` is owned by the caller (one per app, closed on shutdown). ``clock`` is used for
    every wait, so tests with a ``ManualClock`` never sleep. ``max_attempts`` counts requests, so
    the default 5 means at most 4 waits.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        clock: Clock,
        rng: random.Random | None = None,
        backoff: Backoff | None = None,
        max_attempts: int = 5,
        max_inline_wait: float = 30.0,
        timeout: httpx.Timeout | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._client = client
        self.clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._backoff = backoff if backoff is not None else Backoff()
        self.max_attempts = max_attempts
        self.max_inline_wait = max_inline_wait
        self._timeout = timeout if timeout is not None else DEFAULT_TIMEOUT

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        auth: TokenSource | None = None,
        idempotent: bool = True,
        retry_if: Callable[[httpx.Response], bool] | None = None,
        auth_failure: Callable[[httpx.Response], AuthError] | None = None,
    ) -> httpx.Response:
        """Send one request, retrying transient failures; return any non-transient answer.

        ``auth`` adds ``Authorization: Bearer …`` and enables the refresh-once-on-401 rule.
        ``idempotent=False`` (e.g. sending mail) retries only failures that prove the request
        was not processed: connection errors, 429 and rate-limit 403s. ``retry_if`` marks more
        answers as transient (e.g. an OAuth ``temporarily_unavailable`` in a 400). ``auth_failure``
        builds the error for a 401 that survived the refresh, for providers whose body tells
        why (e.g. a Microsoft token for the wrong API); the default is OAuthInvalid.

        Raises RateLimited, ProviderUnavailable (both with ``retry_after``), OAuthInvalid, and
        ProtocolViolation for an answer httpx cannot decode.
        """
        where = f"{method} {describe(url)}"
        failures = 0
        sends = 0
        force_refresh = False
        refreshed = False
        while True:
            sends += 1
            send_headers = dict(headers or {})
            if auth is not None:
                token = await auth(force_refresh=force_refresh)
                force_refresh = False
                send_headers["Authorization"] = f"Bearer {token}"
            try:
                response = await self._client.request(
                    method,
                    url,
                    params=params,
                    json=json,
                    data=data,
                    content=content,
                    headers=send_headers,
                    timeout=self._timeout,
                )
            except httpx.TransportError as exc:
                failures += 1
                log.info("%s failed: %s (attempt %d)", where, type(exc).__name__, sends)
                what = f"{where}: {type(exc).__name__}: {exc}"
                if not idempotent and not isinstance(exc, _UNSENT_ERRORS):
                    raise ProviderUnavailable(what + " (not retried: not idempotent)") from exc
                await self.retry_pause(failures, retry_after=None, rate_limited=False,
                                       what=what, cause=exc)
                continue
            except httpx.RequestError as exc:  # DecodingError, TooManyRedirects
                raise ProtocolViolation(f"{where}: {type(exc).__name__}") from exc

            status = response.status_code
            log.debug("%s -> %d (attempt %d)", where, status, sends)
            if status == 401 and auth is not None:
                if refreshed:
                    if auth_failure is not None:
                        raise auth_failure(response)
                    raise OAuthInvalid(f"{where}: the provider rejected a freshly refreshed token")
                refreshed = force_refresh = True
                continue
            if not (
                is_transient(status, response.content)
                or (retry_if is not None and retry_if(response))
            ):
                return response
            rate_limited = is_rate_limited(status, response.content)
            failures += 1
            retry_after = parse_retry_after(response.headers.get("retry-after"), self.clock.now())
            what = f"{where} answered {status}"
            log.info("%s (attempt %d)", what, sends)
            if not idempotent and not rate_limited:
                raise ProviderUnavailable(what + " (not retried: not idempotent)",
                                          retry_after=retry_after)
            await self.retry_pause(failures, retry_after=retry_after,
                                   rate_limited=rate_limited, what=what)

    async def retry_pause(
        self,
        failures: int,
        *,
        retry_after: float | None,
        rate_limited: bool,
        what: str,
        cause: BaseException | None = None,
    ) -> None:
        """Wait before retrying after the ``failures``-th transient failure, or give up.

        Raises RateLimited (``rate_limited``) or ProviderUnavailable, with ``retry_after`` set,
        when ``failures`` reached ``max_attempts`` or the wait would exceed ``max_inline_wait``.
        Public so clients with their own retry loops (batch sub-requests) share the policy.
        """
        delay = self._backoff.delay(failures, self._rng, retry_after)
        error: type[TransientError] = RateLimited if rate_limited else ProviderUnavailable
        if failures >= self.max_attempts:
            raise error(f"{what}; gave up after {failures} attempts", retry_after=delay) from cause
        if delay > self.max_inline_wait:
            raise error(f"{what}; asked to wait {delay:.0f} s", retry_after=delay) from cause
        await self.clock.sleep(delay)
