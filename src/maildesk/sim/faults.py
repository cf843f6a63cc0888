"""Fault injection: make chosen simulator answers fail, lag, lie or lose fields.

A rule matches a request by HTTP method and a regular expression searched in the path (no query
string). The first rule in list order that matches and is not used up decides; ``count`` rules are
used up after that many matches. What a matching rule does, in this order:

* ``latency_ms``: wait that long first (an async sleep, so other requests keep flowing);
* ``status``: answer that status instead of calling the handler — with ``body`` as the raw text if
  given, else an error in the endpoint's own shape (Google API error for Gmail, OAuth error for
  the token endpoints; 429 uses Google's ``rateLimitExceeded``); ``retry_after`` adds a
  ``Retry-After`` header;
* ``body`` without ``status``: answer 200 with that raw text (e.g. ``"not json{"``);
* ``drop_fields``: call the real handler, then delete those JSON keys everywhere in its answer.

``FaultInjector.latency_ms`` is a global delay added before every Gmail/OAuth request.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from maildesk.errors import InputError
from maildesk.sim.wire import SimRequest, SimResponse, google_error, oauth_error

Handler = Callable[[SimRequest], Awaitable[SimResponse]]
# Builds the error answer of a ``status`` rule in the shape of the endpoint it stands in for.
ErrorShape = Callable[[int, "FaultRule"], SimResponse]

_RULE_FIELDS = frozenset(
    {
        "path",
        "method",
        "status",
        "retry_after",
        "count",
        "body",
        "drop_fields",
        "latency_ms",
        "reason",
    }
)


@dataclass(slots=True)
class FaultRule:
    """One fault. ``count=None`` never wears out; ``method=None`` matches every method."""

    path: str = ".*"
    method: str | None = None
    status: int | None = None
    retry_after: float | None = None
    count: int | None = None
    body: str | None = None
    drop_fields: tuple[str, ...] = ()
    latency_ms: float = 0.0
    reason: str | None = None
    _pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            self._pattern = re.compile(self.path)
        except re.error as exc:
            raise InputError(f"fault path is not a valid regular expression: {exc}") from exc
        if self.count is not None and self.count < 0:
            raise InputError("fault count must be >= 0")
        self.drop_fields = tuple(self.drop_fields)

    def matches(self, method: str, path: str) -> bool:
        """Whether this rule is still live and applies to ``method path``."""
        if self.count is not None and self.count <= 0:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self._pattern.search(path) is not None

    def to_json(self) -> dict[str, Any]:
        """The rule as the control API shows it (``count`` is what is left)."""
        return {
            "path": self.path,
            "method": self.method,
            "status": self.status,
            "retry_after": self.retry_after,
            "count": self.count,
            "body": self.body,
            "drop_fields": list(self.drop_fields),
            "latency_ms": self.latency_ms,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaultRule:
        """Build a rule from control-API JSON; unknown keys are an ``InputError``."""
        unknown = set(data) - _RULE_FIELDS
        if unknown:
            raise InputError(f"unknown fault fields: {sorted(unknown)}")
        try:
            return cls(
                path=str(data.get("path", ".*")),
                method=_opt_str(data.get("method")),
                status=_opt_int(data.get("status")),
                retry_after=_opt_float(data.get("retry_after")),
                count=_opt_int(data.get("count")),
                body=_opt_str(data.get("body")),
                drop_fields=tuple(str(f) for f in data.get("drop_fields") or ()),
                latency_ms=float(data.get("latency_ms") or 0.0),
                reason=_opt_str(data.get("reason")),
            )
        except (TypeError, ValueError) as exc:
            raise InputError(f"invalid fault rule: {exc}") from exc


def parse_fault_request(body: Mapping[str, Any]) -> tuple[list[FaultRule], float | None]:
    """The rules and the global latency (None: unchanged) of a ``POST /_sim/faults`` body,
    ``{rules: [...], latency_ms}``; every rule is checked before any is used (``InputError``)."""
    if unknown := set(body) - {"rules", "latency_ms"}:
        raise InputError(f"unknown fields {sorted(unknown)}: send {{rules: [...], latency_ms}}")
    rules = body.get("rules") or []
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise InputError("rules must be a list of objects")
    built = [FaultRule.from_json(rule) for rule in rules]
    latency = body.get("latency_ms")
    if latency is None:
        return built, None
    if not isinstance(latency, int | float) or latency < 0:
        raise InputError("latency_ms must be a number >= 0")
    return built, float(latency)


class FaultInjector:
    """The live fault rules and global latency of one simulator."""

    def __init__(self, rules: Iterable[FaultRule] = (), latency_ms: float = 0.0) -> None:
        self.rules: list[FaultRule] = list(rules)
        self.latency_ms = latency_ms

    def add(self, rule: FaultRule) -> FaultRule:
        """Append ``rule`` (rules added first win) and return it."""
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule and the global latency."""
        self.rules.clear()
        self.latency_ms = 0.0

    def _take(self, method: str, path: str) -> FaultRule | None:
        for rule in self.rules:
            if rule.matches(method, path):
                if rule.count is not None:
                    rule.count -= 1
                return rule
        return None

    async def run(
        self,
        request: SimRequest,
        handler: Handler,
        *,
        global_latency: bool,
        shape: ErrorShape | None = None,
    ) -> SimResponse:
        """Answer ``request`` through the rules; a ``status`` rule's error is built by ``shape``
        (default: ``google_fault_shape``).

        ``global_latency`` is false for batch sub-requests: the batch itself already waited.
        """
        if global_latency and self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000)
        rule = self._take(request.method, request.path)
        if rule is None:
            return await handler(request)
        if rule.latency_ms > 0:
            await asyncio.sleep(rule.latency_ms / 1000)
        headers: dict[str, str] = {}
        if rule.retry_after is not None:
            headers["Retry-After"] = _retry_after_text(rule.retry_after)
        if rule.status is not None or rule.body is not None:
            status = rule.status if rule.status is not None else 200
            if rule.body is not None:
                return SimResponse(status, content=rule.body.encode(), headers=headers)
            response = (shape or google_fault_shape)(status, rule)
            response.headers.update(headers)
            return response
        response = await handler(request)
        if rule.drop_fields and response.payload is not None:
            response.payload = drop_fields(response.payload, frozenset(rule.drop_fields))
        response.headers.update(headers)
        return response


def drop_fields(value: Any, names: frozenset[str]) -> Any:
    """A copy of JSON ``value`` without any object key in ``names``, at any depth."""
    if isinstance(value, dict):
        return {k: drop_fields(v, names) for k, v in value.items() if k not in names}
    if isinstance(value, list):
        return [drop_fields(v, names) for v in value]
    return value


def google_fault_shape(status: int, rule: FaultRule) -> SimResponse:
    """The Gmail API error a ``status`` rule answers (``reason`` overrides Google's reason;
    429 is ``rateLimitExceeded``)."""
    return google_error(status, reason=rule.reason)


def oauth_fault_shape(status: int, rule: FaultRule) -> SimResponse:
    """The OAuth error a ``status`` rule on Google's token/authorize/revoke endpoints answers."""
    if status == 429 or status >= 500:
        error = "temporarily_unavailable" if status in (429, 503) else "server_error"
        return oauth_error(status, error, "The service is temporarily unavailable.")
    if status == 401:
        return oauth_error(status, "invalid_client", "The OAuth client was not found.")
    return oauth_error(status, "invalid_request", "Injected fault.")


def _retry_after_text(seconds: float) -> str:
    # Retry-After is whole seconds on the wire; round up so clients never retry early.
    whole = int(seconds)
    return str(whole if whole == seconds else whole + 1)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
