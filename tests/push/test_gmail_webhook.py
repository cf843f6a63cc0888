"""Every answer of the Gmail push webhook, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from maildesk.app import create_app
from maildesk.domain.accounts import ProviderKind
from maildesk.domain.push import PushState
from maildesk.store import accounts as account_store
from maildesk.store import push as push_store
from tests.support.harness import Harness

EMAIL = "desk@example.com"
AUDIENCE = "https://maildesk.example.com/maildesk/push/gmail"
SIGNER = "pubsub-push@proj.iam.gserviceaccount.com"
URL = "/maildesk/push/gmail"


class StaticKeys:
    def __init__(self, keys: dict[str, RSAPublicKey]) -> None:
        self.keys = keys

    async def key(self, kid: str) -> RSAPublicKey | None:
        return self.keys.get(kid)


@pytest.fixture(scope="module")
def google_key() -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def foreign_key() -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_token(key: RSAPrivateKey, now: float, *, kid: str = "k1", **overrides: Any) -> str:
    claims: dict[str, Any] = {
        "iss": "https://accounts.google.com", "aud": AUDIENCE, "email": SIGNER,
        "email_verified": True, "sub": "1234567890", "azp": "1234567890",
        "iat": int(now), "exp": int(now) + 3600,
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid})


def push_body(email: str = EMAIL, history_id: int = 4242, *, urlsafe: bool = False) -> bytes:
    data = json.dumps({"emailAddress": email, "historyId": history_id}).encode()
    encoded = (base64.urlsafe_b64encode(data).rstrip(b"=") if urlsafe
               else base64.b64encode(data)).decode()
    return json.dumps({
        "message": {"data": encoded, "messageId": "m1", "message_id": "m1",
                    "publishTime": "2026-01-05T09:00:00Z", "attributes": {}},
        "subscription": "projects/proj/subscriptions/maildesk",
    }).encode()


async def _configure(h: Harness, account_id: int, *, audience: str = AUDIENCE,
                     signers: tuple[str, ...] = (SIGNER,)) -> None:
    async with h.services.db.transaction() as conn:
        await push_store.upsert(
            conn, account_id=account_id, provider=ProviderKind.GMAIL, now=h.clock.now(),
            resource="projects/proj/topics/mail", subscription_id="1", state="active",
            expiration=h.clock.now(), last_renewal_at=h.clock.now(),
            settings={"project": "proj", "topic": "projects/proj/topics/mail",
                      "audience": audience, "signers": list(signers)},
        )
    h.services.gmail_webhook.invalidate()


@pytest.fixture
async def client(harness: Harness, google_key: RSAPrivateKey) -> Any:
    harness.services.gmail_webhook._keys = StaticKeys({"k1": google_key.public_key()})
    app = create_app(harness.services)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://maildesk") as c:
        yield c


async def test_get_is_405_for_the_preflight(harness: Harness, client: httpx.AsyncClient) -> None:
    response = await client.get(URL)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


async def test_missing_bearer_is_401(harness: Harness, client: httpx.AsyncClient) -> None:
    assert (await client.post(URL, content=push_body())).status_code == 401
    response = await client.post(URL, content=push_body(), headers={"Authorization": "Basic x"})
    assert response.status_code == 401


async def test_unconfigured_audience_or_signers_is_503(
    harness: Harness, client: httpx.AsyncClient, google_key: RSAPrivateKey
) -> None:
    token = make_token(google_key, harness.clock.now().timestamp())
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.post(URL, content=push_body(), headers=headers)).status_code == 503
    account_id = await harness.add_gmail(EMAIL)
    await _configure(harness, account_id, signers=())
    assert (await client.post(URL, content=push_body(), headers=headers)).status_code == 503


async def test_oversized_body_is_413_without_reading_it(
    harness: Harness, client: httpx.AsyncClient
) -> None:
    big = b"x" * (64 * 1024 + 1)
    assert (await client.post(URL, content=big)).status_code == 413
    streamed: list[int] = []

    async def stream() -> Any:
        for _ in range(100):
            streamed.append(1)
            yield b"y" * 4096

    # No Content-Length (chunked): the limit applies while reading.
    response = await client.post(URL, content=stream(), headers={"Authorization": "Bearer a"})
    assert response.status_code == 413
    assert len(streamed) <= 64 * 1024 // 4096 + 1, "reading stopped at the limit"
    # A declared Content-Length over the limit is refused before anything is read.
    streamed.clear()
    response = await client.post(URL, content=stream(), headers={
        "Authorization": "Bearer a", "Content-Length": str(100 * 4096)})
    assert response.status_code == 413
    assert streamed == []


@pytest.mark.parametrize(
    "case",
    ["bad_signature", "unknown_kid", "expired", "future_iat", "wrong_audience", "wrong_issuer",
     "signer_not_allowed", "email_unverified", "no_email", "garbage", "hs256"],
)
async def test_every_bad_token_is_403(
    harness: Harness, client: httpx.AsyncClient, google_key: RSAPrivateKey,
    foreign_key: RSAPrivateKey, case: str,
) -> None:
    account_id = await harness.add_gmail(EMAIL)
    await _configure(harness, account_id)
    now = harness.clock.now().timestamp()
    makers: dict[str, Callable[[], str]] = {
        "bad_signature": lambda: make_token(foreign_key, now),
        "unknown_kid": lambda: make_token(google_key, now, kid="nope"),
        "expired": lambda: make_token(google_key, now - 7200),
        "future_iat": lambda: make_token(google_key, now, iat=int(now) + 3600),
        "wrong_audience": lambda: make_token(google_key, now, aud="https://elsewhere"),
        "wrong_issuer": lambda: make_token(google_key, now, iss="https://evil.example"),
        "signer_not_allowed": lambda: make_token(google_key, now, email="x@evil.example"),
        "email_unverified": lambda: make_token(google_key, now, email_verified=False),
        "no_email": lambda: make_token(google_key, now, email=None),
        "garbage": lambda: "not.a.jwt",
        "hs256": lambda: jwt.encode({"aud": AUDIENCE}, "k" * 32, algorithm="HS256",
                                    headers={"kid": "k1"}),
    }
    token = makers[case]()
    response = await client.post(URL, content=push_body(),
                                 headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    async with harness.services.db.read() as conn:
        account = await account_store.get(conn, account_id)
        row = await push_store.get(conn, account_id, ProviderKind.GMAIL)
    assert row is not None
    assert row.sub.last_notification_at is None, "a rejected push is not a notification"
    assert account.sync_reason != "push"


async def test_valid_push_is_202_recorded_and_stamps_a_sync(
    harness: Harness, client: httpx.AsyncClient, google_key: RSAPrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    account_id = await harness.add_gmail(EMAIL)
    await harness.sync_until_idle()
    await _configure(harness, account_id)
    token = make_token(google_key, harness.clock.now().timestamp())
    caplog.set_level(logging.DEBUG)
    for urlsafe in (False, True):
        response = await client.post(URL, content=push_body(urlsafe=urlsafe),
                                     headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 202
    async with harness.services.db.read() as conn:
        account = await account_store.get(conn, account_id)
        row = await push_store.get(conn, account_id, ProviderKind.GMAIL)
        events = await push_store.events_since(conn, account_id, harness.clock.now())
    assert account.sync_requested_at is not None
    assert account.sync_reason == "push"
    assert row is not None
    assert row.sub.last_notification_at == harness.clock.now()
    assert [e.kind for e in events][:2] == ["delivered", "verified"]
    # Never the token, never the body.
    payload = push_body().decode()
    message_data = json.loads(payload)["message"]["data"]
    for record in caplog.records:
        text = record.getMessage()
        assert token not in text
        assert message_data not in text
        assert token[:20] not in text


async def test_unknown_mailbox_is_acknowledged_but_not_synced(
    harness: Harness, client: httpx.AsyncClient, google_key: RSAPrivateKey
) -> None:
    account_id = await harness.add_gmail(EMAIL)
    await _configure(harness, account_id)
    token = make_token(google_key, harness.clock.now().timestamp())
    response = await client.post(URL, content=push_body("stranger@example.com"),
                                 headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 202
    assert harness.services.gmail_webhook.stats.unknown_mailbox == 1


async def test_authentic_but_malformed_body_is_400(
    harness: Harness, client: httpx.AsyncClient, google_key: RSAPrivateKey
) -> None:
    account_id = await harness.add_gmail(EMAIL)
    await _configure(harness, account_id)
    token = make_token(google_key, harness.clock.now().timestamp())
    for body in (b"{", b'{"message":{}}', b'{"message":{"data":"!!!"}}',
                 json.dumps({"message": {"data": base64.b64encode(b"[1]").decode()}}).encode()):
        response = await client.post(URL, content=body,
                                     headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 400


async def test_a_notification_returns_a_recovering_subscription_to_active(
    harness: Harness, client: httpx.AsyncClient, google_key: RSAPrivateKey
) -> None:
    account_id = await harness.add_gmail(EMAIL)
    await _configure(harness, account_id)
    async with harness.services.db.transaction() as conn:
        await push_store.upsert(conn, account_id=account_id, provider=ProviderKind.GMAIL,
                                now=harness.clock.now(), state=PushState.RECOVERING.value)
    token = make_token(google_key, harness.clock.now().timestamp())
    response = await client.post(URL, content=push_body(),
                                 headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 202
    async with harness.services.db.read() as conn:
        row = await push_store.get(conn, account_id, ProviderKind.GMAIL)
    assert row is not None
    assert row.sub.state is PushState.ACTIVE


@pytest.mark.parametrize("other", ["audience", "signer"])
async def test_a_token_counts_only_for_the_mailbox_that_configured_its_audience_and_signer(
    harness: Harness, client: httpx.AsyncClient, google_key: RSAPrivateKey, other: str
) -> None:
    # The token is valid for the webhook (some mailbox configured its audience and signer), but
    # the mailbox it names configured another one: authentic, so 202, but not its notification.
    mine = await harness.add_gmail(EMAIL)
    await _configure(harness, mine)
    theirs = await harness.add_gmail("theirs@example.com")
    if other == "audience":
        await _configure(harness, theirs, audience="https://theirs.example/push")
    else:
        await _configure(harness, theirs, signers=("theirs@proj.iam.gserviceaccount.com",))
    token = make_token(google_key, harness.clock.now().timestamp())
    response = await client.post(URL, content=push_body("theirs@example.com"),
                                 headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 202
    assert harness.services.gmail_webhook.stats.unknown_mailbox == 1
    async with harness.services.db.read() as conn:
        account = await account_store.get(conn, theirs)
        row = await push_store.get(conn, theirs, ProviderKind.GMAIL)
    assert row is not None
    assert row.sub.last_notification_at is None
    assert account.sync_reason != "push"
