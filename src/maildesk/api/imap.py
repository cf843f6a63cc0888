"""IMAP mailboxes under ``/api/v1``: add one, test its servers (before or after adding), and
enter a new password.

* ``POST /api/v1/imap/test`` (admin) — the settings of :func:`imap_mailboxes.setup_from_fields`
  in the body, plus ``"test": "incoming" | "outgoing" | "both"`` (default both); answers 200
  ``{"ok", "checks": [...]}`` whatever the servers said. Nothing is stored.
* ``POST /api/v1/accounts/imap`` (admin) — the same settings plus ``"verify"`` (default true):
  201 ``{"account_id", "ok": true, "checks"}``; a failed check is **422** with the same shape
  (``account_id`` null, nothing stored) and ``error``/``stage`` of the first failure.
* ``POST /api/v1/accounts/{id}/test/incoming`` and ``…/test/outgoing`` — anyone who sees the
  mailbox; the stored sign-in is used; 200 with the check (``ok`` false when it failed).
* ``PUT /api/v1/accounts/{id}/password`` (admin) ``{"password", "verify"}``: 200 when stored,
  422 with the check when the incoming server refused it.

A check carries the stage it reached and one precise reason (``"DNS: …"``, ``"TLS: …"``,
``"AUTH: …"``, ``"CAPABILITY: …"``), never a secret.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from maildesk import imap_mailboxes, mailboxes
from maildesk.api.v1 import _account_id, _Denied, _error_response, _json, authenticate
from maildesk.errors import InputError, MailDeskError
from maildesk.imap_mailboxes import CheckReport
from maildesk.services import Services

UNPROCESSABLE = 422

# A handler answers (status, body).
Handler = Callable[[Request, Services, frozenset[int] | None], Awaitable[tuple[int, Any]]]


def _endpoint(handler: Handler, *, admin: bool) -> Callable[[Request], Awaitable[Response]]:
    """Token authentication and roles exactly as ``api.v1._route``; the handler picks the
    status (a failed check is an answer, not an exception)."""

    async def endpoint(request: Request) -> Response:
        services: Services = request.app.state.services
        try:
            _, visible = await authenticate(request, services, admin=admin)
            status, body = await handler(request, services, visible)
        except (_Denied, MailDeskError) as exc:
            return _error_response(exc)
        return JSONResponse(body, status_code=status)

    return endpoint


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise InputError(f"{name} must be true or false")
    return value


def _failure(checks: list[CheckReport] | tuple[CheckReport, ...]) -> dict[str, Any]:
    failed = next((c for c in checks if not c.ok), None)
    if failed is None:
        return {}
    return {"error": failed.sentence(), "stage": failed.check.stage.value,
            "kind": failed.check.error_kind or None}


async def test_setup(request: Request, s: Services,
                     visible: frozenset[int] | None) -> tuple[int, Any]:
    body = await _json(request)
    which = body.pop("test", "both")
    if which not in ("incoming", "outgoing", "both"):
        raise InputError("test must be incoming, outgoing or both")
    setup = imap_mailboxes.setup_from_fields(body)
    if which == "outgoing" and setup.servers.smtp is None:
        raise InputError("SMTP host: required to test the outgoing server")
    checks = await imap_mailboxes.check_setup(
        s, setup, incoming=which != "outgoing", outgoing=which != "incoming")
    return 200, {"ok": all(c.ok for c in checks), "checks": [c.to_json() for c in checks],
                 **_failure(checks)}


async def add_imap(request: Request, s: Services,
                   visible: frozenset[int] | None) -> tuple[int, Any]:
    body = await _json(request)
    verify = _flag(body, "verify", True)
    body.pop("verify", None)
    outcome = await imap_mailboxes.add_imap(s, imap_mailboxes.setup_from_fields(body),
                                            verify=verify)
    if outcome.account_id is None:
        return UNPROCESSABLE, {**outcome.to_json(), **_failure(outcome.checks)}
    return 201, outcome.to_json()


def _test_stored(which: str) -> Handler:
    async def test(request: Request, s: Services,
                   visible: frozenset[int] | None) -> tuple[int, Any]:
        account = await mailboxes.find(s, str(_account_id(request, visible)))
        if which == imap_mailboxes.INCOMING:
            report = await imap_mailboxes.test_incoming(s, account)
        else:
            report = await imap_mailboxes.test_outgoing(s, account)
        return 200, {"account_id": account.id, **report.to_json()}

    return test


async def set_password(request: Request, s: Services,
                       visible: frozenset[int] | None) -> tuple[int, Any]:
    account_id = _account_id(request, visible)
    body = await _json(request)
    password = body.get("password")
    if not isinstance(password, str) or not password:
        raise InputError("password: required")
    outcome = await imap_mailboxes.set_password(s, account_id, password,
                                                verify=_flag(body, "verify", True))
    answer = {"account_id": account_id, **outcome.to_json()}
    if not outcome.stored:
        checks = [outcome.check] if outcome.check else []
        return UNPROCESSABLE, {**answer, **_failure(checks)}
    return 200, answer


def imap_routes() -> list[Route]:
    return [
        Route("/api/v1/imap/test", _endpoint(test_setup, admin=True), methods=["POST"]),
        Route("/api/v1/accounts/imap", _endpoint(add_imap, admin=True), methods=["POST"]),
        Route("/api/v1/accounts/{account_id}/test/incoming",
              _endpoint(_test_stored(imap_mailboxes.INCOMING), admin=False), methods=["POST"]),
        Route("/api/v1/accounts/{account_id}/test/outgoing",
              _endpoint(_test_stored(imap_mailboxes.OUTGOING), admin=False), methods=["POST"]),
        Route("/api/v1/accounts/{account_id}/password", _endpoint(set_password, admin=True),
              methods=["PUT"]),
    ]
