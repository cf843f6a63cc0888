"""ProviderHttp: retries, Retry-After, inline-wait limit, token refresh, error translation."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from email.utils import format_datetime

import httpx
import pytest

from maildesk.clock import ManualClock
from maildesk.errors import (
    AuthError,
    OAuthInvalid,
    ProtocolViolation,
    ProviderUnavailable,
    RateLimited,
)
from maildesk.providers.http import ProviderHttp, json_body, parse_retry_after
from tests.support.scripted import Script, Tokens

URL = "https://gmail.example/gmail/v1/users/me/profile"

def google_error(code: int, reason: str, status: str = "") -> dict[str, object]:
    return {
        "error": {
            "code": code,
            "message": "boom",
            "status": status,
            "errors": [{"domain": "usageLimits", "reason": reason, "message": "boom"}],
        }
    }


async def test_success_is_returned_with_default_timeouts(
    make_http: Callable[..., ProviderHttp],
) -> None:
    script = Script(httpx.Response(200, json={"ok": True}))
    response = await make_http(script).request("GET", URL)
    assert json_body(response) == {"ok": True}
    timeout = script.requests[0].extensions["timeout"]
    assert timeout["connect"] == 5.0
    assert timeout["read"] == 30.0


async def test_429_honors_retry_after_seconds(
    make_http: Callable[..., ProviderHttp], clock: ManualClock
) -> None:
    script = Script(
        httpx.Response(
            429, headers={"Retry-After": "7"}, json=google_error(429, "rateLimitExceeded")
        ),
        httpx.Response(200, json={}),
    )
    response = await make_http(script).request("GET", URL)
    assert response.status_code == 200
    assert clock.slept == [7.0]
    assert len(script.requests) == 2


async def test_retry_after_http_date(
    make_http: Callable[..., ProviderHttp], clock: ManualClock
) -> None:
    when = format_datetime(clock.now() + timedelta(seconds=20), usegmt=True)
    script = Script(httpx.Response(503, headers={"Retry-After": when}), httpx.Response(200))
    await make_http(script).request("GET", URL)
    assert clock.slept == [20.0]


async def test_long_retry_after_raises_at_once(
    make_http: Callable[..., ProviderHttp], clock: ManualClock
) -> None:
    script = Script(httpx.Response(429, headers={"Retry-After": "3600"}), httpx.Response(200))
    with pytest.raises(RateLimited) as caught:
        await make_http(script).request("GET", URL)
    assert caught.value.retry_after == 3600
    assert clock.slept == []
    assert len(script.requests) == 1


async def test_google_403_rate_limit_is_retried(
    make_http: Callable[..., ProviderHttp], clock: ManualClock
) -> None:
    script = Script(
        httpx.Response(403, json=google_error(403, "userRateLimitExceeded")),
        httpx.Response(200),
    )
    assert (await make_http(script).request("GET", URL)).status_code == 200
    assert len(clock.slept) == 1


async def test_other_403_is_returned_not_retried(make_http: Callable[..., ProviderHttp]) -> None:
    script = Script(httpx.Response(403, json=google_error(403, "insufficientPermissions")))
    response = await make_http(script).request("GET", URL)
    assert response.status_code == 403
    assert len(script.requests) == 1


async def test_persistent_503_becomes_provider_unavailable(
    make_http: Callable[..., ProviderHttp], clock: ManualClock
) -> None:
    script = Script(httpx.Response(503))
    with pytest.raises(ProviderUnavailable) as caught:
        await make_http(script).request("GET", URL)
    assert len(script.requests) == 5
    assert len(clock.slept) == 4
    # Full jitter over 1, 2, 4, 8 s: each wait lies in the upper half of its ceiling.
    for wait, ceiling in zip(clock.slept, [1, 2, 4, 8], strict=True):
        assert ceiling / 2 <= wait <= ceiling
    assert caught.value.retry_after is not None


async def test_persistent_429_becomes_rate_limited(make_http: Callable[..., ProviderHttp]) -> None:
    script = Script(httpx.Response(429, headers={"Retry-After": "2"}))
    with pytest.raises(RateLimited) as caught:
        await make_http(script, max_attempts=3).request("GET", URL)
    assert len(script.requests) == 3
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 2


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("peer closed connection"),
    ],
)
async def test_network_errors_are_unavailable_never_auth(
    make_http: Callable[..., ProviderHttp], error: Exception
) -> None:
    script = Script(error)
    tokens = Tokens()
    with pytest.raises(ProviderUnavailable) as caught:
        await make_http(script).request("GET", URL, auth=tokens)
    assert not isinstance(caught.value, AuthError)
    assert caught.value.__cause__ is error
    assert tokens.calls == [False] * 5  # never a forced refresh


async def test_network_error_then_success(
    make_http: Callable[..., ProviderHttp], clock: ManualClock
) -> None:
    script = Script(httpx.ConnectError("down"), httpx.Response(200))
    assert (await make_http(script).request("GET", URL)).status_code == 200
    assert len(clock.slept) == 1


async def test_401_refreshes_once_and_retries(make_http: Callable[..., ProviderHttp]) -> None:
    script = Script(httpx.Response(401, json=google_error(401, "authError")), httpx.Response(200))
    tokens = Tokens()
    response = await make_http(script).request("GET", URL, auth=tokens)
    assert response.status_code == 200
    assert tokens.calls == [False, True]
    assert [r.headers["Authorization"] for r in script.requests] == ["Bearer tok-1", "Bearer tok-2"]


async def test_second_401_is_oauth_invalid(make_http: Callable[..., ProviderHttp]) -> None:
    script = Script(httpx.Response(401, json=google_error(401, "authError")))
    tokens = Tokens()
    with pytest.raises(OAuthInvalid):
        await make_http(script).request("GET", URL, auth=tokens)
    assert tokens.calls == [False, True]
    assert len(script.requests) == 2


async def test_401_without_auth_is_returned(make_http: Callable[..., ProviderHttp]) -> None:
    script = Script(httpx.Response(401, json={"error": "invalid_client"}))
    assert (await make_http(script).request("POST", URL)).status_code == 401


async def test_not_idempotent_request_is_not_retried_after_503(
    make_http: Callable[..., ProviderHttp],
) -> None:
    script = Script(httpx.Response(503), httpx.Response(200))
    with pytest.raises(ProviderUnavailable):
        await make_http(script).request("POST", URL, idempotent=False)
    assert len(script.requests) == 1


async def test_not_idempotent_request_is_retried_when_surely_unsent(
    make_http: Callable[..., ProviderHttp],
) -> None:
    script = Script(httpx.ConnectError("refused"), httpx.Response(429), httpx.Response(200))
    response = await make_http(script).request("POST", URL, idempotent=False)
    assert response.status_code == 200
    assert len(script.requests) == 3


async def test_read_timeout_on_not_idempotent_request_is_not_retried(
    make_http: Callable[..., ProviderHttp],
) -> None:
    script = Script(httpx.ReadTimeout("slow"), httpx.Response(200))
    with pytest.raises(ProviderUnavailable):
        await make_http(script).request("POST", URL, idempotent=False)
    assert len(script.requests) == 1


async def test_retry_if_marks_more_answers_transient(
    make_http: Callable[..., ProviderHttp],
) -> None:
    script = Script(
        httpx.Response(400, json={"error": "temporarily_unavailable"}), httpx.Response(200)
    )
    response = await make_http(script).request(
        "POST", URL, retry_if=lambda r: r.status_code == 400
    )
    assert response.status_code == 200


async def test_logs_carry_no_token_query_or_body(
    make_http: Callable[..., ProviderHttp], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="maildesk.providers.http")
    script = Script(
        httpx.Response(503, text="secret-body"), httpx.Response(200, text="secret-body")
    )
    tokens = Tokens()
    await make_http(script).request(
        "POST", URL, params={"token": "secret-q"}, content=b"secret-content", auth=tokens
    )
    assert "gmail.example/gmail/v1/users/me/profile" in caplog.text
    assert "503" in caplog.text
    for secret in ("secret", "tok-1"):
        assert secret not in caplog.text


def test_json_body_accepts_objects_only() -> None:
    request = httpx.Request("GET", URL)
    assert json_body(httpx.Response(200, json={"a": 1}, request=request)) == {"a": 1}
    with pytest.raises(ProtocolViolation, match="not valid JSON"):
        json_body(httpx.Response(200, text="<html>", request=request))
    with pytest.raises(ProtocolViolation, match="JSON object"):
        json_body(httpx.Response(200, json=[1, 2], request=request))
    with pytest.raises(ProtocolViolation):
        json_body(httpx.Response(200, content=b"\xff\xfe{"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [("7", 7.0), (" 12 ", 12.0), ("0", 0.0), ("-5", None), ("soon", None), (None, None),
     ("nan", None), ("Mon, 05 Jan 2026 08:00:00 GMT", 0.0),
     ("Mon, 05 Jan 2026 09:01:00 GMT", 60.0)],
)
def test_parse_retry_after(value: str | None, expected: float | None, clock: ManualClock) -> None:
    assert parse_retry_after(value, clock.now()) == expected


async def test_max_attempts_must_be_positive(clock: ManualClock) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(Script(httpx.Response(200)))) as c:
        with pytest.raises(ValueError, match="max_attempts"):
            ProviderHttp(c, clock=clock, max_attempts=0)
