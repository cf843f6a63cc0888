"""The JSON REST API under ``/api/v1``.

Authentication: ``Authorization: Bearer <API token>`` (``maildesk user token``). Every route
checks the caller's visible mailboxes; changes to push are for administrators only. Errors are
mapped to HTTP in one place (``_error_response``) from our exception tree.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from maildesk import mailboxes
from maildesk.api import tokens
from maildesk.domain.accounts import ProviderKind
from maildesk.errors import (
    AuthError,
    InputError,
    MailDeskError,
    NotFound,
    NotReady,
    ProviderError,
    TransientError,
)
from maildesk.push.manager import gmail_push_settings
from maildesk.push.status import push_status
from maildesk.services import Services
from maildesk.store import users as user_store
from maildesk.store.users import UserRow


class _Denied(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error_response(exc: Exception) -> JSONResponse:
    if isinstance(exc, _Denied):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    assert isinstance(exc, MailDeskError)
    status = 500
    if isinstance(exc, NotFound):
        status = 404
    elif isinstance(exc, InputError):
        status = 400
    elif isinstance(exc, NotReady):
        status = 422
    elif isinstance(exc, AuthError):
        status = 409  # the mailbox must be reconnected; not the API caller's credentials
    elif isinstance(exc, TransientError):
        status = 503
    elif isinstance(exc, ProviderError):
        status = 502
    return JSONResponse({"error": exc.message, "kind": exc.kind}, status_code=status)


Handler = Callable[[Request, Services, UserRow, frozenset[int] | None], Awaitable[Any]]


async def authenticate(
    request: Request, services: Services, *, admin: bool
) -> tuple[UserRow, frozenset[int] | None]:
    """The caller of an API request (bearer token) and the accounts it may see (None: all);
    ``_Denied`` 401 without a known token, 403 when ``admin`` is required and it is not one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _Denied(401, "an API token is required (Authorization: Bearer …)")
    async with services.db.read() as conn:
        user = await tokens.authenticate(conn, token.strip())
        if user is None:
            raise _Denied(401, "unknown API token")
        visible = await user_store.visible_accounts(conn, user)
    if admin and not user.is_admin:
        raise _Denied(403, "administrators only")
    return user, visible


def _route(path: str, handler: Handler, methods: list[str], *, admin: bool = False,
           status: int | None = None) -> Route:
    """``status``: the success answer when not the default (201 for POST, else 200)."""

    async def endpoint(request: Request) -> Response:
        services: Services = request.app.state.services
        try:
            user, visible = await authenticate(request, services, admin=admin)
            result = await handler(request, services, user, visible)
        except (_Denied, MailDeskError) as exc:
            return _error_response(exc)
        return JSONResponse(result, status_code=status or (
            201 if request.method == "POST" else 200))

    return Route(path, endpoint, methods=methods)


def _account_id(request: Request, visible: frozenset[int] | None) -> int:
    try:
        account_id = int(request.path_params["account_id"])
    except ValueError as exc:
        raise NotFound("no such account") from exc
    if visible is not None and account_id not in visible:
        raise NotFound(f"no account with id {account_id}")
    return account_id


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise InputError("the body must be a JSON object") from exc
    if not isinstance(body, dict):
        raise InputError("the body must be a JSON object")
    return body


async def list_accounts(request: Request, s: Services, user: UserRow,
                        visible: frozenset[int] | None) -> Any:
    return [a.to_json() for a in await mailboxes.summaries(s)
            if visible is None or a.id in visible]


async def sync_account(request: Request, s: Services, user: UserRow,
                       visible: frozenset[int] | None) -> Any:
    account_id = _account_id(request, visible)
    await mailboxes.find(s, str(account_id))
    await mailboxes.request_sync(s, account_id, "api")
    return {"account_id": account_id, "sync": "requested"}


async def list_push(request: Request, s: Services, user: UserRow,
                    visible: frozenset[int] | None) -> Any:
    return [p.to_json() for p in await push_status(s.db, visible)]


async def enable_gmail_push(request: Request, s: Services, user: UserRow,
                            visible: frozenset[int] | None) -> Any:
    account_id = _account_id(request, visible)
    body = await _json(request)
    signers = body.get("signers", [])
    if not isinstance(signers, list):
        raise InputError("signers must be a list of service-account emails")
    settings = gmail_push_settings(
        project=str(body.get("project", "")), topic=str(body.get("topic", "")),
        audience=str(body.get("audience", "")), signers=[str(x) for x in signers],
    )
    await s.push.enable(account_id, ProviderKind.GMAIL, settings)
    return [p.to_json() for p in await push_status(s.db, frozenset({account_id}))]


async def disable_gmail_push(request: Request, s: Services, user: UserRow,
                             visible: frozenset[int] | None) -> Any:
    account_id = _account_id(request, visible)
    await s.push.disable(account_id, ProviderKind.GMAIL)
    return [p.to_json() for p in await push_status(s.db, frozenset({account_id}))]


async def enable_outlook_push(request: Request, s: Services, user: UserRow,
                              visible: frozenset[int] | None) -> Any:
    account_id = _account_id(request, visible)
    await s.push.enable(account_id, ProviderKind.OUTLOOK, {})
    return [p.to_json() for p in await push_status(s.db, frozenset({account_id}))]


async def disable_outlook_push(request: Request, s: Services, user: UserRow,
                               visible: frozenset[int] | None) -> Any:
    account_id = _account_id(request, visible)
    await s.push.disable(account_id, ProviderKind.OUTLOOK)
    return [p.to_json() for p in await push_status(s.db, frozenset({account_id}))]


async def outlook_client_state(request: Request, s: Services, user: UserRow,
                               visible: frozenset[int] | None) -> Any:
    """The subscription's clientState secret: administrators only, never in listings."""
    account_id = _account_id(request, visible)
    return {"account_id": account_id,
            "client_state": await s.push.client_state(account_id, ProviderKind.OUTLOOK)}


async def renew_due(request: Request, s: Services, user: UserRow,
                    visible: frozenset[int] | None) -> Any:
    return {"result": await s.push.renew_due()}


def api_routes() -> list[Route]:
    return [
        _route("/api/v1/accounts", list_accounts, ["GET"]),
        _route("/api/v1/accounts/{account_id}/sync", sync_account, ["POST"]),
        _route("/api/v1/push", list_push, ["GET"]),
        _route("/api/v1/accounts/{account_id}/push/gmail", enable_gmail_push, ["POST"],
               admin=True),
        _route("/api/v1/accounts/{account_id}/push/gmail", disable_gmail_push, ["DELETE"],
               admin=True),
        _route("/api/v1/accounts/{account_id}/push/outlook", enable_outlook_push, ["POST"],
               admin=True),
        _route("/api/v1/accounts/{account_id}/push/outlook", disable_outlook_push, ["DELETE"],
               admin=True),
        _route("/api/v1/accounts/{account_id}/push/outlook/client-state", outlook_client_state,
               ["GET"], admin=True),
        _route("/api/v1/push/renew-due", renew_due, ["POST"], admin=True),
        *_send_routes(),
        *_imap_routes(),
    ]


def _imap_routes() -> list[Route]:
    # Imported here: api/imap.py builds its routes with this module's helpers.
    from maildesk.api.imap import imap_routes

    return imap_routes()


def _send_routes() -> list[Route]:
    # Imported here: api/send.py builds its routes with this module's helpers.
    from maildesk.api.send import send_routes

    return send_routes()
