"""Graph subscriptions of the Microsoft simulator: the validation handshake against both URLs,
lifetime rules, renew/delete/reauthorize, change notifications with clientState, retries,
expiry, lifecycle events and notification faults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from maildesk.clock import ManualClock
from maildesk.sim.graph_wire import parse_time, subscription_time
from tests.sim.test_microsoft_world import (
    CLIENT_ID,
    EMAIL,
    LIFECYCLE_URL,
    NOTIFY_URL,
    MsWorld,
    graph_error,
    ms_world,
)


@pytest.fixture
async def world(clock: ManualClock) -> AsyncIterator[MsWorld]:
    async with ms_world(clock, notify=True) as w:
        yield w


def request_body(world: MsWorld, **overrides: Any) -> dict[str, Any]:
    return {
        "changeType": "created,updated,deleted",
        "notificationUrl": NOTIFY_URL,
        "lifecycleNotificationUrl": LIFECYCLE_URL,
        "resource": "/me/messages",
        "expirationDateTime": subscription_time(world.clock.now() + timedelta(days=3)),
        "clientState": "secret-state-1",
        "latestSupportedTlsVersion": "v1_2",
        **overrides,
    }


async def subscribe(world: MsWorld, **overrides: Any) -> httpx.Response:
    return await world.send("POST", "/subscriptions", request_body(world, **overrides))


async def settle(world: MsWorld) -> None:
    await world.state.notifier.drain(timeout=10)


# -- creation and the validation handshake ---------------------------------------------------


async def test_creation_validates_both_urls_then_answers_201(world: MsWorld) -> None:
    created = await subscribe(world)
    assert created.status_code == 201, created.text
    sub = created.json()
    assert set(sub) >= {
        "id", "resource", "applicationId", "changeType", "clientState", "notificationUrl",
        "lifecycleNotificationUrl", "expirationDateTime", "creatorId", "latestSupportedTlsVersion",
    }  # fmt: skip
    assert (sub["applicationId"], sub["creatorId"]) == (
        CLIENT_ID,
        world.state.mailbox(EMAIL).user_id,
    )
    assert sub["clientState"] == "secret-state-1"
    checks = world.receiver.validations()
    assert [h.path for h in checks] == ["/push/graph", "/push/graph/lifecycle"]
    for hit, record in zip(checks, world.state.subscriptions.validations, strict=True):
        assert hit.body == b""
        assert hit.headers["content-type"] == "text/plain; charset=utf-8"
        assert hit.query["validationToken"] == [record.token]  # the receiver saw it decoded
        assert " " in record.token
        assert record.ok
    listed = (await world.get("/subscriptions")).json()["value"]
    assert [s["id"] for s in listed] == [sub["id"]]


@pytest.mark.parametrize("mode", ["json", "wrong", "500"])
@pytest.mark.parametrize("path", ["/push/graph", "/push/graph/lifecycle"])
async def test_a_failed_handshake_on_either_url_refuses_creation(
    world: MsWorld, path: str, mode: str
) -> None:
    world.receiver.validation[path] = mode
    refused = await subscribe(world)
    assert refused.status_code == 400
    assert graph_error(refused) == "ValidationError"
    assert refused.json()["error"]["message"].startswith("Subscription validation request failed")
    assert world.state.subscriptions.by_id == {}
    assert world.receiver.validations()[-1].path == path
    assert (await world.get("/subscriptions")).json()["value"] == []


async def test_no_answer_from_the_webhook_refuses_creation(clock: ManualClock) -> None:
    async with ms_world(clock) as world:
        failing = httpx.AsyncClient(
            transport=httpx.MockTransport(_raise_timeout), base_url="http://x"
        )
        async with failing:
            # The app's outbound client is swapped for one whose requests time out.
            graph = _graph_of(world)
            graph.outbound = failing
            refused = await subscribe(world)
        assert graph_error(refused) == "ValidationError"
        assert "ReadTimeout" in (world.state.subscriptions.validations[-1].problem or "")


def _raise_timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("no answer", request=request)


def _graph_of(world: MsWorld) -> Any:
    transport = world.http._transport
    assert isinstance(transport, httpx.ASGITransport)
    return transport.app.state.graph  # type: ignore[attr-defined]


async def test_lifetime_rules_client_state_and_resources(world: MsWorld) -> None:
    now = world.clock.now()
    short = await subscribe(world, expirationDateTime=subscription_time(now + timedelta(minutes=5)))
    assert parse_time(short.json()["expirationDateTime"]) == now + timedelta(minutes=45)
    too_long = await subscribe(
        world, expirationDateTime=subscription_time(now + timedelta(minutes=10_081))
    )
    assert too_long.status_code == 400
    assert "10080" in too_long.json()["error"]["message"]
    long_state = await subscribe(world, clientState="x" * 129)
    assert (long_state.status_code, graph_error(long_state)) == (400, "InvalidRequest")
    bad_resource = await subscribe(world, resource="/me/events")
    assert bad_resource.status_code == 400
    for resource in (
        "/me/mailFolders('inbox')/messages",
        "/me/mailFolders/inbox/messages",
        f"/users/{world.state.mailbox(EMAIL).user_id}/messages",
    ):
        assert (await subscribe(world, resource=resource)).status_code == 201


async def test_duplicates_may_answer_409(world: MsWorld) -> None:
    assert (await subscribe(world)).status_code == 201
    assert (await subscribe(world)).status_code == 201
    world.state.subscriptions.conflict_on_duplicate = True
    conflict = await subscribe(world)
    assert (conflict.status_code, graph_error(conflict)) == (409, "Conflict")


async def test_renew_reauthorize_delete(world: MsWorld) -> None:
    sub_id = (await subscribe(world)).json()["id"]
    later = world.clock.now() + timedelta(days=6)
    renewed = await world.send(
        "PATCH", f"/subscriptions/{sub_id}", {"expirationDateTime": subscription_time(later)}
    )
    assert renewed.status_code == 200
    assert parse_time(renewed.json()["expirationDateTime"]) == later
    reauthorized = await world.send("POST", f"/subscriptions/{sub_id}/reauthorize")
    assert reauthorized.status_code == 200
    assert world.state.subscriptions.by_id[sub_id].reauthorized_at == world.clock.now()
    assert (await world.send("DELETE", f"/subscriptions/{sub_id}")).status_code == 204
    unknown = await world.send(
        "PATCH", f"/subscriptions/{sub_id}", {"expirationDateTime": subscription_time(later)}
    )
    assert (unknown.status_code, graph_error(unknown)) == (404, "ResourceNotFound")


# -- change notifications --------------------------------------------------------------------


async def test_changes_notify_with_client_state(world: MsWorld) -> None:
    sub = (await subscribe(world)).json()
    message_id = world.add()
    world.state.update_message(EMAIL, message_id, is_read=True)
    world.state.delete_message(EMAIL, message_id)
    await settle(world)
    items = [i for hit in world.receiver.notifications() for i in hit.json()["value"]]
    assert [i["changeType"] for i in items] == ["created", "updated", "deleted"]
    user_id = world.state.mailbox(EMAIL).user_id
    first = items[0]
    assert first == {
        "id": first["id"],
        "subscriptionId": sub["id"],
        "subscriptionExpirationDateTime": sub["expirationDateTime"],
        "changeType": "created",
        "resource": f"Users/{user_id}/Messages/{message_id}",
        "resourceData": {
            "@odata.type": "#Microsoft.Graph.Message",
            "@odata.id": f"Users/{user_id}/Messages/{message_id}",
            "@odata.etag": first["resourceData"]["@odata.etag"],
            "id": message_id,
        },
        "clientState": "secret-state-1",
        "tenantId": world.state.tenant_id,
    }
    assert world.receiver.notifications()[0].headers["content-type"].startswith("application/json")
    assert all(d.outcome == "acked" for d in world.state.notifier.log)
    # Every item carries its own notification id, as Graph's do.
    assert all(isinstance(i["id"], str) and i["id"] for i in items)
    assert len({i["id"] for i in items}) == len(items)


async def test_items_queued_together_share_one_post(world: MsWorld) -> None:
    await subscribe(world)
    await subscribe(world, clientState="second")
    world.add()
    await settle(world)
    [hit] = world.receiver.notifications()
    assert sorted(i["clientState"] for i in hit.json()["value"]) == ["second", "secret-state-1"]


async def test_folder_scoped_subscription_sees_moves_in_and_out(world: MsWorld) -> None:
    await subscribe(world, resource="/me/mailFolders('inbox')/messages")
    elsewhere = world.add(folder="archive")
    inside = world.add()
    world.state.move_message(EMAIL, elsewhere, "inbox")
    world.state.move_message(EMAIL, inside, "junkemail")
    await settle(world)
    items = [i for hit in world.receiver.notifications() for i in hit.json()["value"]]
    assert [(i["changeType"], i["resourceData"]["id"]) for i in items] == [
        ("created", inside),
        ("created", elsewhere),
        ("deleted", inside),
    ]


async def test_failed_deliveries_are_retried_with_backoff(world: MsWorld) -> None:
    await subscribe(world)
    world.receiver.answers = [500, 503]
    world.add()
    await settle(world)
    [delivery] = world.state.notifier.log
    assert [a.status for a in delivery.attempts] == [500, 503, 202]
    assert delivery.outcome == "acked"
    assert len(world.receiver.notifications()) == 3
    assert world.clock.slept[-2:] == [pytest.approx(0.01), pytest.approx(0.02)]


async def test_slow_answers_count_as_failures(world: MsWorld) -> None:
    await subscribe(world)
    world.state.notifier.ack_timeout = 0.05
    world.receiver.hang = 0.5
    world.state.notifier.retention = 0.0  # give up after the first failure
    world.add()
    await settle(world)
    [delivery] = world.state.notifier.log
    assert delivery.outcome == "gave_up"
    assert delivery.attempts[0].status is None
    assert "no answer" in (delivery.attempts[0].error or "")


async def test_expired_subscriptions_stop_notifying(world: MsWorld) -> None:
    soon = subscription_time(world.clock.now() + timedelta(minutes=50))
    assert (await subscribe(world, expirationDateTime=soon)).status_code == 201
    world.clock.advance(50 * 60 + 1)
    world.add()
    await settle(world)
    assert world.receiver.notifications() == []
    assert (await world.get("/subscriptions")).json()["value"] == []


async def test_lifecycle_events_on_demand(world: MsWorld) -> None:
    sub_id = (await subscribe(world)).json()["id"]
    world.state.lifecycle(sub_id, "reauthorizationRequired")
    answered = await world.http.post(
        f"/_sim/subscriptions/{sub_id}/lifecycle", json={"event": "missed"}
    )
    assert answered.status_code == 204
    world.state.lifecycle(sub_id, "subscriptionRemoved")
    await settle(world)
    items = [
        i
        for hit in world.receiver.notifications("/push/graph/lifecycle")
        for i in hit.json()["value"]
    ]
    assert [i["lifecycleEvent"] for i in items] == [
        "reauthorizationRequired", "missed", "subscriptionRemoved"
    ]  # fmt: skip
    assert {i["subscriptionId"] for i in items} == {sub_id}
    assert {i["clientState"] for i in items} == {"secret-state-1"}
    assert set(items[0]) == {
        "subscriptionId", "subscriptionExpirationDateTime", "tenantId", "clientState",
        "lifecycleEvent",
    }  # fmt: skip
    assert sub_id not in world.state.subscriptions.by_id
    world.add()
    await settle(world)
    assert world.receiver.notifications() == []


async def test_notification_faults(world: MsWorld) -> None:
    await subscribe(world)
    faults = world.state.notifier.faults
    faults.update({"drop": 1})
    world.add("dropped")
    await settle(world)
    assert world.receiver.notifications() == []
    assert len(world.state.notifier.dropped) == 1
    faults.update({"duplicate": 2, "wrong_client_state": 1})
    world.add("twice")
    await settle(world)
    hits = world.receiver.notifications()
    assert len(hits) == 2
    assert hits[0].body == hits[1].body
    assert hits[0].json()["value"][0]["clientState"] != "secret-state-1"
    faults.update({"duplicate": 1, "reorder": 1})
    first = world.add("first")
    await settle(world)  # a held batch goes out at the latest when drained
    second = world.add("second")
    await settle(world)
    ids = [h.json()["value"][0]["resourceData"]["id"] for h in world.receiver.notifications()[2:]]
    assert ids == [first, second]


async def test_reorder_sends_the_held_batch_after_the_next(clock: ManualClock) -> None:
    async with ms_world(clock) as world:
        await subscribe(world)
        world.state.notifier.faults.update({"reorder": 1})
        first = world.add("first")
        second_hits: list[str] = []
        # Queue both before the deliverer starts: they form one batch, so hold a batch, then
        # queue another while the deliverer runs.
        transport = httpx.ASGITransport(app=world.receiver.app())
        async with (
            httpx.AsyncClient(transport=transport) as client,
            world.state.notifier.running(client),
        ):
            await _until(lambda: world.state.notifier._held is not None)
            second = world.add("second")
            await world.state.notifier.drain(timeout=10)
            second_hits = [
                h.json()["value"][0]["resourceData"]["id"] for h in world.receiver.notifications()
            ]
        assert second_hits == [second, first]


async def _until(condition: Any) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


async def test_control_api_lists_subscriptions_deliveries_and_validations(world: MsWorld) -> None:
    sub_id = (await subscribe(world)).json()["id"]
    world.add()
    await settle(world)
    listed = (await world.http.get("/_sim/subscriptions")).json()["subscriptions"]
    assert [(s["id"], s["notified"]) for s in listed] == [(sub_id, 1)]
    deliveries = (await world.http.get("/_sim/deliveries")).json()["deliveries"]
    assert [d["attempts"][0]["status"] for d in deliveries] == [202]
    checks = (await world.http.get("/_sim/validations")).json()["validations"]
    assert [unquote(c["url"]) for c in checks] == [NOTIFY_URL, LIFECYCLE_URL]
    bad = await world.http.post(f"/_sim/subscriptions/{sub_id}/lifecycle", json={"event": "x"})
    assert bad.status_code == 400
