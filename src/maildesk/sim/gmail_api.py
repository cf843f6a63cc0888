"""Gmail API v1 handlers of the simulator, framework-free so batch sub-requests reuse them.

``GMAIL_ROUTES`` is the table of every Gmail method the simulator serves: its HTTP method, its
discovery-document ``flatPath`` and the query parameters its handler reads. A handler can only
read the parameters its route declares (reading another one is a bug and raises), which is what
lets the conformance test hold the table against Google's discovery document.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from maildesk.domain.accounts import (
    GMAIL_SCOPE_FULL,
    GMAIL_SCOPE_MODIFY,
    GMAIL_SCOPE_READONLY,
    GMAIL_SCOPE_SEND,
)
from maildesk.errors import InputError, NotFound
from maildesk.sim.gmail_mime import attachment_data, attachment_token, b64url, b64url_decode
from maildesk.sim.gmail_objects import HISTORY_TYPES, SimMessage
from maildesk.sim.gmail_state import GoogleState
from maildesk.sim.mailbox import Mailbox
from maildesk.sim.oauth_state import AccessToken
from maildesk.sim.wire import SimRequest, SimResponse, google_error, unauthenticated

GMAIL_SCOPE_METADATA = "https://www.googleapis.com/auth/gmail.metadata"
GMAIL_SCOPE_COMPOSE = "https://www.googleapis.com/auth/gmail.compose"
_READ = frozenset(
    {GMAIL_SCOPE_FULL, GMAIL_SCOPE_MODIFY, GMAIL_SCOPE_READONLY, GMAIL_SCOPE_METADATA}
)
_PROFILE = _READ | {GMAIL_SCOPE_COMPOSE}
_MODIFY = frozenset({GMAIL_SCOPE_FULL, GMAIL_SCOPE_MODIFY})
_DELETE = frozenset({GMAIL_SCOPE_FULL})
_SEND = frozenset({GMAIL_SCOPE_FULL, GMAIL_SCOPE_MODIFY, GMAIL_SCOPE_COMPOSE, GMAIL_SCOPE_SEND})

# API-wide parameters (the discovery document's top-level ``parameters``) the router reads.
GLOBAL_PARAMS = frozenset({"access_token"})
DEFAULT_PAGE = 100
MAX_PAGE = 500
_FORMATS = ("minimal", "metadata", "full", "raw")
_TOPIC = re.compile(r"^projects/[^/]+/topics/[^/]+$")


@dataclass(slots=True)
class Call:
    """One authenticated Gmail call: the mailbox, path parameters and guarded query access."""

    request: SimRequest
    route: GmailRoute
    mailbox: Mailbox
    token: AccessToken
    path: dict[str, str]

    def params(self, name: str) -> list[str]:
        """Every value of query parameter ``name`` (must be declared by the route)."""
        if name not in self.route.params:
            raise RuntimeError(f"{self.route.template} reads undeclared parameter {name}")
        return [v for k, v in self.request.query if k == name]

    def param(self, name: str) -> str | None:
        """The last value of query parameter ``name``, or ``None``."""
        values = self.params(name)
        return values[-1] if values else None

    def body(self) -> dict[str, Any]:
        """The JSON request body as an object."""
        try:
            data = self.request.json()
        except ValueError:
            raise InputError("Invalid JSON payload received.") from None
        if not isinstance(data, dict):
            raise InputError("Invalid JSON payload received.")
        return data


Handler = Callable[["GmailApi", Call], SimResponse]


@dataclass(frozen=True, slots=True)
class GmailRoute:
    """One served Gmail method. ``template`` is the discovery ``flatPath``."""

    method: str
    template: str
    handler: Handler
    scopes: frozenset[str]
    params: frozenset[str] = frozenset()
    pattern: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.template))
        object.__setattr__(self, "pattern", re.compile(f"^/{regex}$"))


class GmailApi:
    """Answers Gmail requests against a ``GoogleState``."""

    def __init__(self, state: GoogleState) -> None:
        self.state = state

    async def handle(self, request: SimRequest) -> SimResponse:
        """Route, authenticate, run the handler, and map our errors to Google's shape."""
        return self.handle_sync(request)

    def handle_sync(self, request: SimRequest) -> SimResponse:
        """As ``handle``; the state is synchronous, so no handler ever waits."""
        path = request.path
        matched = [(r, m) for r in GMAIL_ROUTES if (m := r.pattern.match(path)) is not None]
        if not matched:
            return google_error(404, f"Method not found: {path}")
        found = next(((r, m) for r, m in matched if r.method == request.method.upper()), None)
        if found is None:
            return google_error(405, f"Method {request.method} not allowed for {path}")
        route, match = found
        token = self._authenticate(request)
        if token is None:
            return unauthenticated()
        if not token.scopes or not set(token.scopes) & route.scopes:
            return google_error(
                403,
                "Request had insufficient authentication scopes.",
                reason="insufficientPermissions",
                extra={"message": "Insufficient Permission"},
            )
        params = match.groupdict()
        user = params.pop("userId")
        if user != "me" and user.lower() != token.email.lower():
            return google_error(403, f"Delegation denied for {token.email}")
        try:
            mailbox = self.state.mailbox(token.email)
            return route.handler(self, Call(request, route, mailbox, token, params))
        except NotFound:
            return google_error(404, "Requested entity was not found.")
        except InputError as exc:
            return google_error(400, exc.message, reason="invalidArgument")

    def _authenticate(self, request: SimRequest) -> AccessToken | None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return self.state.oauth.authenticate(value.strip())
        query_tokens = [v for k, v in request.query if k in GLOBAL_PARAMS]
        return self.state.oauth.authenticate(query_tokens[-1]) if query_tokens else None

    # -- handlers --------------------------------------------------------------------------

    def get_profile(self, call: Call) -> SimResponse:
        """``users.getProfile``."""
        box = call.mailbox
        return SimResponse(
            payload={
                "emailAddress": box.email,
                "messagesTotal": box.messages_total,
                "threadsTotal": box.threads_total,
                "historyId": str(box.history_id),
            }
        )

    def list_labels(self, call: Call) -> SimResponse:
        """``users.labels.list``."""
        return SimResponse(
            payload={"labels": [la.to_json() for la in call.mailbox.labels.values()]}
        )

    def list_messages(self, call: Call) -> SimResponse:
        """``users.messages.list``: newest first, SPAM/TRASH hidden unless asked for."""
        # ``q`` is accepted (declared on the route) but search is not simulated.
        messages, next_token, estimate = call.mailbox.list_page(
            call.params("labelIds"),
            include_spam_trash=_bool(call.param("includeSpamTrash"), "includeSpamTrash"),
            page_token=call.param("pageToken"),
            max_results=_page_size(call.param("maxResults")),
        )
        payload: dict[str, Any] = {}
        if messages:
            payload["messages"] = [{"id": m.id, "threadId": m.thread_id} for m in messages]
        if next_token:
            payload["nextPageToken"] = next_token
        payload["resultSizeEstimate"] = estimate
        return SimResponse(payload=payload)

    def get_message(self, call: Call) -> SimResponse:
        """``users.messages.get`` in any ``format`` (default ``full``)."""
        fmt = call.param("format") or "full"
        if fmt not in _FORMATS:
            raise InputError(f"Invalid value at 'format' ({fmt})")
        if fmt in ("full", "raw") and set(call.token.scopes) <= {GMAIL_SCOPE_METADATA}:
            return google_error(403, f"Metadata scope doesn't allow format {fmt.upper()}")
        message = call.mailbox.get(call.path["id"])
        return SimResponse(payload=message.to_json(fmt, call.params("metadataHeaders")))

    def get_attachment(self, call: Call) -> SimResponse:
        """``users.messages.attachments.get``."""
        message = call.mailbox.get(call.path["messageId"])
        token = call.path["id"]
        part_id = token.rpartition(".")[2]
        if token != attachment_token(message.id, part_id):
            raise NotFound("attachment")
        data = attachment_data(message.raw(), part_id)
        if data is None:
            raise NotFound("attachment")
        return SimResponse(payload={"size": len(data), "data": b64url(data)})

    def list_history(self, call: Call) -> SimResponse:
        """``users.history.list``; 404 when ``startHistoryId`` is older than the history kept."""
        start = call.param("startHistoryId")
        if not start:
            raise InputError("Missing required parameter startHistoryId")
        try:
            start_id = int(start)
        except ValueError:
            raise InputError(f"Invalid startHistoryId: {start}") from None
        types = call.params("historyTypes")
        if unknown := set(types) - set(HISTORY_TYPES):
            raise InputError(f"Invalid historyTypes: {sorted(unknown)}")
        records, next_token = call.mailbox.history_page(
            start_id,
            types=types,
            label_id=call.param("labelId"),
            page_token=call.param("pageToken"),
            max_results=_page_size(call.param("maxResults")),
        )
        payload: dict[str, Any] = {}
        if records:
            payload["history"] = [r.to_json(types or HISTORY_TYPES) for r in records]
        if next_token:
            payload["nextPageToken"] = next_token
        payload["historyId"] = str(call.mailbox.history_id)
        return SimResponse(payload=payload)

    def send_message(self, call: Call) -> SimResponse:
        """``users.messages.send`` with a base64url ``raw`` body."""
        body = call.body()
        raw = body.get("raw")
        if not isinstance(raw, str) or not raw:
            raise InputError(
                "'raw' RFC822 payload message string or uploading message via /upload/* URL "
                "required"
            )
        try:
            data = b64url_decode(raw)
        except ValueError:
            raise InputError("Invalid value for ByteString") from None
        thread = body.get("threadId")
        sent = self.state.send_message(
            call.mailbox.email, data, thread_id=thread if isinstance(thread, str) else None
        )
        return SimResponse(
            payload={"id": sent.id, "threadId": sent.thread_id, "labelIds": ["SENT"]}
        )

    def modify_message(self, call: Call) -> SimResponse:
        """``users.messages.modify``."""
        body = call.body()
        message = call.mailbox.modify(
            call.path["id"],
            add=_str_list(body.get("addLabelIds"), "addLabelIds"),
            remove=_str_list(body.get("removeLabelIds"), "removeLabelIds"),
        )
        return SimResponse(payload=_short(message))

    def trash_message(self, call: Call) -> SimResponse:
        """``users.messages.trash``."""
        return SimResponse(payload=_short(call.mailbox.trash(call.path["id"])))

    def untrash_message(self, call: Call) -> SimResponse:
        """``users.messages.untrash``."""
        return SimResponse(payload=_short(call.mailbox.untrash(call.path["id"])))

    def delete_message(self, call: Call) -> SimResponse:
        """``users.messages.delete`` (permanent)."""
        call.mailbox.delete(call.path["id"])
        return SimResponse(status=204)

    def watch(self, call: Call) -> SimResponse:
        """``users.watch``: stores the watch; push delivery is not simulated here."""
        body = call.body()
        topic = body.get("topicName")
        if not isinstance(topic, str) or not _TOPIC.match(topic):
            raise InputError(
                "Invalid topicName does not match projects/SOME-ANDROID-PROJECT/topics/*"
            )
        label_ids = _str_list(body.get("labelIds"), "labelIds")
        for label_id in label_ids:
            if label_id not in call.mailbox.labels:
                raise InputError(f"Invalid label: {label_id}")
        behavior = body.get("labelFilterBehavior") or body.get("labelFilterAction") or "include"
        if not isinstance(behavior, str) or behavior.lower() not in ("include", "exclude"):
            raise InputError(f"Invalid labelFilterBehavior: {behavior}")
        watch = self.state.set_watch(call.mailbox.email, topic, label_ids, behavior.lower())
        return SimResponse(
            payload={"historyId": str(watch.history_id), "expiration": str(watch.expiration_ms)}
        )

    def stop(self, call: Call) -> SimResponse:
        """``users.stop``."""
        self.state.stop_watch(call.mailbox.email)
        return SimResponse(status=204)


def _short(message: SimMessage) -> dict[str, Any]:
    return message.to_json("minimal", keys=("id", "threadId", "labelIds"))


def _page_size(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_PAGE
    try:
        size = int(value)
    except ValueError:
        raise InputError(f"Invalid maxResults: {value}") from None
    if size < 1:
        raise InputError(f"Invalid maxResults: {value}")
    return min(size, MAX_PAGE)


def _bool(value: str | None, name: str) -> bool:
    if value is None or value.lower() == "false":
        return False
    if value.lower() == "true":
        return True
    raise InputError(f"Invalid value for {name}: {value}")


def _str_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{name} must be a list of strings")
    return value


_U = "gmail/v1/users/{userId}"
GMAIL_ROUTES: tuple[GmailRoute, ...] = (
    GmailRoute("GET", f"{_U}/profile", GmailApi.get_profile, _PROFILE),
    GmailRoute("GET", f"{_U}/labels", GmailApi.list_labels, _READ),
    GmailRoute(
        "GET",
        f"{_U}/messages",
        GmailApi.list_messages,
        _READ,
        frozenset({"labelIds", "q", "pageToken", "maxResults", "includeSpamTrash"}),
    ),
    GmailRoute("POST", f"{_U}/messages/send", GmailApi.send_message, _SEND),
    GmailRoute(
        "GET",
        f"{_U}/messages/{{id}}",
        GmailApi.get_message,
        _READ,
        frozenset({"format", "metadataHeaders"}),
    ),
    GmailRoute("DELETE", f"{_U}/messages/{{id}}", GmailApi.delete_message, _DELETE),
    GmailRoute("POST", f"{_U}/messages/{{id}}/modify", GmailApi.modify_message, _MODIFY),
    GmailRoute("POST", f"{_U}/messages/{{id}}/trash", GmailApi.trash_message, _MODIFY),
    GmailRoute("POST", f"{_U}/messages/{{id}}/untrash", GmailApi.untrash_message, _MODIFY),
    GmailRoute(
        "GET",
        f"{_U}/messages/{{messageId}}/attachments/{{id}}",
        GmailApi.get_attachment,
        _READ - {GMAIL_SCOPE_METADATA},
    ),
    GmailRoute(
        "GET",
        f"{_U}/history",
        GmailApi.list_history,
        _READ,
        frozenset({"startHistoryId", "historyTypes", "labelId", "pageToken", "maxResults"}),
    ),
    GmailRoute("POST", f"{_U}/watch", GmailApi.watch, _READ),
    GmailRoute("POST", f"{_U}/stop", GmailApi.stop, _READ),
)
