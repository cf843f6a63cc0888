"""IMAP mailboxes through /api/v1 against a real Dovecot and SMTP server: test settings before
adding, add (verified), test a stored mailbox, enter a new password; who may do which."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from maildesk.api import tokens
from maildesk.app import create_app
from maildesk.domain.accounts import ProviderKind
from maildesk.passwords import hash_password
from maildesk.store import accounts as account_store
from maildesk.store import users as user_store
from maildesk.store.tables import account_users
from tests.imap import conftest as imap_fixtures
from tests.support import imap_rig
from tests.support.dovecot import DovecotServer
from tests.support.harness import Harness
from tests.support.smtp_peer import SmtpPeer

WRONG = "wrong-password-0815"
# Dovecot (its session fixture lives with the IMAP tests; named here so pytest finds it).
dovecot_full = imap_fixtures.dovecot_full


h = imap_rig.dovecot_harness


@pytest.fixture
async def api(h: Harness) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(h.services)),
                                 base_url="http://maildesk") as client:
        yield client


user = imap_rig.dovecot_login


peer = imap_rig.plain_smtp_peer


async def token_of(h: Harness, email: str, *, admin: bool, shared: tuple[int, ...] = ()) -> str:
    async with h.services.db.transaction() as conn:
        uid = await user_store.create(conn, email=email, password_hash=hash_password("x" * 12),
                                      is_admin=admin, now=h.clock.now())
        for account_id in shared:
            await conn.execute(insert(account_users).values(account_id=account_id, user_id=uid))
        return await tokens.issue(conn, email)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def settings(dovecot: DovecotServer, user: str, *, password: str | None = None,
             peer: SmtpPeer | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "email": f"{user}@example.org", "host": dovecot.host, "port": dovecot.imaps_port,
        "security": "ssl", "username": user,
        "password": dovecot.password if password is None else password, **extra}
    if peer is not None:
        body.update(smtp_host=peer.host, smtp_port=peer.port, smtp_security="none")
    return body


async def imap_accounts(h: Harness) -> list[account_store.AccountRow]:
    async with h.services.db.read() as conn:
        return [a for a in await account_store.list_all(conn) if a.provider is ProviderKind.IMAP]


async def test_admin_tests_settings_adds_the_mailbox_and_tests_it_again(
    h: Harness, api: httpx.AsyncClient, dovecot_full: DovecotServer, user: str,
    peer: SmtpPeer,
) -> None:
    admin = auth(await token_of(h, "admin@example.com", admin=True))
    # Before adding: a wrong password fails at AUTH, with the stage and a precise reason.
    response = await api.post("/api/v1/imap/test", headers=admin,
                              json=settings(dovecot_full, user, password=WRONG, peer=peer))
    assert response.status_code == 200
    answer = response.json()
    assert answer["ok"] is False
    assert answer["stage"] == "auth"
    incoming, outgoing = answer["checks"]
    assert (incoming["which"], incoming["ok"], incoming["stage"]) == ("incoming", False, "auth")
    assert incoming["summary"].startswith("AUTH: the server refused the password")
    assert (outgoing["which"], outgoing["stage"], outgoing["error_kind"]) == (
        "outgoing", "auth", "login_failed")
    assert WRONG not in response.text
    # Only the incoming side, with the right password.
    response = await api.post("/api/v1/imap/test", headers=admin, json={
        **settings(dovecot_full, user, peer=peer), "test": "incoming"})
    [only] = response.json()["checks"]
    assert (only["which"], only["ok"], only["stage"]) == ("incoming", True, "ready")
    assert await imap_accounts(h) == [], "testing stores nothing"

    # Adding with the wrong password: 422, nothing stored.
    response = await api.post("/api/v1/accounts/imap", headers=admin,
                              json=settings(dovecot_full, user, password=WRONG, peer=peer))
    assert response.status_code == 422
    refused = response.json()
    assert (refused["account_id"], refused["ok"], refused["stage"]) == (None, False, "auth")
    assert "AUTH: the server refused the password" in refused["error"]
    assert await imap_accounts(h) == []

    response = await api.post("/api/v1/accounts/imap", headers=admin,
                              json=settings(dovecot_full, user, peer=peer))
    assert response.status_code == 201, response.text
    added = response.json()
    [row] = await imap_accounts(h)
    assert added["account_id"] == row.id
    assert [c["stage"] for c in added["checks"]] == ["ready", "ready"]
    assert h.services.secrets.decrypt(row.password_enc or "") == dovecot_full.password

    # The same mailbox again: refused (400), still one.
    response = await api.post("/api/v1/accounts/imap", headers=admin,
                              json=settings(dovecot_full, user, peer=peer))
    assert response.status_code == 400
    assert "already exists" in response.json()["error"]

    for which, reason in (("incoming", "opened INBOX"), ("outgoing", "ready to send")):
        response = await api.post(f"/api/v1/accounts/{row.id}/test/{which}", headers=admin)
        assert response.status_code == 200
        report = response.json()
        assert (report["account_id"], report["which"], report["ok"]) == (row.id, which, True)
        assert reason in report["reason"]
    assert peer.messages == []
    # And every listing shows the new mailbox like any other.
    listed = (await api.get("/api/v1/accounts", headers=admin)).json()
    assert [(a["id"], a["provider"]) for a in listed] == [(row.id, "imap")]


async def test_who_may_do_what(
    h: Harness, api: httpx.AsyncClient, dovecot_full: DovecotServer, user: str,
) -> None:
    admin = auth(await token_of(h, "admin@example.com", admin=True))
    response = await api.post("/api/v1/accounts/imap", headers=admin,
                              json={**settings(dovecot_full, user), "verify": False})
    assert response.status_code == 201
    mine = response.json()["account_id"]
    response = await api.post("/api/v1/accounts/imap", headers=admin, json={
        **settings(dovecot_full, dovecot_full.new_user()), "verify": False})
    other = response.json()["account_id"]
    agent = auth(await token_of(h, "agent@example.com", admin=False, shared=(mine,)))

    body = settings(dovecot_full, dovecot_full.new_user())
    assert (await api.post("/api/v1/imap/test", json=body)).status_code == 401
    assert (await api.post("/api/v1/imap/test", headers=agent, json=body)).status_code == 403
    assert (await api.post("/api/v1/accounts/imap", headers=agent,
                           json=body)).status_code == 403
    assert (await api.put(f"/api/v1/accounts/{mine}/password", headers=agent,
                          json={"password": "x"})).status_code == 403
    # A user may test a mailbox shared with them (with its stored sign-in), no other.
    response = await api.post(f"/api/v1/accounts/{mine}/test/incoming", headers=agent)
    assert response.status_code == 200
    assert response.json()["ok"] is True
    response = await api.post(f"/api/v1/accounts/{other}/test/incoming", headers=agent)
    assert response.status_code == 404
    response = await api.post(f"/api/v1/accounts/{mine}/test/outgoing", headers=agent)
    assert response.status_code == 400
    assert "no outgoing (SMTP) server" in response.json()["error"]
    assert len(await imap_accounts(h)) == 2


async def test_put_password_checks_it_first(
    h: Harness, api: httpx.AsyncClient, dovecot_full: DovecotServer, user: str,
) -> None:
    admin = auth(await token_of(h, "admin@example.com", admin=True))
    response = await api.post("/api/v1/accounts/imap", headers=admin, json={
        **settings(dovecot_full, user, password=WRONG), "verify": False})
    account_id = response.json()["account_id"]
    [before] = await imap_accounts(h)

    response = await api.put(f"/api/v1/accounts/{account_id}/password", headers=admin,
                             json={"password": "also wrong"})
    assert response.status_code == 422
    refused = response.json()
    assert (refused["stored"], refused["stage"]) == (False, "auth")
    assert refused["check"]["summary"].startswith("AUTH: the server refused the password")
    [unchanged] = await imap_accounts(h)
    assert unchanged.password_enc == before.password_enc

    for bad in ({}, {"password": ""}, {"password": 7}, {"password": "x", "verify": "yes"}):
        response = await api.put(f"/api/v1/accounts/{account_id}/password", headers=admin,
                                 json=bad)
        assert response.status_code == 400, bad

    response = await api.put(f"/api/v1/accounts/{account_id}/password", headers=admin,
                             json={"password": dovecot_full.password})
    assert response.status_code == 200
    assert response.json()["stored"] is True
    assert response.json()["check"]["ok"] is True
    [after] = await imap_accounts(h)
    assert h.services.secrets.decrypt(after.password_enc or "") == dovecot_full.password
    assert after.sync_request_seq > before.sync_request_seq
    response = await api.put("/api/v1/accounts/999/password", headers=admin,
                             json={"password": "x"})
    assert response.status_code == 404


async def test_bad_settings_are_400_naming_the_field(
    h: Harness, api: httpx.AsyncClient,
) -> None:
    admin = auth(await token_of(h, "admin@example.com", admin=True))
    cases = {
        "IMAP host": {"username": "a@b.org", "password": "x"},
        "IMAP port": {"host": "h", "port": 0, "username": "a@b.org", "password": "x"},
        "password: required": {"host": "h", "username": "a@b.org"},
        "verify must be true or false": {"host": "h", "username": "a@b.org", "password": "x",
                                         "verify": "no"},
    }
    for fragment, body in cases.items():
        response = await api.post("/api/v1/accounts/imap", headers=admin, json=body)
        assert response.status_code == 400, body
        assert fragment in response.json()["error"]
    response = await api.post("/api/v1/imap/test", headers=admin, json={
        "host": "h", "username": "a@b.org", "password": "x", "test": "outgoing"})
    assert response.status_code == 400
    assert "SMTP host" in response.json()["error"]
    response = await api.post("/api/v1/imap/test", headers=admin, content=b"[1, 2]")
    assert response.status_code == 400
    assert await imap_accounts(h) == []
