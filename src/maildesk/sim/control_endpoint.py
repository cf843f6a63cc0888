"""The one JSON wrapper every ``/_sim`` control route uses: parse an optional JSON object body,
run the work, map our errors to 404/400, answer 204 for None and JSON otherwise; the readers
of that body's fields, which raise ``InputError`` (a 400) naming the field; and the ``/faults``
routes both simulators serve."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, overload

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from maildesk.errors import InputError, NotFound
from maildesk.sim.faults import FaultInjector, FaultRule, parse_fault_request

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


class FaultControl(Protocol):
    """What a simulator state offers the ``/faults`` routes."""

    faults: FaultInjector

    def add_fault(self, rule: FaultRule | None = None, /, **fields: Any) -> FaultRule: ...

    def set_latency(self, latency_ms: float) -> None: ...

    def clear_faults(self) -> None: ...


def fault_routes(state: FaultControl, extra: Callable[[], dict[str, Any]] = dict) -> list[Route]:
    """``GET /faults`` → ``{rules, latency_ms, **extra()}``; ``POST /faults`` ``{rules: [...],
    latency_ms}`` adds rules (see ``maildesk.sim.faults``) and answers the listing;
    ``DELETE /faults`` is ``state.clear_faults()``."""

    def list_faults(_: Request, __: dict[str, Any]) -> dict[str, Any]:
        return {
            "rules": [rule.to_json() for rule in state.faults.rules],
            "latency_ms": state.faults.latency_ms,
            **extra(),
        }

    def add_faults(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        built, latency = parse_fault_request(body)
        if latency is not None:
            state.set_latency(latency)
        for rule in built:
            state.add_fault(rule)
        return list_faults(request, body)

    def clear_faults(_: Request, __: dict[str, Any]) -> None:
        state.clear_faults()

    return [
        Route("/faults", control_endpoint(list_faults), methods=["GET"]),
        Route("/faults", control_endpoint(add_faults), methods=["POST"]),
        Route("/faults", control_endpoint(clear_faults), methods=["DELETE"]),
    ]
