"""The simulator's Pub/Sub push delivery, checked with MailDesk's own verifier and parser."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from maildesk.clock import ManualClock, SystemClock
from maildesk.errors import WebhookRejected
from maildesk.providers.google_certs import GoogleCerts, parse_certs
from maildesk.providers.http import ProviderHttp
from maildesk.providers.pubsub_wire import parse_gmail_push
from maildesk.push.oidc import PushIdentity, bearer_token, verify_push_token
from maildesk.sim.gmail_state import GoogleState
from maildesk.sim.google import create_google_app
from maildesk.sim.pubsub import PubSub
from maildesk.sim.server import serve_app

EMAIL = "alice@example.com"
TOPIC = "projects/maildesk-test/topics/gmail"
SUBSCRIPTION = "projects/maildesk-test/subscriptions/gmail-push"
AUDIENCE = "https://maildesk.example/maildesk/push/gmail"
SIGNER = "push@maildesk-test.iam.gserviceaccount.com"
ENDPOINT = "http://receiver/push"
CERTS_V1 = "http://sim/oauth2/v1/certs"


@dataclass
class Push:
    body: dict[str, Any]
    raw: bytes
    headers: dict[str, str]

    @property
    def token(self) -> str:
        return bearer_token(self.headers.get("authorization"))

    @property
    def attempt(self) -> int:
        return int(self.body["deliveryAttempt"])


@dataclass
class Receiver:
    """A push endpoint: records every POST, answers ``answers`` in turn, then ``default``."""

    pushes: list[Push] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    default: int = 204
    hang: float = 0.0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> Starlette:
        async def push(request: Request) -> Response:
            raw = await request.body()
            self.pushes.append(Push(json.loads(raw), raw, dict(request.headers)))
            self.arrived.set()
            if self.hang:
                await asyncio.sleep(self.hang)
            return Response(status_code=self.answers.pop(0) if self.answers else self.default)

        return Starlette(routes=[Route("/push", push, methods=["POST"])])


@dataclass
class World:
    state: GoogleState
    clock: ManualClock
    receiver: Receiver
    sim: httpx.AsyncClient
    certs: GoogleCerts

    @property
    def pubsub(self) -> PubSub:
        return self.state.pubsub

    async def verify(self, push: Push) -> PushIdentity:
        return await verify_push_token(
            push.token,
            self.certs,
            audiences=[AUDIENCE],
            signers=[SIGNER],
            now=self.clock.now().timestamp(),
        )

    async def rejection(self, push: Push) -> str:
        with pytest.raises(WebhookRejected) as caught:
            await self.verify(push)
        assert caught.value.status == 403
        return caught.value.reason

    def watch(self, labels: tuple[str, ...] = ("INBOX",), behavior: str = "include") -> None:
        self.state.set_watch(EMAIL, TOPIC, labels, behavior)

    def add(self, labels: tuple[str, ...] = ("INBOX", "UNREAD")) -> str:
        return self.state.add_message(
            EMAIL, subject="hi", sender="bob@example.com", to=EMAIL, text="t", html="",
            labels=labels,
        )  # fmt: skip

    async def settle(self) -> list[Push]:
        """Deliver everything, return what arrived since the last settle, move the clock on
        past the rate limit."""
        await self.pubsub.drain(timeout=10)
        arrived = list(self.receiver.pushes)
        self.receiver.pushes.clear()
        self.clock.advance(5)
        return arrived

    @property
    def history_id(self) -> int:
        return self.state.mailbox(EMAIL).history_id


@pytest.fixture
async def world(clock: ManualClock) -> AsyncIterator[World]:
    state = GoogleState(clock=clock)
    state.ensure_mailbox(EMAIL)
    state.pubsub.add_subscription(
        TOPIC, ENDPOINT, audience=AUDIENCE, service_account=SIGNER, subscription=SUBSCRIPTION
    )
    receiver = Receiver()
    sim_app = create_google_app(state)
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=sim_app), base_url="http://sim") as sim,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=receiver.app())) as push_client,
        state.pubsub.running(push_client),
    ):
        certs = GoogleCerts(ProviderHttp(sim, clock=clock), CERTS_V1, clock)
        yield World(state, clock, receiver, sim, certs)


def payload(push: Push) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(base64.b64decode(push.body["message"]["data"]))
    return data


# -- the happy path --------------------------------------------------------------------------


async def test_watch_itself_pushes_one_notification(world: World) -> None:
    world.watch()
    [push] = await world.settle()
    note = parse_gmail_push(push.raw)
    assert (note.email, note.history_id) == (EMAIL, world.history_id)
    assert (await world.verify(push)) == PushIdentity(AUDIENCE, SIGNER)


async def test_inbox_change_pushes_a_verified_parsable_notification(world: World) -> None:
    world.watch()
    await world.settle()
    published_at = world.clock.now()
    world.add()
    [push] = await world.settle()

    note = parse_gmail_push(push.raw)
    assert (note.email, note.history_id) == (EMAIL, world.history_id)
    assert payload(push) == {"emailAddress": EMAIL, "historyId": world.history_id}
    assert (await world.verify(push)) == PushIdentity(AUDIENCE, SIGNER)

    message = push.body["message"]
    assert set(push.body) == {"message", "subscription", "deliveryAttempt"}
    assert (push.body["subscription"], push.attempt) == (SUBSCRIPTION, 1)
    assert set(message) == {
        "attributes", "data", "messageId", "message_id", "publishTime", "publish_time"
    }  # fmt: skip
    assert message["attributes"] == {}
    assert message["messageId"] == message["message_id"] == note.message_id
    assert re.fullmatch(r"\d{16}", note.message_id)
    assert message["publishTime"] == message["publish_time"] == "2026-01-05T09:00:05.000Z"
    assert push.headers["content-type"] == "application/json"

    header = jwt.get_unverified_header(push.token)
    assert header == {"alg": "RS256", "kid": "sim-key-1", "typ": "JWT"}
    claims = jwt.decode(push.token, options={"verify_signature": False})
    assert set(claims) == {"iss", "aud", "azp", "email", "email_verified", "sub", "iat", "exp"}
    assert claims["iss"] == "https://accounts.google.com"
    assert (claims["aud"], claims["email"], claims["email_verified"]) == (AUDIENCE, SIGNER, True)
    assert claims["sub"].isdigit()
    assert claims["azp"] == claims["sub"]
    assert claims["iat"] == int(published_at.timestamp())
    assert claims["exp"] == claims["iat"] + 3600

    [record] = [r for r in world.pubsub.log if r.history_id == note.history_id]
    assert (record.email, record.message_id, record.outcome) == (EMAIL, note.message_id, "acked")
    assert record.published_at == published_at
    assert record.latency == 0.0
    assert [(a.attempt, a.status, a.acked) for a in record.attempts] == [(1, 204, True)]


async def test_pushes_queued_before_the_deliverer_runs_go_out_when_it_starts(
    clock: ManualClock,
) -> None:
    state = GoogleState(clock=clock)
    state.ensure_mailbox(EMAIL)
    state.pubsub.add_subscription(TOPIC, ENDPOINT, audience=AUDIENCE, service_account=SIGNER)
    state.set_watch(EMAIL, TOPIC, ["INBOX"], "include")
    receiver = Receiver()
    with pytest.raises(RuntimeError, match="running"):
        await state.pubsub.drain()
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=receiver.app())) as client,
        state.pubsub.running(client),
    ):
        await state.pubsub.drain(timeout=5)
    assert len(receiver.pushes) == 1
    assert receiver.pushes[0].body["subscription"] == SUBSCRIPTION  # the default name


# -- what is published -----------------------------------------------------------------------


async def test_include_filter_skips_changes_to_messages_without_the_label(world: World) -> None:
    world.watch(("INBOX",), "include")
    await world.settle()
    sent = world.add(("SENT",))
    world.state.modify_labels(EMAIL, sent, add=["STARRED"])
    assert await world.settle() == []
    assert world.pubsub.stats.filtered == 2

    inbox = world.add()
    assert len(await world.settle()) == 1
    world.state.modify_labels(EMAIL, inbox, remove=["INBOX"])  # archived: had INBOX before
    [push] = await world.settle()
    assert payload(push)["historyId"] == world.history_id
    world.state.modify_labels(EMAIL, inbox, add=["STARRED"])  # no INBOX before or after
    assert await world.settle() == []


async def test_exclude_filter_skips_changes_to_messages_with_the_label(world: World) -> None:
    world.watch(("SPAM",), "exclude")
    await world.settle()
    world.add(("SPAM",))
    assert await world.settle() == []
    world.add()
    assert len(await world.settle()) == 1


async def test_no_push_after_stop_or_expiry(world: World) -> None:
    world.watch(())
    await world.settle()
    world.add()
    assert len(await world.settle()) == 1
    world.clock.advance(8 * 86_400)
    world.add()
    assert await world.settle() == []
    world.watch(())
    assert len(await world.settle()) == 1
    world.state.stop_watch(EMAIL)
    world.add()
    assert await world.settle() == []


async def test_rate_limit_drops_the_second_change_in_the_same_second(world: World) -> None:
    world.watch()
    await world.settle()
    world.add()
    world.add()  # same clock second: dropped, counted
    [push] = await world.settle()
    assert payload(push)["historyId"] < world.history_id
    assert world.pubsub.stats.rate_limited[EMAIL] == 1
    world.clock.advance(0.5)
    world.add()
    world.clock.advance(0.999)
    world.add()
    assert len(await world.settle()) == 1
    assert world.pubsub.stats.rate_limited[EMAIL] == 2


async def test_topic_without_subscription_publishes_nothing(world: World) -> None:
    world.state.set_watch(EMAIL, "projects/other/topics/none", ["INBOX"], "include")
    world.add()
    assert await world.settle() == []
    assert world.pubsub.stats.unrouted == 1


# -- acks, nacks, redelivery -----------------------------------------------------------------


async def test_nack_is_redelivered_with_growing_backoff(world: World) -> None:
    world.watch()
    await world.settle()
    world.receiver.answers = [500, 429]
    world.add()
    pushes = await world.settle()
    assert [p.attempt for p in pushes] == [1, 2, 3]
    assert len({p.body["message"]["messageId"] for p in pushes}) == 1
    record = world.pubsub.log[-1]
    assert [a.status for a in record.attempts] == [500, 429, 204]
    times = [a.sent_at for a in record.attempts]
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(times)] == [10, 20]
    assert record.outcome == "acked"
    assert record.latency == 30.0
    assert [world.pubsub.backoff(n) for n in (1, 2, 3, 6, 7, 20)] == [10, 20, 40, 320, 600, 600]
    world.pubsub.backoff_scale = 0.01
    assert world.pubsub.backoff(1) == pytest.approx(0.1)


async def test_every_ack_status_acks(world: World) -> None:
    world.watch()
    await world.settle()
    for status in (102, 200, 201, 202, 204):
        world.receiver.answers = [status]
        world.add()
        assert [p.attempt for p in await world.settle()] == [1]
    # Any other answer is a nack, a success status outside Pub/Sub's list too.
    world.receiver.answers = [203]
    world.add()
    assert [p.attempt for p in await world.settle()] == [1, 2]


async def test_gives_up_after_max_attempts(world: World) -> None:
    world.pubsub.max_attempts = 3
    world.receiver.default = 503
    world.watch()
    assert len(await world.settle()) == 3
    assert world.pubsub.log[-1].outcome == "gave_up"
    assert world.pubsub.stats.gave_up == 1


async def test_no_answer_within_the_ack_deadline_is_a_nack(world: World) -> None:
    world.pubsub.ack_deadline = 0.05
    world.receiver.hang = 1.0
    world.pubsub.max_attempts = 2
    world.watch()
    await world.settle()
    record = world.pubsub.log[-1]
    assert [a.error for a in record.attempts] == ["no answer within the ack deadline"] * 2
    assert record.outcome == "gave_up"


async def test_leaving_running_cancels_deliveries_in_flight(clock: ManualClock) -> None:
    state = GoogleState(clock=clock)
    state.ensure_mailbox(EMAIL)
    state.pubsub.add_subscription(TOPIC, ENDPOINT, audience=AUDIENCE, service_account=SIGNER)
    receiver = Receiver(hang=30)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=receiver.app())) as client:
        async with state.pubsub.running(client):
            state.set_watch(EMAIL, TOPIC, ["INBOX"], "include")
            await receiver.arrived.wait()
        assert state.pubsub.log[-1].outcome == "cancelled"
        async with state.pubsub.running(client):  # can run again
            await state.pubsub.drain(timeout=1)


# -- faults ----------------------------------------------------------------------------------


async def test_drop_fault_loses_the_next_publishes(world: World) -> None:
    world.watch()
    await world.settle()
    world.pubsub.inject(drop=1)
    world.add()
    assert await world.settle() == []
    assert world.pubsub.log[-1].outcome == "dropped"
    world.add()
    assert len(await world.settle()) == 1
    assert world.pubsub.stats.dropped == 1


async def test_delay_fault_waits_on_the_clock_before_delivering(world: World) -> None:
    world.watch()
    await world.settle()
    world.pubsub.inject(delay_ms=1500)
    world.add()
    await world.settle()
    record = world.pubsub.log[-1]
    assert (record.attempts[0].sent_at - record.published_at) == timedelta(seconds=1.5)
    assert 1.5 in world.clock.slept


async def test_duplicate_fault_delivers_each_message_k_times(world: World) -> None:
    world.watch()
    await world.settle()
    world.pubsub.inject(duplicate=3)
    world.add()
    pushes = await world.settle()
    assert len(pushes) == 3
    assert len({p.body["message"]["messageId"] for p in pushes}) == 1
    assert world.pubsub.log[-1].outcome == "acked"


async def test_reorder_fault_sends_a_message_after_the_next_one(world: World) -> None:
    world.watch()
    await world.settle()
    world.pubsub.inject(reorder=1)
    world.add()
    first = world.history_id
    world.clock.advance(2)
    world.add()
    second = world.history_id
    assert [payload(p)["historyId"] for p in await world.settle()] == [second, first]
    world.pubsub.inject(reorder=2)
    world.add()  # nothing follows: drain releases it (and does not hold it again)
    assert len(await world.settle()) == 1
    assert world.pubsub.faults.reorder == 1
    ids = []
    for _ in range(4):
        world.add()
        ids.append(world.history_id)
        world.clock.advance(2)
    assert [payload(p)["historyId"] for p in await world.settle()] == [ids[1], ids[0], *ids[2:]]


async def test_reorder_holds_while_the_deliverer_idles(world: World) -> None:
    world.watch()
    await world.settle()
    world.pubsub.inject(reorder=1)
    world.add()
    first = world.history_id
    for _ in range(20):
        await asyncio.sleep(0)
    assert world.receiver.pushes == []  # held back
    world.clock.advance(2)
    world.add()
    assert [payload(p)["historyId"] for p in await world.settle()] == [world.history_id, first]


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"wrong_audience": True}, "audience mismatch"),
        ({"expired": True}, "token expired"),
        ({"foreign_signer": True}, "token signed by an unknown key"),
        ({"service_account": "evil@attacker.example"}, "signer not on the allow-list"),
    ],
)  # fmt: skip
async def test_token_faults_are_rejected_by_the_verifier(
    world: World, fault: dict[str, Any], reason: str
) -> None:
    world.pubsub.inject(**fault)
    world.watch()
    [push] = await world.settle()
    assert await world.rejection(push) == reason
    if "foreign_signer" in fault:
        kid = jwt.get_unverified_header(push.token)["kid"]
        assert kid == "sim-foreign-1"
        assert kid not in world.pubsub.keys.certs_v1()
    world.pubsub.clear_faults()
    world.add()
    [push] = await world.settle()
    assert await world.verify(push) == PushIdentity(AUDIENCE, SIGNER)


async def test_token_fault_count_spoils_only_that_many_attempts(world: World) -> None:
    world.pubsub.inject(expired=True, token_count=1)
    world.receiver.answers = [403]  # MailDesk refuses the bad token
    world.watch()
    first, second = await world.settle()
    assert await world.rejection(first) == "token expired"
    assert await world.verify(second) == PushIdentity(AUDIENCE, SIGNER)
    assert second.attempt == 2


async def test_key_rotation_verifies_after_the_verifier_refetches(world: World) -> None:
    world.watch()
    [before] = await world.settle()
    await world.verify(before)  # the verifier now caches sim-key-1 only
    assert world.pubsub.rotate_key() == "sim-key-2"
    world.add()
    [after] = await world.settle()
    assert jwt.get_unverified_header(after.token)["kid"] == "sim-key-2"
    assert await world.rejection(after) == "token signed by an unknown key"  # fetched < 60 s ago
    world.clock.advance(61)
    assert await world.verify(after) == PushIdentity(AUDIENCE, SIGNER)
    assert await world.verify(before) == PushIdentity(AUDIENCE, SIGNER)  # old key still served
    assert sorted(world.pubsub.keys.certs_v1()) == ["sim-key-1", "sim-key-2"]

    world.clock.advance(86_400)  # the replaced key retires
    assert sorted(world.pubsub.keys.certs_v1()) == ["sim-key-2"]
    world.pubsub.rotate_key(drop_old=True)
    assert sorted(world.pubsub.keys.certs_v1()) == ["sim-key-3"]


async def test_rotation_dropping_the_old_key_breaks_old_tokens(world: World) -> None:
    world.watch()
    [old] = await world.settle()
    world.pubsub.rotate_key(drop_old=True)
    assert await world.rejection(old) == "token signed by an unknown key"  # still unexpired


# -- certs endpoints -------------------------------------------------------------------------


async def test_certs_endpoints_serve_both_shapes_with_max_age(world: World) -> None:
    v1 = await world.sim.get("/oauth2/v1/certs")
    v3 = await world.sim.get("/oauth2/v3/certs")
    for response in (v1, v3):
        assert response.status_code == 200
        assert response.headers["cache-control"] == "public, max-age=3600"
    assert set(v1.json()) == {"sim-key-1"}
    assert v1.json()["sim-key-1"].startswith("-----BEGIN CERTIFICATE-----")
    [jwk] = v3.json()["keys"]
    assert set(jwk) == {"kid", "kty", "alg", "use", "n", "e"}
    assert (jwk["kid"], jwk["kty"], jwk["alg"], jwk["use"], jwk["e"]) == (
        "sim-key-1", "RSA", "RS256", "sig", "AQAB"
    )  # fmt: skip
    from_v1, from_v3 = parse_certs(v1.content), parse_certs(v3.content)
    assert from_v1["sim-key-1"].public_numbers() == from_v3["sim-key-1"].public_numbers()
    assert from_v1["sim-key-1"].key_size == 2048

    world.pubsub.keys.max_age = 120
    response = await world.sim.get("/oauth2/v3/certs")
    assert response.headers["cache-control"] == "public, max-age=120"


async def test_verifier_caches_certs_for_max_age(world: World) -> None:
    world.watch()
    [push] = await world.settle()
    await world.verify(push)
    await world.verify(push)
    assert world.certs.fetches == 1
    world.clock.advance(3600)
    await world.verify(push)  # max-age passed: refetched (the token is still in its hour)
    assert world.certs.fetches == 2


async def test_cert_endpoints_obey_fault_rules(world: World) -> None:
    world.state.add_fault(path="^/oauth2/v1/certs$", status=503, count=1)
    assert (await world.sim.get("/oauth2/v1/certs")).status_code == 503
    assert (await world.sim.get("/oauth2/v1/certs")).status_code == 200


# -- control routes --------------------------------------------------------------------------


async def test_control_routes(world: World) -> None:
    sim = world.sim
    response = await sim.post(
        "/_sim/pubsub/subscriptions",
        json={"topic": "projects/p/topics/t", "endpoint": ENDPOINT, "service_account": SIGNER},
    )
    assert response.status_code == 200
    assert response.json() == {
        "subscription": "projects/p/subscriptions/t-push",
        "topic": "projects/p/topics/t",
        "endpoint": ENDPOINT,
        "audience": ENDPOINT,
        "service_account": SIGNER,
    }
    listed = (await sim.get("/_sim/pubsub/subscriptions")).json()["subscriptions"]
    assert len(listed) == 2
    bad = await sim.post("/_sim/pubsub/subscriptions", json={"topic": "t", "endpoint": ENDPOINT})
    assert bad.status_code == 400

    response = await sim.post(
        "/_sim/pubsub/faults", json={"duplicate": 2, "rotate_key": True, "drop_old_key": True}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["faults"]["duplicate"] == 2
    assert (body["signing_kid"], body["published_kids"]) == ("sim-key-2", ["sim-key-2"])
    assert (await sim.post("/_sim/pubsub/faults", json={"nope": 1})).status_code == 400
    assert (await sim.post("/_sim/pubsub/faults", json={"drop": -1})).status_code == 400
    assert (await sim.post("/_sim/pubsub/faults", json={"drop_old_key": True})).status_code == 400

    world.watch()
    assert len(await world.settle()) == 2
    log = (await sim.get("/_sim/pubsub/log", params={"email": EMAIL})).json()
    [record] = log["records"]
    assert record["outcome"] == "acked"
    assert len(record["attempts"]) == 2
    assert record["historyId"] == str(world.history_id)
    assert log["stats"]["published"] == 1
    assert log["stats"]["acked"] == 2

    assert (await sim.delete("/_sim/pubsub/faults")).status_code == 204
    assert (await sim.get("/_sim/pubsub/faults")).json()["faults"]["duplicate"] == 1
    assert (await sim.get("/_sim/pubsub/log", params={"limit": 0})).json()["records"] == []
    gone = await sim.request(
        "DELETE", "/_sim/pubsub/subscriptions", json={"subscription": "projects/p/subscriptions/x"}
    )
    assert gone.status_code == 404


# -- over real HTTP --------------------------------------------------------------------------


async def test_app_lifespan_delivers_over_real_http() -> None:
    state = GoogleState(clock=SystemClock())
    state.ensure_mailbox(EMAIL)
    receiver = Receiver()
    app = create_google_app(state, deliver_pushes=True)
    async with (
        serve_app(receiver.app()) as receiver_url,
        serve_app(app) as sim_url,
        httpx.AsyncClient(base_url=sim_url) as http,
    ):
        response = await http.post(
            "/_sim/pubsub/subscriptions",
            json={"topic": TOPIC, "endpoint": f"{receiver_url}/push", "audience": AUDIENCE,
                  "service_account": SIGNER},
        )  # fmt: skip
        assert response.status_code == 200
        state.set_watch(EMAIL, TOPIC, ["INBOX"], "include")
        await state.pubsub.drain(timeout=10)
        [push] = receiver.pushes
        certs = GoogleCerts(
            ProviderHttp(http, clock=SystemClock()), f"{sim_url}/oauth2/v3/certs", SystemClock()
        )
        identity = await verify_push_token(
            push.token, certs, audiences=[AUDIENCE], signers=[SIGNER],
            now=SystemClock().now().timestamp(),
        )  # fmt: skip
        assert identity == PushIdentity(AUDIENCE, SIGNER)
        log = (await http.get("/_sim/pubsub/log")).json()
        assert log["records"][0]["latency"] >= 0
