"""The one JSON wrapper every ``/_sim`` control route uses: parse an optional JSON object body,
run the work, map our errors to 404/400, answer 204 for None and JSON otherwise."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from maildesk.errors import InputError, NotFound

Endpoint = Callable[[Request], Awaitable[Response]]
Work = Callable[[Request, dict[str, Any]], Any]

_BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def control_endpoint(work: Work) -> Endpoint:
    async def run(request: Request) -> Response:
        try:
            body: dict[str, Any] = {}
            if request.method in _BODY_METHODS and (await request.body()).strip():
                parsed = await request.json()
                if not isinstance(parsed, dict):
                    raise InputError("the body must be a JSON object")
                body = parsed
            result = work(request, body)
        except NotFound as exc:
            return JSONResponse({"error": exc.message}, status_code=404)
        except InputError as exc:
            return JSONResponse({"error": exc.message}, status_code=400)
        except ValueError as exc:  # malformed JSON body
            return JSONResponse({"error": f"invalid JSON: {exc}"}, status_code=400)
        if result is None:
            return Response(status_code=204)
        return JSONResponse(result)

    return run
