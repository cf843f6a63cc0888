"""Microsoft Graph v1.0 over ``MicrosoftState``: bearer checks, ``/me`` and ``/users/{id}``,
the mail endpoints (``graph_mail_api``) and ``/subscriptions``.

Every answer is a ``SimResponse`` so the fault rules apply to it. An access token must be live
and issued for Graph (``aud`` https://graph.microsoft.com); an IMAP/SMTP token (audience
outlook.office.com) gets 401 ``InvalidAuthenticationToken`` like an expired or revoked one.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from maildesk.errors import InputError, NotFound
from maildesk.sim.graph_mail_api import MailApi
from maildesk.sim.graph_mailbox import OutlookMailbox
from maildesk.sim.graph_subscriptions import SubscriptionRefused
from maildesk.sim.graph_wire import JSON_TYPE, graph_error, parse_time
from maildesk.sim.microsoft_identity_types import GRAPH, GRAPH_APP_ID, MsAccessToken
from maildesk.sim.microsoft_state import MicrosoftState
from maildesk.sim.wire import SimRequest, SimResponse

_PARENS = re.compile(r"\('([^']*)'\)")
_WWW_AUTHENTICATE = (
    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/'
    'authorize", client_id="00000003-0000-0000-c000-000000000000"'
)
_SUBSCRIPTION_SCOPES = ("Mail.Read", "Mail.ReadWrite", "Mail.ReadBasic")


class GraphApi:
    """Graph's handlers. ``outbound`` is the HTTP client subscription validation requests go
    through (``None``: every subscription creation fails validation)."""

    def __init__(self, state: MicrosoftState, outbound: httpx.AsyncClient | None = None) -> None:
        self.state = state
        self.outbound = outbound
        self.mail = MailApi(state)

    async def handle(self, request: SimRequest) -> SimResponse:
        """Answer one request whose path starts with ``/v1.0``."""
        rest = _PARENS.sub(lambda m: "/" + m.group(1), request.path[len("/v1.0") :])
        segments = [s for s in rest.split("/") if s]
        token = self._authenticate(request)
        if isinstance(token, SimResponse):
            return token
        head = segments[0].lower() if segments else ""
        base = f"{request.base_url}/v1.0"
        if head == "subscriptions":
            return await self._subscriptions(request, token, segments[1:])
        mailbox = self.state.mailbox(token.email)
        if head == "me":
            prefix, rest_segments = f"{base}/me", segments[1:]
        elif head == "users" and len(segments) >= 2:
            who = segments[1]
            if who.lower() not in (mailbox.user_id, mailbox.email.lower()):
                return self._error(
                    403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
                )
            prefix, rest_segments = f"{base}/users/{who}", segments[2:]
        else:
            return self._error(400, "BadRequest", f"Resource not found for the segment '{head}'.")
        if not rest_segments:
            if request.method != "GET":
                return self._error(405, "Request_BadRequest", "Method not allowed.")
            return self._ok(_profile(mailbox, base))
        return await self.mail.handle(request, mailbox, rest_segments, prefix, token.scopes)

    def _authenticate(self, request: SimRequest) -> MsAccessToken | SimResponse:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return self._unauthenticated("Access token is empty.")
        token = self.state.identity.tokens.get(value.strip())
        if token is None:
            return self._unauthenticated("IDX14100: JWT is not well formed.")
        if token.grant.revoked_code is not None:
            return self._unauthenticated("Access token has been revoked.")
        if token.expires_at <= self.state.clock.now():
            return self._unauthenticated("Lifetime validation failed, the token is expired.")
        if token.audience not in (GRAPH, GRAPH_APP_ID):
            return self._unauthenticated("Access token validation failure. Invalid audience.")
        return token

    def _unauthenticated(self, message: str) -> SimResponse:
        response = self._error(401, "InvalidAuthenticationToken", message)
        response.headers["WWW-Authenticate"] = _WWW_AUTHENTICATE
        return response

    # -- subscriptions ---------------------------------------------------------------------

    async def _subscriptions(
        self, request: SimRequest, token: MsAccessToken, rest: list[str]
    ) -> SimResponse:
        if not any(s in token.scopes for s in _SUBSCRIPTION_SCOPES):
            return self._error(
                403,
                "ExtensionError",
                "Operation: Create; Exception: [Status Code: Forbidden; Reason: Access is denied.]",
            )
        subs = self.state.subscriptions
        app = token.grant.client_id
        method = request.method
        try:
            if not rest and method == "POST":
                created = await subs.create(
                    self.outbound,
                    mailbox=self.state.mailbox(token.email),
                    application_id=app,
                    body=_json(request),
                )
                return self._ok(self._sub_json(request, created.to_json()), status=201)
            if not rest and method == "GET":
                mine = [s for s in subs.of_app(app) if s.email == token.email]
                return self._ok({"value": [s.to_json() for s in mine]})
            subscription = subs.live(rest[0], app)
            if len(rest) == 1 and method == "GET":
                return self._ok(self._sub_json(request, subscription.to_json()))
            if len(rest) == 1 and method == "PATCH":
                body = _json(request)
                if set(body) - {"expirationDateTime"} or "expirationDateTime" not in body:
                    raise SubscriptionRefused(
                        400, "InvalidRequest", "Only expirationDateTime can be updated."
                    )
                try:
                    wanted = parse_time(str(body["expirationDateTime"]))
                except ValueError:
                    raise SubscriptionRefused(
                        400, "InvalidRequest", "expirationDateTime is not valid."
                    ) from None
                renewed = subs.renew(subscription, wanted)
                return self._ok(self._sub_json(request, renewed.to_json()))
            if len(rest) == 1 and method == "DELETE":
                subs.delete(subscription.id)
                return SimResponse(204, content=b"")
            if len(rest) == 2 and rest[1].lower() == "reauthorize" and method == "POST":
                subs.reauthorize(subscription)
                return SimResponse(200, content=b"", media_type=JSON_TYPE)
        except SubscriptionRefused as exc:
            return self._error(exc.status, exc.code, exc.message)
        except NotFound as exc:
            return self._error(404, "ResourceNotFound", exc.message)
        except InputError as exc:
            return self._error(400, "InvalidRequest", exc.message)
        return self._error(405, "Request_BadRequest", "Method not allowed.")

    def _sub_json(self, request: SimRequest, payload: dict[str, Any]) -> dict[str, Any]:
        context = f"{request.base_url}/v1.0/$metadata#subscriptions/$entity"
        return {"@odata.context": context, **payload}

    # -- answers ---------------------------------------------------------------------------

    def _ok(self, payload: Any, *, status: int = 200) -> SimResponse:
        return SimResponse(status, payload=payload, media_type=JSON_TYPE)

    def _error(self, status: int, code: str, message: str) -> SimResponse:
        return graph_error(status, message, code=code, now=self.state.clock.now())


def _profile(mailbox: OutlookMailbox, base: str) -> dict[str, Any]:
    given, _, surname = mailbox.display_name.partition(" ")
    return {
        "@odata.context": f"{base}/$metadata#users/$entity",
        "businessPhones": [],
        "displayName": mailbox.display_name,
        "givenName": given or None,
        "jobTitle": None,
        "mail": mailbox.profile_mail,
        "mobilePhone": None,
        "officeLocation": None,
        "preferredLanguage": "en-US",
        "surname": surname or None,
        "userPrincipalName": mailbox.email,
        "id": mailbox.user_id,
    }


def _json(request: SimRequest) -> dict[str, Any]:
    try:
        data = request.json()
    except ValueError:
        raise InputError("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InputError("The request body must be a JSON object.")
    return data
