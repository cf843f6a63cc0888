"""The Google simulator as an ASGI app: OAuth 2.0 + Gmail API v1 + batch + ``/_sim`` control.

The app root plays both ``https://oauth2.googleapis.com`` / ``https://accounts.google.com``
(``/token``, ``/revoke``, ``/o/oauth2/v2/auth``) and ``https://gmail.googleapis.com``
(``/gmail/v1/users/{userId}/…``, ``/batch/gmail/v1``). Tests, the demo and benchmarks use it;
production code never imports it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
from collections.abc import AsyncIterator, Iterable

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from maildesk.errors import InputError
from maildesk.sim.batch import MAX_PARTS, format_batch, parse_batch
from maildesk.sim.faults import ErrorShape, FaultRule, Handler, oauth_fault_shape
from maildesk.sim.gmail_api import GmailApi
from maildesk.sim.gmail_state import GoogleState
from maildesk.sim.google_control import control_routes
from maildesk.sim.oauth_endpoints import OAuthEndpoints
from maildesk.sim.pubsub_control import certs_v1, certs_v3
from maildesk.sim.starlette_bridge import sim_request, starlette_response
from maildesk.sim.wire import SimRequest, SimResponse, google_error

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def create_google_app(
    state: GoogleState,
    *,
    faults: Iterable[FaultRule] = (),
    latency_ms: float | None = None,
    deliver_pushes: bool = False,
) -> Starlette:
    """A Starlette app serving ``state``. ``faults`` are added to ``state.faults`` and
    ``latency_ms`` (if given) sets its global latency; both can change later through
    ``state.add_fault``/``state.set_latency`` or ``/_sim/faults``. ``app.state.google`` is
    ``state``.

    The app also serves Google's OIDC certs (``/oauth2/v1/certs``, ``/oauth2/v3/certs``) for the
    Pub/Sub push tokens. With ``deliver_pushes`` the app's lifespan runs ``state.pubsub``'s
    deliverer over a real ``httpx.AsyncClient`` (for a simulator served by uvicorn; in-process
    tests run ``state.pubsub.running(client)`` themselves).
    """
    for rule in faults:
        state.add_fault(rule)
    if latency_ms is not None:
        state.set_latency(latency_ms)
    gmail = GmailApi(state)
    oauth = OAuthEndpoints(state)
    gmail_only = _gmail_only(gmail)
    boundaries = itertools.count(1)

    async def run(request: Request, handler: Handler, shape: ErrorShape | None = None) -> Response:
        answer = await state.faults.run(
            await sim_request(request), handler, global_latency=True, shape=shape
        )
        return starlette_response(answer)

    async def token(request: Request) -> Response:
        return await run(request, oauth.token, oauth_fault_shape)

    async def authorize(request: Request) -> Response:
        return await run(request, oauth.authorize, oauth_fault_shape)

    async def revoke(request: Request) -> Response:
        return await run(request, oauth.revoke, oauth_fault_shape)

    async def gmail_call(request: Request) -> Response:
        return await run(request, gmail.handle)

    async def batch_handler(outer: SimRequest) -> SimResponse:
        try:
            parts = parse_batch(outer.headers.get("content-type", ""), outer.body)
        except InputError as exc:
            return google_error(400, exc.message)
        if len(parts) > MAX_PARTS:
            return google_error(400, f"A batch request cannot contain more than {MAX_PARTS} calls")
        answers: list[tuple[str | None, SimResponse]] = []
        for part in parts:
            # The outer request's headers (Authorization) apply unless the part overrides them.
            headers = {k: v for k, v in outer.headers.items() if k == "authorization"}
            headers.update(part.request.headers)
            sub = dataclasses.replace(part.request, headers=headers)
            answer = await state.faults.run(sub, gmail_only, global_latency=False)
            answers.append((part.content_id, answer))
        boundary = f"batch_sim{next(boundaries):012d}"
        return SimResponse(
            content=format_batch(answers, boundary),
            media_type=f"multipart/mixed; boundary={boundary}",
        )

    async def batch(request: Request) -> Response:
        return await run(request, batch_handler)

    async def certs_v1_route(request: Request) -> Response:
        return await run(request, functools.partial(certs_v1, state))

    async def certs_v3_route(request: Request) -> Response:
        return await run(request, functools.partial(certs_v3, state))

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient() as client, state.pubsub.running(client):
            yield

    app = Starlette(
        routes=[
            Route("/token", token, methods=["POST"]),
            Route("/o/oauth2/v2/auth", authorize, methods=["GET"]),
            Route("/revoke", revoke, methods=["POST"]),
            Route("/batch/gmail/v1", batch, methods=["POST"]),
            # The discovery document's batchPath: what google-api-python-client posts to.
            Route("/batch", batch, methods=["POST"]),
            Route("/gmail/v1/{rest:path}", gmail_call, methods=_METHODS),
            Route("/oauth2/v1/certs", certs_v1_route, methods=["GET"]),
            Route("/oauth2/v3/certs", certs_v3_route, methods=["GET"]),
            Mount("/_sim", routes=control_routes(state)),
        ],
        lifespan=lifespan if deliver_pushes else None,
    )
    app.state.google = state
    return app


def _gmail_only(gmail: GmailApi) -> Handler:
    async def handle(request: SimRequest) -> SimResponse:
        if not request.path.startswith("/gmail/v1/"):
            return google_error(404, f"Batch calls must target /gmail/v1/, not {request.path}")
        return await gmail.handle(request)

    return handle
