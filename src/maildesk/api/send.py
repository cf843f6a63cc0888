"""Sending under ``/api/v1``: new messages, replies, forwards, the outbox and its retry.

* ``POST /api/v1/accounts/{id}/messages`` ``{to, cc, bcc, subject, text}``
* ``POST /api/v1/messages/{message_id}/reply`` ``{all, text}``
* ``POST /api/v1/messages/{message_id}/forward`` ``{to, cc, bcc, text}``
* ``GET /api/v1/accounts/{id}/outbox``
* ``POST /api/v1/outbox/{outbox_id}/resend``

A send answers **202** with its outcome (``state``: ``sent``, ``retrying`` with
``next_attempt_at``, or ``failed`` with ``error`` — the message is then kept in Drafts and can be
resent). One sends only from a mailbox one may see; any other mailbox, message or outbox item is
answered 404 like a missing one. Bad input is a 400 naming the field.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from maildesk import sending
from maildesk.api.v1 import _account_id, _json, _route
from maildesk.domain.compose import Draft
from maildesk.errors import InputError, NotFound
from maildesk.send import service
from maildesk.send.service import SendOutcome
from maildesk.services import Services
from maildesk.store.users import UserRow

ACCEPTED = 202


def _addresses(body: dict[str, Any], name: str, *, required: bool = False) -> tuple[str, ...]:
    value = body.get(name)
    if value is None and not required:
        return ()
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise InputError(f"{name} must be a list of email addresses")
    return tuple(value)


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name, "")
    if not isinstance(value, str):
        raise InputError(f"{name} must be a string")
    return value


def _path_int(request: Request, name: str, what: str) -> int:
    value = str(request.path_params[name])
    if not value.isdigit():
        raise NotFound(f"no {what} with id {value}")
    return int(value)


async def _answer(s: Services, outcome: SendOutcome) -> dict[str, Any]:
    return sending.outcome_json(outcome, await sending.next_attempt(s, outcome))


async def send_message(request: Request, s: Services, user: UserRow,
                       visible: frozenset[int] | None) -> Any:
    account_id = _account_id(request, visible)
    body = await _json(request)
    draft = Draft(to=_addresses(body, "to", required=True), cc=_addresses(body, "cc"),
                  bcc=_addresses(body, "bcc"), subject=_text(body, "subject"),
                  text=_text(body, "text"))
    return await _answer(s, await service.send(s, account_id=account_id, draft=draft,
                                               user_id=user.id))


async def reply(request: Request, s: Services, user: UserRow,
                visible: frozenset[int] | None) -> Any:
    message_id = _path_int(request, "message_id", "message")
    body = await _json(request)
    reply_all = body.get("all", False)
    if not isinstance(reply_all, bool):
        raise InputError("all must be true or false")
    outcome = await sending.reply(s, message_id=message_id, reply_all=reply_all,
                                  text=_text(body, "text"), visible=visible, user_id=user.id)
    return await _answer(s, outcome)


async def forward(request: Request, s: Services, user: UserRow,
                  visible: frozenset[int] | None) -> Any:
    message_id = _path_int(request, "message_id", "message")
    body = await _json(request)
    outcome = await sending.forward(
        s, message_id=message_id, to=_addresses(body, "to", required=True),
        cc=_addresses(body, "cc"), bcc=_addresses(body, "bcc"), text=_text(body, "text"),
        visible=visible, user_id=user.id)
    return await _answer(s, outcome)


async def list_outbox(request: Request, s: Services, user: UserRow,
                      visible: frozenset[int] | None) -> Any:
    account_id = _account_id(request, visible)
    return [sending.item_json(item) for item in await service.outbox(s, account_id)]


async def resend(request: Request, s: Services, user: UserRow,
                 visible: frozenset[int] | None) -> Any:
    outbox_id = _path_int(request, "outbox_id", "outbox item")
    await sending.outbox_item(s, outbox_id, visible)
    return await _answer(s, await service.resend(s, outbox_id=outbox_id))


def send_routes() -> list[Route]:
    return [
        _route("/api/v1/accounts/{account_id}/messages", send_message, ["POST"],
               status=ACCEPTED),
        _route("/api/v1/messages/{message_id}/reply", reply, ["POST"], status=ACCEPTED),
        _route("/api/v1/messages/{message_id}/forward", forward, ["POST"], status=ACCEPTED),
        _route("/api/v1/accounts/{account_id}/outbox", list_outbox, ["GET"]),
        _route("/api/v1/outbox/{outbox_id}/resend", resend, ["POST"], status=ACCEPTED),
    ]
