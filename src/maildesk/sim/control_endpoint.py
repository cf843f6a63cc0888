"""The one JSON wrapper every ``/_sim`` control route uses: parse an optional JSON object body,
run the work, map our errors to 404/400, answer 204 for None and JSON otherwise; and the readers
of that body's fields, which raise ``InputError`` (a 400) naming the field."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, overload

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


def str_field(body: dict[str, Any], name: str, default: str | None = None) -> str:
    """``body[name]`` (or ``default`` when absent), which must be a string."""
    value = body.get(name, default)
    if not isinstance(value, str):
        raise InputError(f"{name} is required and must be a string")
    return value


def opt_str_field(body: dict[str, Any], name: str) -> str | None:
    """``body[name]``: a string, or None when absent or null."""
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise InputError(f"{name} must be a string")
    return value


def count_field(body: dict[str, Any], name: str, default: int) -> int:
    """``body[name]`` (or ``default``): an integer >= 0."""
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InputError(f"{name} must be an integer >= 0")
    return value


@overload
def strings_field(body: dict[str, Any], name: str) -> list[str] | None: ...
@overload
def strings_field(body: dict[str, Any], name: str, default: Sequence[str]) -> list[str]: ...
def strings_field(
    body: dict[str, Any], name: str, default: Sequence[str] | None = None
) -> list[str] | None:
    """``body[name]``: a list of strings; ``default`` (as a list) when absent or null."""
    value = body.get(name)
    if value is None:
        return None if default is None else list(default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{name} must be a list of strings")
    return value
