"""Google OAuth refresh/revoke and the per-account access token cache."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import parse_qs

import httpx
import pytest

from maildesk.clock import ManualClock
from maildesk.errors import (
    AuthError,
    OAuthInvalid,
    OAuthNotConfigured,
    ProtocolViolation,
    ProviderRejected,
    ProviderUnavailable,
)
from maildesk.providers.http import ProviderHttp, TokenSource
from maildesk.providers.oauth import AccessTokenCache, GoogleOAuth, TokenGrant
from tests.support.scripted import Script

TOKEN_URL = "https://oauth2.example/token"
REVOKE_URL = "https://oauth2.example/revoke"
SCOPES = "https://mail.google.com/ openid"
Handler = Callable[[httpx.Request], httpx.Response]

def granted(**extra: object) -> httpx.Response:
    body = {"access_token": "ya29.new", "expires_in": 3599, "token_type": "Bearer", "scope": SCOPES}
    body.update(extra)
    return httpx.Response(200, json=body)


@pytest.fixture
def make_oauth(make_http: Callable[..., ProviderHttp]) -> Callable[..., GoogleOAuth]:
    def make(
        handler: Handler, client_id: str | None = "cid", client_secret: str | None = "csec"
    ) -> GoogleOAuth:
        return GoogleOAuth(make_http(handler), token_url=TOKEN_URL, revoke_url=REVOKE_URL,
                           client_id=client_id, client_secret=client_secret)

    return make


async def test_refresh_posts_form_and_reads_grant(make_oauth: Callable[..., GoogleOAuth]) -> None:
    script = Script(granted())
    grant = await make_oauth(script).refresh("1//refresh")
    request = script.requests[0]
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request.content.decode()) == {
        "client_id": ["cid"],
        "client_secret": ["csec"],
        "refresh_token": ["1//refresh"],
        "grant_type": ["refresh_token"],
    }
    assert grant == TokenGrant("ya29.new", 3599, frozenset(SCOPES.split()), None, "Bearer")
    assert "ya29" not in repr(grant)


async def test_refresh_keeps_new_refresh_token(make_oauth: Callable[..., GoogleOAuth]) -> None:
    grant = await make_oauth(Script(granted(refresh_token="1//rotated"))).refresh("1//old")
    assert grant.refresh_token == "1//rotated"
    assert "1//rotated" not in repr(grant)


async def test_invalid_grant_is_oauth_invalid(make_oauth: Callable[..., GoogleOAuth]) -> None:
    script = Script(httpx.Response(400, json={
        "error": "invalid_grant", "error_description": "Token has been expired or revoked."}))
    with pytest.raises(OAuthInvalid, match="expired or revoked") as caught:
        await make_oauth(script).refresh("1//secret-refresh")
    assert "secret-refresh" not in str(caught.value)
    assert len(script.requests) == 1


async def test_invalid_client_is_auth_error_about_the_app(
    make_oauth: Callable[..., GoogleOAuth],
) -> None:
    script = Script(httpx.Response(401, json={"error": "invalid_client",
                                              "error_description": "Unauthorized"}))
    with pytest.raises(AuthError) as caught:
        await make_oauth(script).refresh("1//r")
    assert not isinstance(caught.value, OAuthInvalid)
    assert "client id/secret" in str(caught.value)
    assert "MAILDESK_GOOGLE_CLIENT_SECRET" in str(caught.value)


@pytest.mark.parametrize(
    "first",
    [
        httpx.Response(400, json={"error": "temporarily_unavailable"}),
        httpx.Response(503, json={"error": "server_error"}),
        httpx.Response(500, text="<html>oops</html>"),
        httpx.Response(408),
        httpx.Response(429, headers={"Retry-After": "3"}),
    ],
)
async def test_transient_refresh_failures_are_retried(
    make_oauth: Callable[..., GoogleOAuth], clock: ManualClock, first: httpx.Response
) -> None:
    script = Script(first, granted())
    grant = await make_oauth(script).refresh("1//r")
    assert grant.access_token == "ya29.new"
    assert len(clock.slept) == 1


async def test_persistent_server_error_is_unavailable(
    make_oauth: Callable[..., GoogleOAuth],
) -> None:
    script = Script(httpx.Response(400, json={"error": "temporarily_unavailable"}))
    with pytest.raises(ProviderUnavailable):
        await make_oauth(script).refresh("1//r")
    assert len(script.requests) == 5


async def test_network_error_is_unavailable_not_auth(
    make_oauth: Callable[..., GoogleOAuth],
) -> None:
    with pytest.raises(ProviderUnavailable) as caught:
        await make_oauth(Script(httpx.ConnectError("no route"))).refresh("1//r")
    assert not isinstance(caught.value, AuthError)


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json={"expires_in": 3599, "token_type": "Bearer"}),
        httpx.Response(200, json={"access_token": "", "expires_in": 3599}),
        httpx.Response(200, json={"access_token": "x", "expires_in": "soon"}),
        httpx.Response(200, json={"access_token": "x", "scope": ["a"]}),
        httpx.Response(200, json={"access_token": "x", "token_type": "MAC"}),
        httpx.Response(200, text="not json"),
        httpx.Response(200, json=["access_token"]),
    ],
)
async def test_unreadable_grant_is_protocol_violation(
    make_oauth: Callable[..., GoogleOAuth], answer: httpx.Response
) -> None:
    with pytest.raises(ProtocolViolation):
        await make_oauth(Script(answer)).refresh("1//r")


async def test_expires_in_as_string_and_missing_scope(
    make_oauth: Callable[..., GoogleOAuth],
) -> None:
    script = Script(httpx.Response(200, json={"access_token": "x", "expires_in": "120"}))
    grant = await make_oauth(script).refresh("1//r")
    assert (grant.expires_in, grant.scopes, grant.token_type) == (120, frozenset(), "Bearer")


async def test_other_refusal_is_rejected(make_oauth: Callable[..., GoogleOAuth]) -> None:
    script = Script(httpx.Response(400, json={"error": "invalid_request"}))
    with pytest.raises(ProviderRejected) as caught:
        await make_oauth(script).refresh("1//r")
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("client_id", "client_secret", "missing"),
    [
        ("", "csec", ["MAILDESK_GOOGLE_CLIENT_ID"]),
        ("cid", None, ["MAILDESK_GOOGLE_CLIENT_SECRET"]),
        (None, " ", ["MAILDESK_GOOGLE_CLIENT_ID", "MAILDESK_GOOGLE_CLIENT_SECRET"]),
    ],
)
async def test_missing_client_settings(
    make_oauth: Callable[..., GoogleOAuth],
    client_id: str | None,
    client_secret: str | None,
    missing: list[str],
) -> None:
    script = Script(granted())
    with pytest.raises(OAuthNotConfigured) as caught:
        await make_oauth(script, client_id, client_secret).refresh("1//r")
    assert caught.value.fields == missing
    assert script.requests == []


async def test_revoke(make_oauth: Callable[..., GoogleOAuth]) -> None:
    script = Script(httpx.Response(200))
    assert await make_oauth(script).revoke("1//r") is True
    assert script.requests[0].method == "POST"
    assert script.requests[0].url.params["token"] == "1//r"


async def test_revoke_of_dead_token_is_not_an_error(make_oauth: Callable[..., GoogleOAuth]) -> None:
    script = Script(httpx.Response(400, json={"error": "invalid_token"}))
    assert await make_oauth(script).revoke("1//r") is False
    with pytest.raises(ProviderRejected):
        await make_oauth(Script(httpx.Response(403, json={"error": "nope"}))).revoke("1//r")


# --- AccessTokenCache ---------------------------------------------------------------------------

class FakeRefresher:
    """Counts refreshes; yields to the loop so concurrent callers really overlap."""

    def __init__(self, *, expires_in: int = 3600, rotate: bool = False) -> None:
        self.calls: list[str] = []
        self.expires_in = expires_in
        self.rotate = rotate
        self.fail: Exception | None = None

    async def refresh(self, refresh_token: str) -> TokenGrant:
        self.calls.append(refresh_token)
        for _ in range(5):
            await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        n = len(self.calls)
        return TokenGrant(f"access-{n}", self.expires_in, frozenset({"s"}),
                          f"refresh-{n}" if self.rotate else None, "Bearer")


class Store:
    def __init__(self) -> None:
        self.refresh_token = "refresh-0"
        self.saved: list[str] = []

    async def load(self) -> str:
        return self.refresh_token

    async def save(self, token: str) -> None:
        self.saved.append(token)
        self.refresh_token = token


def source_for(cache: AccessTokenCache, store: Store) -> TokenSource:
    return cache.token_source("acct", load_refresh_token=store.load, save_refresh_token=store.save)


async def test_cache_reuses_token_until_a_minute_before_expiry(clock: ManualClock) -> None:
    refresher, store = FakeRefresher(), Store()
    cache = AccessTokenCache(refresher, clock)
    source = source_for(cache, store)
    assert await source() == "access-1"
    clock.advance(3600 - 61)
    assert await source() == "access-1"
    clock.advance(2)
    assert await source() == "access-2"
    assert refresher.calls == ["refresh-0", "refresh-0"]
    assert store.saved == []
    assert cache.scopes("acct") == frozenset({"s"})


async def test_concurrent_callers_share_one_refresh(clock: ManualClock) -> None:
    refresher, store = FakeRefresher(), Store()
    cache = AccessTokenCache(refresher, clock)
    source = source_for(cache, store)
    tokens = await asyncio.gather(*(source() for _ in range(10)))
    assert set(tokens) == {"access-1"}
    assert len(refresher.calls) == 1


async def test_concurrent_forced_refreshes_share_one_refresh(clock: ManualClock) -> None:
    refresher, store = FakeRefresher(), Store()
    cache = AccessTokenCache(refresher, clock)
    source = source_for(cache, store)
    await source()
    # Five requests all got a 401 with access-1 and ask for a new token at once.
    tokens = await asyncio.gather(*(source(force_refresh=True) for _ in range(5)))
    assert set(tokens) == {"access-2"}
    assert len(refresher.calls) == 2


async def test_accounts_do_not_share_tokens(clock: ManualClock) -> None:
    refresher, store = FakeRefresher(), Store()
    cache = AccessTokenCache(refresher, clock)
    a = cache.token_source("a", load_refresh_token=store.load, save_refresh_token=store.save)
    b = cache.token_source("b", load_refresh_token=store.load, save_refresh_token=store.save)
    assert {await a(), await b()} == {"access-1", "access-2"}


async def test_rotated_refresh_token_is_persisted(clock: ManualClock) -> None:
    refresher, store = FakeRefresher(rotate=True), Store()
    cache = AccessTokenCache(refresher, clock)
    source = source_for(cache, store)
    await source()
    await source(force_refresh=True)
    assert store.saved == ["refresh-1", "refresh-2"]
    assert refresher.calls == ["refresh-0", "refresh-1"]


async def test_invalidate_forces_a_new_refresh(clock: ManualClock) -> None:
    refresher, store = FakeRefresher(), Store()
    cache = AccessTokenCache(refresher, clock)
    source = source_for(cache, store)
    await source()
    cache.invalidate("acct")
    assert await source() == "access-2"


async def test_invalid_grant_drops_the_cached_token(clock: ManualClock) -> None:
    refresher, store = FakeRefresher(), Store()
    cache = AccessTokenCache(refresher, clock)
    source = source_for(cache, store)
    await source()
    refresher.fail = OAuthInvalid("revoked")
    with pytest.raises(OAuthInvalid):
        await source(force_refresh=True)
    assert cache.scopes("acct") is None


async def test_transient_failure_near_expiry_keeps_the_old_token(clock: ManualClock) -> None:
    refresher, store = FakeRefresher(), Store()
    cache = AccessTokenCache(refresher, clock)
    source = source_for(cache, store)
    await source()
    clock.advance(3600 - 30)  # inside the refresh margin, but not expired
    refresher.fail = ProviderUnavailable("down")
    assert await source() == "access-1"
    with pytest.raises(ProviderUnavailable):  # a rejected token must not be handed out again
        await source(force_refresh=True)
    clock.advance(31)  # now really expired
    with pytest.raises(ProviderUnavailable):
        await source()


async def test_cache_with_google_oauth_end_to_end(
    make_oauth: Callable[..., GoogleOAuth], clock: ManualClock
) -> None:
    script = Script(granted(refresh_token="1//rotated"))
    store = Store()
    cache = AccessTokenCache(make_oauth(script), clock)
    source = source_for(cache, store)
    assert await source() == "ya29.new"
    assert await source() == "ya29.new"
    assert len(script.requests) == 1
    assert store.saved == ["1//rotated"]
