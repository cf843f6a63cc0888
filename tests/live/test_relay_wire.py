"""The relay's wire format: compact ASCII JSON under PostgreSQL's NOTIFY limit, split as needed,
and an oversize event turned into a reload of its account."""

from __future__ import annotations

import json

import pytest

from maildesk.domain.events import ChangeKind, MailEvent
from maildesk.live.relay_wire import (
    MAX_PAYLOAD,
    Reload,
    decode_live,
    decode_wake,
    encode_events,
    encode_wake,
    reload_packet,
)

ORIGIN = "0123456789abcdef"
PG_NOTIFY_LIMIT = 8000  # PostgreSQL refuses a payload of this many bytes or more


def _events(count: int, account_id: int = 1) -> list[MailEvent]:
    return [MailEvent(account_id, ChangeKind.ADDED, n, f"remote-{n:06d}-é∂-" + "x" * 40,
                      (1, 2, n), change_id=1000 + n)
            for n in range(count)]


def test_a_small_batch_is_one_payload_and_round_trips() -> None:
    events = [*_events(3), MailEvent(2, ChangeKind.REMOVED, 9, "gone", (), 7)]
    packets = encode_events(ORIGIN, events)
    assert len(packets) == 1
    assert packets[0].account_ids == frozenset({1, 2})
    received = decode_live(packets[0].payload)
    assert received.origin == ORIGIN
    assert received.events == tuple(events)
    assert received.reload is None


def test_a_large_batch_is_split_below_the_limit_and_arrives_whole_in_order() -> None:
    events = _events(400) + _events(50, account_id=2)
    total = len(json.dumps([e.remote_id for e in events]))
    assert total > 3 * PG_NOTIFY_LIMIT, "the batch needs several payloads"
    packets = encode_events(ORIGIN, events)
    assert len(packets) > 3
    for packet in packets:
        encoded = packet.payload.encode("utf-8")
        assert len(encoded) <= MAX_PAYLOAD < PG_NOTIFY_LIMIT
        assert packet.payload.isascii()
        # What to reload if this payload is lost: exactly the accounts it carries.
        assert packet.account_ids == {e.account_id for e in decode_live(packet.payload).events}
    decoded = [e for p in packets for e in decode_live(p.payload).events]
    assert decoded == events


def test_an_event_too_big_for_one_payload_becomes_a_reload_of_its_account() -> None:
    huge = MailEvent(5, ChangeKind.UPDATED, 1, "r1", tuple(range(100_000, 102_000)), 3)
    small = _events(2, account_id=6)
    packets = encode_events(ORIGIN, [small[0], huge, small[1]])
    assert [decode_live(p.payload).events for p in packets[:-1]] == [tuple(small)]
    last = decode_live(packets[-1].payload)
    assert last.reload == Reload(frozenset({5}))
    assert packets[-1].account_ids == frozenset({5})
    assert all(len(p.payload) <= MAX_PAYLOAD for p in packets)


@pytest.mark.parametrize("limit", [200, 1000, MAX_PAYLOAD])
def test_splitting_respects_any_limit(limit: int) -> None:
    events = _events(60)
    packets = encode_events(ORIGIN, events, limit=limit)
    assert all(len(p.payload) <= limit for p in packets)
    assert [e for p in packets for e in decode_live(p.payload).events] == events


def test_a_reload_of_too_many_accounts_is_a_reload_of_all() -> None:
    few = reload_packet(ORIGIN, frozenset({3, 1}))
    assert decode_live(few.payload).reload == Reload(frozenset({1, 3}))
    many = reload_packet(ORIGIN, frozenset(range(10_000_000, 10_002_000)))
    assert len(many.payload) <= MAX_PAYLOAD
    assert decode_live(many.payload).reload == Reload(None)
    assert decode_live(reload_packet(ORIGIN, None).payload).reload == Reload(None)


def test_wake_topics_round_trip() -> None:
    assert decode_wake(encode_wake(ORIGIN, ["sync", "push", "sync"])) == (
        ORIGIN, frozenset({"sync", "push"}))


@pytest.mark.parametrize("payload", [
    "", "nope", "[]", '{"e": []}', '{"o": "", "e": []}', '{"o": "a"}',
    '{"o": "a", "e": [[1, "added", 2, "r", [], 0, 9]]}',
    '{"o": "a", "e": [[1, "teleported", 2, "r", [], 0]]}',
    '{"o": "a", "e": [["1", "added", 2, "r", [], 0]]}',
    '{"o": "a", "e": [[true, "added", 2, "r", [], 0]]}',
    '{"o": "a", "r": "all"}', '{"o": "a", "r": [1.5]}',
])
def test_malformed_live_payloads_are_refused(payload: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        decode_live(payload)


@pytest.mark.parametrize("payload", ['{"o": "a"}', '{"o": "a", "t": "sync"}', '{"o": 1}'])
def test_malformed_wake_payloads_are_refused(payload: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        decode_wake(payload)
