"""Every answer of the Microsoft Graph webhooks, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from sqlalchemy import select

from maildesk.domain.accounts import ProviderKind
from maildesk.domain.push import PushState
from maildesk.push.outlook_webhook import MISS_RELOAD_AFTER, REJECTION_LOG_EVERY
from maildesk.store import accounts as account_store
from maildesk.store import push as push_store
from maildesk.store.push import PushEvent
from maildesk.store.tables import push_events
from tests.support.fake_graph_push import OutlookRig, outlook_rig
from tests.support.harness import Harness

URL = "/maildesk/push/outlook"
LIFECYCLE_URL = "/maildesk/push/outlook/lifecycle"


@pytest.fixture
async def rig(harness: Harness) -> AsyncIterator[OutlookRig]:
    async with outlook_rig(harness) as r:
        yield r


async def _enabled(rig: OutlookRig, email: str) -> tuple[int, str, str]:
    """An Outlook mailbox with push registered: (account id, subscription id, clientState)."""
    account_id = await rig.add_outlook(email)
    row = await rig.push.enable(account_id, ProviderKind.OUTLOOK, {})
    assert row.sub.subscription_id is not None
    state = await rig.push.client_state(account_id)
    assert state is not None
    return account_id, row.sub.subscription_id, state


def change(subscription_id: str, client_state: str | None, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "subscriptionId": subscription_id,
        "subscriptionExpirationDateTime": "2026-01-08T09:00:00.000Z",
        "changeType": "created", "resource": "Users/u1/Messages/AAMk1",
        "resourceData": {"@odata.type": "#Microsoft.Graph.Message",
                         "@odata.id": "Users/u1/Messages/AAMk1", "@odata.etag": 'W/"CQAAAA"',
                         "id": "AAMk1"},
        "tenantId": "t-1",
    }
    if client_state is not None:
        item["clientState"] = client_state
    item.update(extra)
    return item


async def _account(rig: OutlookRig, account_id: int) -> account_store.AccountRow:
    async with rig.h.services.db.read() as conn:
        return await account_store.get(conn, account_id)


async def _events(rig: OutlookRig, account_id: int | None) -> list[PushEvent]:
    if account_id is not None:
        async with rig.h.services.db.read() as conn:
            return await push_store.events_since(conn, account_id, rig.h.clock.now())
    async with rig.h.services.db.read() as conn:
        rows = await conn.execute(select(push_events).where(push_events.c.account_id.is_(None)))
        return [PushEvent(int(r.id), None, r.provider, r.kind, r.detail, r.at) for r in rows]


@pytest.mark.parametrize("path", [URL, LIFECYCLE_URL])
async def test_validation_handshake_echoes_the_decoded_token_as_plain_text(
    rig: OutlookRig, path: str
) -> None:
    token = "Validation: Testing client application reachability for subscription " \
            "Request-Id: 6b2c1a3e-0d0f-4f7e-9c3b-2b6d7e5f1a90 &x=<b>"
    # Answered before anything else, with no subscription configured at all; Graph encodes
    # spaces as "+" (form style) but either style must decode.
    for encoded in (quote_plus(token), quote(token, safe="")):
        response = await rig.client.post(f"{path}?validationToken={encoded}",
                                         headers={"Content-Type": "text/plain; charset=utf-8"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.text == token
    too_long = await rig.client.post(path, params={"validationToken": "v" * 1025})
    assert too_long.status_code == 400
    assert (await rig.client.post(path, params={"validationToken": ""})).status_code == 400
    get = await rig.client.get(path)
    assert (get.status_code, get.headers["allow"]) == (405, "POST")


async def test_registration_performs_the_handshake_on_both_urls(rig: OutlookRig) -> None:
    await _enabled(rig, "hand@contoso.example")
    assert rig.handshakes == ["https://maildesk.example.com/maildesk/push/outlook",
                              "https://maildesk.example.com/maildesk/push/outlook/lifecycle"]


async def test_a_valid_notification_is_202_recorded_and_stamps_a_sync(rig: OutlookRig) -> None:
    account_id, sub_id, state = await _enabled(rig, "valid@contoso.example")
    before = (await _account(rig, account_id)).sync_request_seq
    rig.wakes.clear()
    body = {"value": [change(sub_id, state), change(sub_id, state, changeType="updated")]}
    response = await rig.client.post(URL, json=body)
    assert response.status_code == 202
    assert response.content == b""
    account = await _account(rig, account_id)
    assert account.sync_request_seq == before + 1, "one stamp per mailbox, not per item"
    assert account.sync_requested_at is not None
    assert rig.wakes["sync"] == 1
    async with rig.h.services.db.read() as conn:
        row = await push_store.get(conn, account_id, ProviderKind.OUTLOOK)
    assert row is not None
    assert row.sub.last_notification_at == rig.h.clock.now()
    kinds = [(e.kind, e.provider) for e in await _events(rig, account_id)]
    # Checkpoints 1 and 2 of the realtime timeline, exactly as the Gmail webhook records them.
    assert ("delivered", "outlook") in kinds
    assert ("verified", "outlook") in kinds
    assert rig.webhook.stats.accepted == 2
    assert not rig.webhook.stats.dropped


async def test_a_notification_brings_a_recovering_subscription_back(rig: OutlookRig) -> None:
    account_id, sub_id, state = await _enabled(rig, "back@contoso.example")
    async with rig.h.services.db.transaction() as conn:
        await push_store.upsert(conn, account_id=account_id, provider=ProviderKind.OUTLOOK,
                                now=rig.h.clock.now(), state=PushState.RECOVERING.value)
    assert (await rig.client.post(URL, json={"value": [change(sub_id, state)]})).status_code \
        == 202
    async with rig.h.services.db.read() as conn:
        row = await push_store.get(conn, account_id, ProviderKind.OUTLOOK)
    assert row is not None
    assert row.sub.state is PushState.ACTIVE


@pytest.mark.parametrize("case", ["wrong", "missing", "not_a_string", "other_mailboxes"])
async def test_a_client_state_mismatch_is_dropped_and_counted(
    rig: OutlookRig, case: str
) -> None:
    account_id, sub_id, state = await _enabled(rig, "victim@contoso.example")
    _, _, other_state = await _enabled(rig, "other@contoso.example")
    given: Any = {"wrong": state[:-1] + ("A" if state[-1] != "A" else "B"), "missing": None,
                  "not_a_string": 12, "other_mailboxes": other_state}[case]
    before = await _account(rig, account_id)
    rig.wakes.clear()
    item = change(sub_id, None)
    if given is not None:
        item["clientState"] = given
    response = await rig.client.post(URL, json={"value": [item]})
    assert response.status_code == 202, "dropped, not refused: Graph must not redeliver it"
    after = await _account(rig, account_id)
    assert after.sync_request_seq == before.sync_request_seq
    assert rig.wakes["sync"] == 0
    async with rig.h.services.db.read() as conn:
        row = await push_store.get(conn, account_id, ProviderKind.OUTLOOK)
    assert row is not None
    assert row.sub.last_notification_at is None, "a dropped item is not a notification"
    assert rig.webhook.stats.dropped == {"clientState mismatch": 1}
    events = [(e.kind, e.detail) for e in await _events(rig, account_id)]
    assert events[-2:] == [("delivered", "unverified"), ("rejected", "clientState mismatch")]


async def test_an_unknown_subscription_is_dropped_counted_and_rate_limited(
    rig: OutlookRig,
) -> None:
    account_id, _, state = await _enabled(rig, "known@contoso.example")
    forged = {"value": [change("not-ours", state)]}
    for _ in range(3):
        assert (await rig.client.post(URL, json=forged)).status_code == 202
    assert rig.webhook.stats.dropped == {"unknown subscription": 3}
    unowned = await _events(rig, None)
    assert [(e.kind, e.detail) for e in unowned] == [("rejected", "unknown subscription")], \
        "forged requests are counted, but cost at most one write per interval"
    assert [e for e in await _events(rig, account_id) if e.kind == "rejected"] == []
    rig.h.clock.advance(REJECTION_LOG_EVERY.total_seconds() + 1)
    assert (await rig.client.post(URL, json=forged)).status_code == 202
    assert len(await _events(rig, None)) == 2


async def test_one_post_with_items_of_several_subscriptions_judges_each(
    rig: OutlookRig,
) -> None:
    good_id, good_sub, good_state = await _enabled(rig, "good@contoso.example")
    bad_id, bad_sub, _ = await _enabled(rig, "bad@contoso.example")
    third_id, third_sub, third_state = await _enabled(rig, "third@contoso.example")
    seqs = {a: (await _account(rig, a)).sync_request_seq for a in (good_id, bad_id, third_id)}
    body = {"value": [change(good_sub, good_state), change(bad_sub, good_state),
                      change("unknown", good_state), change(third_sub, third_state)]}
    assert (await rig.client.post(URL, json=body)).status_code == 202
    after = {a: (await _account(rig, a)).sync_request_seq for a in seqs}
    assert after == {good_id: seqs[good_id] + 1, bad_id: seqs[bad_id],
                     third_id: seqs[third_id] + 1}
    assert rig.webhook.stats.accepted == 2
    assert rig.webhook.stats.dropped == {"clientState mismatch": 1, "unknown subscription": 1}


async def test_oversized_body_is_413_without_reading_it(rig: OutlookRig) -> None:
    big = b"x" * (64 * 1024 + 1)
    for path in (URL, LIFECYCLE_URL):
        assert (await rig.client.post(path, content=big)).status_code == 413
    streamed: list[int] = []

    async def stream() -> AsyncIterator[bytes]:
        for _ in range(100):
            streamed.append(1)
            yield b"y" * 4096

    # No Content-Length (chunked): the limit applies while reading.
    assert (await rig.client.post(URL, content=stream())).status_code == 413
    assert rig.webhook.stats.answers[413] == 3
    assert len(streamed) <= 64 * 1024 // 4096 + 1, "reading stopped at the limit"
    # A declared Content-Length over the limit is refused before anything is read.
    streamed.clear()
    response = await rig.client.post(URL, content=stream(),
                                     headers={"Content-Length": str(100 * 4096)})
    assert response.status_code == 413
    assert streamed == []


@pytest.mark.parametrize("body", [
    b"{not json", b"\xff\xfe", b"[" * 20000, b'"value"', b"[]", b'{"value": "x"}',
    b'{"values": []}', b'{"value": [1]}', b'{"value": [{"subscriptionId": "s"}, "x"]}',
])
async def test_malformed_bodies_are_400(rig: OutlookRig, body: bytes) -> None:
    for path in (URL, LIFECYCLE_URL):
        response = await rig.client.post(path, content=body,
                                         headers={"Content-Type": "application/json"})
        assert response.status_code == 400
        assert response.json() == {"error": "not a Microsoft Graph notification"}


async def test_an_empty_batch_is_accepted(rig: OutlookRig) -> None:
    assert (await rig.client.post(URL, json={"value": []})).status_code == 202


async def test_a_subscription_registered_elsewhere_is_known_within_a_second(
    rig: OutlookRig,
) -> None:
    _, sub_id, state = await _enabled(rig, "first@contoso.example")
    assert (await rig.client.post(URL, json={"value": [change(sub_id, state)]})).status_code \
        == 202
    # Another process registers a second mailbox: this process's cache was not invalidated.
    other = await rig.add_outlook("second@contoso.example")
    async with rig.h.services.db.transaction() as conn:
        await push_store.upsert(
            conn, account_id=other, provider=ProviderKind.OUTLOOK, now=rig.h.clock.now(),
            resource="/me/messages", subscription_id="sub-elsewhere", state="active",
            client_state_enc=rig.h.services.secrets.encrypt("elsewhere-state"),
        )
    item = {"value": [change("sub-elsewhere", "elsewhere-state")]}
    await rig.client.post(URL, json=item)
    assert rig.webhook.stats.dropped == {"unknown subscription": 1}, "within the reload guard"
    rig.h.clock.advance(MISS_RELOAD_AFTER.total_seconds())
    await rig.client.post(URL, json=item)
    assert rig.webhook.stats.accepted == 2


async def test_a_stopped_subscription_is_no_longer_ours(rig: OutlookRig) -> None:
    account_id, sub_id, state = await _enabled(rig, "stop@contoso.example")
    await rig.push.disable(account_id, ProviderKind.OUTLOOK)
    assert (await rig.client.post(URL, json={"value": [change(sub_id, state)]})).status_code \
        == 202
    assert rig.webhook.stats.dropped == {"unknown subscription": 1}


async def test_logs_never_contain_client_state_token_or_body(
    rig: OutlookRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    account_id, sub_id, state = await _enabled(rig, "quiet@contoso.example")
    token = "handshake-token-d41d8cd98f00b204"
    await rig.client.post(URL, params={"validationToken": token})
    good = {"value": [change(sub_id, state)]}
    wrong_state = "guessed-client-state-0123456789"
    bad = {"value": [change(sub_id, wrong_state), change("forged-subscription-id", state)]}
    lifecycle = {"value": [{"subscriptionId": sub_id, "clientState": state,
                            "lifecycleEvent": "missed", "tenantId": "t"}]}
    for path, body in ((URL, good), (URL, bad), (LIFECYCLE_URL, lifecycle),
                       (URL, {"value": "oops " + state})):
        await rig.client.post(path, content=json.dumps(body).encode())
    # Ours; not the test client's own request log. (A front server's access log may show the
    # handshake's query string: that one-time token is echoed to anyone who sends it anyway.)
    texts = [r.getMessage() for r in caplog.records if r.name.startswith("maildesk")]
    assert any("dropped" in t for t in texts), "the drops are logged (without secrets)"
    for text in texts:
        for secret in (state, wrong_state, token, "AAMk1", "resourceData"):
            assert secret not in text
    for record in caplog.records:  # nor anyone's: the database only ever sees it encrypted
        assert state not in record.getMessage()
    # The timeline does not hold them either.
    for event in await _events(rig, account_id):
        assert state not in event.detail
        assert wrong_state not in event.detail


async def test_gmail_route_is_still_served(rig: OutlookRig) -> None:
    response = await rig.client.get("/maildesk/push/gmail")
    assert response.status_code == 405

