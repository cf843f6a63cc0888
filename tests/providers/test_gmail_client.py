"""GmailClient over httpx.MockTransport: URLs, parameters, batch metadata and error mapping."""

from __future__ import annotations

import base64
import email
import email.policy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from maildesk.clock import ManualClock
from maildesk.errors import (
    CursorExpired,
    MessageGone,
    OAuthInvalid,
    ProtocolViolation,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    ScopeMissing,
)
from maildesk.providers.gmail import METADATA_HEADERS, GmailApi, GmailClient, gmail_error
from maildesk.providers.http import ProviderHttp
from maildesk.providers.oauth import AccessTokenCache, GoogleOAuth
from tests.support.scripted import Script, Tokens

BASE = "https://gmail.example"
USER = "/gmail/v1/users/me"


def error(code: int, reason: str, status: str = "") -> dict[str, Any]:
    return {"error": {"code": code, "message": "m", "status": status,
                      "errors": [{"domain": "global", "reason": reason, "message": "m"}]}}


def metadata(message_id: str, labels: tuple[str, ...] = ("INBOX", "UNREAD")) -> dict[str, Any]:
    return {
        "id": message_id, "threadId": f"t-{message_id}", "labelIds": list(labels),
        "snippet": "hi", "sizeEstimate": 100, "historyId": "5", "internalDate": "1767603600000",
        "payload": {"mimeType": "text/plain", "headers": [
            {"name": "Subject", "value": f"subject {message_id}"},
            {"name": "From", "value": "a@example.com"}]},
    }


class FakeGmail:
    """Answers single calls from ``routes`` and batch calls from ``messages``.

    ``faults[id]`` is a queue of (status, headers, body) a sub-request for ``id`` gets before
    the real answer, to script per-message 401/429/503s inside a batch.
    """

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.routes: dict[tuple[str, str], Script] = {}
        self.messages: dict[str, dict[str, Any]] = {}
        self.faults: dict[str, list[tuple[int, dict[str, str], dict[str, Any]]]] = {}
        self.batches: list[list[str]] = []
        self.batch_paths: list[str] = []

    def route(self, method: str, path: str, *answers: httpx.Response) -> None:
        self.routes[(method, path)] = Script(*answers)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/batch/gmail/v1":
            return self.batch(request)
        return self.routes[(request.method, request.url.path)](request)

    def batch(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        parsed = email.message_from_bytes(
            b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n"
            + request.content, policy=email.policy.HTTP)
        ids, chunks = [], []
        for part in parsed.iter_parts():
            method, target, _ = str(part.get_payload()).strip().split(" ")
            assert method == "GET"
            self.batch_paths.append(target)
            message_id = urlsplit(target).path.rsplit("/", 1)[1]
            ids.append(message_id)
            queue = self.faults.get(message_id, [])
            if queue:
                status, headers, body = queue.pop(0)
            elif message_id in self.messages:
                status, headers, body = 200, {}, self.messages[message_id]
            else:
                status, headers, body = 404, {}, error(404, "notFound", "NOT_FOUND")
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            cid = str(part["Content-ID"]).strip("<>")
            chunks.append(
                f"--resp\r\nContent-Type: application/http\r\nContent-ID: <response-{cid}>\r\n\r\n"
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json; charset=UTF-8\r\n{extra}"
                f"\r\n{json.dumps(body)}\r\n".encode()
            )
        self.batches.append(ids)
        chunks.reverse()  # Google may answer in any order; Content-IDs must sort it out
        return httpx.Response(200, headers={"Content-Type": "multipart/mixed; boundary=resp"},
                              content=b"".join(chunks) + b"--resp--\r\n")


@pytest.fixture
def fake() -> FakeGmail:
    return FakeGmail()


@pytest.fixture
def tokens() -> Tokens:
    return Tokens()


@pytest.fixture
def gmail(make_http: Callable[..., ProviderHttp], fake: FakeGmail, tokens: Tokens) -> GmailClient:
    return GmailClient(make_http(fake), api_base=BASE + "/", token=tokens)


def test_client_satisfies_the_protocol(gmail: GmailClient) -> None:
    api: GmailApi = gmail
    assert api is gmail


async def test_profile_and_labels(gmail: GmailClient, fake: FakeGmail) -> None:
    fake.route("GET", f"{USER}/profile", httpx.Response(200, json={
        "emailAddress": "ada@example.com", "messagesTotal": 3, "threadsTotal": 2,
        "historyId": "77"}))
    fake.route("GET", f"{USER}/labels", httpx.Response(200, json={"labels": [
        {"id": "INBOX", "name": "INBOX", "type": "system"}]}))
    assert await gmail.profile() == ("ada@example.com", 77, 3)
    assert [f.remote_id for f in await gmail.labels()] == ["INBOX"]
    assert all(r.headers["Authorization"] == "Bearer tok-1" for r in fake.requests)
    assert str(fake.requests[0].url) == f"{BASE}{USER}/profile"


async def test_list_message_ids_parameters(gmail: GmailClient, fake: FakeGmail) -> None:
    fake.route("GET", f"{USER}/messages", httpx.Response(200, json={
        "messages": [{"id": "m2", "threadId": "t"}], "nextPageToken": "n1",
        "resultSizeEstimate": 2}))
    page = await gmail.list_message_ids(["INBOX", "Label_1"], "p0", max_results=10)
    assert page.ids == ["m2"]
    assert page.next_page_token == "n1"
    params = parse_qs(fake.requests[0].url.query.decode())
    assert params == {"labelIds": ["INBOX", "Label_1"], "pageToken": ["p0"], "maxResults": ["10"],
                      "includeSpamTrash": ["false"]}
    await gmail.list_message_ids(include_spam_trash=True)
    params = parse_qs(fake.requests[1].url.query.decode())
    assert params == {"maxResults": ["500"], "includeSpamTrash": ["true"]}


async def test_history_and_cursor_expiry(gmail: GmailClient, fake: FakeGmail) -> None:
    fake.route("GET", f"{USER}/history", httpx.Response(200, json={
        "history": [{"id": "12", "messagesAdded": [{"message": {"id": "m1", "threadId": "t"}}]}],
        "historyId": "13"}))
    page = await gmail.history(11, "pt")
    assert (page.history_id, page.records[0].added, page.next_page_token) == (13, ["m1"], None)
    params = parse_qs(fake.requests[0].url.query.decode())
    assert params["startHistoryId"] == ["11"]
    assert params["pageToken"] == ["pt"]
    fake.route("GET", f"{USER}/history", httpx.Response(404, json=error(404, "notFound")))
    with pytest.raises(CursorExpired):
        await gmail.history(1)


async def test_get_body(gmail: GmailClient, fake: FakeGmail) -> None:
    data = base64.urlsafe_b64encode(b"<p>hi</p>").decode().rstrip("=")
    fake.route("GET", f"{USER}/messages/m1", httpx.Response(200, json={
        "id": "m1", "payload": {"mimeType": "text/html", "body": {"size": 9, "data": data}}}))
    body = await gmail.get_body("m1")
    assert body.html == "<p>hi</p>"
    assert fake.requests[0].url.params["format"] == "full"
    fake.route("GET", f"{USER}/messages/gone", httpx.Response(404, json=error(404, "notFound")))
    with pytest.raises(MessageGone):
        await gmail.get_body("gone")


async def test_send_encodes_raw_and_is_not_retried(
    gmail: GmailClient, fake: FakeGmail
) -> None:
    raw = b"From: a@example.com\r\nSubject: \xc3\xa9?>\r\n\r\nbody"
    fake.route("POST", f"{USER}/messages/send",
               httpx.Response(200, json={"id": "s1", "threadId": "t1", "labelIds": ["SENT"]}))
    assert await gmail.send(raw) == ("s1", "t1")
    sent = json.loads(fake.requests[0].content)["raw"]
    assert "+" not in sent
    assert "/" not in sent
    assert base64.urlsafe_b64decode(sent) == raw
    fake.route("POST", f"{USER}/messages/send", httpx.Response(503), httpx.Response(200))
    with pytest.raises(ProviderUnavailable):
        await gmail.send(raw)
    assert len(fake.requests) == 2


async def test_watch_and_stop(gmail: GmailClient, fake: FakeGmail) -> None:
    fake.route("POST", f"{USER}/watch",
               httpx.Response(200, json={"historyId": "1234", "expiration": "1768208400000"}))
    fake.route("POST", f"{USER}/stop", httpx.Response(204))
    result = await gmail.watch("projects/p/topics/t", ["INBOX"], behavior="INCLUDE")
    assert result == (1234, datetime(2026, 1, 12, 9, 0, tzinfo=UTC))
    assert json.loads(fake.requests[0].content) == {
        "topicName": "projects/p/topics/t", "labelIds": ["INBOX"],
        "labelFilterBehavior": "include"}
    await gmail.watch("projects/p/topics/t", [])
    assert json.loads(fake.requests[1].content) == {"topicName": "projects/p/topics/t"}
    with pytest.raises(ValueError, match="behavior"):
        await gmail.watch("projects/p/topics/t", ["INBOX"], behavior="only")
    await gmail.stop()
    assert fake.requests[-1].method == "POST"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (httpx.Response(403, json=error(403, "insufficientPermissions", "PERMISSION_DENIED")),
         ScopeMissing),
        (httpx.Response(400, json=error(400, "failedPrecondition")), ProviderRejected),
        (httpx.Response(429, headers={"Retry-After": "3600"}), RateLimited),
        (httpx.Response(500), ProviderUnavailable),
        (httpx.Response(200, text="<html>"), ProtocolViolation),
        (httpx.Response(200, json={"emailAddress": "a@example.com"}), ProtocolViolation),
    ],
)
async def test_profile_errors(
    gmail: GmailClient, fake: FakeGmail, answer: httpx.Response, expected: type[Exception]
) -> None:
    fake.route("GET", f"{USER}/profile", answer)
    with pytest.raises(expected):
        await gmail.profile()


async def test_rate_limit_carries_retry_after(gmail: GmailClient, fake: FakeGmail) -> None:
    fake.route("GET", f"{USER}/labels", httpx.Response(429, headers={"Retry-After": "3600"}))
    with pytest.raises(RateLimited) as caught:
        await gmail.labels()
    assert caught.value.retry_after == 3600


async def test_api_base_with_a_path_prefix(
    make_http: Callable[..., ProviderHttp], fake: FakeGmail, tokens: Tokens
) -> None:
    client = GmailClient(make_http(fake), api_base="http://127.0.0.1:9/sim/google", token=tokens)
    fake.route("GET", f"/sim/google{USER}/profile", httpx.Response(200, json={
        "emailAddress": "a@example.com", "historyId": "1"}))
    assert (await client.profile()).history_id == 1
    fake.messages["m1"] = metadata("m1")
    fake.routes.clear()

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/sim/google/batch/gmail/v1"
        return fake.batch(request)

    client = GmailClient(make_http(handler), api_base="http://127.0.0.1:9/sim/google", token=tokens)
    assert (await client.get_metadata(["m1"]))["m1"] is not None
    assert fake.batch_paths[0].startswith(f"/sim/google{USER}/messages/m1?")


# --- batch metadata ------------------------------------------------------------------------------

async def test_get_metadata_batches_and_marks_gone(
    gmail: GmailClient, fake: FakeGmail, clock: ManualClock
) -> None:
    fake.messages = {"a": metadata("a"), "b": metadata("b", ("INBOX", "STARRED"))}
    found = await gmail.get_metadata(["a", "b", "gone", "a"])
    assert set(found) == {"a", "b", "gone"}
    assert found["gone"] is None
    a, b = found["a"], found["b"]
    assert a is not None
    assert b is not None
    assert (a.subject, a.unread, a.folder_ids) == ("subject a", True, frozenset({"INBOX"}))
    assert (b.starred, b.unread) == (True, False)
    assert fake.batches == [["a", "b", "gone"]]
    assert fake.requests[0].headers["Authorization"] == "Bearer tok-1"
    query = parse_qs(urlsplit(fake.batch_paths[0]).query)
    assert query == {"format": ["metadata"], "metadataHeaders": list(METADATA_HEADERS)}
    assert clock.slept == []


async def test_get_metadata_of_nothing_sends_nothing(gmail: GmailClient, fake: FakeGmail) -> None:
    assert await gmail.get_metadata([]) == {}
    assert fake.requests == []


async def test_get_metadata_splits_into_batches(
    make_http: Callable[..., ProviderHttp], fake: FakeGmail, tokens: Tokens
) -> None:
    ids = [f"m{i:03d}" for i in range(120)]
    fake.messages = {i: metadata(i) for i in ids}
    client = GmailClient(make_http(fake), api_base=BASE, token=tokens, batch_size=50)
    found = await client.get_metadata(ids)
    assert [len(batch) for batch in fake.batches] == [50, 50, 20]
    assert all(found[i] is not None for i in ids)


async def test_failed_sub_requests_are_retried_alone(
    gmail: GmailClient, fake: FakeGmail, clock: ManualClock
) -> None:
    fake.messages = {i: metadata(i) for i in "abc"}
    fake.faults["b"] = [(503, {}, error(503, "backendError"))]
    fake.faults["c"] = [(429, {"Retry-After": "5"}, error(429, "rateLimitExceeded"))]
    found = await gmail.get_metadata(["a", "b", "c"])
    assert all(found[i] is not None for i in "abc")
    assert fake.batches == [["a", "b", "c"], ["b", "c"]]
    assert clock.slept == [5.0]


async def test_sub_request_rate_limit_over_inline_wait_defers(
    gmail: GmailClient, fake: FakeGmail, clock: ManualClock
) -> None:
    fake.messages = {"a": metadata("a")}
    fake.faults["a"] = [(403, {"Retry-After": "900"}, error(403, "userRateLimitExceeded"))]
    with pytest.raises(RateLimited) as caught:
        await gmail.get_metadata(["a"])
    assert caught.value.retry_after == 900
    assert clock.slept == []


async def test_persistent_sub_request_failure_is_unavailable(
    gmail: GmailClient, fake: FakeGmail
) -> None:
    fake.messages = {"a": metadata("a")}
    fake.faults["a"] = [(500, {}, error(500, "backendError"))] * 10
    with pytest.raises(ProviderUnavailable):
        await gmail.get_metadata(["a"])
    assert len(fake.batches) == 5


async def test_sub_request_401_refreshes_once(
    gmail: GmailClient, fake: FakeGmail, tokens: Tokens, clock: ManualClock
) -> None:
    fake.messages = {"a": metadata("a"), "b": metadata("b")}
    fake.faults["a"] = [(401, {}, error(401, "authError", "UNAUTHENTICATED"))]
    found = await gmail.get_metadata(["a", "b"])
    assert found["a"] is not None
    assert True in tokens.calls
    assert fake.requests[-1].headers["Authorization"] == "Bearer tok-2"
    assert fake.batches == [["a", "b"], ["a"]]
    assert clock.slept == []


async def test_repeated_sub_request_401_is_oauth_invalid(
    gmail: GmailClient, fake: FakeGmail, tokens: Tokens
) -> None:
    fake.faults["a"] = [(401, {}, error(401, "authError"))] * 3
    with pytest.raises(OAuthInvalid):
        await gmail.get_metadata(["a"])
    assert tokens.calls.count(True) == 1


@pytest.mark.parametrize(
    ("status", "reason", "expected"),
    [(403, "insufficientPermissions", ScopeMissing), (400, "invalidArgument", ProviderRejected)],
)
async def test_hard_sub_request_failures_raise(
    gmail: GmailClient, fake: FakeGmail, status: int, reason: str, expected: type[Exception]
) -> None:
    fake.faults["a"] = [(status, {}, error(status, reason))]
    with pytest.raises(expected):
        await gmail.get_metadata(["a"])


async def test_batch_answer_for_another_id_is_a_violation(
    gmail: GmailClient, fake: FakeGmail
) -> None:
    fake.messages = {"a": metadata("b")}
    with pytest.raises(ProtocolViolation, match="another id"):
        await gmail.get_metadata(["a"])


async def test_outer_batch_failures(gmail: GmailClient, fake: FakeGmail, tokens: Tokens) -> None:
    fake.messages = {"a": metadata("a")}
    real = fake.batch
    answers = [httpx.Response(401, json=error(401, "authError"))]

    def flaky(request: httpx.Request) -> httpx.Response:
        return answers.pop(0) if answers else real(request)

    fake.batch = flaky  # type: ignore[method-assign]
    assert (await gmail.get_metadata(["a"]))["a"] is not None
    assert tokens.calls == [False, True]
    answers.append(httpx.Response(200, headers={"Content-Type": "text/html"}, content=b"<html>"))
    with pytest.raises(ProtocolViolation):
        await gmail.get_metadata(["a"])


# --- error mapping -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, error(401, "authError"), OAuthInvalid),
        (429, {}, RateLimited),
        (403, error(403, "rateLimitExceeded"), RateLimited),
        (403, error(403, "insufficientPermissions"), ScopeMissing),
        (403, {"error": {"code": 403, "details": [
            {"reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT"}]}}, ScopeMissing),
        (403, error(403, "domainPolicy"), ProviderRejected),
        (404, error(404, "notFound"), MessageGone),
        (408, {}, ProviderUnavailable),
        (502, "<html>Bad Gateway</html>", ProviderUnavailable),
        (400, "not json", ProviderRejected),
        (302, {}, ProtocolViolation),
    ],
)
def test_gmail_error_mapping(status: int, body: Any, expected: type[ProviderError]) -> None:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    mapped = gmail_error(status, raw, what="call")
    assert type(mapped) is expected
    assert str(status) in str(mapped)


def test_gmail_error_uses_the_given_not_found() -> None:
    assert isinstance(gmail_error(404, b"{}", what="history", not_found=CursorExpired),
                      CursorExpired)


# --- end to end with the token cache --------------------------------------------------------------

async def test_expired_access_token_is_refreshed_through_google_oauth(
    make_http: Callable[..., ProviderHttp], clock: ManualClock
) -> None:
    issued: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            issued.append(f"ya29.{len(issued) + 1}")
            return httpx.Response(200, json={"access_token": issued[-1], "expires_in": 3599,
                                             "token_type": "Bearer", "scope": "x"})
        if request.headers["Authorization"] != f"Bearer {issued[-1]}" or len(issued) < 2:
            return httpx.Response(401, json=error(401, "authError", "UNAUTHENTICATED"))
        return httpx.Response(200, json={"emailAddress": "a@example.com", "historyId": "9"})

    provider_http = make_http(handler)
    oauth = GoogleOAuth(provider_http, token_url=BASE + "/token", revoke_url=BASE + "/revoke",
                        client_id="cid", client_secret="csec")
    cache = AccessTokenCache(oauth, clock)

    async def load() -> str:
        return "1//r"

    async def save(token: str) -> None:
        raise AssertionError("Google sent no new refresh token")

    source = cache.token_source("acct", load_refresh_token=load, save_refresh_token=save)
    client = GmailClient(provider_http, api_base=BASE, token=source)
    assert (await client.profile()).history_id == 9
    assert issued == ["ya29.1", "ya29.2"]
