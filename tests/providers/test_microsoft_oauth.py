"""Microsoft identity platform: refresh with rotation, AADSTS error mapping, token kinds, PKCE."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from maildesk.clock import ManualClock
from maildesk.domain.accounts import TokenKind
from maildesk.errors import (
    AuthError,
    OAuthInvalid,
    OAuthNotConfigured,
    ProtocolViolation,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    ScopeMissing,
)
from maildesk.providers.http import ProviderHttp
from maildesk.providers.microsoft_oauth import (
    GRAPH_REQUEST_SCOPES,
    IMAP_REQUEST_SCOPES,
    MicrosoftOAuth,
    jwt_claims,
    new_pkce_verifier,
    normalise_scopes,
    parse_oauth_error,
    pkce_challenge,
    scopes_for,
    token_kind,
)
from maildesk.providers.oauth import AccessTokenCache, TokenGrant, TokenRefresher
from tests.support.scripted import Script

AUTHORITY = "https://login.example"
TOKEN_PATH = "/contoso.example/oauth2/v2.0/token"
GRAPH_SCOPE_TEXT = "https://graph.microsoft.com/Mail.ReadWrite https://graph.microsoft.com/Mail.Send"
Handler = Callable[[httpx.Request], httpx.Response]


def jwt(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        raw = json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def granted(refresh_token: str = "rt-new", **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {
        "token_type": "Bearer", "scope": GRAPH_SCOPE_TEXT + " offline_access",
        "expires_in": 3599, "ext_expires_in": 3599,
        "access_token": jwt({"aud": "https://graph.microsoft.com", "scp": "Mail.ReadWrite"}),
        "refresh_token": refresh_token,
    }
    body.update(extra)
    return httpx.Response(200, json=body)


def refused(status: int, error: str, *codes: int, description: str | None = None
            ) -> httpx.Response:
    prefix = f"AADSTS{codes[0]}: " if codes else ""
    return httpx.Response(status, json={
        "error": error,
        "error_description": description or f"{prefix}something happened.\r\nTrace ID: x",
        "error_codes": list(codes), "timestamp": "2026-11-21 10:00:00Z",
        "trace_id": "0000", "correlation_id": "1111",
    })


def form(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(request.content.decode())


@pytest.fixture
def make_oauth(make_http: Callable[..., ProviderHttp]) -> Callable[..., MicrosoftOAuth]:
    def make(handler: Handler, client_id: str | None = "app-id",
             client_secret: str | None = "app-secret", **kwargs: Any) -> MicrosoftOAuth:
        return MicrosoftOAuth(make_http(handler), authority_url=AUTHORITY + "/",
                              tenant="contoso.example", client_id=client_id,
                              client_secret=client_secret, **kwargs)

    return make


# --- refresh -------------------------------------------------------------------------------------

async def test_refresh_posts_the_form_to_the_tenant_endpoint(
    make_oauth: Callable[..., MicrosoftOAuth],
) -> None:
    script = Script(granted())
    oauth = make_oauth(script)
    refresher: TokenRefresher = oauth
    grant = await refresher.refresh("rt-old")
    request = script.requests[0]
    assert (request.method, str(request.url)) == ("POST", AUTHORITY + TOKEN_PATH)
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert form(request) == {
        "client_id": ["app-id"], "client_secret": ["app-secret"],
        "grant_type": ["refresh_token"], "refresh_token": ["rt-old"],
        "scope": [" ".join(GRAPH_REQUEST_SCOPES)],
    }
    assert grant.refresh_token == "rt-new"
    assert grant.expires_in == 3599
    assert grant.scopes == frozenset(GRAPH_SCOPE_TEXT.split()) | {"offline_access"}
    assert "rt-new" not in repr(grant)
    assert grant.access_token not in repr(grant)


async def test_bare_scopes_in_the_answer_are_normalised(
    make_oauth: Callable[..., MicrosoftOAuth],
) -> None:
    script = Script(granted(scope="Mail.ReadWrite Mail.Send openid profile offline_access"))
    grant = await make_oauth(script).refresh("rt")
    assert grant.scopes == {
        "https://graph.microsoft.com/Mail.ReadWrite", "https://graph.microsoft.com/Mail.Send",
        "openid", "profile", "offline_access",
    }


async def test_imap_connection_asks_for_imap_scopes(
    make_oauth: Callable[..., MicrosoftOAuth],
) -> None:
    script = Script(granted())
    await make_oauth(script, scopes=scopes_for(TokenKind.IMAP)).refresh("rt")
    assert form(script.requests[0])["scope"] == [" ".join(IMAP_REQUEST_SCOPES)]
    assert scopes_for(TokenKind.GRAPH) == GRAPH_REQUEST_SCOPES


async def test_rotated_refresh_token_is_persisted_and_used_next_time(
    make_oauth: Callable[..., MicrosoftOAuth], clock: ManualClock
) -> None:
    script = Script(granted("rt-1", access_token="at-1"), granted("rt-2", access_token="at-2"))
    stored = {"refresh": "rt-0"}
    saved: list[str] = []

    async def load() -> str:
        return stored["refresh"]

    async def save(token: str) -> None:
        saved.append(token)
        stored["refresh"] = token

    cache = AccessTokenCache(make_oauth(script), clock)
    source = cache.token_source("outlook-1", load_refresh_token=load, save_refresh_token=save)
    assert await source() == "at-1"
    assert await source() == "at-1"  # cached: no second request
    clock.advance(3600)
    assert await source() == "at-2"
    assert [form(r)["refresh_token"] for r in script.requests] == [["rt-0"], ["rt-1"]]
    assert saved == ["rt-1", "rt-2"]


# --- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        (refused(400, "invalid_grant", 70008), "AADSTS70008"),
        (refused(400, "invalid_grant", 700082), "90 days"),
        (refused(400, "invalid_grant", 50173), "revoked"),
        (refused(400, "invalid_grant", 9002313), "no longer valid"),
        (refused(400, "invalid_grant"), "no AADSTS code"),
    ],
)
async def test_dead_grants_are_oauth_invalid(
    make_oauth: Callable[..., MicrosoftOAuth], answer: httpx.Response, fragment: str
) -> None:
    script = Script(answer)
    with pytest.raises(OAuthInvalid, match=fragment) as caught:
        await make_oauth(script).refresh("rt-secret-value")
    assert "reconnected" in str(caught.value)
    assert "rt-secret-value" not in str(caught.value)
    assert len(script.requests) == 1  # never retried


@pytest.mark.parametrize(
    "answer",
    [
        refused(400, "interaction_required", 50076),
        refused(400, "interaction_required", 50079),
        refused(400, "invalid_grant", 50076),
        refused(400, "consent_required", 65001),
    ],
)
async def test_interactive_sign_in_is_oauth_invalid_saying_so(
    make_oauth: Callable[..., MicrosoftOAuth], answer: httpx.Response
) -> None:
    with pytest.raises(OAuthInvalid) as caught:
        await make_oauth(Script(answer)).refresh("rt")
    assert str(caught.value).startswith("reconnect: Microsoft requires interactive sign-in")


@pytest.mark.parametrize("code", [7000215, 7000222])
async def test_rejected_secret_is_a_config_error_naming_the_setting(
    make_oauth: Callable[..., MicrosoftOAuth], code: int
) -> None:
    script = Script(refused(401, "invalid_client", code))
    with pytest.raises(OAuthNotConfigured) as caught:
        await make_oauth(script).refresh("rt")
    assert not isinstance(caught.value, OAuthInvalid)
    assert caught.value.fields == ["MAILDESK_MICROSOFT_CLIENT_SECRET"]
    assert "MAILDESK_MICROSOFT_CLIENT_SECRET" in str(caught.value)
    assert f"AADSTS{code}" in str(caught.value)
    assert "app-secret" not in str(caught.value)
    assert caught.value.args == (str(caught.value),)
    assert len(script.requests) == 1


async def test_unknown_app_names_the_client_id(make_oauth: Callable[..., MicrosoftOAuth]) -> None:
    with pytest.raises(OAuthNotConfigured) as caught:
        await make_oauth(Script(refused(400, "unauthorized_client", 700016))).refresh("rt")
    assert caught.value.fields == ["MAILDESK_MICROSOFT_CLIENT_ID"]


async def test_other_refusal_is_rejected_with_status(
    make_oauth: Callable[..., MicrosoftOAuth],
) -> None:
    with pytest.raises(ProviderRejected) as caught:
        await make_oauth(Script(refused(400, "invalid_scope", 70011))).refresh("rt")
    assert caught.value.status == 400
    assert "AADSTS70011" in str(caught.value)


@pytest.mark.parametrize(
    "first",
    [
        refused(400, "temporarily_unavailable", 50196),
        refused(503, "server_error"),
        httpx.Response(500, text="<html>oops</html>"),
        httpx.Response(502),
        httpx.Response(429, headers={"Retry-After": "4"}),
        httpx.ConnectError("no route"),
        httpx.ReadTimeout("slow"),
    ],
)
async def test_transient_failures_are_retried(
    make_oauth: Callable[..., MicrosoftOAuth], clock: ManualClock,
    first: httpx.Response | Exception,
) -> None:
    script = Script(first, granted())
    grant = await make_oauth(script).refresh("rt")
    assert grant.refresh_token == "rt-new"
    assert len(script.requests) == 2
    assert len(clock.slept) == 1


async def test_retry_after_is_honoured(
    make_oauth: Callable[..., MicrosoftOAuth], clock: ManualClock
) -> None:
    await make_oauth(Script(httpx.Response(429, headers={"Retry-After": "7"}), granted())
                     ).refresh("rt")
    assert clock.slept[0] >= 7


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (refused(400, "temporarily_unavailable"), ProviderUnavailable),
        (httpx.Response(503), ProviderUnavailable),
        (httpx.ConnectError("no route"), ProviderUnavailable),
        (httpx.Response(429, headers={"Retry-After": "1"}), RateLimited),
    ],
)
async def test_persistent_transient_failures_are_never_auth_errors(
    make_oauth: Callable[..., MicrosoftOAuth],
    answer: httpx.Response | Exception,
    expected: type[Exception],
) -> None:
    script = Script(answer)
    with pytest.raises(expected) as caught:
        await make_oauth(script).refresh("rt")
    assert not isinstance(caught.value, AuthError)
    assert len(script.requests) == 5


async def test_long_retry_after_defers_instead_of_waiting(
    make_oauth: Callable[..., MicrosoftOAuth], clock: ManualClock
) -> None:
    with pytest.raises(RateLimited) as caught:
        await make_oauth(Script(httpx.Response(429, headers={"Retry-After": "120"}))
                         ).refresh("rt")
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 120
    assert clock.slept == []


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json={"token_type": "Bearer", "expires_in": 3599}),
        httpx.Response(200, json={"access_token": "x", "refresh_token": 5}),
        httpx.Response(200, text="<html>login</html>"),
    ],
)
async def test_unreadable_grant_is_a_protocol_violation_naming_microsoft(
    make_oauth: Callable[..., MicrosoftOAuth], answer: httpx.Response
) -> None:
    with pytest.raises(ProtocolViolation) as caught:
        await make_oauth(Script(answer)).refresh("rt")
    assert "Google" not in str(caught.value)


@pytest.mark.parametrize(
    ("client_id", "client_secret", "missing"),
    [
        ("", "s", ["MAILDESK_MICROSOFT_CLIENT_ID"]),
        ("c", None, ["MAILDESK_MICROSOFT_CLIENT_SECRET"]),
        (None, "  ", ["MAILDESK_MICROSOFT_CLIENT_ID", "MAILDESK_MICROSOFT_CLIENT_SECRET"]),
    ],
)
async def test_missing_settings_are_named_before_any_request(
    make_oauth: Callable[..., MicrosoftOAuth],
    client_id: str | None, client_secret: str | None, missing: list[str],
) -> None:
    script = Script(granted())
    oauth = make_oauth(script, client_id, client_secret)
    with pytest.raises(OAuthNotConfigured) as caught:
        await oauth.refresh("rt")
    assert caught.value.fields == missing
    with pytest.raises(OAuthNotConfigured):
        await oauth.exchange_code("code", "https://app.example/cb", "verifier")
    assert script.requests == []


async def test_tokens_never_reach_the_log(
    make_oauth: Callable[..., MicrosoftOAuth], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    script = Script(httpx.Response(503), granted("rt-rotated-secret", access_token="at-secret"))
    await make_oauth(script).refresh("rt-stored-secret")
    assert caplog.records  # the retry was logged ...
    for secret in ("rt-stored-secret", "rt-rotated-secret", "at-secret", "app-secret"):
        assert secret not in caplog.text  # ... without any secret


def test_parse_oauth_error_reads_codes_from_either_place() -> None:
    assert parse_oauth_error(refused(400, "invalid_grant", 70008, 9).content) == (
        "invalid_grant", (70008, 9))
    body = json.dumps({"error": "invalid_grant",
                       "error_description": "AADSTS700082: The refresh token has expired"})
    assert parse_oauth_error(body.encode()) == ("invalid_grant", (700082,))
    assert parse_oauth_error(b"<html/>") == ("", ())
    assert parse_oauth_error(b"[1]") == ("", ())


# --- authorization code flow ---------------------------------------------------------------------

def test_pkce_challenge_matches_rfc_7636_appendix_b() -> None:
    assert pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == (
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
    verifier = new_pkce_verifier()
    assert 43 <= len(verifier) <= 128
    assert verifier != new_pkce_verifier()


def test_authorize_url(make_oauth: Callable[..., MicrosoftOAuth]) -> None:
    oauth = make_oauth(Script(granted()))
    url = urlsplit(oauth.authorize_url("st-1", "chal", "https://app.example/cb?x=1",
                                       login_hint="ada@contoso.example"))
    assert f"{url.scheme}://{url.netloc}{url.path}" == (
        AUTHORITY + "/contoso.example/oauth2/v2.0/authorize")
    assert parse_qs(url.query) == {
        "client_id": ["app-id"], "response_type": ["code"],
        "redirect_uri": ["https://app.example/cb?x=1"], "response_mode": ["query"],
        "scope": [" ".join(GRAPH_REQUEST_SCOPES)], "state": ["st-1"],
        "code_challenge": ["chal"], "code_challenge_method": ["S256"],
        "login_hint": ["ada@contoso.example"],
    }
    assert "login_hint" not in oauth.authorize_url("s", "c", "https://app.example/cb")
    assert "app-secret" not in url.query
    with pytest.raises(OAuthNotConfigured):
        make_oauth(Script(granted()), client_id=None).authorize_url("s", "c", "https://x/cb")


async def test_exchange_code_posts_the_verifier(
    make_oauth: Callable[..., MicrosoftOAuth],
) -> None:
    script = Script(granted("rt-first"))
    grant = await make_oauth(script).exchange_code("code-1", "https://app.example/cb", "ver-1")
    assert grant.refresh_token == "rt-first"
    assert form(script.requests[0]) == {
        "client_id": ["app-id"], "client_secret": ["app-secret"],
        "grant_type": ["authorization_code"], "code": ["code-1"],
        "redirect_uri": ["https://app.example/cb"], "code_verifier": ["ver-1"],
        "scope": [" ".join(GRAPH_REQUEST_SCOPES)],
    }


async def test_exchange_code_is_not_repeated_after_an_unclear_failure(
    make_oauth: Callable[..., MicrosoftOAuth],
) -> None:
    script = Script(httpx.Response(503), granted())
    with pytest.raises(ProviderUnavailable):
        await make_oauth(script).exchange_code("code-1", "https://app.example/cb", "v")
    assert len(script.requests) == 1
    with pytest.raises(OAuthInvalid, match="code exchange"):
        await make_oauth(Script(refused(400, "invalid_grant", 54005))).exchange_code(
            "code-1", "https://app.example/cb", "v")


# --- scopes and token kinds ----------------------------------------------------------------------

def test_normalise_scopes() -> None:
    assert normalise_scopes(
        ["Mail.Read", "OpenID", "offline_access", "HTTPS://Graph.Microsoft.com/Mail.Send",
         "https://outlook.office.com/IMAP.AccessAsUser.All", "", "  "]
    ) == {
        "https://graph.microsoft.com/Mail.Read", "openid", "offline_access",
        "https://graph.microsoft.com/Mail.Send",
        "https://outlook.office.com/IMAP.AccessAsUser.All",
    }


def grant_with(access_token: str, scopes: str) -> TokenGrant:
    return TokenGrant(access_token, 3600, frozenset(scopes.split()), None, "Bearer")


@pytest.mark.parametrize(
    ("audience", "kind"),
    [
        ("https://graph.microsoft.com", TokenKind.GRAPH),
        ("https://graph.microsoft.com/", TokenKind.GRAPH),
        ("00000003-0000-0000-c000-000000000000", TokenKind.GRAPH),
        ("https://outlook.office.com", TokenKind.IMAP),
        ("https://outlook.office365.com/", TokenKind.IMAP),
        (["https://outlook.office.com"], TokenKind.IMAP),
    ],
)
def test_token_kind_from_the_jwt_audience_beats_the_scopes(
    audience: Any, kind: TokenKind
) -> None:
    # The scopes point the other way on purpose: a readable aud decides.
    misleading = ("https://outlook.office.com/IMAP.AccessAsUser.All" if kind is TokenKind.GRAPH
                  else "Mail.ReadWrite")
    assert token_kind(grant_with(jwt({"aud": audience}), misleading)) is kind


@pytest.mark.parametrize(
    ("access_token", "scopes", "kind"),
    [
        ("EwBwA8l6BAAU-opaque-consumer-token", "Mail.ReadWrite offline_access", TokenKind.GRAPH),
        ("EwBwA8l6BAAU-opaque", "https://graph.microsoft.com/Mail.Read openid", TokenKind.GRAPH),
        ("opaque", "https://outlook.office.com/IMAP.AccessAsUser.All offline_access",
         TokenKind.IMAP),
        (jwt({"aud": "api://something-else"}), "Mail.Read", TokenKind.GRAPH),
        ("a.!!!not-base64!!!.c", "https://outlook.office.com/SMTP.Send", TokenKind.IMAP),
        ("a.b.c.d.e", "Mail.Send", TokenKind.GRAPH),  # encrypted (JWE): unreadable
    ],
)
def test_token_kind_from_scopes_when_the_token_says_nothing(
    access_token: str, scopes: str, kind: TokenKind
) -> None:
    assert token_kind(grant_with(access_token, scopes)) is kind


def test_token_kind_without_any_mail_scope_is_scope_missing() -> None:
    with pytest.raises(ScopeMissing):
        token_kind(grant_with("opaque", "openid profile email offline_access"))


def test_jwt_claims_is_tolerant() -> None:
    assert jwt_claims(jwt({"aud": "x"})) == {"aud": "x"}
    assert jwt_claims("opaque") is None
    assert jwt_claims("a..c") is None
    assert jwt_claims("a." + base64.urlsafe_b64encode(b"[1,2]").decode() + ".c") is None
