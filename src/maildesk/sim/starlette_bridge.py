"""Between Starlette and the simulators' own request/answer types (:mod:`maildesk.sim.wire`),
for the ASGI apps of both simulators."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from maildesk.sim.wire import SimRequest, SimResponse

# Statuses whose empty answers go out without a Content-Type.
_BODILESS = (202, 204, 302)


async def sim_request(request: Request) -> SimRequest:
    """The handlers' view of ``request`` (lower-case header names, the base URL it came to)."""
    return SimRequest(
        method=request.method,
        path=request.url.path,
        query=request.query_params.multi_items(),
        headers={k.lower(): v for k, v in request.headers.items()},
        body=await request.body(),
        base_url=f"{request.url.scheme}://{request.url.netloc}",
    )


def starlette_response(answer: SimResponse) -> Response:
    """``answer`` serialized as a Starlette response."""
    body = answer.body()
    media_type = answer.media_type if body or answer.status not in _BODILESS else None
    return Response(
        content=body, status_code=answer.status, headers=answer.headers, media_type=media_type
    )
