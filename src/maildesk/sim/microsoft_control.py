"""The Microsoft simulator's ``/_sim`` control API: ``MicrosoftState``'s methods over JSON.

For the demo and benchmarks, which drive a simulator in another process. An unknown mailbox,
message or subscription is 404 and bad input 400, both as ``{"error": "..."}``.

* ``POST /apps`` ``{client_id?, client_secret?, redirect_uris?}``; ``POST /mailboxes``
  ``{email, display_name?, well_known?}``; ``POST /grants`` ``{email, client_id?, kind?,
  scopes?}`` → ``{refresh_token}``; ``POST /grants/revoke`` ``{email, code?}``;
  ``POST /tokens`` ``{refresh_token}`` → ``{access_token}``; ``POST /tokens/expire`` ``{email?}``;
  ``POST /token-errors`` ``{error, count?, email?}``; ``POST /identity`` ``{rotation?,
  scope_style?, opaque_tokens?}``; ``GET /exchanges``.
* ``/mailboxes/{email}``: ``POST …/folders`` ``{name, parent?}``; ``POST …/messages``
  ``{folder?, subject?, sender?, to?, html?, text?, received_at?, is_read?, flagged?,
  internet_message_id?}``; ``PATCH``/``DELETE …/messages/{id}``; ``POST …/messages/{id}/move``
  ``{folder}``; ``POST …/expire-delta`` ``{folder?, code?, status?}``; ``POST …/seed``
  ``{count, days?}``; ``GET …/state``.
* ``GET /subscriptions``; ``POST /subscriptions/{id}/lifecycle`` ``{event}``;
  ``POST /subscriptions/settings`` ``{max_minutes?, conflict_on_duplicate?}``;
  ``GET /deliveries?limit=``; ``GET /validations``.
* ``GET|POST|DELETE /faults`` (Graph/identity rules + ``latency_ms``); ``GET|POST|DELETE
  /notify-faults`` (``NotifyFaults``); ``POST /delta-faults`` ``{duplicate}``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from maildesk.errors import InputError
from maildesk.sim.control_endpoint import control_endpoint as endpoint
from maildesk.sim.control_endpoint import (
    count_field,
    fault_routes,
    opt_str_field,
    str_field,
    strings_field,
)
from maildesk.sim.graph_wire import parse_time
from maildesk.sim.microsoft_state import MicrosoftState


def microsoft_control_routes(state: MicrosoftState) -> list[Route]:
    """Routes to mount under ``/_sim``."""

    def email(request: Request) -> str:
        return str(request.path_params["email"])

    def mid(request: Request) -> str:
        return str(request.path_params["message_id"])

    def create_app(_: Request, body: dict[str, Any]) -> dict[str, Any]:
        app = state.register_app(
            opt_str_field(body, "client_id"),
            opt_str_field(body, "client_secret"),
            redirect_uris=strings_field(body, "redirect_uris") or (),
        )
        return {"client_id": app.client_id, "client_secret": app.client_secret}

    def create_mailbox(_: Request, body: dict[str, Any]) -> dict[str, Any]:
        known = strings_field(body, "well_known")
        kwargs: dict[str, Any] = {} if known is None else {"well_known": known}
        mailbox = state.create_mailbox(
            str_field(body, "email"), display_name=opt_str_field(body, "display_name"), **kwargs
        )
        return {"id": mailbox.user_id, "email": mailbox.email}

    def grant(_: Request, body: dict[str, Any]) -> dict[str, Any]:
        token = state.grant(
            str_field(body, "email"),
            opt_str_field(body, "client_id"),
            kind=opt_str_field(body, "kind") or "graph",
            scopes=strings_field(body, "scopes"),
        )
        return {"refresh_token": token}

    def revoke(_: Request, body: dict[str, Any]) -> dict[str, Any]:
        code = opt_str_field(body, "code") or "50173"
        return {"revoked": state.revoke(str_field(body, "email"), code=code)}

    def issue(_: Request, body: dict[str, Any]) -> dict[str, Any]:
        return {"access_token": state.issue_access_token(str_field(body, "refresh_token"))}

    def expire_tokens(_: Request, body: dict[str, Any]) -> dict[str, Any]:
        return {"expired": state.expire_access_tokens(opt_str_field(body, "email"))}

    def token_error(_: Request, body: dict[str, Any]) -> dict[str, Any]:
        state.queue_token_error(
            str_field(body, "error"),
            count_field(body, "count", 1),
            email=opt_str_field(body, "email"),
        )
        return {"queued": len(state.identity.queued)}

    def identity(_: Request, body: dict[str, Any]) -> dict[str, Any]:
        if (rotation := opt_str_field(body, "rotation")) is not None:
            state.set_rotation(rotation)
        if (style := opt_str_field(body, "scope_style")) is not None:
            state.set_scope_style(style)
        if "opaque_tokens" in body:
            state.identity.opaque_tokens = bool(body["opaque_tokens"])
        reg = state.identity
        return {
            "rotation": reg.rotation,
            "scope_style": reg.scope_style,
            "opaque_tokens": reg.opaque_tokens,
        }

    def exchanges(_: Request, __: dict[str, Any]) -> dict[str, Any]:
        return {
            "exchanges": [
                {
                    "at": e.at.isoformat(),
                    "grant_type": e.grant_type,
                    "client_id": e.client_id,
                    "used": e.used,
                    "issued": e.issued,
                    "email": e.email,
                    "error": e.error,
                }
                for e in state.exchanges
            ]
        }

    def add_folder(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": state.add_folder(
                email(request), str_field(body, "name"), parent=opt_str_field(body, "parent")
            )
        }

    def add_message(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        received = opt_str_field(body, "received_at")
        try:
            when = None if received is None else parse_time(received)
        except ValueError:
            raise InputError("received_at must be an ISO 8601 time with a zone") from None
        to = body.get("to")
        if to is not None and not isinstance(to, str):
            to = strings_field(body, "to")
        new_id = state.add_message(
            email(request),
            folder=opt_str_field(body, "folder") or "inbox",
            subject=opt_str_field(body, "subject") or "",
            sender=opt_str_field(body, "sender"),
            to=to,
            html=opt_str_field(body, "html") or "",
            text=opt_str_field(body, "text") or "",
            received_at=when,
            is_read=bool(body.get("is_read", False)),
            flagged=bool(body.get("flagged", False)),
            internet_message_id=opt_str_field(body, "internet_message_id"),
        )
        return {"id": new_id}

    def update_message(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        read, flagged = body.get("is_read"), body.get("flagged")
        if (read is not None and not isinstance(read, bool)) or (
            flagged is not None and not isinstance(flagged, bool)
        ):
            raise InputError("is_read and flagged must be booleans")
        state.update_message(
            email(request),
            mid(request),
            is_read=read,
            flagged=flagged,
            subject=opt_str_field(body, "subject"),
        )
        return {"id": mid(request)}

    def delete_message(request: Request, _: dict[str, Any]) -> None:
        state.delete_message(email(request), mid(request))

    def move_message(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        state.move_message(email(request), mid(request), str_field(body, "folder"))
        return {"id": mid(request)}

    def expire_delta(request: Request, body: dict[str, Any]) -> None:
        state.expire_delta(
            email(request),
            opt_str_field(body, "folder"),
            code=opt_str_field(body, "code") or "SyncStateNotFound",
            status=count_field(body, "status", 410),
        )

    def seed(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        added = state.seed_mailbox(
            email(request), count_field(body, "count", 0), days=count_field(body, "days", 365)
        )
        return {"added": len(added)}

    def snapshot(request: Request, _: dict[str, Any]) -> dict[str, Any]:
        return state.snapshot(email(request))

    def subscriptions(_: Request, __: dict[str, Any]) -> dict[str, Any]:
        subs = state.subscriptions.by_id.values()
        return {
            "subscriptions": [
                {**s.to_json(), "email": s.email, "notified": s.notified} for s in subs
            ]
        }

    def lifecycle(request: Request, body: dict[str, Any]) -> None:
        state.lifecycle(str(request.path_params["sub_id"]), str_field(body, "event"))

    def sub_settings(_: Request, body: dict[str, Any]) -> dict[str, Any]:
        subs = state.subscriptions
        if "max_minutes" in body:
            subs.max_minutes = count_field(body, "max_minutes", subs.max_minutes)
        if "conflict_on_duplicate" in body:
            subs.conflict_on_duplicate = bool(body["conflict_on_duplicate"])
        return {
            "max_minutes": subs.max_minutes,
            "conflict_on_duplicate": subs.conflict_on_duplicate,
        }

    def deliveries(request: Request, _: dict[str, Any]) -> dict[str, Any]:
        limit = request.query_params.get("limit")
        records = list(state.notifier.log)
        if limit is not None:
            if not limit.isdigit():
                raise InputError("limit must be an integer")
            records = records[-int(limit) :] if int(limit) else []
        return {
            "deliveries": [d.to_json() for d in records],
            "dropped": len(state.notifier.dropped),
        }

    def validations(_: Request, __: dict[str, Any]) -> dict[str, Any]:
        return {
            "validations": [
                {
                    "url": v.url,
                    "at": v.at.isoformat(),
                    "status": v.status,
                    "ok": v.ok,
                    "problem": v.problem,
                }
                for v in state.subscriptions.validations
            ]
        }

    def notify_faults(_: Request, __: dict[str, Any]) -> dict[str, Any]:
        return state.notifier.faults.to_json()

    def set_notify_faults(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        state.notifier.faults.update(body)
        return notify_faults(request, body)

    def clear_notify_faults(_: Request, __: dict[str, Any]) -> None:
        state.notifier.faults.reset()

    def delta_faults(_: Request, body: dict[str, Any]) -> dict[str, Any]:
        state.delta_faults.duplicate = count_field(body, "duplicate", 0)
        return {"duplicate": state.delta_faults.duplicate}

    box = "/mailboxes/{email}"
    one = box + "/messages/{message_id}"
    return [
        Route("/apps", endpoint(create_app), methods=["POST"]),
        Route("/mailboxes", endpoint(create_mailbox), methods=["POST"]),
        Route("/grants", endpoint(grant), methods=["POST"]),
        Route("/grants/revoke", endpoint(revoke), methods=["POST"]),
        Route("/tokens", endpoint(issue), methods=["POST"]),
        Route("/tokens/expire", endpoint(expire_tokens), methods=["POST"]),
        Route("/token-errors", endpoint(token_error), methods=["POST"]),
        Route("/identity", endpoint(identity), methods=["POST"]),
        Route("/exchanges", endpoint(exchanges), methods=["GET"]),
        Route(box + "/folders", endpoint(add_folder), methods=["POST"]),
        Route(box + "/messages", endpoint(add_message), methods=["POST"]),
        Route(one, endpoint(update_message), methods=["PATCH"]),
        Route(one, endpoint(delete_message), methods=["DELETE"]),
        Route(one + "/move", endpoint(move_message), methods=["POST"]),
        Route(box + "/expire-delta", endpoint(expire_delta), methods=["POST"]),
        Route(box + "/seed", endpoint(seed), methods=["POST"]),
        Route(box + "/state", endpoint(snapshot), methods=["GET"]),
        Route("/subscriptions", endpoint(subscriptions), methods=["GET"]),
        Route("/subscriptions/settings", endpoint(sub_settings), methods=["POST"]),
        Route("/subscriptions/{sub_id}/lifecycle", endpoint(lifecycle), methods=["POST"]),
        Route("/deliveries", endpoint(deliveries), methods=["GET"]),
        Route("/validations", endpoint(validations), methods=["GET"]),
        *fault_routes(state, lambda: {"delta_duplicate": state.delta_faults.duplicate}),
        Route("/notify-faults", endpoint(notify_faults), methods=["GET"]),
        Route("/notify-faults", endpoint(set_notify_faults), methods=["POST"]),
        Route("/notify-faults", endpoint(clear_notify_faults), methods=["DELETE"]),
        Route("/delta-faults", endpoint(delta_faults), methods=["POST"]),
    ]
