"""Gmail wire parsers and the batch format, on payloads shaped like Gmail's recorded answers."""

from __future__ import annotations

import base64
import contextlib
import copy
import email
import email.policy
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maildesk.domain.mail import FolderRole, RemoteFolder
from maildesk.errors import ProtocolViolation
from maildesk.providers.gmail_wire import (
    BatchPart,
    decode_batch,
    encode_batch,
    parse_error,
    parse_history_page,
    parse_labels,
    parse_list_page,
    parse_message_body,
    parse_message_metadata,
    parse_profile,
    parse_watch,
)


def b64url(data: bytes, *, pad: bool) -> str:
    text = base64.urlsafe_b64encode(data).decode()
    return text if pad else text.rstrip("=")


PROFILE = {"emailAddress": "ada@example.com", "messagesTotal": 1234, "threadsTotal": 900,
           "historyId": "987654321"}

LABELS = {"labels": [
    {"id": "INBOX", "name": "INBOX", "messageListVisibility": "hide",
     "labelListVisibility": "labelShow", "type": "system"},
    {"id": "SENT", "name": "SENT", "type": "system"},
    {"id": "DRAFT", "name": "DRAFT", "type": "system"},
    {"id": "TRASH", "name": "TRASH", "type": "system"},
    {"id": "SPAM", "name": "SPAM", "type": "system"},
    {"id": "STARRED", "name": "STARRED", "type": "system"},
    {"id": "IMPORTANT", "name": "IMPORTANT", "type": "system"},
    {"id": "CATEGORY_SOCIAL", "name": "CATEGORY_SOCIAL", "type": "system"},
    {"id": "Label_12", "name": "Receipts/2025", "type": "user",
     "color": {"textColor": "#000000", "backgroundColor": "#ffffff"}},
]}

METADATA = {
    "id": "18c2f0a1b2c3d4e5",
    "threadId": "18c2f0a1b2c3d4e0",
    "labelIds": ["UNREAD", "IMPORTANT", "CATEGORY_PERSONAL", "INBOX", "STARRED"],
    "snippet": "Tom &amp; Jerry &#39;s offer &lt;today&gt;",
    "sizeEstimate": 5231,
    "historyId": "987654300",
    "internalDate": "1767603600000",
    "payload": {
        "partId": "",
        "mimeType": "multipart/alternative",
        "filename": "",
        "headers": [
            {"name": "Date", "value": "Mon, 5 Jan 2026 09:00:00 +0000"},
            {"name": "From", "value": "Tom <tom@example.com>"},
            {"name": "To", "value": "ada@example.com"},
            {"name": "Message-ID", "value": "<abc@mail.example.com>"},
            {"name": "Subject", "value": "=?UTF-8?B?Q2Fmw6kgbWVldGluZw==?="},
        ],
        "body": {"size": 0},
    },
}


def full_message(*, pad: bool) -> dict[str, Any]:
    return {
        "id": "18c2f0a1b2c3d4e5",
        "threadId": "18c2f0a1b2c3d4e0",
        "labelIds": ["INBOX"],
        "internalDate": "1767603600000",
        "payload": {
            "mimeType": "multipart/mixed",
            "filename": "",
            "headers": [{"name": "Content-Type", "value": "multipart/mixed; boundary=x"}],
            "body": {"size": 0},
            "parts": [
                {
                    "partId": "0",
                    "mimeType": "multipart/alternative",
                    "filename": "",
                    "headers": [],
                    "body": {"size": 0},
                    "parts": [
                        {"partId": "0.0", "mimeType": "text/plain", "filename": "",
                         "headers": [{"name": "Content-Type",
                                      "value": 'text/plain; charset="ISO-8859-1"'}],
                         "body": {"size": 6, "data": b64url("Café?".encode("latin-1"), pad=pad)}},
                        {"partId": "0.1", "mimeType": "text/html", "filename": "",
                         "headers": [{"name": "Content-Type", "value": "text/html; charset=UTF-8"}],
                         "body": {"size": 20, "data": b64url("<p>Café ÿ></p>".encode(), pad=pad)}},
                    ],
                },
                {"partId": "1", "mimeType": "text/plain", "filename": "notes.txt",
                 "headers": [{"name": "Content-Disposition", "value": "attachment"}],
                 "body": {"attachmentId": "ANGjdJ8", "size": 100}},
                {"partId": "2", "mimeType": "text/html", "filename": "",
                 "headers": [{"name": "Content-Disposition", "value": "attachment; x=y"}],
                 "body": {"size": 5, "data": b64url(b"<b>no</b>", pad=pad)}},
            ],
        },
    }


HISTORY = {
    "history": [
        {"id": "1001", "messages": [{"id": "m1", "threadId": "t1"}],
         "messagesAdded": [{"message": {"id": "m1", "threadId": "t1", "labelIds": ["INBOX"]}}]},
        {"id": "1005", "messages": [{"id": "m2", "threadId": "t2"}],
         "labelsAdded": [{"message": {"id": "m2", "threadId": "t2"}, "labelIds": ["TRASH"]}],
         "labelsRemoved": [{"message": {"id": "m2", "threadId": "t2"}, "labelIds": ["INBOX"]}]},
        {"id": "1009", "messages": [{"id": "m3", "threadId": "t3"}],
         "messagesDeleted": [{"message": {"id": "m3", "threadId": "t3"}}]},
    ],
    "nextPageToken": "page-2",
    "historyId": "1010",
}


def test_parse_profile() -> None:
    assert parse_profile(PROFILE) == ("ada@example.com", 987654321, 1234)


def test_parse_labels_maps_roles() -> None:
    folders = parse_labels(LABELS)
    by_id = {f.remote_id: f for f in folders}
    assert by_id["INBOX"] == RemoteFolder("INBOX", "INBOX", FolderRole.INBOX, system=True)
    assert by_id["DRAFT"].role is FolderRole.DRAFTS
    assert by_id["SPAM"].role is FolderRole.SPAM
    assert by_id["TRASH"].role is FolderRole.TRASH
    assert by_id["SENT"].role is FolderRole.SENT
    assert by_id["STARRED"].role is FolderRole.STARRED
    assert by_id["IMPORTANT"].role is FolderRole.IMPORTANT
    assert by_id["CATEGORY_SOCIAL"] == RemoteFolder("CATEGORY_SOCIAL", "CATEGORY_SOCIAL",
                                                    FolderRole.NONE, system=True)
    assert by_id["Label_12"] == RemoteFolder("Label_12", "Receipts/2025", FolderRole.NONE, False)
    assert parse_labels({}) == []


def test_parse_message_metadata() -> None:
    message = parse_message_metadata(METADATA)
    assert message.remote_id == "18c2f0a1b2c3d4e5"
    assert message.thread_id == "18c2f0a1b2c3d4e0"
    assert message.folder_ids == {"IMPORTANT", "CATEGORY_PERSONAL", "INBOX", "STARRED"}
    assert message.received_at == datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    assert message.subject == "Café meeting"
    assert message.sender == "Tom <tom@example.com>"
    assert message.recipients == "ada@example.com"
    assert message.message_id_header == "<abc@mail.example.com>"
    assert message.snippet == "Tom & Jerry 's offer <today>"
    assert message.size == 5231
    assert message.unread is True
    assert message.starred is True


def test_parse_message_metadata_read_and_minimal() -> None:
    minimal = {"id": "a", "threadId": "b", "labelIds": ["SENT"], "internalDate": 0}
    message = parse_message_metadata(minimal)
    assert (message.unread, message.starred, message.subject, message.size) == (
        False, False, "", 0)
    assert message.folder_ids == {"SENT"}
    assert parse_message_metadata({**minimal, "labelIds": []}).folder_ids == frozenset()


def test_header_lookup_is_case_insensitive_and_takes_the_first() -> None:
    data: dict[str, Any] = copy.deepcopy(METADATA)
    data["payload"]["headers"] = [{"name": "subject", "value": "one"},
                                  {"name": "SUBJECT", "value": "two"}]
    assert parse_message_metadata(data).subject == "one"


@pytest.mark.parametrize("raw", ["=?UTF-8?B?a?=", "=?x-unknown?q?abc?="])
def test_broken_encoded_words_stay_raw(raw: str) -> None:
    # Bad base64 makes the stdlib raise HeaderParseError: one odd subject must not fail a batch.
    data: dict[str, Any] = copy.deepcopy(METADATA)
    data["payload"]["headers"] = [{"name": "Subject", "value": raw}]
    assert parse_message_metadata(data).subject == raw


@pytest.mark.parametrize("pad", [True, False])
def test_parse_message_body(pad: bool) -> None:
    body = parse_message_body(full_message(pad=pad))
    assert body.remote_id == "18c2f0a1b2c3d4e5"
    assert body.text == "Café?"  # decoded as ISO-8859-1, as its Content-Type says
    assert body.html == "<p>Café ÿ></p>"


def test_parse_message_body_single_part_and_unknown_charset() -> None:
    data = {"id": "x", "payload": {
        "mimeType": "text/plain",
        "headers": [{"name": "Content-Type", "value": "text/plain; charset=x-unknown"}],
        "body": {"size": 2, "data": b64url("hé".encode(), pad=False)}}}
    assert parse_message_body(data).text == "hé"
    assert parse_message_body(data).html == ""
    empty = {"id": "x", "payload": {"mimeType": "text/html", "body": {"size": 0}}}
    assert parse_message_body(empty).html == ""


def test_parse_list_page() -> None:
    page = parse_list_page({"messages": [{"id": "m2", "threadId": "t"},
                                         {"id": "m1", "threadId": "t"}],
                            "nextPageToken": "0123", "resultSizeEstimate": 201})
    assert page.next_page_token == "0123"
    assert page == (["m2", "m1"], "0123", 201)
    assert parse_list_page({"resultSizeEstimate": 0}) == ([], None, 0)


def test_parse_history_page() -> None:
    page = parse_history_page(HISTORY)
    assert page.history_id == 1010
    assert page.next_page_token == "page-2"
    assert [r.id for r in page.records] == [1001, 1005, 1009]
    assert page.records[0].added == ["m1"]
    assert page.records[1].labels_added == [("m2", ["TRASH"])]
    assert page.records[1].labels_removed == [("m2", ["INBOX"])]
    assert page.records[2].deleted == ["m3"]
    assert page.records[2].added == []
    empty = parse_history_page({"historyId": "1010"})
    assert (empty.records, empty.next_page_token) == ([], None)


def test_parse_watch() -> None:
    result = parse_watch({"historyId": "1234", "expiration": "1768208400000"})
    assert result == (1234, datetime(2026, 1, 12, 9, 0, tzinfo=UTC))


def test_parse_error() -> None:
    data = {"error": {
        "code": 403, "message": "Request had insufficient authentication scopes.",
        "errors": [{"message": "Insufficient Permission", "domain": "global",
                    "reason": "insufficientPermissions"}],
        "status": "PERMISSION_DENIED",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                     "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT", "domain": "googleapis.com"}]}}
    assert parse_error(data) == (403, "PERMISSION_DENIED",
                                 ["insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"])
    assert parse_error({"error": {"code": 404}}) == (404, "", [])


def _without(data: Mapping[str, Any], *path: str | int) -> dict[str, Any]:
    copied = copy.deepcopy(dict(data))
    target: Any = copied
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return copied


def _replaced(data: Mapping[str, Any], value: object, *path: str | int) -> dict[str, Any]:
    copied = copy.deepcopy(dict(data))
    target: Any = copied
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copied


Parser = Callable[[Mapping[str, Any]], object]
BROKEN: list[tuple[Parser, dict[str, Any], str]] = [
    (parse_profile, _without(PROFILE, "historyId"), "historyId"),
    (parse_profile, _replaced(PROFILE, "12a", "historyId"), "historyId"),
    (parse_profile, _replaced(PROFILE, 5, "emailAddress"), "emailAddress"),
    (parse_labels, _replaced(LABELS, {"id": "X"}, "labels"), "labels"),
    (parse_labels, _without(LABELS, "labels", 0, "id"), "labels[0].id"),
    (parse_message_metadata, _without(METADATA, "id"), "id"),
    (parse_message_metadata, _without(METADATA, "threadId"), "threadId"),
    (parse_message_metadata, _without(METADATA, "internalDate"), "internalDate"),
    (parse_message_metadata, _replaced(METADATA, "yesterday", "internalDate"), "internalDate"),
    (parse_message_metadata, _replaced(METADATA, 1e30, "internalDate"), "internalDate"),
    (parse_message_metadata, _replaced(METADATA, "10" * 20, "internalDate"), "internalDate"),
    (parse_message_metadata, _replaced(METADATA, "INBOX", "labelIds"), "labelIds"),
    (parse_message_metadata, _replaced(METADATA, [1], "labelIds"), "labelIds[0]"),
    (parse_message_metadata, _replaced(METADATA, -1, "sizeEstimate"), "sizeEstimate"),
    (parse_message_metadata, _replaced(METADATA, [], "payload"), "payload"),
    (parse_message_metadata, _replaced(METADATA, [{"value": "x"}], "payload", "headers"),
     "payload.headers[0].name"),
    (parse_message_body, _without(full_message(pad=True), "payload"), "payload"),
    (parse_message_body, _replaced(full_message(pad=True), "%%%", "payload", "parts", 0, "parts",
                                   0, "body", "data"), "payload.parts[0].parts[0].body.data"),
    (parse_list_page, {"messages": [{"threadId": "t"}]}, "messages[0].id"),
    (parse_history_page, _without(HISTORY, "historyId"), "historyId"),
    (parse_history_page, _replaced(HISTORY, "x", "history", 0, "id"), "history[0].id"),
    (parse_history_page, _without(HISTORY, "history", 0, "messagesAdded", 0, "message"),
     "history[0].messagesAdded[0].message"),
    (parse_history_page, _replaced(HISTORY, "TRASH", "history", 1, "labelsAdded", 0, "labelIds"),
     "history[1].labelsAdded[0].labelIds"),
    (parse_watch, {"historyId": "1"}, "expiration"),
    (parse_error, {"error": "invalid_grant"}, "error"),
    (parse_error, {"error": {"code": "forbidden"}}, "error.code"),
]


@pytest.mark.parametrize(("parser", "data", "field"), BROKEN)
def test_missing_or_mistyped_fields_name_the_field(
    parser: Parser, data: dict[str, Any], field: str
) -> None:
    with pytest.raises(ProtocolViolation) as caught:
        parser(data)
    assert f"'{field}'" in str(caught.value)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(
        st.sampled_from(["id", "threadId", "labelIds", "internalDate", "payload", "headers",
                         "name", "value", "parts", "body", "data", "mimeType", "history",
                         "historyId", "messages", "messagesAdded", "message", "labels", "error",
                         "code", "errors", "reason", "expiration", "emailAddress"]),
        inner, max_size=6),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(data=st.dictionaries(st.sampled_from(["id", "threadId", "internalDate", "payload",
                                             "labelIds", "history", "historyId", "labels",
                                             "messages", "expiration", "error", "emailAddress"]),
                            JSON, max_size=8))
def test_parsers_raise_only_protocol_violation(data: dict[str, Any]) -> None:
    parsers: list[Parser] = [parse_profile, parse_labels, parse_message_metadata,
                             parse_message_body, parse_list_page, parse_history_page,
                             parse_watch, parse_error]
    for parser in parsers:
        with contextlib.suppress(ProtocolViolation):
            parser(data)


# --- batch -------------------------------------------------------------------------------------

def test_encode_batch_format() -> None:
    body, content_type = encode_batch(
        [("GET", "/gmail/v1/users/me/messages/a1?format=metadata"),
         ("GET", "/gmail/v1/users/me/messages/b2?format=metadata")],
        "batch_xyz",
    )
    assert content_type == "multipart/mixed; boundary=batch_xyz"
    assert body == (
        b"--batch_xyz\r\nContent-Type: application/http\r\nContent-ID: <item-1>\r\n\r\n"
        b"GET /gmail/v1/users/me/messages/a1?format=metadata HTTP/1.1\r\n\r\n"
        b"--batch_xyz\r\nContent-Type: application/http\r\nContent-ID: <item-2>\r\n\r\n"
        b"GET /gmail/v1/users/me/messages/b2?format=metadata HTTP/1.1\r\n\r\n"
        b"--batch_xyz--\r\n"
    )


@pytest.mark.parametrize(("requests", "boundary"), [
    ([("GET", "/a b")], "x"), ([("GET", "/a\r\nX: y")], "x"), ([("GET", "a")], "x"),
    ([("GET", "/a")], "bad boundary"), ([("GET", "/a")], "")])
def test_encode_batch_refuses_injection(requests: list[tuple[str, str]], boundary: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        encode_batch(requests, boundary)


def parse_batch_request(content_type: str, body: bytes) -> list[tuple[str, str, str]]:
    """An independent reading of a batch request with the stdlib MIME parser (the test oracle)."""
    message = email.message_from_bytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body, policy=email.policy.HTTP
    )
    assert message.is_multipart()
    parsed = []
    for part in message.iter_parts():
        assert part.get_content_type() == "application/http"
        method, path, version = str(part.get_payload()).strip().split(" ")
        assert version == "HTTP/1.1"
        parsed.append((str(part["Content-ID"]), method, path))
    return parsed


def batch_response(
    parts: Sequence[tuple[str | None, int, bytes]], boundary: str = "batch_resp"
) -> bytes:
    """Google-shaped batch answer: ``(content id or None, status, json body)`` per part."""
    chunks = []
    for content_id, status, body in parts:
        head = "Content-Type: application/http\r\n"
        if content_id is not None:
            head += f"Content-ID: <{content_id}>\r\n"
        chunks.append(
            f"--{boundary}\r\n{head}\r\nHTTP/1.1 {status} Whatever\r\n"
            f"Content-Type: application/json; charset=UTF-8\r\nVary: Origin\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body + b"\r\n"
        )
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


RESP_TYPE = "multipart/mixed; boundary=batch_resp"


def test_batch_round_trip_matches_by_content_id() -> None:
    ids = ["a1", "b2", "c3"]
    body, content_type = encode_batch(
        [("GET", f"/gmail/v1/users/me/messages/{i}?format=metadata") for i in ids], "b_1"
    )
    requests = parse_batch_request(content_type, body)
    assert [r[2].split("/")[-1].split("?")[0] for r in requests] == ids
    # The server answers out of order; Content-IDs put the answers back in request order.
    answers = {"<item-1>": (200, b'{"id":"a1"}'), "<item-2>": (404, b'{"error":{"code":404}}'),
               "<item-3>": (200, b'{"id":"c3"}')}
    shuffled = [requests[2], requests[0], requests[1]]
    response = batch_response(
        [(f"response-{cid[1:-1]}", *answers[cid]) for cid, _, _ in shuffled]
    )
    parts = decode_batch(RESP_TYPE, response, expected=3)
    assert [p.status for p in parts] == [200, 404, 200]
    assert [json.loads(p.body) for p in parts] == [{"id": "a1"}, {"error": {"code": 404}},
                                                   {"id": "c3"}]
    assert parts[0].headers["content-type"] == "application/json; charset=UTF-8"


def test_decode_batch_without_content_ids_keeps_order() -> None:
    response = batch_response([(None, 200, b"{}"), (None, 503, b"")])
    assert decode_batch(RESP_TYPE, response) == [
        BatchPart(200, {"content-type": "application/json; charset=UTF-8", "vary": "Origin",
                        "content-length": "2"}, b"{}"),
        BatchPart(503, {"content-type": "application/json; charset=UTF-8", "vary": "Origin",
                        "content-length": "0"}, b""),
    ]


def test_decode_batch_accepts_bare_lf_and_quoted_boundary() -> None:
    response = batch_response([("response-item-1", 200, b'{"a":1}')]).replace(b"\r\n", b"\n")
    parts = decode_batch('multipart/mixed; boundary="batch_resp"', response, expected=1)
    assert parts[0].status == 200
    assert json.loads(parts[0].body) == {"a": 1}


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"{}"),
        ("multipart/mixed", batch_response([(None, 200, b"{}")])),
        (RESP_TYPE, b"no boundary here"),
        (RESP_TYPE, batch_response([(None, 200, b"{}")]).removesuffix(b"--batch_resp--\r\n")),
        (RESP_TYPE, b"--batch_resp\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 OK\r\n\r\n"
                    b"--batch_resp--"),
        (RESP_TYPE, b"--batch_resp\r\nno colon line\r\n\r\nHTTP/1.1 200 OK\r\n\r\n--batch_resp--"),
        (RESP_TYPE, batch_response([("response-item-1", 200, b"{}"),
                                    ("response-item-1", 200, b"{}")])),
        (RESP_TYPE, batch_response([("response-item-2", 200, b"{}")])),
    ],
)
def test_malformed_batch_is_protocol_violation(content_type: str, body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        decode_batch(content_type, body)


def test_decode_batch_checks_the_part_count() -> None:
    with pytest.raises(ProtocolViolation, match="1 parts for 2 requests"):
        decode_batch(RESP_TYPE, batch_response([(None, 200, b"{}")]), expected=2)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([200, 204, 401, 404, 429, 500, 503]),
                          st.binary(max_size=40).filter(lambda b: b"--batch_resp" not in b)),
                min_size=1, max_size=8),
       st.randoms(use_true_random=False))
def test_batch_decode_property(parts: list[tuple[int, bytes]], rnd: Any) -> None:
    numbered = [(f"response-item-{n}", status, body) for n, (status, body) in
                enumerate(parts, start=1)]
    rnd.shuffle(numbered)
    decoded = decode_batch(RESP_TYPE, batch_response(numbered), expected=len(parts))
    assert [(p.status, p.body) for p in decoded] == parts
