"""The Google simulator over HTTP (in-process ASGI): OAuth, Gmail API, batch, faults, control."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from maildesk.clock import ManualClock
from maildesk.sim.faults import FaultRule
from maildesk.sim.gmail_state import GoogleState
from maildesk.sim.google import create_google_app
from maildesk.sim.server import serve_app

EMAIL = "alice@example.com"
FULL = "https://mail.google.com/"
READONLY = "https://www.googleapis.com/auth/gmail.readonly"
BASE = "/gmail/v1/users/me"
UNAUTHENTICATED = {
    "error": {
        "code": 401,
        "message": "Request had invalid authentication credentials. Expected OAuth 2 access "
        "token, login cookie or other valid authentication credential. See "
        "https://developers.google.com/identity/sign-in/web/devconsole-project.",
        "status": "UNAUTHENTICATED",
        "errors": [
            {
                "domain": "global",
                "reason": "authError",
                "message": "Invalid Credentials",
                "location": "Authorization",
                "locationType": "header",
            }
        ],
    }
}


@dataclass
class Sim:
    state: GoogleState
    http: httpx.AsyncClient
    clock: ManualClock
    client_id: str
    client_secret: str
    refresh_token: str
    access_token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.http.get(BASE + path, params=params, headers=self.auth)

    async def post(self, path: str, body: Any = None) -> httpx.Response:
        return await self.http.post(BASE + path, json=body, headers=self.auth)

    def add(self, subject: str = "hi", **kwargs: Any) -> str:
        fields = {
            "sender": "Bob <bob@example.com>",
            "to": EMAIL,
            "text": "body text",
            "html": "<p>body</p>",
            **kwargs,
        }
        return self.state.add_message(EMAIL, subject=subject, **fields)

    @property
    def box_history(self) -> int:
        return self.state.mailbox(EMAIL).history_id


@pytest.fixture
async def sim(clock: ManualClock) -> AsyncIterator[Sim]:
    state = GoogleState(clock=clock, rng=random.Random(11))
    client = state.create_client("client-1", "secret-1")
    refresh = state.create_grant(EMAIL, [FULL], client_id=client.client_id)
    app = create_google_app(state)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://sim"
    ) as h:
        yield Sim(
            state,
            h,
            clock,
            client.client_id,
            client.client_secret,
            refresh,
            state.issue_access_token(refresh),
        )


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    """(code, status, reason) of a Google API error body, checking its shape on the way."""
    error = response.json()["error"]
    assert set(error) == {"code", "message", "status", "errors"}
    assert error["code"] == response.status_code
    assert set(error["errors"][0]) >= {"domain", "reason", "message"}
    return error["code"], error["status"], error["errors"][0]["reason"]


# -- OAuth -------------------------------------------------------------------------------------


async def refresh(sim: Sim, **overrides: str) -> httpx.Response:
    form = {
        "grant_type": "refresh_token",
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
        "refresh_token": sim.refresh_token,
        **overrides,
    }
    return await sim.http.post("/token", data=form)


async def test_refresh_returns_a_working_bearer_token(sim: Sim) -> None:
    response = await refresh(sim)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "expires_in", "token_type", "scope"}
    assert (body["expires_in"], body["token_type"], body["scope"]) == (3599, "Bearer", FULL)
    profile = await sim.http.get(
        f"{BASE}/profile", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert profile.status_code == 200


async def test_refresh_accepts_http_basic_client_credentials(sim: Sim) -> None:
    basic = base64.b64encode(f"{sim.client_id}:{sim.client_secret}".encode()).decode()
    response = await sim.http.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": sim.refresh_token},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert response.status_code == 200


async def test_refresh_errors_are_oauth_shaped(sim: Sim) -> None:
    bad_client = await refresh(sim, client_secret="wrong")
    assert bad_client.status_code == 401
    assert bad_client.json()["error"] == "invalid_client"
    unknown = await refresh(sim, refresh_token="1//nope")
    assert unknown.status_code == 400
    assert unknown.json() == {
        "error": "invalid_grant",
        "error_description": "Token has been expired or revoked.",
    }
    sim.state.revoke_grant(sim.refresh_token)
    revoked = await refresh(sim)
    assert revoked.status_code == 400
    assert revoked.json()["error"] == "invalid_grant"
    wrong_type = await refresh(sim, grant_type="password")
    assert wrong_type.json()["error"] == "unsupported_grant_type"


async def test_revoke_endpoint_kills_the_grant_and_its_access_tokens(sim: Sim) -> None:
    response = await sim.http.post("/revoke", params={"token": sim.refresh_token})
    assert response.status_code == 200
    assert (await sim.get("/profile")).json() == UNAUTHENTICATED
    assert (await refresh(sim)).json()["error"] == "invalid_grant"
    again = await sim.http.post("/revoke", params={"token": sim.refresh_token})
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_token"


async def test_revoking_an_access_token_revokes_its_grant(sim: Sim) -> None:
    response = await sim.http.post("/revoke", data={"token": sim.access_token})
    assert response.status_code == 200
    assert (await refresh(sim)).status_code == 400


def pkce_pair() -> tuple[str, str]:
    verifier = "v" * 50
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode().rstrip("=")


async def authorize(sim: Sim, **overrides: str) -> httpx.Response:
    _, challenge = pkce_pair()
    params = {
        "client_id": sim.client_id,
        "redirect_uri": "http://app.test/cb?x=1",
        "response_type": "code",
        "scope": f"{FULL} openid",
        "state": "st4te",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "login_hint": "new@example.com",
        **overrides,
    }
    return await sim.http.get("/o/oauth2/v2/auth", params=params)


async def exchange(sim: Sim, code: str, verifier: str) -> httpx.Response:
    return await sim.http.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": "http://app.test/cb?x=1",
            "client_id": sim.client_id,
            "client_secret": sim.client_secret,
        },
    )


async def test_authorization_code_flow_with_pkce(sim: Sim) -> None:
    response = await authorize(sim)
    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    query = parse_qs(location.query)
    assert (location.netloc, location.path, query["x"]) == ("app.test", "/cb", ["1"])
    assert query["state"] == ["st4te"]
    assert query["scope"] == [f"{FULL} openid"]
    code = query["code"][0]
    wrong = await exchange(sim, code, "x" * 50)
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"
    # A failed exchange burns the code, as at Google; get a fresh one.
    code = parse_qs(urlsplit((await authorize(sim)).headers["location"]).query)["code"][0]
    verifier, _ = pkce_pair()
    tokens = await exchange(sim, code, verifier)
    assert tokens.status_code == 200
    body = tokens.json()
    assert set(body) == {"access_token", "expires_in", "token_type", "scope", "refresh_token"}
    profile = await sim.http.get(
        f"{BASE}/profile", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert profile.json()["emailAddress"] == "new@example.com"
    assert (await exchange(sim, code, verifier)).json()["error"] == "invalid_grant"  # single use
    renewed = await refresh(sim, refresh_token=body["refresh_token"])
    assert renewed.status_code == 200


async def test_authorize_errors_and_consent_choices(sim: Sim) -> None:
    unknown = await authorize(sim, client_id="who")
    assert unknown.status_code == 400
    assert "text/html" in unknown.headers["content-type"]
    sim.state.set_consent("new@example.com", allow=False)
    denied = parse_qs(urlsplit((await authorize(sim)).headers["location"]).query)
    assert denied == {"error": ["access_denied"], "state": ["st4te"], "x": ["1"]}
    sim.state.set_consent("new@example.com", scopes=["openid"])  # unticks the Gmail scope
    partial = parse_qs(urlsplit((await authorize(sim)).headers["location"]).query)
    assert partial["scope"] == ["openid"]
    # Without login_hint the user is the only mailbox, if there is exactly one.
    sim.state.mailboxes.pop("new@example.com")
    only = await authorize(sim, login_hint="")
    assert only.status_code == 302


# -- Gmail auth ---------------------------------------------------------------------------------


async def test_gmail_rejects_missing_bad_and_expired_tokens(sim: Sim) -> None:
    missing = await sim.http.get(f"{BASE}/profile")
    assert missing.status_code == 401
    assert missing.json() == UNAUTHENTICATED
    bad = await sim.http.get(f"{BASE}/profile", headers={"Authorization": "Bearer ya29.nope"})
    assert bad.json() == UNAUTHENTICATED
    sim.clock.advance(3600)
    assert (await sim.get("/profile")).status_code == 401


async def test_gmail_checks_mailbox_and_scopes(sim: Sim) -> None:
    assert (
        await sim.http.get(f"/gmail/v1/users/{EMAIL}/profile", headers=sim.auth)
    ).status_code == 200
    other = await sim.http.get("/gmail/v1/users/bob@example.com/profile", headers=sim.auth)
    assert other.status_code == 403
    readonly = sim.state.issue_access_token(sim.state.create_grant(EMAIL, [READONLY]))
    headers = {"Authorization": f"Bearer {readonly}"}
    assert (await sim.http.get(f"{BASE}/labels", headers=headers)).status_code == 200
    mid = sim.add()
    denied = await sim.http.post(f"{BASE}/messages/{mid}/trash", headers=headers)
    assert error_of(denied) == (403, "PERMISSION_DENIED", "insufficientPermissions")
    no_gmail = sim.state.issue_access_token(sim.state.create_grant(EMAIL, ["openid"]))
    assert (
        await sim.http.get(f"{BASE}/profile", headers={"Authorization": f"Bearer {no_gmail}"})
    ).status_code == 403


async def test_unknown_paths_and_methods_are_google_errors(sim: Sim) -> None:
    assert error_of(await sim.get("/nothing"))[0] == 404
    assert error_of(await sim.http.put(f"{BASE}/profile", headers=sim.auth))[0] == 405


# -- Gmail reads ----------------------------------------------------------------------------------


async def test_profile_and_labels(sim: Sim) -> None:
    sim.state.seed_mailbox(EMAIL, 50)
    profile = (await sim.get("/profile")).json()
    box = sim.state.mailbox(EMAIL)
    assert profile == {
        "emailAddress": EMAIL,
        "messagesTotal": 50,
        "threadsTotal": box.threads_total,
        "historyId": str(box.history_id),
    }
    labels = {la["id"]: la for la in (await sim.get("/labels")).json()["labels"]}
    assert labels["INBOX"] == {"id": "INBOX", "name": "INBOX", "type": "system"}
    user = next(la for la in labels.values() if la["type"] == "user")
    assert user["id"].startswith("Label_")
    assert user["messageListVisibility"] == "show"


async def list_ids(sim: Sim, **params: Any) -> tuple[list[str], list[dict[str, Any]]]:
    ids: list[str] = []
    pages: list[dict[str, Any]] = []
    token = None
    while True:
        query = {**params, **({"pageToken": token} if token else {})}
        page = (await sim.get("/messages", **query)).json()
        pages.append(page)
        ids += [m["id"] for m in page.get("messages", [])]
        token = page.get("nextPageToken")
        if not token:
            return ids, pages


async def test_messages_list_pages_newest_first_with_filters(sim: Sim) -> None:
    sim.state.seed_mailbox(EMAIL, 650)
    messages = sorted(sim.state.mailbox(EMAIL).all_messages(), key=lambda m: m.key, reverse=True)
    visible = [m.id for m in messages if not m.label_ids & {"SPAM", "TRASH"}]
    ids, pages = await list_ids(sim)
    assert ids == visible
    assert len(pages[0]["messages"]) == 100  # default page size
    assert set(pages[0]) == {"messages", "nextPageToken", "resultSizeEstimate"}
    assert set(pages[0]["messages"][0]) == {"id", "threadId"}
    big, big_pages = await list_ids(sim, maxResults=1000, includeSpamTrash="true")
    assert len(big_pages[0]["messages"]) == 500  # capped
    assert big == [m.id for m in messages]
    inbox_unread, _ = await list_ids(sim, labelIds=["INBOX", "UNREAD"], maxResults=7)
    assert inbox_unread == [m.id for m in messages if {"INBOX", "UNREAD"} <= m.label_ids]
    empty = (await sim.get("/messages", labelIds="Label_404")).json()
    assert empty == {"resultSizeEstimate": 0}
    assert (await sim.get("/messages", maxResults="x")).status_code == 400
    assert (await sim.get("/messages", pageToken="bogus")).status_code == 400


async def test_message_formats(sim: Sim) -> None:
    mid = sim.add(
        "Grüße",
        text="Hallo Welt\nzweite Zeile",
        html="<b>Hallo</b>",
        labels=["INBOX", "UNREAD", "STARRED"],
    )
    message = sim.state.mailbox(EMAIL).get(mid)
    common = {
        "id": mid,
        "threadId": mid,
        "labelIds": ["INBOX", "STARRED", "UNREAD"],
        "snippet": "Hallo Welt zweite Zeile",
        "sizeEstimate": message.size_estimate,
        "historyId": str(message.history_id),
        "internalDate": str(message.internal_date),
    }
    assert (await sim.get(f"/messages/{mid}", format="minimal")).json() == common

    metadata = (
        await sim.get(f"/messages/{mid}", format="metadata", metadataHeaders=["subject", "From"])
    ).json()
    assert metadata == {
        **common,
        "payload": {
            "mimeType": "multipart/alternative",
            "headers": [
                {"name": "From", "value": "Bob <bob@example.com>"},
                {"name": "Subject", "value": "Grüße"},
            ],
        },
    }
    all_headers = (await sim.get(f"/messages/{mid}", format="metadata")).json()
    names = [h["name"] for h in all_headers["payload"]["headers"]]
    assert {"From", "To", "Subject", "Date", "Message-ID"} <= set(names)

    full = (await sim.get(f"/messages/{mid}")).json()  # full is the default
    payload = full["payload"]
    assert (payload["partId"], payload["mimeType"], payload["filename"]) == (
        "",
        "multipart/alternative",
        "",
    )
    assert payload["headers"] == all_headers["payload"]["headers"]
    plain, html = payload["parts"]
    assert (plain["partId"], plain["mimeType"], html["mimeType"]) == (
        "0",
        "text/plain",
        "text/html",
    )
    text = base64.urlsafe_b64decode(plain["body"]["data"]).decode()
    assert text.replace("\r\n", "\n").strip() == "Hallo Welt\nzweite Zeile"
    assert plain["body"]["size"] == len(base64.urlsafe_b64decode(plain["body"]["data"]))
    assert "<b>Hallo</b>" in base64.urlsafe_b64decode(html["body"]["data"]).decode()

    raw = (await sim.get(f"/messages/{mid}", format="raw")).json()
    assert set(raw) == {*common, "raw"}
    parsed = BytesParser(policy=policy.default).parsebytes(base64.urlsafe_b64decode(raw["raw"]))
    assert parsed["Subject"] == "Grüße"

    missing = await sim.get("/messages/0000000000000000")
    assert error_of(missing) == (404, "NOT_FOUND", "notFound")
    assert (await sim.get(f"/messages/{mid}", format="weird")).status_code == 400


async def test_attachments_are_served_by_id(sim: Sim) -> None:
    raw = (
        b"From: a@example.com\r\nTo: bob@example.com\r\nSubject: file\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
        b"see file\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: "
        b"attachment; filename=data.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"AAECAw==\r\n--b--\r\n"
    )
    sent = await sim.post("/messages/send", {"raw": base64.urlsafe_b64encode(raw).decode()})
    full = (await sim.get(f"/messages/{sent.json()['id']}")).json()
    part = full["payload"]["parts"][1]
    assert part["filename"] == "data.bin"
    assert set(part["body"]) == {"attachmentId", "size"}
    got = await sim.get(f"/messages/{full['id']}/attachments/{part['body']['attachmentId']}")
    assert base64.urlsafe_b64decode(got.json()["data"]) == b"\x00\x01\x02\x03"
    assert (await sim.get(f"/messages/{full['id']}/attachments/ANGjdJx.9")).status_code == 404


# -- history ------------------------------------------------------------------------------------


async def test_history_list_follows_changes_in_order(sim: Sim) -> None:
    start = (await sim.get("/profile")).json()["historyId"]
    first, second = sim.add("one"), sim.add("two")
    sim.state.trash_message(EMAIL, first)
    sim.state.delete_message(EMAIL, second)
    body = (await sim.get("/history", startHistoryId=start)).json()
    assert set(body) == {"history", "historyId"}
    assert body["historyId"] == str(sim.box_history)
    kinds = [sorted(set(r) - {"id", "messages"}) for r in body["history"]]
    assert kinds == [
        ["messagesAdded"],
        ["messagesAdded"],
        ["labelsAdded", "labelsRemoved"],
        ["messagesDeleted"],
    ]
    ids = [int(r["id"]) for r in body["history"]]
    assert ids == sorted(ids)
    assert ids[0] > int(start)

    paged: list[dict[str, Any]] = []
    token = None
    while True:
        extra: dict[str, str] = {"pageToken": token} if token else {}
        page = (await sim.get("/history", startHistoryId=start, maxResults=3, **extra)).json()
        paged += page.get("history", [])
        token = page.get("nextPageToken")
        if not token:
            break
    assert paged == body["history"]
    deleted = (
        await sim.get("/history", startHistoryId=start, historyTypes="messageDeleted")
    ).json()["history"]
    assert [r["messagesDeleted"][0]["message"]["id"] for r in deleted] == [second]


async def test_history_errors(sim: Sim) -> None:
    start = sim.box_history
    sim.add()
    sim.state.expire_history(EMAIL)
    expired = await sim.get("/history", startHistoryId=start)
    assert error_of(expired) == (404, "NOT_FOUND", "notFound")
    assert (await sim.get("/history")).status_code == 400
    assert (await sim.get("/history", startHistoryId="abc")).status_code == 400
    assert (
        await sim.get("/history", startHistoryId=sim.box_history, historyTypes="bogus")
    ).status_code == 400
    now = (await sim.get("/history", startHistoryId=sim.box_history)).json()
    assert now == {"historyId": str(sim.box_history)}


# -- Gmail writes ---------------------------------------------------------------------------------


async def test_send_modify_trash_untrash_delete(sim: Sim) -> None:
    sim.state.ensure_mailbox("bob@example.com")
    start = sim.box_history
    raw = base64.urlsafe_b64encode(b"To: bob@example.com\r\nSubject: yo\r\n\r\nhey\r\n").decode()
    sent = await sim.post("/messages/send", {"raw": raw.rstrip("=")})
    assert sent.status_code == 200
    mid = sent.json()["id"]
    assert sent.json() == {"id": mid, "threadId": mid, "labelIds": ["SENT"]}
    assert sim.state.snapshot(EMAIL)["messages"][mid] == ["SENT"]
    assert list(sim.state.snapshot("bob@example.com")["messages"].values()) == [["INBOX", "UNREAD"]]

    modified = await sim.post(
        f"/messages/{mid}/modify", {"addLabelIds": ["STARRED"], "removeLabelIds": ["SENT"]}
    )
    assert modified.json() == {"id": mid, "threadId": mid, "labelIds": ["STARRED"]}
    bad = await sim.post(f"/messages/{mid}/modify", {"addLabelIds": ["NOPE"]})
    assert error_of(bad)[0] == 400
    assert (await sim.post(f"/messages/{mid}/trash")).json()["labelIds"] == ["STARRED", "TRASH"]
    assert (await sim.post(f"/messages/{mid}/untrash")).json()["labelIds"] == ["INBOX", "STARRED"]
    deleted = await sim.http.delete(f"{BASE}/messages/{mid}", headers=sim.auth)
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert (await sim.get(f"/messages/{mid}")).status_code == 404

    history = (await sim.get("/history", startHistoryId=start)).json()["history"]
    kinds = [sorted(set(r) - {"id", "messages"}) for r in history]
    # Trashing a message that is not in INBOX only adds TRASH.
    assert kinds == [
        ["messagesAdded"],
        ["labelsAdded", "labelsRemoved"],
        ["labelsAdded"],
        ["labelsAdded", "labelsRemoved"],
        ["messagesDeleted"],
    ]
    assert (await sim.post("/messages/send", {})).status_code == 400


async def test_watch_and_stop(sim: Sim) -> None:
    body = {
        "topicName": "projects/p/topics/gmail",
        "labelIds": ["INBOX"],
        "labelFilterBehavior": "INCLUDE",
    }
    response = await sim.post("/watch", body)
    assert response.status_code == 200
    now_ms = int(sim.clock.now().timestamp() * 1000)
    assert response.json() == {
        "historyId": str(sim.box_history),
        "expiration": str(now_ms + 7 * 86_400_000),
    }
    watch = sim.state.snapshot(EMAIL)["watch"]
    assert watch["topicName"] == "projects/p/topics/gmail"
    assert (watch["labelIds"], watch["labelFilterBehavior"]) == (["INBOX"], "include")
    assert (await sim.post("/watch", {**body, "labelFilterBehavior": "exclude"})).status_code == 200
    assert (await sim.post("/watch", {**body, "topicName": "gmail"})).status_code == 400
    assert (await sim.post("/watch", {**body, "labelFilterBehavior": "maybe"})).status_code == 400
    stopped = await sim.post("/stop")
    assert stopped.status_code == 204
    assert sim.state.snapshot(EMAIL)["watch"] is None


# -- batch --------------------------------------------------------------------------------------


def batch_body(paths: list[str], boundary: str = "===xyz==", auth: str | None = None) -> bytes:
    parts = []
    for i, path in enumerate(paths):
        extra = f"Authorization: Bearer {auth}\r\n" if auth else ""
        parts.append(
            f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <item{i}>\r\n"
            f"\r\nGET {path} HTTP/1.1\r\n{extra}\r\n\r\n"
        )
    return ("".join(parts) + f"--{boundary}--\r\n").encode()


def parse_batch_answer(response: httpx.Response) -> list[tuple[str, int, Any]]:
    """(Content-ID, status, JSON body) of each part of a batch answer."""
    boundary = response.headers["content-type"].split("boundary=")[1]
    out = []
    for chunk in response.content.split(f"--{boundary}".encode())[1:-1]:
        head, _, http_part = chunk.strip(b"\r\n").partition(b"\r\n\r\n")
        assert b"Content-Type: application/http" in head
        content_id = head.split(b"Content-ID: ")[1].decode().strip()
        status_line, _, rest = http_part.partition(b"\r\n")
        _, _, body = rest.partition(b"\r\n\r\n")
        out.append((content_id, int(status_line.split()[1]), json.loads(body) if body else None))
    return out


async def post_batch(
    sim: Sim, body: bytes, boundary: str = "===xyz==", headers: dict[str, str] | None = None
) -> httpx.Response:
    return await sim.http.post(
        "/batch/gmail/v1",
        content=body,
        headers={
            **(sim.auth if headers is None else headers),
            "Content-Type": f'multipart/mixed; boundary="{boundary}"',
        },
    )


async def test_batch_answers_each_call_in_order(sim: Sim) -> None:
    ids = [sim.add(f"m{i}") for i in range(3)]
    paths = [f"{BASE}/messages/{i}?format=metadata&metadataHeaders=Subject" for i in ids]
    paths.insert(1, f"{BASE}/messages/0000000000000000?format=minimal")
    response = await post_batch(sim, batch_body(paths))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("multipart/mixed; boundary=batch_")
    answers = parse_batch_answer(response)
    assert [a[0] for a in answers] == [f"<response-item{i}>" for i in range(4)]
    assert [a[1] for a in answers] == [200, 404, 200, 200]
    assert [a[2]["id"] for a in answers if a[1] == 200] == ids
    assert answers[2][2]["payload"]["headers"] == [{"name": "Subject", "value": "m1"}]
    assert answers[1][2]["error"]["code"] == 404


async def test_batch_auth_limits_and_faults(sim: Sim) -> None:
    mid = sim.add()
    path = f"{BASE}/messages/{mid}?format=minimal"
    unauth = await post_batch(sim, batch_body([path]), headers={})
    assert parse_batch_answer(unauth)[0][1] == 401  # the batch is fine, the call is not
    per_part = await post_batch(sim, batch_body([path], auth=sim.access_token), headers={})
    assert parse_batch_answer(per_part)[0][1] == 200
    too_many = await post_batch(sim, batch_body([path] * 101))
    assert error_of(too_many)[0] == 400
    assert (await post_batch(sim, b"garbage")).status_code == 400
    sim.state.add_fault(path=f"/messages/{mid}$", status=503, count=1)
    answers = parse_batch_answer(await post_batch(sim, batch_body([path, path])))
    assert [a[1] for a in answers] == [503, 200]


# -- faults -------------------------------------------------------------------------------------


async def test_rate_limit_fault_with_retry_after_then_recovery(sim: Sim) -> None:
    sim.state.add_fault(path=r"/profile$", method="GET", status=429, retry_after=7, count=2)
    for _ in range(2):
        limited = await sim.get("/profile")
        assert limited.headers["retry-after"] == "7"
        assert error_of(limited) == (429, "RESOURCE_EXHAUSTED", "rateLimitExceeded")
    assert (await sim.get("/profile")).status_code == 200


async def test_body_and_drop_field_faults(sim: Sim) -> None:
    sim.state.add_fault(path=r"/history$", body="not json{", count=1)
    broken = await sim.get("/history", startHistoryId=sim.box_history)
    assert broken.status_code == 200
    assert broken.text == "not json{"
    start = sim.box_history
    sim.add()
    sim.state.add_fault(FaultRule(path=r"/history$", drop_fields=("historyId", "threadId")))
    trimmed = (await sim.get("/history", startHistoryId=start)).json()
    assert "historyId" not in trimmed
    assert "threadId" not in trimmed["history"][0]["messages"][0]


async def test_oauth_faults_use_the_oauth_error_shape(sim: Sim) -> None:
    sim.state.add_fault(path=r"^/token$", status=503, count=1)
    down = await refresh(sim)
    assert down.status_code == 503
    assert down.json()["error"] == "temporarily_unavailable"
    assert (await refresh(sim)).status_code == 200


async def test_latency_is_added_before_answering(sim: Sim) -> None:
    sim.state.set_latency(30)
    began = time.perf_counter()
    await sim.get("/profile")
    assert time.perf_counter() - began >= 0.03
    sim.state.clear_faults()
    sim.state.add_fault(path="/labels", latency_ms=40, count=1)
    began = time.perf_counter()
    assert (await sim.get("/labels")).status_code == 200
    assert time.perf_counter() - began >= 0.04


async def test_faults_control_routes(sim: Sim) -> None:
    rule = {"path": "/profile", "status": 500, "count": 1}
    added = await sim.http.post("/_sim/faults", json={"rules": [rule], "latency_ms": 0})
    assert added.status_code == 200
    assert added.json()["rules"][0]["status"] == 500
    assert (await sim.get("/profile")).status_code == 500
    listed = (await sim.http.get("/_sim/faults")).json()
    assert listed["rules"][0]["count"] == 0
    assert (await sim.http.delete("/_sim/faults")).status_code == 204
    assert (await sim.http.get("/_sim/faults")).json() == {"rules": [], "latency_ms": 0.0}
    bad = await sim.http.post("/_sim/faults", json={"rules": [{"path": "x", "stauts": 1}]})
    assert bad.status_code == 400


# -- control API --------------------------------------------------------------------------------


async def test_control_api_mirrors_the_python_methods(sim: Sim) -> None:
    h = sim.http
    client = (await h.post("/_sim/clients", json={"client_id": "c2"})).json()
    assert client["client_id"] == "c2"
    assert client["client_secret"]
    grant = (
        await h.post("/_sim/grants", json={"email": "bob@example.com", "scopes": [FULL]})
    ).json()
    token = (await h.post("/_sim/tokens", json=grant)).json()["access_token"]
    bob = {"Authorization": f"Bearer {token}"}
    assert (await h.get(f"{BASE}/profile", headers=bob)).json()["emailAddress"] == "bob@example.com"

    box = "/_sim/gmail/bob@example.com"
    label = (await h.post(f"{box}/labels", json={"name": "Deals"})).json()["id"]
    added = (
        await h.post(
            f"{box}/messages",
            json={
                "subject": "s",
                "sender": "x@example.com",
                "text": "t",
                "html": "<p>t</p>",
                "labels": ["INBOX", label],
                "internal_date": 1_700_000_000_000,
            },
        )
    ).json()
    mid = added["id"]
    assert added["threadId"] == mid
    assert int(added["historyId"]) > 0
    labels = (
        await h.post(f"{box}/messages/{mid}/labels", json={"add": ["STARRED"], "remove": [label]})
    ).json()
    assert labels["labelIds"] == ["INBOX", "STARRED"]
    assert (await h.post(f"{box}/messages/{mid}/trash")).json()["labelIds"] == ["STARRED", "TRASH"]
    seeded = (await h.post(f"{box}/seed", json={"count": 25, "days": 10})).json()
    assert seeded["added"] == 25
    state = (await h.get(f"{box}/state")).json()
    assert state == json.loads(json.dumps(sim.state.snapshot("bob@example.com")))
    assert len(state["messages"]) == 26
    assert state["messages"][mid] == ["STARRED", "TRASH"]
    assert (await h.delete(f"{box}/messages/{mid}")).status_code == 200
    expired = (await h.post(f"{box}/expire-history", json={})).json()
    assert expired["minHistoryId"] == (await h.get(f"{box}/state")).json()["historyId"]
    assert (await h.post("/_sim/tokens/expire", json={"email": "bob@example.com"})).json() == {
        "expired": 1
    }
    assert (await h.get(f"{BASE}/profile", headers=bob)).status_code == 401
    assert (await h.post("/_sim/grants/revoke", json=grant)).json() == {"revoked": True}
    assert (await h.post("/_sim/tokens", json=grant)).status_code == 404


async def test_control_api_errors(sim: Sim) -> None:
    h = sim.http
    assert (await h.get("/_sim/gmail/nobody@example.com/state")).status_code == 404
    assert (await h.post("/_sim/grants", json={"email": 3})).status_code == 400
    assert (await h.post("/_sim/grants", content=b"{not json")).status_code == 400
    missing = await h.delete(f"/_sim/gmail/{EMAIL}/messages/0000000000000000")
    assert missing.status_code == 404
    assert "error" in missing.json()


# -- real HTTP ----------------------------------------------------------------------------------


async def test_serve_app_round_trip_over_real_http(sim: Sim) -> None:
    app = create_google_app(sim.state)
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert url.startswith("http://127.0.0.1:")
        assert not url.endswith(":0")
        response = await client.get(f"{BASE}/profile", headers=sim.auth)
        assert response.status_code == 200
        assert response.json()["emailAddress"] == EMAIL
    with pytest.raises(httpx.ConnectError):  # shut down on exit
        async with httpx.AsyncClient(base_url=url) as client:
            await client.get(f"{BASE}/profile")
