"""The simulator against Google's own description of Gmail API v1.

Google's discovery document ships inside google-api-python-client. Every Gmail route the
simulator serves must be a method of that document, read only parameters that method declares,
and answer only fields its response schema declares (with the declared JSON types). Finally
Google's own client library talks to the simulator over real HTTP, batch included.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import importlib.resources
import json
import random
from collections.abc import AsyncIterator
from functools import cache
from typing import Any

import google.oauth2.credentials
import google_auth_httplib2  # type: ignore[import-untyped]
import httplib2  # type: ignore[import-untyped]
import httpx
import pytest
from googleapiclient.discovery import build_from_document
from googleapiclient.errors import HttpError

from maildesk.clock import ManualClock
from maildesk.sim.gmail_api import GLOBAL_PARAMS, GMAIL_ROUTES, Call
from maildesk.sim.gmail_state import GoogleState
from maildesk.sim.google import create_google_app
from maildesk.sim.server import serve_app
from maildesk.sim.wire import SimRequest

EMAIL = "alice@example.com"
FULL = "https://mail.google.com/"
BASE = "/gmail/v1/users/me"


@cache
def discovery() -> dict[str, Any]:
    path = importlib.resources.files("googleapiclient").joinpath(
        "discovery_cache/documents/gmail.v1.json"
    )
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


def discovery_methods() -> dict[tuple[str, str], dict[str, Any]]:
    """(httpMethod, flatPath) -> method description, for every method in the document."""
    found: dict[tuple[str, str], dict[str, Any]] = {}

    def walk(resources: dict[str, Any]) -> None:
        for resource in resources.values():
            for method in resource.get("methods", {}).values():
                found[(method["httpMethod"], method["flatPath"])] = method
                found.setdefault((method["httpMethod"], method["path"]), method)
            walk(resource.get("resources", {}))

    walk(discovery()["resources"])
    return found


_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "boolean": bool,
    "number": (int, float),
}


def undeclared(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Every field of ``value`` the discovery ``schema`` does not declare, or mistypes."""
    if "$ref" in schema:
        schema = discovery()["schemas"][schema["$ref"]]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {type(value).__name__}"]
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        problems: list[str] = []
        for key, item in value.items():
            if key in properties:
                problems += undeclared(item, properties[key], f"{where}.{key}")
            elif extra is not None:
                problems += undeclared(item, extra, f"{where}.{key}")
            else:
                problems.append(f"{where}.{key} is not declared")
        return problems
    if kind == "array":
        if not isinstance(value, list):
            return [f"{where}: expected an array"]
        return [
            p
            for i, item in enumerate(value)
            for p in undeclared(item, schema["items"], f"{where}[{i}]")
        ]
    expected = _JSON_TYPES.get(str(kind))
    if expected is not None and (
        not isinstance(value, expected) or isinstance(value, bool) != (kind == "boolean")
    ):
        return [f"{where}: expected {kind}, got {type(value).__name__} {value!r}"]
    return []


# -- the route table ------------------------------------------------------------------------


def test_every_served_route_is_a_gmail_method_with_declared_parameters() -> None:
    methods = discovery_methods()
    api_wide = set(discovery()["parameters"])
    assert set(GLOBAL_PARAMS) <= api_wide
    for route in GMAIL_ROUTES:
        method = methods.get((route.method, route.template))
        assert method is not None, f"{route.method} {route.template} is not in the discovery doc"
        query = {n for n, p in method.get("parameters", {}).items() if p["location"] == "query"}
        assert route.params <= query, f"{route.template} reads undeclared {route.params - query}"
        path_params = {
            n for n, p in method.get("parameters", {}).items() if p["location"] == "path"
        }
        assert set(route.pattern.groupindex) == path_params


def test_a_handler_cannot_read_an_undeclared_parameter() -> None:
    # The route table is only trustworthy if reading outside it fails loudly.
    state = GoogleState(clock=ManualClock(), rng=random.Random(1))
    token = state.oauth.authenticate(state.issue_access_token(state.create_grant(EMAIL, [FULL])))
    assert token is not None
    route = next(r for r in GMAIL_ROUTES if r.template.endswith("/messages"))
    request = SimRequest("GET", BASE + "/messages", [("q", "x"), ("format", "raw")])
    call = Call(request, route, state.mailbox(EMAIL), token, {})
    assert call.param("q") == "x"
    with pytest.raises(RuntimeError, match="undeclared parameter format"):
        call.params("format")


# -- the checker itself must be able to fail ----------------------------------------------------


def test_checker_flags_undeclared_and_mistyped_fields() -> None:
    message: dict[str, Any] = {
        "id": "1",
        "threadId": "1",
        "historyId": "5",
        "payload": {
            "partId": "",
            "headers": [{"name": "a", "value": "b"}],
            "parts": [{"partId": "0", "body": {"size": 1, "data": "QQ=="}}],
        },
    }
    schema: dict[str, Any] = {"$ref": "Message"}
    assert undeclared(message, schema) == []
    assert undeclared({**message, "bogus": 1}, schema) == ["$.bogus is not declared"]
    nested = copy.deepcopy(message)
    nested["payload"]["parts"][0]["body"]["encoding"] = "base64"
    assert undeclared(nested, schema) == ["$.payload.parts[0].body.encoding is not declared"]
    assert undeclared({**message, "historyId": 5}, schema) == [
        "$.historyId: expected string, got int 5"
    ]
    history = {"history": [{"id": "9", "messagesAdded": [{"message": {"id": "1", "extra": True}}]}]}
    assert undeclared(history, {"$ref": "ListHistoryResponse"}) == [
        "$.history[0].messagesAdded[0].message.extra is not declared"
    ]


# -- every answer of every route ----------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[tuple[GoogleState, httpx.AsyncClient]]:
    state = GoogleState(clock=ManualClock(), rng=random.Random(5))
    token = state.issue_access_token(state.create_grant(EMAIL, [FULL]))
    state.ensure_mailbox("bob@example.com")
    app = create_google_app(state)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://sim",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        yield state, client


ATTACHMENT_MAIL = (
    b"To: bob@example.com\r\nSubject: file\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed;"
    b" boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee file\r\n--b\r\nContent-Type:"
    b" application/pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\n\r\n%PDF\r\n--b--\r\n"
)


async def test_every_answer_uses_only_declared_fields(
    http: tuple[GoogleState, httpx.AsyncClient],
) -> None:
    state, client = http
    state.seed_mailbox(EMAIL, 40)
    start = state.mailbox(EMAIL).history_id
    methods = discovery_methods()
    answers: list[tuple[str, str, httpx.Response]] = []

    async def call(method: str, template: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await client.request(method, BASE + path, **kwargs)
        assert response.status_code in (200, 204), (template, response.text)
        answers.append((method, template, response))
        return response

    u = "gmail/v1/users/{userId}"
    raw = base64.urlsafe_b64encode(ATTACHMENT_MAIL).decode()
    sent = (await call("POST", f"{u}/messages/send", "/messages/send", json={"raw": raw})).json()
    full = (await call("GET", f"{u}/messages/{{id}}", f"/messages/{sent['id']}")).json()
    attachment = full["payload"]["parts"][1]["body"]["attachmentId"]
    await call(
        "GET",
        f"{u}/messages/{{messageId}}/attachments/{{id}}",
        f"/messages/{sent['id']}/attachments/{attachment}",
    )
    listed = (
        await call(
            "GET", f"{u}/messages", "/messages", params={"maxResults": 5, "labelIds": "INBOX"}
        )
    ).json()
    first = listed["messages"][0]["id"]
    for fmt in ("minimal", "metadata", "full", "raw"):
        await call("GET", f"{u}/messages/{{id}}", f"/messages/{first}", params={"format": fmt})
    await call(
        "POST",
        f"{u}/messages/{{id}}/modify",
        f"/messages/{first}/modify",
        json={"addLabelIds": ["STARRED"], "removeLabelIds": ["UNREAD"]},
    )
    await call("POST", f"{u}/messages/{{id}}/trash", f"/messages/{first}/trash")
    await call("POST", f"{u}/messages/{{id}}/untrash", f"/messages/{first}/untrash")
    await call("DELETE", f"{u}/messages/{{id}}", f"/messages/{first}")
    history = (
        await call("GET", f"{u}/history", "/history", params={"startHistoryId": start})
    ).json()
    kinds = {k for record in history["history"] for k in record}
    assert kinds >= {"messagesAdded", "messagesDeleted", "labelsAdded", "labelsRemoved"}
    await call(
        "GET",
        f"{u}/history",
        "/history",
        params={
            "startHistoryId": start,
            "maxResults": 2,
            "labelId": "INBOX",
            "historyTypes": ["labelAdded", "messageAdded"],
        },
    )
    await call("GET", f"{u}/profile", "/profile")
    await call("GET", f"{u}/labels", "/labels")
    await call(
        "POST",
        f"{u}/watch",
        "/watch",
        json={"topicName": "projects/p/topics/t", "labelIds": ["INBOX"]},
    )
    await call("POST", f"{u}/stop", "/stop")

    assert {(m, t) for m, t, _ in answers} == {(r.method, r.template) for r in GMAIL_ROUTES}
    for method, template, response in answers:
        described = methods[(method, template)]
        if "response" not in described:
            assert response.status_code == 204
            assert response.content == b""
            continue
        problems = undeclared(response.json(), described["response"])
        assert problems == [], f"{method} {template}: {problems}"


# -- Google's client library over real HTTP -----------------------------------------------------


def _use_google_client(base_url: str, token: str) -> dict[str, Any]:
    """Drive the simulator with google-api-python-client (synchronous, so run in a thread)."""
    doc = {**discovery(), "rootUrl": base_url + "/"}
    credentials = google.oauth2.credentials.Credentials(token=token)  # type: ignore[no-untyped-call]
    transport = httplib2.Http(timeout=10)
    try:
        service = build_from_document(
            doc, http=google_auth_httplib2.AuthorizedHttp(credentials, http=transport)
        )
        users = service.users()
        out: dict[str, Any] = {"profile": users.getProfile(userId="me").execute()}
        listed = users.messages().list(userId="me", labelIds=["INBOX"], maxResults=5).execute()
        out["listed"] = [m["id"] for m in listed["messages"]]
        got: dict[str, Any] = {}

        def collect(request_id: str, response: Any, exception: Exception | None) -> None:
            got[request_id] = exception if exception is not None else response

        batch = service.new_batch_http_request(callback=collect)
        for mid in [*out["listed"], "0000000000000000"]:
            batch.add(
                users.messages().get(
                    userId="me", id=mid, format="metadata", metadataHeaders=["Subject"]
                ),
                request_id=mid,
            )
        batch.execute()
        out["batch"] = got
        try:
            users.history().list(userId="me", startHistoryId="1").execute()
        except HttpError as exc:
            out["history_error"] = (exc.status_code, exc.error_details)
        return out
    finally:
        transport.close()  # httplib2 keeps connections open otherwise


async def test_google_client_library_works_against_the_simulator() -> None:
    state = GoogleState(clock=ManualClock(), rng=random.Random(9))
    token = state.issue_access_token(state.create_grant(EMAIL, [FULL]))
    state.seed_mailbox(EMAIL, 30)
    async with serve_app(create_google_app(state)) as url:
        out = await asyncio.to_thread(_use_google_client, url, token)
    assert out["profile"]["emailAddress"] == EMAIL
    assert len(out["listed"]) == 5
    for mid in out["listed"]:
        answer = out["batch"][mid]
        assert answer["id"] == mid
        assert answer["payload"]["headers"][0]["name"] == "Subject"
    missing = out["batch"]["0000000000000000"]
    assert getattr(missing, "status_code", None) == 404
    status, details = out["history_error"]
    assert status == 404
    assert details[0]["reason"] == "notFound"
