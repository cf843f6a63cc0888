"""Graph wire parsers and error mapping, on payloads shaped like Graph's recorded answers."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parseaddr
from typing import Any

import pytest

from maildesk.domain.mail import FolderRole, RemoteBody, RemoteFolder
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
    WrongTokenKind,
)
from maildesk.providers.graph_types import GraphProfile
from maildesk.providers.graph_wire import (
    MESSAGE_SELECT,
    format_address,
    format_graph_datetime,
    graph_error,
    json_object,
    parse_body,
    parse_delta_page,
    parse_error,
    parse_folder_page,
    parse_graph_datetime,
    parse_message,
    parse_messages,
    parse_profile,
    parse_subscription,
    parse_subscription_page,
    unauthorized_error,
)

INBOX_ID = "AAMkAGI2TG93AAA="
BASE = "https://graph.microsoft.com/v1.0"

MESSAGE: dict[str, Any] = {
    "@odata.etag": 'W/"CQAAABYAAAC4ofQHEIqCSbQPot83AFcbAAAW/+Gz"',
    "id": "AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0AuKH0BxCKgkm0D6LfNwBXGwAAFvr5UAAA",
    "receivedDateTime": "2026-11-21T10:00:00Z",
    "subject": "Quarterly numbers",
    "bodyPreview": "Hi Ada, the numbers are in.",
    "isRead": False,
    "internetMessageId": "<MW2PR00MB0001.namprd00.prod.outlook.com>",
    "conversationId": "AAQkAGI2TG93AAAQAH2Ujg0G1dJHv_kwQ3bJpQE=",
    "parentFolderId": INBOX_ID,
    "flag": {"flagStatus": "flagged"},
    "from": {"emailAddress": {"name": "Grace Hopper", "address": "grace@contoso.example"}},
    "toRecipients": [
        {"emailAddress": {"name": "Ada Lovelace", "address": "ada@contoso.example"}},
        {"emailAddress": {"name": "bob@contoso.example", "address": "bob@contoso.example"}},
    ],
}


def test_message_select_names_every_field_the_parser_reads() -> None:
    assert set(MESSAGE_SELECT.split(",")) == {
        "id", "conversationId", "internetMessageId", "subject", "bodyPreview", "isRead", "flag",
        "receivedDateTime", "from", "toRecipients", "parentFolderId"}


def test_parse_message() -> None:
    message = parse_message(MESSAGE)
    assert message.remote_id == MESSAGE["id"]
    assert message.thread_id == MESSAGE["conversationId"]
    assert message.folder_ids == {INBOX_ID}
    assert message.received_at == datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    assert message.received_at.utcoffset() == timedelta(0)
    assert message.subject == "Quarterly numbers"
    assert message.sender == "Grace Hopper <grace@contoso.example>"
    assert message.recipients == "Ada Lovelace <ada@contoso.example>, bob@contoso.example"
    assert message.message_id_header == "<MW2PR00MB0001.namprd00.prod.outlook.com>"
    assert message.snippet == "Hi Ada, the numbers are in."
    assert (message.size, message.unread, message.starred) == (0, True, True)


def test_listed_folder_wins_over_parent_folder_id() -> None:
    assert parse_message(MESSAGE, folder_id="other").folder_ids == {"other"}
    del_parent = {k: v for k, v in MESSAGE.items() if k != "parentFolderId"}
    assert parse_message(del_parent, folder_id="f").folder_ids == {"f"}
    with pytest.raises(ProtocolViolation, match="parentFolderId"):
        parse_message(del_parent)


@pytest.mark.parametrize(
    ("changes", "unread", "starred"),
    [
        ({"isRead": True, "flag": {"flagStatus": "notFlagged"}}, False, False),
        ({"isRead": True, "flag": {"flagStatus": "complete"}}, False, False),
        ({"flag": None}, True, False),
        ({"isRead": None, "flag": {}}, False, False),
    ],
)
def test_read_and_flag_states(changes: dict[str, Any], unread: bool, starred: bool) -> None:
    message = parse_message({**MESSAGE, **changes})
    assert (message.unread, message.starred) == (unread, starred)


def test_draft_without_sender_subject_or_message_id() -> None:
    draft = {**MESSAGE, "subject": None, "internetMessageId": None, "toRecipients": [],
             "conversationId": None}
    del draft["from"]
    message = parse_message(draft)
    assert (message.sender, message.subject, message.message_id_header, message.recipients,
            message.thread_id) == ("", "", "", "", "")


@pytest.mark.parametrize(
    ("email_address", "expected"),
    [
        ({"name": "Grace Hopper", "address": "grace@x.example"}, "Grace Hopper <grace@x.example>"),
        ({"name": "", "address": "grace@x.example"}, "grace@x.example"),
        ({"name": "GRACE@x.example", "address": "grace@x.example"}, "grace@x.example"),
        ({"name": "Grace Hopper", "address": ""}, "Grace Hopper"),
        ({"name": "Grace Hopper"}, "Grace Hopper"),
        ({"name": "Hopper, Grace", "address": "g@x.example"}, '"Hopper, Grace" <g@x.example>'),
        ({"name": 'Grace "Amazing" H.', "address": "g@x.example"},
         '"Grace \\"Amazing\\" H." <g@x.example>'),
        ({"name": "Zoë Ørsted", "address": "zoe@x.example"}, "Zoë Ørsted <zoe@x.example>"),
    ],
)
def test_format_address_round_trips_through_parseaddr(
    email_address: dict[str, Any], expected: str
) -> None:
    formatted = format_address({"emailAddress": email_address}, "from")
    assert formatted == expected
    name, address = parseaddr(formatted)
    if email_address.get("address") and "@" in formatted:
        assert address == email_address["address"]
        if formatted != email_address["address"]:
            assert name == email_address["name"]


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("id", None, "'id' is missing"),
        ("id", "", "'id' is empty"),
        ("id", 5, "'id' is not a string"),
        ("receivedDateTime", None, "'receivedDateTime' is missing"),
        ("receivedDateTime", "yesterday", "'receivedDateTime' is not an ISO 8601"),
        ("receivedDateTime", "2026-02-30T10:00:00Z", "'receivedDateTime' is not a valid"),
        ("isRead", "yes", "'isRead' is not a boolean"),
        ("flag", "flagged", "'flag' is not an object"),
        ("from", {"emailAddress": "x"}, "'from.emailAddress' is not an object"),
        ("toRecipients", {}, "'toRecipients' is not a list"),
        ("toRecipients", [{"emailAddress": {"address": 7}}],
         "'toRecipients[0].emailAddress.address' is not a string"),
        ("subject", ["x"], "'subject' is not a string"),
    ],
)
def test_malformed_message_names_the_field(field: str, value: Any, fragment: str) -> None:
    with pytest.raises(ProtocolViolation, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_message({**MESSAGE, field: value})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27T10:00:00.0000000Z", datetime(2026, 11, 27, 10, 0, tzinfo=UTC)),
        ("2026-11-27T10:00:00.1234567Z", datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-27T10:00:00.5Z", datetime(2026, 11, 27, 10, 0, 0, 500000, tzinfo=UTC)),
        ("2026-11-27T10:00:00.000Z", datetime(2026, 11, 27, 10, 0, tzinfo=UTC)),
        ("2026-11-27T10:00:00Z", datetime(2026, 11, 27, 10, 0, tzinfo=UTC)),
        ("2026-11-27T10:00:00", datetime(2026, 11, 27, 10, 0, tzinfo=UTC)),
        ("2026-11-27T12:00:00.0000000+02:00", datetime(2026, 11, 27, 10, 0, tzinfo=UTC)),
        ("2026-11-27T05:30:00-04:30", datetime(2026, 11, 27, 10, 0, tzinfo=UTC)),
    ],
)
def test_parse_graph_datetime(text: str, expected: datetime) -> None:
    parsed = parse_graph_datetime(text, "x")
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize("text", ["", "2026-11-27", "2026-11-27T10:00Z", "10:00:00Z",
                                  "2026-11-27T10:00:00.Z", "2026-11-27T25:00:00Z"])
def test_parse_graph_datetime_refuses_garbage(text: str) -> None:
    with pytest.raises(ProtocolViolation, match="'when'"):
        parse_graph_datetime(text, "when")


def test_format_graph_datetime() -> None:
    when = datetime(2026, 11, 27, 11, 0, 0, 987654, tzinfo=timezone(timedelta(hours=1)))
    assert format_graph_datetime(when) == "2026-11-27T10:00:00.987Z"
    assert parse_graph_datetime(format_graph_datetime(when), "x") == when.replace(
        microsecond=987000)
    with pytest.raises(ValueError, match="aware"):
        format_graph_datetime(datetime(2026, 11, 27, 10, 0))


# --- profile, folders, bodies ------------------------------------------------------------------

def test_parse_profile() -> None:
    me = {"@odata.context": f"{BASE}/$metadata#users/$entity", "id": "48d31887",
          "displayName": "Ada Lovelace", "mail": "ada@contoso.example",
          "userPrincipalName": "ada_contoso.example#EXT#@tenant.onmicrosoft.com"}
    assert parse_profile(me) == GraphProfile("ada@contoso.example", "Ada Lovelace")
    no_mail = {**me, "mail": None, "displayName": None}
    assert parse_profile(no_mail).email == me["userPrincipalName"]
    assert parse_profile(no_mail).display_name == ""
    with pytest.raises(ProtocolViolation, match="userPrincipalName"):
        parse_profile({"id": "x", "mail": None})


FOLDERS = {
    "@odata.context": f"{BASE}/$metadata#users('x')/mailFolders",
    "value": [
        {"id": INBOX_ID, "displayName": "Inbox", "parentFolderId": "ROOT",
         "childFolderCount": 2, "unreadItemCount": 4, "totalItemCount": 40, "isHidden": False},
        {"id": "AAMkConv", "displayName": "Conversation History", "parentFolderId": "ROOT",
         "childFolderCount": 0, "unreadItemCount": 0, "totalItemCount": 0, "isHidden": True},
        {"id": "AAMkNoName", "displayName": "", "parentFolderId": "ROOT"},
    ],
    "@odata.nextLink": f"{BASE}/me/mailFolders?$top=100&$skip=100",
}


def test_parse_folder_page() -> None:
    page = parse_folder_page(FOLDERS, path_prefix="Top/")
    assert page.next_link == FOLDERS["@odata.nextLink"]
    inbox, conversation, unnamed = page.entries
    assert inbox.folder == RemoteFolder(INBOX_ID, "Top/Inbox", FolderRole.NONE, False)
    assert (inbox.parent_id, inbox.child_count, inbox.hidden) == ("ROOT", 2, False)
    assert conversation.hidden is True
    assert unnamed.folder.name == "Top/AAMkNoName"
    assert parse_folder_page({"value": []}) == ([], None)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"value": {}}, "'value' is not a list"),
        ({"value": [5]}, r"'value\[0\]' is not an object"),
        ({"value": [{"displayName": "x"}]}, r"'value\[0\].id' is missing"),
        ({"value": [{"id": "x", "childFolderCount": -1}]}, "childFolderCount' is not a count"),
        ({"value": [], "@odata.nextLink": 5}, "nextLink' is not a string"),
    ],
)
def test_malformed_folder_page(payload: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ProtocolViolation, match=fragment):
        parse_folder_page(payload)


def test_parse_body() -> None:
    html = {"@odata.etag": "W/\"x\"", "id": "m1",
            "body": {"contentType": "html", "content": "<p>Hi <script>x</script></p>"}}
    assert parse_body(html) == RemoteBody("m1", "", "<p>Hi <script>x</script></p>")
    text = {"id": "m1", "body": {"contentType": "Text", "content": "plain"}}
    assert parse_body(text) == RemoteBody("m1", "plain", "")
    with pytest.raises(ProtocolViolation, match="'body' is missing"):
        parse_body({"id": "m1"})
    with pytest.raises(ProtocolViolation, match="contentType"):
        parse_body({"id": "m1", "body": {"contentType": "rtf", "content": "x"}})


def test_parse_messages_keeps_graph_order() -> None:
    second = {**MESSAGE, "id": "m2", "receivedDateTime": "2026-11-20T10:00:00Z"}
    messages = parse_messages({"value": [MESSAGE, second]}, folder_id=INBOX_ID)
    assert [m.remote_id for m in messages] == [MESSAGE["id"], "m2"]


# --- delta -------------------------------------------------------------------------------------

def msg(message_id: str, **changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(MESSAGE), "id": message_id, **changes}


def removed(message_id: str, reason: str = "deleted") -> dict[str, Any]:
    return {"@odata.type": "#microsoft.graph.message", "id": message_id,
            "@removed": {"reason": reason}}


def test_delta_page_with_next_link() -> None:
    page = parse_delta_page({
        "@odata.context": f"{BASE}/$metadata#Collection(message)",
        "value": [msg("m1"), removed("m2"), removed("m3", "changed")],
        "@odata.nextLink": f"{BASE}/me/mailFolders('{INBOX_ID}')/messages/delta?$skiptoken=a",
    }, folder_id=INBOX_ID)
    assert [m.remote_id for m in page.messages] == ["m1"]
    assert page.messages[0].folder_ids == {INBOX_ID}
    assert page.removed == ["m2", "m3"]
    assert page.next_link is not None
    assert page.next_link.endswith("$skiptoken=a")
    assert page.delta_link is None


def test_delta_last_page_has_the_delta_link() -> None:
    page = parse_delta_page({"value": [], "@odata.deltaLink": f"{BASE}/x?$deltatoken=z"},
                            folder_id="f")
    assert (page.messages, page.removed, page.next_link) == ([], [], None)
    assert page.delta_link == f"{BASE}/x?$deltatoken=z"


def test_delta_duplicates_collapse_to_the_last_mention() -> None:
    page = parse_delta_page({
        "value": [
            msg("a", isRead=False), msg("b"), msg("a", isRead=True),  # updated twice
            msg("c"), removed("c"),  # listed, then deleted
            removed("d", "changed"), msg("d"),  # moved out, then back in
            removed("e"), removed("e"),
        ],
        "@odata.deltaLink": f"{BASE}/d",
    }, folder_id="f")
    by_id = {m.remote_id: m for m in page.messages}
    assert list(by_id) == ["b", "a", "d"]
    assert by_id["a"].unread is False
    assert page.removed == ["c", "e"]


def test_delta_with_both_links_continues_the_round() -> None:
    page = parse_delta_page({"value": [], "@odata.nextLink": f"{BASE}/n",
                             "@odata.deltaLink": f"{BASE}/d"}, folder_id="f")
    assert (page.next_link, page.delta_link) == (f"{BASE}/n", None)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"value": []}, "nextLink' and '@odata.deltaLink' are both missing"),
        ({"value": [{"@removed": {}}], "@odata.deltaLink": "d"}, r"value\[0\].id' is missing"),
        ({"value": [{"id": "x", "@removed": "deleted"}], "@odata.deltaLink": "d"},
         r"value\[0\].@removed' is not an object"),
        ({"value": [msg("x", receivedDateTime=1)], "@odata.deltaLink": "d"},
         r"value\[0\].receivedDateTime' is not a string"),
        ({"value": "nope", "@odata.deltaLink": "d"}, "'value' is not a list"),
    ],
)
def test_malformed_delta_page(payload: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ProtocolViolation, match=fragment):
        parse_delta_page(payload, folder_id="f")


# --- subscriptions -----------------------------------------------------------------------------

SUBSCRIPTION = {
    "@odata.context": f"{BASE}/$metadata#subscriptions/$entity",
    "id": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
    "resource": "/me/messages",
    "applicationId": "24d3b144-21ae-4080-943f-7067b395b913",
    "changeType": "created,updated,deleted",
    "clientState": "secretClientValue",
    "notificationUrl": "https://maildesk.example/maildesk/push/graph",
    "lifecycleNotificationUrl": "https://maildesk.example/maildesk/push/graph/lifecycle",
    "expirationDateTime": "2026-11-27T10:00:00.0000000Z",
    "creatorId": "8ee44408-0679-472c-bc2a-692812af3437",
    "latestSupportedTlsVersion": "v1_2",
}


def test_parse_subscription() -> None:
    subscription = parse_subscription(SUBSCRIPTION)
    assert subscription.id == SUBSCRIPTION["id"]
    assert subscription.resource == "/me/messages"
    assert subscription.expiration == datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    assert subscription.change_type == "created,updated,deleted"
    assert subscription.notification_url == SUBSCRIPTION["notificationUrl"]
    listed, next_link = parse_subscription_page({"value": [SUBSCRIPTION]})
    assert (listed, next_link) == ([subscription], None)
    with pytest.raises(ProtocolViolation, match="expirationDateTime"):
        parse_subscription({**SUBSCRIPTION, "expirationDateTime": "soon"})


# --- errors ------------------------------------------------------------------------------------

def graph_body(code: str, message: str = "m", inner: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "innerError": inner or {
        "date": "2026-11-21T10:00:00", "request-id": "r", "client-request-id": "c"}}}).encode()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (410, graph_body("SyncStateNotFound"), CursorExpired),
        (410, graph_body("syncStateNotFound"), CursorExpired),
        (410, graph_body("Gone"), CursorExpired),
        (410, b"", CursorExpired),
        (400, graph_body("resyncRequired"), CursorExpired),
        (400, graph_body("SYNCSTATEINVALID"), CursorExpired),
        (400, graph_body("BadRequest", inner={"code": "syncStateInvalid"}), CursorExpired),
        (401, graph_body("InvalidAuthenticationToken", "Access token has expired."),
         OAuthInvalid),
        (403, graph_body("ErrorAccessDenied", "Access is denied."), ScopeMissing),
        (403, graph_body("Authorization_RequestDenied"), ScopeMissing),
        (403, graph_body("ErrorQuotaExceeded"), ProviderRejected),
        (404, graph_body("ErrorItemNotFound"), MessageGone),
        (404, graph_body("ResourceNotFound"), MessageGone),
        (409, graph_body("Conflict"), ProviderRejected),
        (400, graph_body("ValidationError", "Subscription validation request failed."),
         ProviderRejected),
        (400, graph_body("InvalidRequest"), ProviderRejected),
        (429, graph_body("TooManyRequests"), RateLimited),
        (503, graph_body("ServiceNotAvailable"), ProviderUnavailable),
        (504, b"<html>gateway</html>", ProviderUnavailable),
        (302, b"", ProtocolViolation),
    ],
)
def test_graph_error_mapping(status: int, body: bytes, expected: type[ProviderError]) -> None:
    error = graph_error(status, body, what="call", retry_after=3.0)
    assert type(error) is expected
    assert str(error).startswith("call: Graph")
    assert status == 401 or f"Graph answered {status}" in str(error)
    if isinstance(error, ProviderRejected):
        assert error.status == status
    if isinstance(error, RateLimited | ProviderUnavailable):
        assert error.retry_after == 3.0


def test_graph_error_message_names_code_and_explanation() -> None:
    error = graph_error(400, graph_body("ValidationError", "Subscription validation request "
                                        "failed. Notification endpoint must respond with 200 OK "
                                        "to validation request."), what="subscriptions.create")
    assert "ValidationError: Subscription validation request failed" in str(error)
    long = graph_error(400, graph_body("InvalidRequest", "x" * 5000), what="c")
    assert len(str(long)) < 300


def test_graph_error_context_types() -> None:
    assert type(graph_error(404, b"", what="c", not_found=CursorExpired)) is CursorExpired
    assert type(graph_error(410, b"", what="c", gone=MessageGone)) is MessageGone
    # a dead sync state is a dead cursor whatever the call site says about 404/410
    assert type(graph_error(410, graph_body("resyncRequired"), what="c", gone=MessageGone)
                ) is CursorExpired


def test_unauthorized_error_tells_a_wrong_audience_apart() -> None:
    wrong = unauthorized_error(graph_body("InvalidAuthenticationToken",
                                          "Access token validation failure. Invalid audience."),
                               what="me")
    assert isinstance(wrong, WrongTokenKind)
    assert "IMAP" in str(wrong)
    assert isinstance(unauthorized_error(b"", what="me"), OAuthInvalid)


def test_parse_error_is_tolerant() -> None:
    assert parse_error(graph_body("X", "y", {"code": "z"})) == ("X", "y", "z")
    assert parse_error(b"not json") == ("", "", "")
    assert parse_error(b'{"error": "x"}') == ("", "", "")
    assert parse_error(b'{"error": {"code": 5}}') == ("", "", "")


def test_json_object() -> None:
    assert json_object(b'{"a": 1}', "body") == {"a": 1}
    with pytest.raises(ProtocolViolation, match="body is not valid JSON"):
        json_object(b"{", "body")
    with pytest.raises(ProtocolViolation, match="not a JSON object"):
        json_object(b"[]", "body")
