"""What the live relay puts on the wire between processes: compact JSON payloads for
PostgreSQL NOTIFY, and their parsers (pure functions, tested without a server).

Two kinds of payload travel on the live channel, one on the wake channel::

    {"o": ORIGIN, "e": [[account_id, kind, message_id, remote_id, [folder_ids], change_id], ...]}
    {"o": ORIGIN, "r": [account_id, ...]}     reload these accounts ("r": null: every account)
    {"o": ORIGIN, "t": ["push", "sync"]}      wake-up topics

``ORIGIN`` names the sending process, so a process can ignore its own notifications. Payloads
are ASCII (``ensure_ascii``: their length in characters is their length in bytes) and stay
under ``MAX_PAYLOAD``: PostgreSQL refuses a NOTIFY payload of 8000 bytes or more. A batch of
events is split over as many payloads as it needs; an event that alone exceeds the limit (a
message in thousands of folders) travels as a reload of its account instead, which the
receiving bus turns into the overflow marker for that account's subscribers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from maildesk.domain.events import ChangeKind, MailEvent

# PostgreSQL's limit is 8000 bytes (exclusive) in a default build; the margin keeps us clear
# of it whatever the server's build or encoding adds.
MAX_PAYLOAD = 7900
MAX_ORIGIN = 64


@dataclass(frozen=True, slots=True)
class Packet:
    """One NOTIFY payload and the accounts it speaks for: if it is lost, those accounts'
    subscribers elsewhere must reload."""

    payload: str
    account_ids: frozenset[int]


@dataclass(frozen=True, slots=True)
class Reload:
    """Subscribers of ``account_ids`` (None: of every account) must reload from the store."""

    account_ids: frozenset[int] | None


@dataclass(frozen=True, slots=True)
class Received:
    """A parsed live-channel payload: events, or a reload signal."""

    origin: str
    events: tuple[MailEvent, ...] = ()
    reload: Reload | None = None


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True)


def _head(origin: str, key: str) -> str:
    return '{"o":' + _dumps(origin) + ',"' + key + '":'


def encode_events(origin: str, events: Sequence[MailEvent], *,
                  limit: int = MAX_PAYLOAD) -> list[Packet]:
    """``events`` in order, in as few payloads of at most ``limit`` bytes as they fit in; an
    event too big for a payload of its own becomes one reload of its account (last)."""
    head, tail = _head(origin, "e") + "[", "]}"
    budget = limit - len(head) - len(tail)
    packets: list[Packet] = []
    items: list[str] = []
    size = 0
    accounts: set[int] = set()
    oversize: set[int] = set()

    def flush() -> None:
        nonlocal size
        if items:
            packets.append(Packet(head + ",".join(items) + tail, frozenset(accounts)))
        items.clear()
        accounts.clear()
        size = 0

    for event in events:
        item = _dumps([event.account_id, event.kind.value, event.message_id, event.remote_id,
                       list(event.folder_ids), event.change_id])
        if len(item) > budget:
            oversize.add(event.account_id)
            continue
        extra = len(item) + (1 if items else 0)  # the comma
        if size + extra > budget:
            flush()
            extra = len(item)
        items.append(item)
        size += extra
        accounts.add(event.account_id)
    flush()
    if oversize:
        packets.append(reload_packet(origin, frozenset(oversize), limit=limit))
    return packets


def reload_packet(origin: str, account_ids: frozenset[int] | None, *,
                  limit: int = MAX_PAYLOAD) -> Packet:
    """A reload signal; for so many accounts that their ids do not fit, a reload of all."""
    head = _head(origin, "r")
    if account_ids is not None:
        payload = head + _dumps(sorted(account_ids)) + "}"
        if len(payload) <= limit:
            return Packet(payload, account_ids)
    return Packet(head + "null}", frozenset())


def encode_wake(origin: str, topics: Iterable[str]) -> str:
    return _head(origin, "t") + _dumps(sorted(set(topics))) + "}"


def _object(payload: str) -> tuple[str, dict[str, Any]]:
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise ValueError("not JSON") from exc
    if not isinstance(value, dict):
        raise ValueError("not an object")
    origin = value.get("o")
    if not isinstance(origin, str) or not origin or len(origin) > MAX_ORIGIN:
        raise ValueError("no origin")
    return origin, value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("not an integer")
    return value


def _event(row: Any) -> MailEvent:
    if not isinstance(row, list) or len(row) != 6:
        raise ValueError("not an event")
    account_id, kind, message_id, remote_id, folder_ids, change_id = row
    if not isinstance(remote_id, str) or not isinstance(folder_ids, list):
        raise ValueError("not an event")
    return MailEvent(_int(account_id), ChangeKind(kind), _int(message_id), remote_id,
                     tuple(_int(f) for f in folder_ids), _int(change_id))


def decode_live(payload: str) -> Received:
    """Parse a live-channel payload; ``ValueError`` if it is not one of ours."""
    origin, value = _object(payload)
    if "e" in value:
        rows = value["e"]
        if not isinstance(rows, list):
            raise ValueError("events are not a list")
        return Received(origin, events=tuple(_event(row) for row in rows))
    if "r" in value:
        ids = value["r"]
        if ids is None:
            return Received(origin, reload=Reload(None))
        if not isinstance(ids, list):
            raise ValueError("reload ids are not a list")
        return Received(origin, reload=Reload(frozenset(_int(i) for i in ids)))
    raise ValueError("neither events nor reload")


def decode_wake(payload: str) -> tuple[str, frozenset[str]]:
    """Parse a wake-channel payload into (origin, topics); ``ValueError`` if malformed."""
    origin, value = _object(payload)
    topics = value.get("t")
    if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
        raise ValueError("no topics")
    return origin, frozenset(topics)
