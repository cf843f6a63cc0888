"""The Microsoft simulator as an ASGI app: identity platform + Graph v1.0 + ``/_sim`` control.

The app root plays ``https://login.microsoftonline.com`` (``/{tenant}/oauth2/v2.0/token`` and
``/authorize``) and ``/v1.0`` plays ``https://graph.microsoft.com/v1.0``, so one simulator base
``B`` is the authority ``B`` and the Graph base ``B/v1.0``. Tests, the demo and benchmarks use
it; production code never imports it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from maildesk.sim.faults import ErrorShape, FaultRule, Handler
from maildesk.sim.graph_api import GraphApi
from maildesk.sim.graph_wire import aad_fault_shape, graph_fault_shape
from maildesk.sim.microsoft_control import microsoft_control_routes
from maildesk.sim.microsoft_identity_endpoints import IdentityEndpoints
from maildesk.sim.microsoft_state import MicrosoftState
from maildesk.sim.starlette_bridge import sim_request, starlette_response

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def create_microsoft_app(
    state: MicrosoftState,
    *,
    outbound: httpx.AsyncClient | None = None,
    faults: Iterable[FaultRule] = (),
    latency_ms: float | None = None,
    deliver_notifications: bool = False,
) -> Starlette:
    """A Starlette app serving ``state`` (``app.state.microsoft``).

    ``outbound`` is the HTTP client the subscription validation handshake goes through (tests:
    an ``httpx.AsyncClient`` over ``httpx.ASGITransport`` to the MailDesk app). With
    ``deliver_notifications`` (for a simulator served by uvicorn) the app's lifespan opens a
    real ``httpx.AsyncClient`` — used for validation too when ``outbound`` is None — and runs
    ``state.notifier`` over it; in-process tests run ``state.notifier.running(client)``
    themselves. ``faults`` and ``latency_ms`` go to ``state.faults``.
    """
    for rule in faults:
        state.add_fault(rule)
    if latency_ms is not None:
        state.set_latency(latency_ms)
    graph = GraphApi(state, outbound)
    identity = IdentityEndpoints(state.identity, lambda: state.mailboxes.keys())

    async def run(request: Request, handler: Handler, shape: ErrorShape) -> Response:
        answer = await state.faults.run(
            await sim_request(request), handler, global_latency=True, shape=shape
        )
        return starlette_response(answer)

    async def token(request: Request) -> Response:
        return await run(request, identity.token, aad_fault_shape)

    async def authorize(request: Request) -> Response:
        return await run(request, identity.authorize, aad_fault_shape)

    async def graph_call(request: Request) -> Response:
        return await run(request, graph.handle, graph_fault_shape)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient() as client, state.notifier.running(client):
            if graph.outbound is None:
                graph.outbound = client
            try:
                yield
            finally:
                if graph.outbound is client:
                    graph.outbound = None

    app = Starlette(
        routes=[
            Route("/{tenant}/oauth2/v2.0/token", token, methods=["POST"]),
            Route("/{tenant}/oauth2/v2.0/authorize", authorize, methods=["GET"]),
            Route("/v1.0/{rest:path}", graph_call, methods=_METHODS),
            Mount("/_sim", routes=microsoft_control_routes(state)),
        ],
        lifespan=lifespan if deliver_notifications else None,
    )
    app.state.microsoft = state
    app.state.graph = graph
    return app
