"""Delta queries on a folder's messages: rounds from scratch, incremental rounds, paging, 410.

A round from scratch lists the folder's current messages newest first; an incremental round
(from a ``$deltatoken``) lists what changed after the token's sequence number: current items for
messages created or updated there, ``@removed`` ``deleted`` for deleted ones and ``changed`` for
ones moved out. Pages hold ``Prefer: odata.maxpagesize`` items (100 when absent) and end with an
``@odata.nextLink`` (``$skiptoken``) or, on the last page, an ``@odata.deltaLink``
(``$deltatoken``). A round from scratch hands out a delta token for the sequence number at its
start, so changes made while it was paging come again in the next round (items may repeat, as
Graph's do).

Tokens are opaque to clients (base64url JSON here) and carry the folder, the folder's expiry
epoch and ``$select``; ``OutlookMailbox.expire_delta`` makes older epochs answer 410.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from maildesk.errors import InputError
from maildesk.sim.graph_mailbox import OutlookMailbox
from maildesk.sim.graph_objects import GraphFolder

DEFAULT_PAGE = 100
MAX_PAGE = 1000
_MAXPAGESIZE = re.compile(r"odata\.maxpagesize\s*=\s*(\d+)", re.IGNORECASE)
_MESSAGE_TYPE = "#microsoft.graph.message"


@dataclass(slots=True)
class DeltaFaults:
    """``duplicate``: the next N delta pages repeat their first item at their end."""

    duplicate: int = 0


class DeltaGone(Exception):
    """The token is dead: answer ``status`` with Graph error ``code``."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(code)
        self.status, self.code = status, code


@dataclass(frozen=True, slots=True)
class DeltaPage:
    """One page: the items, the link (next or delta) and which one it is."""

    items: list[dict[str, Any]]
    link: str
    last: bool
    page_size: int


def page_size(prefer: str) -> int:
    """The page size a ``Prefer`` header asks for (``odata.maxpagesize=N``), bounded."""
    match = _MAXPAGESIZE.search(prefer)
    if match is None:
        return DEFAULT_PAGE
    return max(1, min(MAX_PAGE, int(match.group(1))))


def delta_page(
    mailbox: OutlookMailbox,
    folder: GraphFolder,
    query: Mapping[str, str],
    *,
    link_base: str,
    size: int,
    faults: DeltaFaults,
) -> DeltaPage:
    """Answer one delta request. ``link_base`` is the absolute URL of this delta endpoint.

    ``DeltaGone`` for a dead token, ``InputError`` for a malformed one.
    """
    expiry = mailbox.expiry[folder.id]
    skip, delta = query.get("$skiptoken"), query.get("$deltatoken")
    if skip and delta:
        raise InputError("$skiptoken and $deltatoken cannot be used together")
    token = skip or delta
    state = _decode(token) if token else None
    if state is not None:
        if state.get("f") != folder.id:
            raise InputError("The delta token belongs to another folder.")
        if state.get("e") != expiry.epoch:
            raise DeltaGone(expiry.status, expiry.code)
    select = _select(state["sel"] if state else query.get("$select"))
    base = {"f": folder.id, "e": expiry.epoch, "sel": ",".join(select)}
    if state is None or (delta and state.get("m") == "d"):
        if state is None:  # a new round from scratch
            round_state = {**base, "m": "s", "s": mailbox.seq, "k": None}
        else:  # a new incremental round from the delta token's sequence number
            round_state = {**base, "m": "i", "a": state["s"], "u": mailbox.seq, "o": 0}
    else:
        round_state = state
    if round_state["m"] == "s":
        items, next_state = _scratch(mailbox, folder, round_state, select, size)
    elif round_state["m"] == "i":
        items, next_state = _incremental(mailbox, folder, round_state, select, size)
    else:
        raise InputError("The skip token is not valid.")
    if faults.duplicate > 0 and items:
        faults.duplicate -= 1
        items.append(dict(items[0]))
    if next_state is not None:
        return DeltaPage(items, f"{link_base}?$skiptoken={_encode(next_state)}", False, size)
    upto = round_state["s"] if round_state["m"] == "s" else round_state["u"]
    token = _encode({**base, "m": "d", "s": upto})
    return DeltaPage(items, f"{link_base}?$deltatoken={token}", True, size)


def _scratch(
    mailbox: OutlookMailbox,
    folder: GraphFolder,
    state: dict[str, Any],
    select: Sequence[str],
    size: int,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    after = None if state["k"] is None else (float(state["k"][0]), str(state["k"][1]))
    messages, more = mailbox.before(folder.id, after, size)
    items = [_item(m.to_json(select or None)) for m in messages]
    if not more or not messages:
        return items, None
    return items, {**state, "k": [messages[-1].key[0], messages[-1].id]}


def _incremental(
    mailbox: OutlookMailbox,
    folder: GraphFolder,
    state: dict[str, Any],
    select: Sequence[str],
    size: int,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    changed = mailbox.changed_since(folder.id, int(state["a"]), int(state["u"]))
    offset = int(state["o"])
    items: list[dict[str, Any]] = []
    for message_id in changed[offset : offset + size]:
        message = mailbox.messages.get(message_id)
        if message is not None and message.folder_id == folder.id:
            items.append(_item(message.to_json(select or None)))
        else:
            reason = "deleted" if message is None else "changed"
            items.append(
                {"@odata.type": _MESSAGE_TYPE, "id": message_id, "@removed": {"reason": reason}}
            )
    if offset + size >= len(changed):
        return items, None
    return items, {**state, "o": offset + size}


def _item(message: dict[str, Any]) -> dict[str, Any]:
    return {"@odata.type": _MESSAGE_TYPE, **message}


def _select(text: str | None) -> list[str]:
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def _encode(state: Mapping[str, Any]) -> str:
    raw = json.dumps(state, separators=(",", ":")).encode()
    return quote(base64.urlsafe_b64encode(raw).decode().rstrip("="), safe="")


def _decode(token: str) -> dict[str, Any]:
    try:
        padded = token + "=" * (-len(token) % 4)
        state = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InputError("The delta or skip token is not valid.") from None
    if not isinstance(state, dict) or "f" not in state or "e" not in state or "m" not in state:
        raise InputError("The delta or skip token is not valid.")
    return state
