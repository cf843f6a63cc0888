"""IMAP wire parsers on responses shaped like recorded Dovecot answers and RFC 3501/7162
examples."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maildesk.domain.mail import FolderRole
from maildesk.errors import ProtocolViolation
from maildesk.providers.imap_fetch import (
    Address,
    Exists,
    Expunged,
    FetchedMessage,
    FlagsChanged,
    Vanished,
    decode_words,
    format_internaldate,
    mailbox_event,
    make_remote_id,
    parse_body,
    parse_envelope,
    parse_fetch,
    parse_internaldate,
    parse_remote_id,
    to_remote_message,
)
from maildesk.providers.imap_folders import (
    MailboxEntry,
    assign_roles,
    parse_list,
    parse_select,
    parse_status,
    to_remote_folders,
)
from maildesk.providers.imap_wire import (
    CommandPart,
    Continuation,
    Literal,
    StatusResponse,
    UidSet,
    Untagged,
    decode_mailbox_name,
    encode_mailbox_name,
    encode_string,
    literal_length,
    parse_response,
    render_command,
)


def untagged(raw: bytes) -> Untagged:
    response = parse_response(raw)
    assert isinstance(response, Untagged)
    return response


# -- responses -----------------------------------------------------------------------------------


def test_tagged_status_with_code() -> None:
    response = parse_response(b"M3 OK [READ-WRITE] Select completed (0.001 + 0.000 secs).\r\n")
    assert response == StatusResponse(
        "M3", "OK", "READ-WRITE", (), "Select completed (0.001 + 0.000 secs)."
    )


def test_tagged_no_with_authenticationfailed() -> None:
    response = parse_response(b"M2 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
    assert isinstance(response, StatusResponse)
    assert (response.status, response.code, response.text) == (
        "NO", "AUTHENTICATIONFAILED", "Authentication failed."
    )
    assert not response.ok


def test_untagged_status_codes_with_arguments() -> None:
    flags = parse_response(
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags "
        b"permitted.\r\n"
    )
    assert flags == StatusResponse(
        "*", "OK", "PERMANENTFLAGS",
        (["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\*"],),
        "Flags permitted.",
    )
    validity = parse_response(b"* OK [UIDVALIDITY 3857529045] UIDs valid")
    assert isinstance(validity, StatusResponse)
    assert validity.code_args == (3857529045,)
    modseq = parse_response(b"* OK [HIGHESTMODSEQ 715194045007] Highest\r\n")
    assert isinstance(modseq, StatusResponse)
    assert modseq.code_args == (715194045007,)
    append = parse_response(b"A003 OK [APPENDUID 38505 3955] APPEND completed\r\n")
    assert isinstance(append, StatusResponse)
    assert (append.code, append.code_args) == ("APPENDUID", (38505, 3955))


def test_free_form_response_code_is_kept_as_text() -> None:
    response = parse_response(b"* NO [REFERRAL imap://x/;AUTH=*@y/] go away\r\n")
    assert isinstance(response, StatusResponse)
    assert response.code == "REFERRAL"
    assert response.text == "go away"


def test_greeting_and_bye() -> None:
    greeting = parse_response(
        b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS "
        b"AUTH=PLAIN AUTH=LOGIN] Dovecot (Debian) ready.\r\n"
    )
    assert isinstance(greeting, StatusResponse)
    assert greeting.code == "CAPABILITY"
    assert "STARTTLS" in greeting.code_args
    assert "AUTH=PLAIN" in greeting.code_args
    bye = parse_response(b"* BYE Server shutting down.\r\n")
    assert bye == StatusResponse("*", "BYE", "", (), "Server shutting down.")


def test_continuations() -> None:
    assert parse_response(b"+ idling\r\n") == Continuation("idling")
    assert parse_response(b"+\r\n") == Continuation("")
    assert parse_response(b"+ eyJzdGF0dXMiOiI0MDEifQ==\r\n") == Continuation(
        "eyJzdGF0dXMiOiI0MDEifQ=="
    )


def test_untagged_numbers_and_keywords() -> None:
    assert untagged(b"* 23 EXISTS\r\n") == Untagged("EXISTS", 23, ())
    assert untagged(b"* 3 expunge\r\n") == Untagged("EXPUNGE", 3, ())
    assert untagged(b"* SEARCH 2 84 882\r\n") == Untagged("SEARCH", None, (2, 84, 882))
    assert untagged(b"* SEARCH\r\n") == Untagged("SEARCH", None, ())
    assert untagged(b"* SEARCH 2 5 (MODSEQ 917162500)\r\n").values == (2, 5, ["MODSEQ", 917162500])
    assert untagged(b"* ENABLED CONDSTORE QRESYNC\r\n").values == ("CONDSTORE", "QRESYNC")
    assert untagged(b"* CAPABILITY IMAP4rev1 IDLE\r\n").values == ("IMAP4rev1", "IDLE")


def test_quoted_strings_with_escapes_and_nil() -> None:
    response = untagged(b'* LIST (\\Noselect) "/" "say \\"hi\\" \\\\ there"\r\n')
    assert response.values == (["\\Noselect"], b"/", b'say "hi" \\ there')
    nil = untagged(b"* LIST () NIL INBOX\r\n")
    assert nil.values == ([], None, "INBOX")
    assert untagged(b'* LIST () "." nil\r\n').values[2] is None


def test_literals_inline_with_special_bytes() -> None:
    body = b'a ) "quote" {5}\r\nline two\r\n\x00\xff'
    raw = b"* 12 FETCH (UID 7 BODY[] {" + str(len(body)).encode() + b"}\r\n" + body + b")\r\n"
    assert literal_length(b"* 12 FETCH (UID 7 BODY[] {" + str(len(body)).encode() + b"}\r\n")
    response = untagged(raw)
    assert response.number == 12
    assert response.values == (["UID", 7, "BODY[]", body],)


def test_several_literals_and_literal8() -> None:
    raw = b"* 1 FETCH (BODY[1] {3}\r\nabc BINARY[2] ~{2}\r\n\x00\x01 UID 9)\r\n"
    assert untagged(raw).values == (["BODY[1]", b"abc", "BINARY[2]", b"\x00\x01", "UID", 9],)


def test_section_atoms_keep_their_spaces_and_partials() -> None:
    raw = b"* 2 FETCH (BODY[HEADER.FIELDS (REFERENCES IN-REPLY-TO)] {2}\r\n\r\n BODY[]<0> NIL)"
    assert untagged(raw).values == (
        ["BODY[HEADER.FIELDS (REFERENCES IN-REPLY-TO)]", b"\r\n", "BODY[]<0>", None],
    )


def test_literal_length_only_at_line_end() -> None:
    assert literal_length(b"* 1 FETCH (BODY[] {42}\r\n") == 42
    assert literal_length(b"A1 APPEND INBOX {42+}\r\n") == 42
    assert literal_length(b"* OK {42} is text\r\n") is None
    assert literal_length(b"* 1 FETCH (UID 1)\r\n") is None


@pytest.mark.parametrize(
    "raw",
    [
        b"* 1 FETCH (UID 1",  # unterminated list
        b'* LIST () "/" "unterminated',
        b"* 1 FETCH (BODY[] {10}\r\nshort)",
        b"* 1 FETCH (BODY[HEADER {3}\r\nabc)",  # unterminated section
        b"A1 WHATEVER done",  # tagged without status
        b"*",
        b"* 5",
        b"* OK [UIDVALIDITY 5",
    ],
)
def test_garbage_is_a_protocol_violation(raw: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        parse_response(raw)


def test_errors_never_quote_the_response() -> None:
    secret = b"Subject: the quarterly numbers"
    with pytest.raises(ProtocolViolation) as caught:
        parse_response(b"* 1 FETCH (BODY[] {99}\r\n" + secret + b")")
    assert "quarterly" not in str(caught.value)


def test_unknown_vendor_responses_are_tolerated() -> None:
    assert untagged(b'* XAPPLEPUSHSERVICE "unbalanced (\r\n') == Untagged(
        "XAPPLEPUSHSERVICE", None, ()
    )


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(ProtocolViolation):
        parse_response(b"* 1 FETCH " + b"(" * 200 + b")" * 200)


@given(st.binary(max_size=200))
def test_parse_response_only_ever_raises_protocol_violation(raw: bytes) -> None:
    with contextlib.suppress(ProtocolViolation):
        parse_response(raw)


# -- sequence sets -------------------------------------------------------------------------------


def test_uid_set_parse_merge_and_render() -> None:
    uids = UidSet.parse("41,43:116,118,120:211,214:540")
    assert uids.ranges == ((41, 41), (43, 116), (118, 118), (120, 211), (214, 540))
    assert len(uids) == 1 + 74 + 1 + 92 + 327
    assert 50 in uids
    assert 117 not in uids
    assert str(UidSet.of([5, 1, 2, 3, 9, 10])) == "1:3,5,9:10"
    assert UidSet.parse("9:7") == UidSet([(7, 9)])
    assert list(UidSet.parse("3:5,1")) == [1, 3, 4, 5]
    assert not UidSet()


def test_huge_ranges_are_not_expanded() -> None:
    uids = UidSet.parse("1:4000000000")
    assert len(uids) == 4_000_000_000
    assert 3_999_999_999 in uids


@pytest.mark.parametrize("raw", ["", "1:*", "a", "1,,2", "0", "3:0", "1:"])
def test_bad_uid_sets(raw: str) -> None:
    with pytest.raises(ProtocolViolation):
        UidSet.parse(raw)


def test_vanished_earlier_and_live() -> None:
    earlier = mailbox_event(untagged(b"* VANISHED (EARLIER) 300:310,405,411\r\n"))
    assert earlier == Vanished(UidSet([(300, 310), (405, 405), (411, 411)]), earlier=True)
    live = mailbox_event(untagged(b"* VANISHED 405\r\n"))
    assert live == Vanished(UidSet.of([405]), earlier=False)
    with pytest.raises(ProtocolViolation):
        mailbox_event(untagged(b"* VANISHED (EARLIER)\r\n"))


def test_mailbox_events() -> None:
    assert mailbox_event(untagged(b"* 4 EXISTS")) == Exists(4)
    assert mailbox_event(untagged(b"* 2 EXPUNGE")) == Expunged(2)
    event = mailbox_event(untagged(b"* 3 FETCH (UID 7 FLAGS (\\Seen) MODSEQ (12))"))
    assert event == FlagsChanged(
        FetchedMessage(seq=3, uid=7, flags=frozenset({"\\Seen"}), modseq=12)
    )
    assert mailbox_event(untagged(b"* 1 RECENT")) is None
    assert mailbox_event(untagged(b"* CAPABILITY IMAP4rev1")) is None


# -- mailbox names -------------------------------------------------------------------------------


def test_modified_utf7_rfc_example() -> None:
    assert decode_mailbox_name(b"~peter/mail/&U,BTFw-/&ZeVnLIqe-") == "~peter/mail/台北/日本語"
    assert encode_mailbox_name("~peter/mail/台北/日本語") == b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert decode_mailbox_name("Tom &- Jerry") == "Tom & Jerry"
    assert encode_mailbox_name("Tom & Jerry") == b"Tom &- Jerry"
    assert decode_mailbox_name("Entw&APw-rfe") == "Entwürfe"
    assert decode_mailbox_name(2023) == "2023"


def test_invalid_modified_utf7_is_kept_raw() -> None:
    assert decode_mailbox_name("broken &AB") == "broken &AB"
    assert decode_mailbox_name("bad &!!!-") == "bad &!!!-"


@given(st.text(max_size=40))
def test_modified_utf7_round_trip(name: str) -> None:
    encoded = encode_mailbox_name(name)
    assert all(0x20 <= byte <= 0x7E for byte in encoded)
    assert decode_mailbox_name(encoded) == name


# -- commands ------------------------------------------------------------------------------------


def test_encode_string() -> None:
    assert encode_string("INBOX") == b"INBOX"
    assert encode_string("Sent Items") == b'"Sent Items"'
    assert encode_string('p"a\\ss') == b'"p\\"a\\\\ss"'
    assert encode_string("") == b'""'
    assert encode_string("NIL") == b'"NIL"'
    assert encode_string("pässword") == Literal("pässword".encode())
    assert encode_string(b"a\r\nb") == Literal(b"a\r\nb")


def test_render_command_with_synchronizing_literal() -> None:
    parts: list[CommandPart] = [b"APPEND", b"INBOX", b"(\\Seen)", Literal(b"hello"), b"X"]
    assert render_command("M7", parts) == [
        b"M7 APPEND INBOX (\\Seen) {5}\r\n",
        b"hello X\r\n",
    ]
    assert render_command("M7", parts, literal_plus=True) == [
        b"M7 APPEND INBOX (\\Seen) {5+}\r\nhello X\r\n"
    ]
    with pytest.raises(ValueError, match="line break"):
        render_command("M8", [b"LOGIN", b"a\r\nb"])


# -- FETCH, ENVELOPE, dates ----------------------------------------------------------------------

DOVECOT_FETCH = (
    b'* 1 FETCH (UID 1 FLAGS (\\Seen \\Flagged $Forwarded) INTERNALDATE "01-Jan-2024 00:01:00 '
    b'+0100" RFC822.SIZE 249 MODSEQ (2) ENVELOPE ("Mon, 01 Jan 2024 00:00:00 +0000" '
    b'"=?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=" (("=?ISO-8859-1?B?SvxyZ2Vu?=" NIL "j" '
    b'"example.org")) (("Alice Example" NIL "alice" "example.org")) NIL (("Bob" NIL "bob" '
    b'"example.org")("Smith, Carol" NIL "carol" "example.org")) ((NIL NIL "team" NIL)("Dan" '
    b'NIL "dan" "example.org")(NIL NIL NIL NIL)) NIL "<parent@example.org>" '
    b'"<m1@example.org>") BODY[HEADER.FIELDS (REFERENCES)] {47}\r\n'
    b"References: <root@example.org>\r\n <parent@x>\r\n\r\n)\r\n"
)


def test_recorded_fetch_with_envelope() -> None:
    message = parse_fetch(untagged(DOVECOT_FETCH))
    assert message.seq == 1
    assert message.uid == 1
    assert message.flags == frozenset({"\\Seen", "\\Flagged", "$Forwarded"})
    assert message.internaldate == datetime(2023, 12, 31, 23, 1, tzinfo=UTC)
    assert message.size == 249
    assert message.modseq == 2
    envelope = message.envelope
    assert envelope is not None
    assert envelope.subject == "Grüße aus Köln"
    assert envelope.from_ == (Address("Jürgen", "j", "example.org"),)
    assert str(envelope.from_[0]) == "Jürgen <j@example.org>"
    assert envelope.reply_to == ()
    assert [str(a) for a in envelope.to] == [
        "Bob <bob@example.org>",
        '"Smith, Carol" <carol@example.org>',
    ]
    # Group syntax: the group markers are dropped, its members kept.
    assert envelope.cc == (Address("Dan", "dan", "example.org"),)
    assert envelope.in_reply_to == "<parent@example.org>"
    assert envelope.message_id == "<m1@example.org>"
    assert message.header is not None
    assert message.header.startswith(b"References:")


def test_to_remote_message() -> None:
    message = parse_fetch(untagged(DOVECOT_FETCH))
    remote = to_remote_message("Archive/2024", 1700000000, message)
    assert remote.remote_id == "Archive/2024:1700000000:1"
    assert remote.folder_ids == frozenset({"Archive/2024"})
    assert remote.thread_id == "<root@example.org>"
    assert remote.subject == "Grüße aus Köln"
    assert remote.sender == "Jürgen <j@example.org>"
    assert remote.recipients == (
        'Bob <bob@example.org>, "Smith, Carol" <carol@example.org>, Dan <dan@example.org>'
    )
    assert remote.message_id_header == "<m1@example.org>"
    assert remote.size == 249
    assert remote.unread is False
    assert remote.starred is True
    assert remote.received_at == datetime(2023, 12, 31, 23, 1, tzinfo=UTC)


def test_thread_falls_back_to_in_reply_to_then_own_id() -> None:
    envelope = parse_envelope(
        [None, b"s", None, None, None, None, None, None, b"<p@x> <q@x>", b"<me@x>"]
    )
    reply = FetchedMessage(seq=1, uid=4, flags=frozenset(), envelope=envelope)
    assert to_remote_message("INBOX", 1, reply).thread_id == "<p@x>"
    alone = parse_envelope([None, None, None, None, None, None, None, None, None, b"<me@x>"])
    message = FetchedMessage(seq=1, uid=4, flags=frozenset({"\\Recent"}), envelope=alone)
    remote = to_remote_message("INBOX", 1, message)
    assert remote.thread_id == "<me@x>"
    assert remote.unread is True
    assert remote.subject == ""
    bare = to_remote_message("INBOX", 1, FetchedMessage(seq=1, uid=9))
    assert bare.thread_id == bare.remote_id == "INBOX:1:9"
    with pytest.raises(ProtocolViolation):
        to_remote_message("INBOX", 1, FetchedMessage(seq=1))


def test_remote_ids_round_trip_with_colons_in_folder_names() -> None:
    remote_id = make_remote_id("Projects:2024/Q1", 42, 7)
    assert parse_remote_id(remote_id) == ("Projects:2024/Q1", 42, 7)
    for bad in ("INBOX", "INBOX:1", "INBOX:x:1", ":1:2"):
        with pytest.raises(ValueError, match="remote id"):
            parse_remote_id(bad)


def test_fetch_merging_keeps_earlier_attributes() -> None:
    first = parse_fetch(untagged(DOVECOT_FETCH))
    later = parse_fetch(untagged(b"* 1 FETCH (UID 1 FLAGS () MODSEQ (9))"))
    merged = first.merged(later)
    assert merged.flags == frozenset()
    assert merged.modseq == 9
    assert merged.envelope == first.envelope


@pytest.mark.parametrize(
    "raw",
    [
        b"* 1 FETCH UID 1",
        b"* 1 FETCH (UID)",
        b"* 1 FETCH (UID x)",
        b"* 1 FETCH (FLAGS \\Seen)",
        b"* 1 FETCH (MODSEQ 5)",
        b"* 1 FETCH (ENVELOPE (NIL NIL))",
        b'* 1 FETCH (INTERNALDATE "yesterday")',
        b'* 1 FETCH (ENVELOPE (NIL NIL ((NIL NIL "a")) NIL NIL NIL NIL NIL NIL NIL))',
    ],
)
def test_malformed_fetch_data(raw: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        parse_fetch(untagged(raw))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"17-Jul-1996 02:44:25 -0700", datetime(1996, 7, 17, 9, 44, 25, tzinfo=UTC)),
        (b" 7-Feb-2024 23:30:00 +0530", datetime(2024, 2, 7, 18, 0, tzinfo=UTC)),
        (b"01-jan-2024 00:00:00 +0000", datetime(2024, 1, 1, tzinfo=UTC)),
    ],
)
def test_internaldate(raw: bytes, expected: datetime) -> None:
    assert parse_internaldate(raw) == expected


def test_format_internaldate_round_trips() -> None:
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert format_internaldate(when) == b'"06-May-2024 07:08:09 +0000"'
    assert parse_internaldate(format_internaldate(when)[1:-1]) == when
    assert format_internaldate(datetime(2024, 5, 6, 7, 8, 9)) == format_internaldate(when)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"plain subject", "plain subject"),
        (b"=?utf-8?b?8J+TpyBuZXcgbWFpbA==?=", "📧 new mail"),
        (b"=?UTF-8?Q?a?= =?UTF-8?Q?b?=", "ab"),  # whitespace between encoded-words vanishes
        (b"Re: =?iso-8859-1?q?caf=E9?= ok", "Re: café ok"),
        (b"=?x-unknown?q?abc?=", "=?x-unknown?q?abc?="),
        (b"=?UTF-8?B?a?=", "=?UTF-8?B?a?="),  # bad base64: HeaderParseError in the stdlib
        (b"\xc3\xa9t\xc3\xa9 raw utf-8", "été raw utf-8"),
        (None, ""),
    ],
)
def test_encoded_words(raw: bytes | None, expected: str) -> None:
    assert decode_words(raw) == expected


# -- bodies --------------------------------------------------------------------------------------


def test_parse_multipart_body() -> None:
    raw = (
        b"From: a@example.org\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
        b"--outer\r\n"
        b'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n'
        b"--inner\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9 au lait\r\n"
        b"--inner\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>caf\xc3\xa9</p>\r\n"
        b"--inner--\r\n"
        b"--outer\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; "
        b'filename="a.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n'
        b"--outer--\r\n"
    )
    body = parse_body("INBOX:1:2", raw)
    assert body.remote_id == "INBOX:1:2"
    assert body.text.strip() == "café au lait"
    assert body.html.strip() == "<p>café</p>"


def test_parse_body_with_unknown_charset_and_no_text() -> None:
    raw = b"Subject: x\r\nContent-Type: text/plain; charset=x-martian\r\n\r\nhello\r\n"
    assert parse_body("INBOX:1:1", raw).text.strip() == "hello"
    html_only = b"Content-Type: text/html\r\n\r\n<b>hi</b>"
    body = parse_body("INBOX:1:1", html_only)
    assert (body.text, body.html) == ("", "<b>hi</b>")


# -- folders -------------------------------------------------------------------------------------


def entries(*lines: bytes) -> list[MailboxEntry]:
    return [parse_list(untagged(line)) for line in lines]


def test_list_entries() -> None:
    entry = parse_list(untagged(b'* LIST (\\HasNoChildren \\Sent) "/" "Sent Items"\r\n'))
    assert entry == MailboxEntry("Sent Items", "/", frozenset({"\\HasNoChildren", "\\Sent"}))
    assert entry.selectable
    assert entry.leaf == "Sent Items"
    utf7 = parse_list(untagged(b'* LIST () "." "INBOX.Entw&APw-rfe"'))
    assert (utf7.name, utf7.leaf, utf7.parent) == ("INBOX.Entwürfe", "Entwürfe", "INBOX")
    literal = parse_list(untagged(b'* LIST () "/" {8}\r\nodd"name'))
    assert literal.name == 'odd"name'
    assert parse_list(untagged(b"* LIST () NIL 2024")).name == "2024"
    assert not parse_list(untagged(b'* LIST (\\Noselect) "/" "[Gmail]"')).selectable
    for bad in (b"* LIST () \"/\"", b'* LIST \\Noselect "/" x', b'* LIST () ("/") x'):
        with pytest.raises(ProtocolViolation):
            parse_list(untagged(bad))


def test_special_use_roles() -> None:
    found = to_remote_folders(
        entries(
            b'* LIST (\\HasNoChildren) "/" INBOX',
            b'* LIST (\\HasChildren \\Noselect) "/" "[Gmail]"',
            b'* LIST (\\All \\HasNoChildren) "/" "[Gmail]/All Mail"',
            b'* LIST (\\HasNoChildren \\Sent) "/" "[Gmail]/Gesendet"',
            b'* LIST (\\HasNoChildren \\Junk) "/" "[Gmail]/Spam"',
            b'* LIST (\\Flagged \\HasNoChildren) "/" "[Gmail]/Starred"',
            b'* LIST (\\HasNoChildren \\Trash) "/" "[Gmail]/Bin"',
            b'* LIST (\\Drafts \\HasNoChildren) "/" "[Gmail]/Drafts"',
            b'* LIST (\\HasNoChildren \\Important) "/" "[Gmail]/Important"',
            b'* LIST (\\HasNoChildren) "/" "Sent"',  # a user folder: \Sent is taken already
        )
    )
    roles = {f.remote_id: f.role for f in found}
    assert roles == {
        "INBOX": FolderRole.INBOX,
        "[Gmail]/All Mail": FolderRole.ALL,
        "[Gmail]/Gesendet": FolderRole.SENT,
        "[Gmail]/Spam": FolderRole.SPAM,
        "[Gmail]/Starred": FolderRole.STARRED,
        "[Gmail]/Bin": FolderRole.TRASH,
        "[Gmail]/Drafts": FolderRole.DRAFTS,
        "[Gmail]/Important": FolderRole.IMPORTANT,
        "Sent": FolderRole.NONE,
    }
    inbox = found[0]
    assert (inbox.name, inbox.system) == ("Inbox", True)
    assert {f.name for f in found} >= {"Gesendet", "Sent"}
    assert not any(f.remote_id == "[Gmail]" for f in found)


def test_name_based_roles() -> None:
    roles = assign_roles(
        entries(
            b'* LIST () "." INBOX',
            b'* LIST () "." "INBOX.Sent Messages"',
            b'* LIST () "." "INBOX.Deleted Items"',
            b'* LIST () "." INBOX.Spam',
            b'* LIST () "." INBOX.Drafts',
            b'* LIST () "." "Junk E-mail"',  # second spam candidate: the role is taken
            b'* LIST () "." Projects.Sent',  # nested in a user folder: not the Sent folder
            b'* LIST () "." Archive',
            b'* LIST (\\Noselect) "." Trash',
        )
    )
    assert roles == {
        "INBOX": FolderRole.INBOX,
        "INBOX.Sent Messages": FolderRole.SENT,
        "INBOX.Deleted Items": FolderRole.TRASH,
        "INBOX.Spam": FolderRole.SPAM,
        "INBOX.Drafts": FolderRole.DRAFTS,
        "Archive": FolderRole.ARCHIVE,
    }


def test_first_candidate_wins_and_case_is_ignored() -> None:
    roles = assign_roles(
        entries(b'* LIST () "/" SENT', b'* LIST () "/" INBOX/Sent', b'* LIST () "/" inbox')
    )
    assert roles == {"SENT": FolderRole.SENT, "inbox": FolderRole.INBOX}


RECORDED_SELECT = [
    b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n",
    b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted.",
    b"* 3000 EXISTS\r\n",
    b"* 3000 RECENT\r\n",
    b"* OK [UNSEEN 1] First unseen.\r\n",
    b"* OK [UIDVALIDITY 1795281355] UIDs valid\r\n",
    b"* OK [UIDNEXT 3001] Predicted next UID\r\n",
    b"* OK [HIGHESTMODSEQ 2] Highest\r\n",
]


def _select(
    lines: list[bytes], done: bytes
) -> tuple[list[Untagged | StatusResponse], StatusResponse]:
    responses = [parse_response(line) for line in lines]
    tagged = parse_response(done)
    assert isinstance(tagged, StatusResponse)
    return [r for r in responses if not isinstance(r, Continuation)], tagged


def test_parse_select() -> None:
    responses, done = _select(RECORDED_SELECT, b"M5 OK [READ-WRITE] Select completed.")
    selected = parse_select("INBOX", responses, done)
    assert (selected.uidvalidity, selected.uidnext, selected.exists) == (1795281355, 3001, 3000)
    assert selected.highest_modseq == 2
    assert "\\*" in selected.permanent_flags
    assert "\\Seen" in selected.flags
    assert not selected.read_only


def test_parse_examine_without_modseq() -> None:
    lines = [line for line in RECORDED_SELECT if b"HIGHESTMODSEQ" not in line]
    responses, done = _select(
        [*lines, b"* OK [NOMODSEQ] No permanent modsequences"], b"M5 OK [READ-ONLY] Done."
    )
    selected = parse_select("INBOX", responses, done)
    assert selected.highest_modseq is None
    assert selected.read_only
    responses, done = _select(RECORDED_SELECT[:3], b"M5 OK Done.")
    with pytest.raises(ProtocolViolation, match="UIDVALIDITY"):
        parse_select("INBOX", responses, done)


def test_parse_status() -> None:
    status = parse_status(
        untagged(b'* STATUS "Sent Items" (MESSAGES 231 UIDNEXT 44292 UIDVALIDITY 7 UNSEEN 0)')
    )
    assert (status.name, status.messages, status.uidnext, status.uidvalidity, status.unseen) == (
        "Sent Items", 231, 44292, 7, 0,
    )
    assert status.highest_modseq is None
    with pytest.raises(ProtocolViolation):
        parse_status(untagged(b"* STATUS x (MESSAGES)"))
