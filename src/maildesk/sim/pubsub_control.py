"""HTTP for the simulated Pub/Sub: Google's certs endpoints and the ``/_sim/pubsub`` control API.

* ``GET /oauth2/v1/certs`` → ``{kid: PEM certificate}``; ``GET /oauth2/v3/certs`` → JWKS; both
  with ``Cache-Control: public, max-age=N`` (``state.pubsub.keys.max_age``).
* ``POST /_sim/pubsub/subscriptions`` ``{topic, endpoint, audience?, service_account?,
  subscription?}`` → the subscription; ``GET`` lists them; ``DELETE /_sim/pubsub/subscriptions``
  ``{subscription}`` removes one.
* ``GET /_sim/pubsub/faults``; ``POST`` sets fields of ``PushFaults`` (``drop``, ``delay_ms``,
  ``duplicate``, ``reorder``, ``wrong_audience``, ``expired``, ``foreign_signer``,
  ``service_account``, ``token_count``) plus the actions ``rotate_key: true`` and
  ``drop_old_key: true`` (with ``rotate_key``: drop the old keys from the certs at once);
  ``DELETE`` clears the faults.
* ``GET /_sim/pubsub/log?email=&limit=`` → ``{records: [...], stats: {...}}`` (newest last).
* ``GET /_sim/pubsub/keys`` → the published kids and the signing kid.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from maildesk.errors import InputError, NotFound
from maildesk.sim.control_endpoint import control_endpoint, opt_str_field, str_field
from maildesk.sim.gmail_state import GoogleState
from maildesk.sim.wire import SimRequest, SimResponse

_ACTIONS = frozenset({"rotate_key", "drop_old_key"})


async def certs_v1(state: GoogleState, _: SimRequest) -> SimResponse:
    """``GET /oauth2/v1/certs``."""
    keys = state.pubsub.keys
    return SimResponse(payload=keys.certs_v1(), headers={"Cache-Control": keys.cache_control()})


async def certs_v3(state: GoogleState, _: SimRequest) -> SimResponse:
    """``GET /oauth2/v3/certs``."""
    keys = state.pubsub.keys
    return SimResponse(payload=keys.certs_v3(), headers={"Cache-Control": keys.cache_control()})


def pubsub_routes(state: GoogleState) -> list[Route]:
    """Routes to mount under ``/_sim`` (paths start with ``/pubsub``)."""

    endpoint = control_endpoint

    def add_subscription(_: Request, body: dict[str, Any]) -> dict[str, Any]:
        sub = state.pubsub.add_subscription(
            str_field(body, "topic"),
            str_field(body, "endpoint"),
            audience=opt_str_field(body, "audience"),
            service_account=opt_str_field(body, "service_account"),
            subscription=opt_str_field(body, "subscription"),
        )
        return sub.to_json()

    def list_subscriptions(_: Request, __: dict[str, Any]) -> dict[str, Any]:
        return {"subscriptions": [s.to_json() for s in state.pubsub.subscriptions.values()]}

    def remove_subscription(_: Request, body: dict[str, Any]) -> None:
        name = str_field(body, "subscription")
        if not state.pubsub.remove_subscription(name):
            raise NotFound(f"no subscription {name}")

    def get_faults(_: Request, __: dict[str, Any]) -> dict[str, Any]:
        return {"faults": state.pubsub.faults.to_json(), **keys(_, __)}

    def set_faults(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        actions = {k: body[k] for k in _ACTIONS if k in body}
        if not all(isinstance(v, bool) for v in actions.values()):
            raise InputError("rotate_key and drop_old_key must be booleans")
        if actions.get("drop_old_key") and not actions.get("rotate_key"):
            raise InputError("drop_old_key goes with rotate_key: true")
        state.pubsub.inject(**{k: v for k, v in body.items() if k not in _ACTIONS})
        if actions.get("rotate_key"):
            state.pubsub.rotate_key(drop_old=bool(actions.get("drop_old_key")))
        return get_faults(request, body)

    def clear_faults(_: Request, __: dict[str, Any]) -> None:
        state.pubsub.clear_faults()

    def get_log(request: Request, _: dict[str, Any]) -> dict[str, Any]:
        email = request.query_params.get("email")
        limit_text = request.query_params.get("limit")
        try:
            limit = None if limit_text is None else int(limit_text)
        except ValueError:
            raise InputError("limit must be an integer") from None
        records = [r for r in state.pubsub.log if email is None or r.email == email]
        if limit is not None:
            records = records[-limit:] if limit > 0 else []
        return {
            "records": [r.to_json() for r in records],
            "stats": state.pubsub.stats.to_json(),
        }

    def keys(_: Request, __: dict[str, Any]) -> dict[str, Any]:
        published = state.pubsub.keys.published
        return {
            "signing_kid": state.pubsub.keys.current.kid,
            "published_kids": [k.kid for k in published],
        }

    return [
        Route("/pubsub/subscriptions", endpoint(add_subscription), methods=["POST"]),
        Route("/pubsub/subscriptions", endpoint(list_subscriptions), methods=["GET"]),
        Route("/pubsub/subscriptions", endpoint(remove_subscription), methods=["DELETE"]),
        Route("/pubsub/faults", endpoint(get_faults), methods=["GET"]),
        Route("/pubsub/faults", endpoint(set_faults), methods=["POST"]),
        Route("/pubsub/faults", endpoint(clear_faults), methods=["DELETE"]),
        Route("/pubsub/log", endpoint(get_log), methods=["GET"]),
        Route("/pubsub/keys", endpoint(keys), methods=["GET"]),
    ]
