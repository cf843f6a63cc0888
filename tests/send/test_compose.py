"""Composing messages (pure): headers, reply chains, subjects, Bcc, UTF-8, prefills."""

from __future__ import annotations

from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser

import pytest

from maildesk.domain.compose import (
    MAX_REFERENCES,
    ComposeMode,
    Draft,
    Original,
    build,
    forward_subject,
    is_local_folder,
    is_local_remote_id,
    local_folder_id,
    local_remote_id,
    new_message_id,
    prefill,
    references_of,
    reply_subject,
    with_bcc,
)
from maildesk.domain.mail import FolderRole
from maildesk.errors import InputError

ME = Address(display_name="Alice Adler", addr_spec="alice@example.com")
WHEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def _parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def _body(raw: bytes) -> str:
    return str(_parse(raw).get_content()).replace("\r\n", "\n")


def _original(**changes: object) -> Original:
    fields: dict[str, object] = {
        "message_id_header": "<m2@example.net>", "subject": "Plans", "sender":
        "Bob <bob@example.net>", "recipients": "alice@example.com, Carl <carl@example.net>",
        "received_at": WHEN, "text": "Line one\n\nLine three", "references": ("<m1@example.net>",),
    }
    fields.update(changes)
    return Original(**fields)  # type: ignore[arg-type]


def test_a_new_message_has_the_headers_and_no_bcc() -> None:
    composed = build(
        Draft(to=("Bob <bob@example.net>", "carl@example.net"), cc=("dee@example.net",),
              bcc=("eve@example.net, Fay <fay@example.net>",), subject="Hello", text="Hi!\n"),
        sender=ME, message_id="<x1@example.com>", date=WHEN)
    parsed = _parse(composed.message)
    assert parsed["From"] == "Alice Adler <alice@example.com>"
    assert parsed["To"] == "Bob <bob@example.net>, carl@example.net"
    assert parsed["Cc"] == "dee@example.net"
    assert parsed["Bcc"] is None
    assert b"eve@" not in composed.message
    assert b"fay@" not in composed.message
    assert parsed["Message-ID"] == "<x1@example.com>"
    assert parsed["Date"] == "Mon, 06 May 2024 07:08:09 +0000"
    assert parsed["In-Reply-To"] is None
    assert parsed["References"] is None
    assert _body(composed.message) == "Hi!\n"
    assert composed.envelope == ("bob@example.net", "carl@example.net", "dee@example.net",
                                 "eve@example.net", "fay@example.net")
    assert composed.sender == "alice@example.com"
    assert b"\r\n" in composed.message
    assert b"\n" not in composed.message.replace(b"\r\n", b"")


def test_utf8_names_and_subjects_are_encoded_words_and_the_body_is_7bit_clean() -> None:
    composed = build(
        Draft(to=("Jörg Müller <jorg@example.de>",), subject="Grüße aus Köln 🎉",
              text="Schöne Grüße\n" + "x" * 100),
        sender=Address(display_name="Zoë Ünal", addr_spec="zoe@example.com"),
        message_id="<u1@example.com>", date=WHEN)
    assert composed.message.isascii()
    assert b"=?utf-8?" in composed.message
    parsed = _parse(composed.message)
    assert parsed["Subject"] == "Grüße aus Köln 🎉"
    assert parsed["To"] == "Jörg Müller <jorg@example.de>"
    assert parsed["From"] == "Zoë Ünal <zoe@example.com>"
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert _body(composed.message) == "Schöne Grüße\n" + "x" * 100 + "\n"


def test_an_idn_domain_becomes_punycode() -> None:
    composed = build(Draft(to=("info@bücher.example",), text="x"), sender=ME,
                     message_id="<i@example.com>", date=WHEN)
    assert composed.envelope == ("info@xn--bcher-kva.example",)


def test_header_injection_through_the_subject_is_impossible() -> None:
    composed = build(Draft(to=("b@example.net",), subject="Hi\r\nBcc: victim@example.net"),
                     sender=ME, message_id="<h@example.com>", date=WHEN)
    parsed = _parse(composed.message)
    assert parsed["Bcc"] is None
    assert parsed["Subject"] == "Hi Bcc: victim@example.net"


@pytest.mark.parametrize(("draft", "message"), [
    (Draft(to=()), "to: at least one recipient is required"),
    (Draft(to=("", " ")), "to: at least one recipient is required"),
    (Draft(to=("bob",)), "to: not an email address: 'bob'"),
    (Draft(to=("a@example.com",), cc=("b@@example.com",)), "cc: not an email address"),
    (Draft(to=("a@example.com",), bcc=("c@localhost",)), "bcc: not an email address"),
    (Draft(to=("a@example.com\nBcc: x@example.com",)), "to: line breaks are not allowed"),
    (Draft(to=("jörg@example.de",)), "to: international (non-ASCII) mailbox names"),
    # The strict stdlib parser turns these into an empty pair: never silently dropped.
    (Draft(to=("a@example.com",), bcc=("x@",)), "bcc: not an email address: 'x@'"),
    (Draft(to=("a@example.com;b@example.com",)), "to: not an email address"),
])
def test_bad_recipients_name_the_field(draft: Draft, message: str) -> None:
    with pytest.raises(InputError) as caught:
        build(draft, sender=ME, message_id="<b@example.com>", date=WHEN)
    assert str(caught.value).startswith(message)


def test_blank_entries_between_commas_are_ignored() -> None:
    message = build(Draft(to=("a@example.com, , b@example.com,",)), sender=ME,
                    message_id="<c@example.com>", date=WHEN)
    assert message.envelope == ("a@example.com", "b@example.com")


def test_an_all_bcc_message_says_undisclosed_recipients() -> None:
    composed = build(Draft(to=(), bcc=("b@example.net",), text="x"), sender=ME,
                     message_id="<a@example.com>", date=WHEN)
    assert _parse(composed.message)["To"] == "undisclosed-recipients:;"
    assert composed.envelope == ("b@example.net",)


def test_a_reply_carries_in_reply_to_and_the_reference_chain() -> None:
    composed = build(Draft(to=("bob@example.net",), subject="Re: Plans", text="Yes.",
                           mode=ComposeMode.REPLY, source_message_id=7),
                     sender=ME, message_id="<r1@example.com>", date=WHEN,
                     original=_original())
    parsed = _parse(composed.message)
    assert parsed["In-Reply-To"] == "<m2@example.net>"
    assert parsed["References"] == "<m1@example.net> <m2@example.net>"
    assert references_of(composed.message) == ("<m1@example.net>", "<m2@example.net>")


def test_a_long_reference_chain_keeps_the_root_and_the_newest() -> None:
    refs = tuple(f"<r{i}@example.net>" for i in range(40))
    composed = build(Draft(to=("bob@example.net",), mode=ComposeMode.REPLY_ALL,
                           source_message_id=1),
                     sender=ME, message_id="<r@example.com>", date=WHEN,
                     original=_original(references=refs))
    chain = references_of(composed.message)
    assert len(chain) == MAX_REFERENCES
    assert chain[0] == "<r0@example.net>"
    assert chain[-2:] == ("<r39@example.net>", "<m2@example.net>")


def test_a_forward_references_the_original_but_replies_to_nothing() -> None:
    composed = build(Draft(to=("dee@example.net",), mode=ComposeMode.FORWARD,
                           source_message_id=1),
                     sender=ME, message_id="<f@example.com>", date=WHEN, original=_original())
    parsed = _parse(composed.message)
    assert parsed["In-Reply-To"] is None
    assert parsed["References"] == "<m1@example.net> <m2@example.net>"


@pytest.mark.parametrize(("subject", "reply", "forward"), [
    ("Plans", "Re: Plans", "Fwd: Plans"),
    ("Re: Plans", "Re: Plans", "Fwd: Re: Plans"),
    ("RE: re:  Plans", "Re: Plans", "Fwd: RE: re: Plans"),
    ("AW: Re[2]: Plans", "Re: Plans", "Fwd: AW: Re[2]: Plans"),
    ("Fwd: Plans", "Re: Fwd: Plans", "Fwd: Plans"),
    ("FW: Fwd: Plans", "Re: FW: Fwd: Plans", "Fwd: Plans"),
    ("", "Re: ", "Fwd: "),
    ("Reply needed", "Re: Reply needed", "Fwd: Reply needed"),
])
def test_re_and_fwd_do_not_stack(subject: str, reply: str, forward: str) -> None:
    assert reply_subject(subject) == reply
    assert forward_subject(subject) == forward
    assert reply_subject(reply_subject(subject)) == reply
    assert forward_subject(forward_subject(subject)) == forward


def test_reply_prefill_answers_the_sender_and_quotes() -> None:
    draft = prefill(ComposeMode.REPLY, _original(), source_message_id=7,
                    own=["alice@example.com"])
    assert draft.to == ("Bob <bob@example.net>",)
    assert draft.cc == ()
    assert draft.subject == "Re: Plans"
    assert draft.mode is ComposeMode.REPLY
    assert draft.source_message_id == 7
    assert draft.text.startswith("On Mon, 06 May 2024 07:08 UTC, Bob <bob@example.net> wrote:\n")
    assert "> Line one\n>\n> Line three" in draft.text


def test_reply_all_prefill_copies_the_others_but_never_me() -> None:
    draft = prefill(ComposeMode.REPLY_ALL,
                    _original(recipients="Alice <ALICE@example.com>, carl@example.net, "
                                         "Bob <bob@example.net>"),
                    source_message_id=7, own=["alice@example.com"])
    assert draft.to == ("Bob <bob@example.net>",)
    assert draft.cc == ("carl@example.net",)


def test_replying_to_my_own_message_goes_to_its_recipients() -> None:
    mine = _original(sender="Alice <alice@example.com>",
                     recipients="Bob <bob@example.net>, carl@example.net")
    assert prefill(ComposeMode.REPLY, mine, source_message_id=1,
                   own=["alice@example.com"]).to == ("Bob <bob@example.net>",)
    everyone = prefill(ComposeMode.REPLY_ALL, mine, source_message_id=1,
                       own=["alice@example.com"])
    assert (everyone.to, everyone.cc) == (("Bob <bob@example.net>", "carl@example.net"), ())


def test_forward_prefill_has_the_original_and_no_recipients() -> None:
    draft = prefill(ComposeMode.FORWARD, _original(subject="Re: Plans"), source_message_id=3,
                    own=[])
    assert draft.to == ()
    assert draft.subject == "Fwd: Re: Plans"
    assert "---------- Forwarded message ----------\nFrom: Bob <bob@example.net>" in draft.text
    assert "Subject: Re: Plans" in draft.text
    assert draft.text.endswith("Line one\n\nLine three\n")


def test_with_bcc_puts_the_header_in_front() -> None:
    composed = build(Draft(to=("b@example.net",), text="x"), sender=ME,
                     message_id="<w@example.com>", date=WHEN)
    raw = with_bcc(composed.message, ("Zoë <z@example.net>",))
    parsed = _parse(raw)
    assert parsed["Bcc"] == "Zoë <z@example.net>"
    assert parsed["Message-ID"] == "<w@example.com>"
    assert with_bcc(composed.message, ()) == composed.message


def test_message_ids_and_the_local_namespace() -> None:
    assert new_message_id("tok", "Alice <alice@Example.COM>") == "<tok@example.com>"
    assert local_remote_id(12) == "local:outbox:12"
    assert is_local_remote_id("local:outbox:12")
    # What providers produce never matches: IMAP "{folder}:{uidvalidity}:{uid}" ids even of a
    # folder called "local" or "local:outbox", Gmail hex ids, Graph ids.
    for remote_id in ("local:5:7", "local:outbox:5:7", "18c2f3a9b0d1e2f3", "AAkALgAAAAAAHYQ=",
                      "INBOX:1:2", "local:outbox:"):
        assert not is_local_remote_id(remote_id), remote_id
    assert local_folder_id(FolderRole.SENT) == "local:folder:sent"
    assert is_local_folder("local:folder:drafts")
    assert not is_local_folder("Sent")
