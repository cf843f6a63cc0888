"""The ``/_sim`` control API: the python control methods of ``GoogleState`` over HTTP JSON.

For the demo and benchmarks, which drive a simulator running in another process. Answers are
JSON; an unknown mailbox or message is 404 and bad input 400, both as ``{"error": "..."}``.
The ``/pubsub/...`` routes (push subscriptions, push faults, the delivery log) come from
``maildesk.sim.pubsub_control``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from maildesk.errors import InputError
from maildesk.sim.control_endpoint import (
    control_endpoint,
    fault_routes,
    opt_str_field,
    str_field,
    strings_field,
)
from maildesk.sim.gmail_state import GoogleState
from maildesk.sim.pubsub_control import pubsub_routes


def control_routes(state: GoogleState) -> list[Route]:
    """Routes to mount under ``/_sim``."""

    endpoint = control_endpoint

    def email(request: Request) -> str:
        return str(request.path_params["email"])

    def message_id(request: Request) -> str:
        return str(request.path_params["message_id"])

    def history(request: Request) -> dict[str, Any]:
        return {"historyId": str(state.mailbox(email(request)).history_id)}

    def create_client(_: Request, body: dict[str, Any]) -> dict[str, Any]:
        client = state.create_client(
            opt_str_field(body, "client_id"),
            opt_str_field(body, "client_secret"),
            redirect_uris=strings_field(body, "redirect_uris", ()),
        )
        return {"client_id": client.client_id, "client_secret": client.client_secret}

    def create_grant(_: Request, body: dict[str, Any]) -> dict[str, Any]:
        token = state.create_grant(
            str_field(body, "email"),
            strings_field(body, "scopes", ()),
            client_id=opt_str_field(body, "client_id"),
        )
        return {"refresh_token": token}

    def revoke_grant(_: Request, body: dict[str, Any]) -> dict[str, Any]:
        state.revoke_grant(str_field(body, "refresh_token"))
        return {"revoked": True}

    def issue_token(_: Request, body: dict[str, Any]) -> dict[str, Any]:
        return {"access_token": state.issue_access_token(str_field(body, "refresh_token"))}

    def expire_tokens(_: Request, body: dict[str, Any]) -> dict[str, Any]:
        return {"expired": state.expire_access_tokens(opt_str_field(body, "email"))}

    def set_consent(_: Request, body: dict[str, Any]) -> dict[str, Any]:
        scopes = body.get("scopes")
        state.set_consent(
            str_field(body, "email"),
            allow=bool(body.get("allow", True)),
            scopes=None if scopes is None else strings_field(body, "scopes", ()),
        )
        return {"ok": True}

    def create_label(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        return {"id": state.create_label(email(request), str_field(body, "name"))}

    def add_message(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        date = body.get("internal_date")
        if date is not None and not isinstance(date, int):
            raise InputError("internal_date must be epoch milliseconds")
        new_id = state.add_message(
            email(request),
            subject=str_field(body, "subject", ""),
            sender=str_field(body, "sender"),
            to=str_field(body, "to", email(request)),
            text=str_field(body, "text", ""),
            html=str_field(body, "html", ""),
            labels=strings_field(body, "labels", ("INBOX", "UNREAD")),
            internal_date=date,
            message_id_header=opt_str_field(body, "message_id_header"),
            thread_id=opt_str_field(body, "thread_id"),
        )
        message = state.mailbox(email(request)).get(new_id)
        return {"id": new_id, "threadId": message.thread_id, **history(request)}

    def delete_message(request: Request, _: dict[str, Any]) -> dict[str, Any]:
        state.delete_message(email(request), message_id(request))
        return history(request)

    def trash_message(request: Request, _: dict[str, Any]) -> dict[str, Any]:
        state.trash_message(email(request), message_id(request))
        return labels_of(request)

    def untrash_message(request: Request, _: dict[str, Any]) -> dict[str, Any]:
        state.untrash_message(email(request), message_id(request))
        return labels_of(request)

    def modify_labels(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        state.modify_labels(
            email(request),
            message_id(request),
            strings_field(body, "add", ()),
            strings_field(body, "remove", ()),
        )
        return labels_of(request)

    def labels_of(request: Request) -> dict[str, Any]:
        message = state.mailbox(email(request)).get(message_id(request))
        return {"labelIds": sorted(message.label_ids), **history(request)}

    def expire_history(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        keep_after = body.get("keep_after")
        if keep_after is not None and not isinstance(keep_after, int):
            raise InputError("keep_after must be an integer history id")
        return {"minHistoryId": str(state.expire_history(email(request), keep_after))}

    def seed(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        count, days = body.get("count"), body.get("days", 365)
        if not isinstance(count, int) or not isinstance(days, int):
            raise InputError("count and days must be integers")
        added = state.seed_mailbox(email(request), count, days=days)
        return {"added": len(added), **history(request)}

    def snapshot(request: Request, _: dict[str, Any]) -> dict[str, Any]:
        return state.snapshot(email(request))

    box = "/gmail/{email}"
    one = box + "/messages/{message_id}"
    return [
        Route("/clients", endpoint(create_client), methods=["POST"]),
        Route("/grants", endpoint(create_grant), methods=["POST"]),
        Route("/grants/revoke", endpoint(revoke_grant), methods=["POST"]),
        Route("/tokens", endpoint(issue_token), methods=["POST"]),
        Route("/tokens/expire", endpoint(expire_tokens), methods=["POST"]),
        Route("/consent", endpoint(set_consent), methods=["POST"]),
        Route(box + "/labels", endpoint(create_label), methods=["POST"]),
        Route(box + "/messages", endpoint(add_message), methods=["POST"]),
        Route(one, endpoint(delete_message), methods=["DELETE"]),
        Route(one + "/trash", endpoint(trash_message), methods=["POST"]),
        Route(one + "/untrash", endpoint(untrash_message), methods=["POST"]),
        Route(one + "/labels", endpoint(modify_labels), methods=["POST"]),
        Route(box + "/expire-history", endpoint(expire_history), methods=["POST"]),
        Route(box + "/seed", endpoint(seed), methods=["POST"]),
        Route(box + "/state", endpoint(snapshot), methods=["GET"]),
        *fault_routes(state),
        *pubsub_routes(state),
    ]
