"""The simulated Microsoft identity platform over HTTP: rotation, AADSTS errors, token kinds,
revocation, the exchange log and the authorization-code flow with PKCE."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from maildesk.clock import ManualClock
from tests.sim.test_microsoft_world import (
    CLIENT_ID,
    CLIENT_SECRET,
    EMAIL,
    MsWorld,
    graph_error,
    ms_world,
)


@pytest.fixture
async def world(clock: ManualClock) -> AsyncIterator[MsWorld]:
    async with ms_world(clock) as w:
        yield w


def claims(token: str) -> dict[str, Any]:
    header, payload, signature = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(header + "==="))["typ"] == "JWT"
    assert signature
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "==="))
    return decoded


async def test_refresh_rotates_and_the_access_token_opens_graph(world: MsWorld) -> None:
    response = await world.refresh()
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "token_type", "scope", "expires_in", "ext_expires_in", "access_token", "refresh_token"
    }  # fmt: skip
    assert (body["token_type"], body["expires_in"], body["ext_expires_in"]) == (
        "Bearer",
        3599,
        3599,
    )
    assert body["scope"] == (
        "https://graph.microsoft.com/Mail.ReadWrite https://graph.microsoft.com/Mail.Send"
    )
    assert body["refresh_token"] != world.refresh_token
    jwt = claims(body["access_token"])
    assert jwt["aud"] == "https://graph.microsoft.com"
    assert jwt["scp"] == "Mail.ReadWrite Mail.Send"
    assert jwt["exp"] == int(world.clock.now().timestamp()) + 3599
    assert jwt["upn"] == EMAIL
    me = await world.http.get(
        "/v1.0/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.status_code == 200
    assert me.json()["mail"] == EMAIL


async def test_lenient_rotation_keeps_old_refresh_tokens_working(world: MsWorld) -> None:
    first = (await world.refresh()).json()["refresh_token"]
    again = await world.refresh(world.refresh_token)
    assert again.status_code == 200
    assert again.json()["refresh_token"] not in (first, world.refresh_token)
    assert [e.used for e in world.state.exchanges] == [world.refresh_token] * 2


async def test_strict_rotation_refuses_the_old_token_with_aadsts70008(world: MsWorld) -> None:
    world.state.set_rotation("strict")
    newer = (await world.refresh()).json()["refresh_token"]
    stale = await world.refresh(world.refresh_token)
    assert stale.status_code == 400
    body = stale.json()
    assert (body["error"], body["error_codes"]) == ("invalid_grant", [70008])
    assert body["error_description"].startswith("AADSTS70008: ")
    assert set(body) >= {"timestamp", "trace_id", "correlation_id"}
    assert (await world.refresh(newer)).status_code == 200
    log = world.state.exchanges
    assert [(e.used, e.error) for e in log] == [
        (world.refresh_token, None),
        (world.refresh_token, "invalid_grant AADSTS70008"),
        (newer, None),
    ]
    assert log[0].issued == newer


@pytest.mark.parametrize(
    ("name", "status", "error", "code"),
    [
        ("70008", 400, "invalid_grant", 70008),
        ("700082", 400, "invalid_grant", 700082),
        ("50173", 400, "invalid_grant", 50173),
        ("interaction_required", 400, "interaction_required", 50076),
        ("invalid_client", 401, "invalid_client", 7000215),
        ("client_secret_expired", 401, "invalid_client", 7000222),
        ("temporarily_unavailable", 503, "temporarily_unavailable", 90033),
    ],
)
async def test_queued_token_errors_answer_aadsts_bodies_then_clear(
    world: MsWorld, name: str, status: int, error: str, code: int
) -> None:
    world.state.queue_token_error(name, 2)
    for _ in range(2):
        response = await world.refresh()
        assert response.status_code == status
        body = response.json()
        assert (body["error"], body["error_codes"]) == (error, [code])
        assert body["error_description"].startswith(f"AADSTS{code}: ")
    assert (await world.refresh()).status_code == 200


async def test_revoke_kills_refresh_and_outstanding_access_tokens(world: MsWorld) -> None:
    assert (await world.get("/me")).status_code == 200
    assert world.state.revoke(EMAIL) == 1
    refused = await world.refresh()
    assert refused.status_code == 400
    assert refused.json()["error_codes"] == [50173]
    me = await world.get("/me")
    assert me.status_code == 401
    assert graph_error(me) == "InvalidAuthenticationToken"
    assert "WWW-Authenticate" in me.headers


async def test_an_imap_token_cannot_call_graph(world: MsWorld) -> None:
    imap_refresh = world.state.grant(EMAIL, kind="imap")
    response = await world.refresh(
        imap_refresh,
        scope="https://outlook.office.com/IMAP.AccessAsUser.All offline_access",
    )
    assert response.status_code == 200
    body = response.json()
    assert claims(body["access_token"])["aud"] == "https://outlook.office.com"
    me = await world.http.get(
        "/v1.0/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.status_code == 401
    assert "audience" in me.json()["error"]["message"]
    # Asking an IMAP grant for Graph scopes is a consent error, not a token.
    graph = await world.refresh(imap_refresh)
    assert graph.status_code == 400
    assert graph.json()["error_codes"] == [65001]


async def test_bare_scope_style_and_wrong_secret(world: MsWorld) -> None:
    world.state.set_scope_style("bare")
    assert (await world.refresh()).json()["scope"] == "Mail.ReadWrite Mail.Send"
    wrong = await world.refresh(client_secret="nope")
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"
    missing = await world.refresh(scope="")
    assert missing.status_code == 400
    assert missing.json()["error_codes"] == [90014]


async def test_token_endpoint_faults_use_the_identity_shape(world: MsWorld) -> None:
    world.state.add_fault(path="/oauth2/v2.0/token$", status=429, retry_after=3, count=1)
    limited = await world.refresh()
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "3"
    assert limited.json()["error"] == "temporarily_unavailable"
    assert (await world.refresh()).status_code == 200


async def test_authorization_code_flow_with_pkce(world: MsWorld) -> None:
    verifier = "v" * 64
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    )
    redirect = "http://maildesk/oauth/microsoft/callback"
    params = {
        "client_id": CLIENT_ID, "response_type": "code", "redirect_uri": redirect,
        "scope": "https://graph.microsoft.com/Mail.ReadWrite offline_access", "state": "s1",
        "code_challenge": challenge, "code_challenge_method": "S256", "login_hint": EMAIL,
    }  # fmt: skip
    answer = await world.http.get("/organizations/oauth2/v2.0/authorize", params=params)
    assert answer.status_code == 302
    query = parse_qs(urlsplit(answer.headers["location"]).query)
    assert query["state"] == ["s1"]
    form = {
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": redirect,
        "scope": "https://graph.microsoft.com/Mail.ReadWrite offline_access",
    }  # fmt: skip
    bad = await world.http.post(
        "/common/oauth2/v2.0/token", data={**form, "code_verifier": "w" * 64}
    )
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_grant"
    # The code was used up by the failed attempt, as Microsoft does: start again.
    answer = await world.http.get("/organizations/oauth2/v2.0/authorize", params=params)
    code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
    good = await world.http.post(
        "/common/oauth2/v2.0/token", data={**form, "code": code, "code_verifier": verifier}
    )
    assert good.status_code == 200
    assert good.json()["refresh_token"]
    world.state.set_consent(EMAIL, allow=False)
    denied = await world.http.get("/organizations/oauth2/v2.0/authorize", params=params)
    assert parse_qs(urlsplit(denied.headers["location"]).query)["error"] == ["access_denied"]
