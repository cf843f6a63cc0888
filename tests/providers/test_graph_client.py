"""GraphClient over httpx.MockTransport: URLs, Prefer headers, paging, links and error mapping."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from maildesk.clock import ManualClock
from maildesk.domain.mail import FolderRole, RemoteBody
from maildesk.errors import (
    CursorExpired,
    MessageGone,
    OAuthInvalid,
    ProtocolViolation,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    ScopeMissing,
    WrongTokenKind,
)
from maildesk.providers.graph import GraphClient
from maildesk.providers.graph_types import GraphApi, GraphProfile
from maildesk.providers.graph_wire import MESSAGE_SELECT
from maildesk.providers.http import ProviderHttp
from maildesk.providers.microsoft_oauth import MicrosoftOAuth
from maildesk.providers.oauth import AccessTokenCache
from tests.support.scripted import Script, Tokens

BASE = "https://graph.example/v1.0"
Answer = httpx.Response | Exception


def error(status: int, code: str, message: str = "m", **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, json={"error": {
        "code": code, "message": message,
        "innerError": {"date": "2026-11-21T10:00:00", "request-id": "r"}}})


def message(message_id: str, folder: str = "inbox-id", **changes: Any) -> dict[str, Any]:
    body = {
        "@odata.etag": 'W/"x"', "id": message_id, "conversationId": f"c-{message_id}",
        "internetMessageId": f"<{message_id}@x>", "subject": f"subject {message_id}",
        "bodyPreview": "hi", "isRead": False, "flag": {"flagStatus": "notFlagged"},
        "receivedDateTime": "2026-11-21T10:00:00Z", "parentFolderId": folder,
        "from": {"emailAddress": {"name": "Grace", "address": "grace@x.example"}},
        "toRecipients": [{"emailAddress": {"name": "Ada", "address": "ada@x.example"}}],
    }
    body.update(changes)
    return body


def folder(folder_id: str, name: str, children: int = 0, hidden: bool = False
           ) -> dict[str, Any]:
    return {"id": folder_id, "displayName": name, "parentFolderId": "root",
            "childFolderCount": children, "unreadItemCount": 0, "totalItemCount": 0,
            "isHidden": hidden}


def subscription(sub_id: str = "sub-1", expiration: str = "2026-11-27T10:00:00.0000000Z"
                 ) -> dict[str, Any]:
    return {"id": sub_id, "resource": "/me/messages", "applicationId": "app",
            "changeType": "created,updated,deleted", "clientState": "cs",
            "notificationUrl": "https://md.example/maildesk/push/graph",
            "lifecycleNotificationUrl": "https://md.example/maildesk/push/graph/lifecycle",
            "expirationDateTime": expiration, "creatorId": "u",
            "latestSupportedTlsVersion": "v1_2"}


class FakeGraph:
    """Answers by (method, path); the last answer of a route repeats. Records every request."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Script] = {}
        self.requests: list[httpx.Request] = []

    def route(self, method: str, path: str, *answers: Answer | dict[str, Any]) -> None:
        self.routes[(method, "/v1.0" + path)] = Script(
            *(httpx.Response(200, json=a) if isinstance(a, dict) else a for a in answers)
        )

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.method, request.url.path)
        if key not in self.routes:
            return error(404, "ResourceNotFound", f"no route {key}")
        return self.routes[key](request)

    def query(self, index: int) -> dict[str, list[str]]:
        return parse_qs(self.requests[index].url.query.decode())


@pytest.fixture
def fake() -> FakeGraph:
    return FakeGraph()


@pytest.fixture
def tokens() -> Tokens:
    return Tokens()


@pytest.fixture
def graph(make_http: Callable[..., ProviderHttp], fake: FakeGraph, tokens: Tokens
          ) -> GraphClient:
    return GraphClient(make_http(fake), api_base=BASE + "/", token=tokens)


def test_client_satisfies_the_protocol(graph: GraphClient) -> None:
    api: GraphApi = graph
    assert api is graph
    with pytest.raises(ValueError, match="absolute"):
        GraphClient(graph._http, api_base="/v1.0", token=Tokens())


async def test_profile_sends_token_and_immutable_ids(graph: GraphClient, fake: FakeGraph) -> None:
    fake.route("GET", "/me", {"id": "u1", "displayName": "Ada", "mail": None,
                              "userPrincipalName": "ada@contoso.example"})
    assert await graph.profile() == GraphProfile("ada@contoso.example", "Ada")
    request = fake.requests[0]
    assert str(request.url) == f"{BASE}/me"
    assert request.headers["Authorization"] == "Bearer tok-1"
    assert request.headers["Prefer"] == 'IdType="ImmutableId"'


# --- folders -------------------------------------------------------------------------------------

async def test_folders_walk_the_tree_with_paging_and_roles(
    graph: GraphClient, fake: FakeGraph
) -> None:
    fake.route("GET", "/me/mailFolders", {
        "value": [folder("inbox-id", "Inbox", children=1), folder("hidden", "Sync", hidden=True)],
        "@odata.nextLink": f"{BASE}/me/mailFolders?$top=100&$skiptoken=p2",
    }, {"value": [folder("sent-id", "Sent Items"), folder("proj", "Projects", children=2)]})
    fake.route("GET", "/me/mailFolders/inbox-id/childFolders",
               {"value": [folder("clients", "Clients", children=1)]})
    fake.route("GET", "/me/mailFolders/clients/childFolders",
               {"value": [folder("acme", "ACME")]})
    fake.route("GET", "/me/mailFolders/proj/childFolders",
               {"value": [folder("p1", "One")], "@odata.nextLink": f"{BASE}/me/mailFolders/"
                "proj/childFolders?$top=100&$skiptoken=c2"},
               {"value": [folder("p2", "Two"), folder("inbox-id", "Inbox")]})  # a repeat
    fake.route("GET", "/me/mailFolders/inbox", folder("inbox-id", "Inbox", children=1))
    fake.route("GET", "/me/mailFolders/sentitems", folder("sent-id", "Sent Items"))
    fake.route("GET", "/me/mailFolders/drafts", folder("drafts-id", "Drafts"))
    fake.route("GET", "/me/mailFolders/deleteditems", folder("trash-id", "Deleted Items"))
    fake.route("GET", "/me/mailFolders/junkemail", error(404, "ErrorFolderNotFound"))
    fake.route("GET", "/me/mailFolders/archive", error(404, "ErrorFolderNotFound"))

    folders = {f.remote_id: f for f in await graph.folders()}
    assert {k: (f.name, f.role, f.system) for k, f in folders.items()} == {
        "inbox-id": ("Inbox", FolderRole.INBOX, True),
        "sent-id": ("Sent Items", FolderRole.SENT, True),
        "proj": ("Projects", FolderRole.NONE, False),
        "clients": ("Inbox/Clients", FolderRole.NONE, False),
        "acme": ("Inbox/Clients/ACME", FolderRole.NONE, False),
        "p1": ("Projects/One", FolderRole.NONE, False),
        "p2": ("Projects/Two", FolderRole.NONE, False),
        # listed by the well-known lookup although the (stubbed) listing missed them
        "drafts-id": ("Drafts", FolderRole.DRAFTS, True),
        "trash-id": ("Deleted Items", FolderRole.TRASH, True),
    }
    assert fake.query(0) == {"$top": ["100"], "includeHiddenFolders": ["false"]}
    assert str(fake.requests[1].url) == f"{BASE}/me/mailFolders?$top=100&$skiptoken=p2"
    assert all(r.headers["Authorization"] == "Bearer tok-1" for r in fake.requests)


async def test_folders_refuse_a_foreign_next_link(graph: GraphClient, fake: FakeGraph) -> None:
    fake.route("GET", "/me/mailFolders", {
        "value": [], "@odata.nextLink": "https://evil.example/v1.0/me/mailFolders?$skip=1"})
    with pytest.raises(ProtocolViolation, match="outside the configured Graph base"):
        await graph.folders()
    assert {r.url.host for r in fake.requests} == {"graph.example"}


# --- messages --------------------------------------------------------------------------------

async def test_newest(graph: GraphClient, fake: FakeGraph) -> None:
    fake.route("GET", "/me/mailFolders/inbox-id/messages",
               {"value": [message("m2"), message("m1", isRead=True)]})
    messages = await graph.newest("inbox-id", 25)
    assert [(m.remote_id, m.unread, m.folder_ids) for m in messages] == [
        ("m2", True, frozenset({"inbox-id"})), ("m1", False, frozenset({"inbox-id"}))]
    assert fake.query(0) == {"$orderby": ["receivedDateTime desc"], "$top": ["25"],
                             "$select": [MESSAGE_SELECT]}
    with pytest.raises(ValueError, match="count"):
        await graph.newest("inbox-id", 0)


async def test_folder_ids_are_escaped_in_paths(graph: GraphClient, fake: FakeGraph) -> None:
    fake.route("GET", "/me/messages/a/b=", {"id": "a/b=", "body": {"contentType": "text",
                                                                   "content": "x"}})
    assert (await graph.get_body("a/b=")).text == "x"
    # "a/b=" must stay one path segment (the fake routes on the decoded path)
    assert fake.requests[0].url.raw_path.startswith(b"/v1.0/me/messages/a%2Fb%3D?")


async def test_delta_pages_to_the_delta_link(graph: GraphClient, fake: FakeGraph) -> None:
    next_link = f"{BASE}/me/mailFolders('inbox-id')/messages/delta?$skiptoken=AbC%3D%3D"
    delta_link = f"{BASE}/me/mailFolders('inbox-id')/messages/delta?$deltatoken=ZzZ"
    fake.route("GET", "/me/mailFolders/inbox-id/messages/delta",
               {"value": [message("m1"), message("m2"), message("m1", isRead=True)],
                "@odata.nextLink": next_link})
    fake.route("GET", "/me/mailFolders('inbox-id')/messages/delta",
               {"value": [message("m2"), {"id": "m3", "@removed": {"reason": "deleted"}},
                          {"id": "m4", "@removed": {"reason": "changed"}}],
                "@odata.deltaLink": delta_link})

    first = await graph.delta("inbox-id", None, page_size=50)
    assert [(m.remote_id, m.unread) for m in first.messages] == [("m2", True), ("m1", False)]
    assert (first.next_link, first.delta_link) == (next_link, None)
    second = await graph.delta("inbox-id", first.next_link, page_size=50)
    assert [m.remote_id for m in second.messages] == ["m2"]  # repeats across pages pass on
    assert second.removed == ["m3", "m4"]
    assert (second.next_link, second.delta_link) == (None, delta_link)

    assert fake.query(0) == {"$select": [MESSAGE_SELECT]}
    assert str(fake.requests[1].url) == next_link  # followed exactly as given
    for request in fake.requests:
        assert request.headers["Prefer"] == 'IdType="ImmutableId", odata.maxpagesize=50'


@pytest.mark.parametrize(
    "answer",
    [
        error(410, "SyncStateNotFound", "The sync state was not found."),
        error(410, "syncStateNotFound"),
        error(400, "resyncRequired", "Resync required."),
        error(400, "SyncStateInvalid"),
        httpx.Response(410),
    ],
)
async def test_dead_delta_token_is_cursor_expired(
    graph: GraphClient, fake: FakeGraph, answer: httpx.Response
) -> None:
    fake.route("GET", "/me/mailFolders/f/messages/delta", answer)
    with pytest.raises(CursorExpired):
        await graph.delta("f", f"{BASE}/me/mailFolders/f/messages/delta?$deltatoken=old",
                          page_size=10)
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    "link",
    [
        "https://evil.example/v1.0/me/mailFolders/f/messages/delta?$deltatoken=x",
        "http://graph.example/v1.0/me/mailFolders/f/messages/delta?$deltatoken=x",
        "https://graph.example:8443/v1.0/me/mailFolders/f/messages/delta",
        "https://graph.example/beta/me/mailFolders/f/messages/delta",
        "https://graph.example/v1.0/../beta/me/messages/delta",
        "https://graph.example/v1.0evil/me/messages/delta",
        "https://user@graph.example/v1.0/me/messages/delta",
        "/v1.0/me/mailFolders/f/messages/delta?$deltatoken=x",
        "https://graph.example.evil.example/v1.0/me/messages/delta",
    ],
)
async def test_stored_foreign_link_is_refused_before_sending_the_token(
    graph: GraphClient, fake: FakeGraph, tokens: Tokens, link: str
) -> None:
    with pytest.raises(ProtocolViolation, match="refusing to send the token"):
        await graph.delta("f", link, page_size=10)
    assert fake.requests == []
    assert tokens.calls == []


async def test_foreign_link_in_an_answer_is_refused(graph: GraphClient, fake: FakeGraph) -> None:
    fake.route("GET", "/me/mailFolders/f/messages/delta",
               {"value": [], "@odata.deltaLink": "https://evil.example/d?$deltatoken=x"})
    with pytest.raises(ProtocolViolation, match="outside the configured Graph base"):
        await graph.delta("f", None, page_size=10)


async def test_link_on_the_default_port_spelled_out_is_accepted(
    graph: GraphClient, fake: FakeGraph
) -> None:
    fake.route("GET", "/me/mailFolders/f/messages/delta",
               {"value": [], "@odata.deltaLink": f"{BASE}/d"})
    page = await graph.delta(
        "f", "https://GRAPH.example:443/v1.0/me/mailFolders/f/messages/delta?$deltatoken=x",
        page_size=10)
    assert page.delta_link == f"{BASE}/d"


async def test_rate_limit_retry_after_is_honoured(
    graph: GraphClient, fake: FakeGraph, clock: ManualClock
) -> None:
    fake.route("GET", "/me/mailFolders/f/messages/delta",
               error(429, "TooManyRequests", **{"Retry-After": "9"}),
               {"value": [], "@odata.deltaLink": f"{BASE}/d"})
    await graph.delta("f", None, page_size=10)
    assert len(fake.requests) == 2
    assert clock.slept[0] >= 9


async def test_long_retry_after_is_rate_limited_without_waiting(
    graph: GraphClient, fake: FakeGraph, clock: ManualClock
) -> None:
    fake.route("GET", "/me", error(429, "TooManyRequests", **{"Retry-After": "300"}))
    with pytest.raises(RateLimited) as caught:
        await graph.profile()
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 300
    assert clock.slept == []


async def test_persistent_503_is_unavailable(graph: GraphClient, fake: FakeGraph) -> None:
    fake.route("GET", "/me", error(503, "ServiceNotAvailable", **{"Retry-After": "1"}))
    with pytest.raises(ProviderUnavailable):
        await graph.profile()
    assert len(fake.requests) == 5


async def test_401_refreshes_once_then_succeeds(
    graph: GraphClient, fake: FakeGraph, tokens: Tokens
) -> None:
    fake.route("GET", "/me", error(401, "InvalidAuthenticationToken", "Access token has expired"),
               {"id": "u", "mail": "ada@x.example"})
    assert (await graph.profile()).email == "ada@x.example"
    assert tokens.calls == [False, True]
    assert [r.headers["Authorization"] for r in fake.requests] == ["Bearer tok-1", "Bearer tok-2"]


async def test_second_401_is_oauth_invalid(
    graph: GraphClient, fake: FakeGraph, tokens: Tokens
) -> None:
    fake.route("GET", "/me", error(401, "InvalidAuthenticationToken", "Lifetime validation"))
    with pytest.raises(OAuthInvalid):
        await graph.profile()
    assert len(fake.requests) == 2
    assert tokens.calls == [False, True]


async def test_imap_token_on_graph_is_wrong_token_kind(
    graph: GraphClient, fake: FakeGraph
) -> None:
    fake.route("GET", "/me", error(401, "InvalidAuthenticationToken",
                                   "Access token validation failure. Invalid audience."))
    with pytest.raises(WrongTokenKind):
        await graph.profile()


async def test_403_access_denied_is_scope_missing(graph: GraphClient, fake: FakeGraph) -> None:
    fake.route("GET", "/me/mailFolders/f/messages/delta",
               error(403, "ErrorAccessDenied", "Access is denied. Check credentials."))
    with pytest.raises(ScopeMissing):
        await graph.delta("f", None, page_size=10)
    assert len(fake.requests) == 1


async def test_network_failure_is_unavailable(graph: GraphClient, fake: FakeGraph) -> None:
    fake.route("GET", "/me", httpx.ConnectError("refused"))
    with pytest.raises(ProviderUnavailable):
        await graph.profile()


async def test_malformed_answer_is_a_protocol_violation(
    graph: GraphClient, fake: FakeGraph
) -> None:
    fake.route("GET", "/me/mailFolders/f/messages/delta", httpx.Response(200, text="<html>"))
    with pytest.raises(ProtocolViolation, match="not valid JSON"):
        await graph.delta("f", None, page_size=10)


async def test_get_body_asks_for_html(graph: GraphClient, fake: FakeGraph) -> None:
    fake.route("GET", "/me/messages/m1", {"id": "m1", "body": {
        "contentType": "html", "content": "<p onclick=x>hi</p>"}})
    assert await graph.get_body("m1") == RemoteBody("m1", "", "<p onclick=x>hi</p>")
    request = fake.requests[0]
    assert fake.query(0) == {"$select": ["body"]}
    assert request.headers["Prefer"] == (
        'IdType="ImmutableId", outlook.body-content-type="html"')
    fake.route("GET", "/me/messages/m1", error(404, "ErrorItemNotFound"))
    with pytest.raises(MessageGone):
        await graph.get_body("m1")


# --- subscriptions -------------------------------------------------------------------------------

async def create(graph: GraphClient) -> Any:
    return await graph.create_subscription(
        resource="/me/messages", change_type="created,updated,deleted",
        notification_url="https://md.example/maildesk/push/graph",
        lifecycle_url="https://md.example/maildesk/push/graph/lifecycle",
        expiration=datetime(2026, 11, 27, 10, 0, 0, 250000, tzinfo=UTC), client_state="cs")


async def test_create_subscription(graph: GraphClient, fake: FakeGraph) -> None:
    fake.route("POST", "/subscriptions", httpx.Response(201, json=subscription(
        expiration="2026-11-27T09:59:59.9999999Z")))
    created = await create(graph)
    assert created.id == "sub-1"
    assert created.expiration == datetime(2026, 11, 27, 9, 59, 59, 999999, tzinfo=UTC)
    assert json.loads(fake.requests[0].content) == {
        "changeType": "created,updated,deleted",
        "notificationUrl": "https://md.example/maildesk/push/graph",
        "lifecycleNotificationUrl": "https://md.example/maildesk/push/graph/lifecycle",
        "resource": "/me/messages", "expirationDateTime": "2026-11-27T10:00:00.250Z",
        "clientState": "cs", "latestSupportedTlsVersion": "v1_2",
    }


@pytest.mark.parametrize(
    ("answer", "status", "fragment"),
    [
        (error(409, "Conflict", "A subscription already exists"), 409, "Conflict"),
        (error(400, "ValidationError", "Subscription validation request failed. Notification "
               "endpoint must respond with 200 OK to validation request."), 400,
         "validation request failed"),
        (error(400, "InvalidRequest", "expirationDateTime exceeds 10080 minutes"), 400, "10080"),
    ],
)
async def test_create_subscription_refusals(
    graph: GraphClient, fake: FakeGraph, answer: httpx.Response, status: int, fragment: str
) -> None:
    fake.route("POST", "/subscriptions", answer)
    with pytest.raises(ProviderRejected, match=fragment) as caught:
        await create(graph)
    assert caught.value.status == status


async def test_create_subscription_is_not_repeated_after_a_5xx(
    graph: GraphClient, fake: FakeGraph
) -> None:
    fake.route("POST", "/subscriptions", error(503, "ServiceNotAvailable"),
               httpx.Response(201, json=subscription()))
    with pytest.raises(ProviderUnavailable):
        await create(graph)
    assert len(fake.requests) == 1


async def test_list_subscriptions_follows_pages(graph: GraphClient, fake: FakeGraph) -> None:
    fake.route("GET", "/subscriptions",
               {"value": [subscription("a")], "@odata.nextLink": f"{BASE}/subscriptions?$skip=1"},
               {"value": [subscription("b")]})
    assert [s.id for s in await graph.list_subscriptions()] == ["a", "b"]


async def test_renew_subscription(graph: GraphClient, fake: FakeGraph) -> None:
    fake.route("PATCH", "/subscriptions/sub-1", subscription(expiration="2026-11-30T10:00:00Z"))
    renewed = await graph.renew_subscription("sub-1", datetime(2026, 12, 3, tzinfo=UTC))
    assert renewed.expiration == datetime(2026, 11, 30, 10, 0, tzinfo=UTC)  # Graph's choice
    assert json.loads(fake.requests[0].content) == {
        "expirationDateTime": "2026-12-03T00:00:00.000Z"}
    fake.route("PATCH", "/subscriptions/sub-1", error(404, "ResourceNotFound"))
    with pytest.raises(MessageGone):
        await graph.renew_subscription("sub-1", datetime(2026, 12, 3, tzinfo=UTC))


async def test_reauthorize_and_delete(graph: GraphClient, fake: FakeGraph) -> None:
    fake.route("POST", "/subscriptions/sub-1/reauthorize", httpx.Response(200))
    fake.route("DELETE", "/subscriptions/sub-1", httpx.Response(204))
    await graph.reauthorize_subscription("sub-1")
    await graph.delete_subscription("sub-1")
    assert [(r.method, r.url.path) for r in fake.requests] == [
        ("POST", "/v1.0/subscriptions/sub-1/reauthorize"),
        ("DELETE", "/v1.0/subscriptions/sub-1")]
    fake.route("DELETE", "/subscriptions/sub-1", error(404, "ResourceNotFound"))
    await graph.delete_subscription("sub-1")  # already gone counts as done
    fake.route("POST", "/subscriptions/sub-1/reauthorize", error(404, "ResourceNotFound"))
    with pytest.raises(MessageGone):
        await graph.reauthorize_subscription("sub-1")


# --- with the real token cache ---------------------------------------------------------------

async def test_graph_401_refreshes_through_microsoft_oauth_and_stores_the_rotation(
    make_http: Callable[..., ProviderHttp], clock: ManualClock
) -> None:
    seen: list[tuple[str, str]] = []
    issued = iter(["1", "2", "3"])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "login.example":
            refresh_token = parse_qs(request.content.decode())["refresh_token"][0]
            n = next(issued)
            seen.append(("token", refresh_token))
            return httpx.Response(200, json={
                "token_type": "Bearer", "expires_in": 3599, "scope": "Mail.ReadWrite",
                "access_token": f"at-{n}", "refresh_token": f"rt-{n}"})
        seen.append(("graph", request.headers["Authorization"]))
        if request.headers["Authorization"] == "Bearer at-1":
            return error(401, "InvalidAuthenticationToken", "Access token has expired")
        return httpx.Response(200, json={"id": "u", "mail": "ada@x.example"})

    provider_http = make_http(handler)
    oauth = MicrosoftOAuth(provider_http, authority_url="https://login.example", tenant="common",
                           client_id="c", client_secret="s")
    stored = ["rt-0"]

    async def load() -> str:
        return stored[-1]

    async def save(token: str) -> None:
        stored.append(token)

    source = AccessTokenCache(oauth, clock).token_source(
        "outlook", load_refresh_token=load, save_refresh_token=save)
    graph = GraphClient(provider_http, api_base=BASE, token=source)
    assert (await graph.profile()).email == "ada@x.example"
    assert seen == [("token", "rt-0"), ("graph", "Bearer at-1"), ("token", "rt-1"),
                    ("graph", "Bearer at-2")]
    assert stored == ["rt-0", "rt-1", "rt-2"]
