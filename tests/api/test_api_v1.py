"""The REST API under /api/v1: token auth, admin-only changes, mailbox visibility."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import insert

from maildesk.api import tokens
from maildesk.app import create_app
from maildesk.domain.accounts import GMAIL_SCOPE_READONLY
from maildesk.passwords import hash_password
from maildesk.store import users as user_store
from maildesk.store.tables import account_users
from tests.support.harness import Harness

PUSH = {"project": "proj", "topic": "mail", "audience": "https://md/push",
        "signers": ["push@proj.iam.gserviceaccount.com"]}


@pytest.fixture
async def api(harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(harness.services)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://maildesk") as client:
        yield client


async def _user(h: Harness, email: str, *, admin: bool, shared: tuple[int, ...] = ()) -> str:
    async with h.services.db.transaction() as conn:
        uid = await user_store.create(conn, email=email, password_hash=hash_password("x" * 12),
                                      is_admin=admin, now=h.clock.now())
        for account_id in shared:
            await conn.execute(insert(account_users).values(account_id=account_id, user_id=uid))
        return await tokens.issue(conn, email)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_requests_without_a_valid_token_are_401(
    harness: Harness, api: httpx.AsyncClient
) -> None:
    assert (await api.get("/api/v1/accounts")).status_code == 401
    assert (await api.get("/api/v1/accounts", headers=_auth("mdk_nope"))).status_code == 401
    token = await _user(harness, "a@example.com", admin=True)
    assert (await api.get("/api/v1/accounts", headers=_auth(token))).status_code == 200
    # Issuing a new token revokes the old one.
    async with harness.services.db.transaction() as conn:
        await tokens.issue(conn, "a@example.com")
    assert (await api.get("/api/v1/accounts", headers=_auth(token))).status_code == 401


async def test_users_see_only_shared_mailboxes_and_cannot_change_push(
    harness: Harness, api: httpx.AsyncClient
) -> None:
    h = harness
    mine = await h.add_gmail("mine@example.com", seed=2)
    other = await h.add_gmail("other@example.com", seed=2)
    await h.sync_until_idle()
    user = await _user(h, "u@example.com", admin=False, shared=(mine,))
    listed = (await api.get("/api/v1/accounts", headers=_auth(user))).json()
    assert [a["id"] for a in listed] == [mine]
    assert listed[0]["messages"] == 2
    response = await api.post(f"/api/v1/accounts/{other}/sync", headers=_auth(user))
    assert response.status_code == 404
    assert (await api.post(f"/api/v1/accounts/{mine}/sync", headers=_auth(user))).status_code == 201
    for method, path in (("POST", f"/api/v1/accounts/{mine}/push/gmail"),
                         ("DELETE", f"/api/v1/accounts/{mine}/push/gmail"),
                         ("POST", "/api/v1/push/renew-due")):
        response = await api.request(method, path, headers=_auth(user), json=PUSH)
        assert response.status_code == 403, path
    assert h.google.snapshot("mine@example.com")["watch"] is None


async def test_admin_enables_lists_and_disables_gmail_push(
    harness: Harness, api: httpx.AsyncClient
) -> None:
    h = harness
    account_id = await h.add_gmail("desk@example.com", seed=2)
    await h.sync_until_idle()
    admin = await _user(h, "admin@example.com", admin=True)
    response = await api.post(f"/api/v1/accounts/{account_id}/push/gmail",
                              headers=_auth(admin), json=PUSH)
    assert response.status_code == 201
    [status] = response.json()
    assert status["state"] == "active"
    assert status["resource"] == "projects/proj/topics/mail"
    assert status["settings"]["signers"] == PUSH["signers"]
    listed = (await api.get("/api/v1/push", headers=_auth(admin))).json()
    assert [p["account_id"] for p in listed] == [account_id]
    response = await api.delete(f"/api/v1/accounts/{account_id}/push/gmail",
                                headers=_auth(admin))
    assert response.status_code == 200
    assert response.json()[0]["state"] == "stopped"
    renewed = await api.post("/api/v1/push/renew-due", headers=_auth(admin))
    assert renewed.json() == {"result": "renewed 0, failed 0"}


async def test_errors_are_typed_http_answers(harness: Harness, api: httpx.AsyncClient) -> None:
    h = harness
    narrow = await h.add_gmail("narrow@example.com", scopes=(GMAIL_SCOPE_READONLY,))
    admin = await _user(h, "admin@example.com", admin=True)
    bad = await api.post(f"/api/v1/accounts/{narrow}/push/gmail", headers=_auth(admin),
                         json={**PUSH, "signers": []})
    assert bad.status_code == 400
    assert "signer" in bad.json()["error"]
    refused = await api.post(f"/api/v1/accounts/{narrow}/push/gmail", headers=_auth(admin),
                             json=PUSH)
    assert refused.status_code == 422
    assert refused.json()["kind"] == "not_ready"
    assert "re-consent" in refused.json()["error"]
    missing = await api.post("/api/v1/accounts/999/push/gmail", headers=_auth(admin), json=PUSH)
    assert missing.status_code == 404
    not_json = await api.post(f"/api/v1/accounts/{narrow}/push/gmail", headers=_auth(admin),
                              content=b"{")
    assert not_json.status_code == 400


async def test_outlook_push_through_the_api_and_its_secret_for_admins_only(
    harness: Harness, api: httpx.AsyncClient
) -> None:
    h = harness
    account_id = await h.add_outlook("desk@example.com", seed=2)
    await h.sync_until_idle()
    admin = await _user(h, "admin@example.com", admin=True)
    user = await _user(h, "u@example.com", admin=False, shared=(account_id,))
    base = f"/api/v1/accounts/{account_id}/push/outlook"
    for method, path in (("POST", base), ("DELETE", base), ("GET", f"{base}/client-state")):
        assert (await api.request(method, path, headers=_auth(user))).status_code == 403, path
    assert not h.microsoft.subscriptions.by_id
    response = await api.post(base, headers=_auth(admin))
    assert response.status_code == 201
    [status] = response.json()
    (sub,) = h.microsoft.subscriptions.by_id.values()
    assert (status["provider"], status["state"], status["subscription_id"]) == (
        "outlook", "active", sub.id)
    assert sub.client_state
    listed = await api.get("/api/v1/push", headers=_auth(user))
    assert sub.client_state not in listed.text
    secret = await api.get(f"{base}/client-state", headers=_auth(admin))
    assert secret.json() == {"account_id": account_id, "client_state": sub.client_state}
    stopped = await api.delete(base, headers=_auth(admin))
    assert stopped.json()[0]["state"] == "stopped"
    assert not h.microsoft.subscriptions.by_id


async def test_outlook_push_refused_for_an_imap_token_is_a_422_with_the_reason(
    harness: Harness, api: httpx.AsyncClient
) -> None:
    h = harness
    account_id = await h.add_outlook("imap@example.com", kind="imap")
    admin = await _user(h, "admin@example.com", admin=True)
    refused = await api.post(f"/api/v1/accounts/{account_id}/push/outlook",
                             headers=_auth(admin))
    assert refused.status_code == 422
    assert "Microsoft Graph option" in refused.json()["error"]
