"""IMAP messages: FETCH data, ENVELOPE, INTERNALDATE, mailbox events, remote ids, MIME bodies.

Pure functions over values parsed by :mod:`maildesk.providers.imap_wire`.

**Remote ids** are ``"{folder}:{uidvalidity}:{uid}"``. An IMAP UID means something only inside
one mailbox and one UIDVALIDITY epoch (RFC 3501 2.3.1.1), so the id carries both: after a
UIDVALIDITY change every id of that folder is new, and the stale rows can never be mistaken for
the new messages that reuse their UIDs. Folder names may contain ``:``, so the id is split from
the right. A message moved to another folder gets a new id, as it does on every IMAP server
without OBJECTID (RFC 8474); the sync engine can still match it by Message-ID.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage

from maildesk.domain.mail import RemoteBody, RemoteMessage
from maildesk.errors import ProtocolViolation
from maildesk.providers.encoded_words import decode_encoded_words
from maildesk.providers.imap_wire import UidSet, Untagged, Value

__all__ = [
    "Address",
    "Envelope",
    "Exists",
    "Expunged",
    "FetchedMessage",
    "FlagsChanged",
    "MailboxEvent",
    "Vanished",
    "decode_words",
    "format_internaldate",
    "mailbox_event",
    "make_remote_id",
    "parse_body",
    "parse_envelope",
    "parse_fetch",
    "parse_internaldate",
    "parse_remote_id",
    "to_remote_message",
]

_SPECIALS = re.compile(r'[()<>@,;:\\".\[\]]')
_MSGID = re.compile(rb"<[^<>\s]+>")
_MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, start=1)}


def make_remote_id(folder: str, uidvalidity: int, uid: int) -> str:
    return f"{folder}:{uidvalidity}:{uid}"


def parse_remote_id(remote_id: str) -> tuple[str, int, int]:
    """``(folder, uidvalidity, uid)`` of an id made by :func:`make_remote_id`."""
    folder, _, rest = remote_id.rpartition(":")
    folder, _, validity = folder.rpartition(":")
    if not folder or not validity.isdigit() or not rest.isdigit():
        raise ValueError(f"not an IMAP remote id: {remote_id!r}")
    return folder, int(validity), int(rest)


# -- values --------------------------------------------------------------------------------------


def _text(value: Value) -> str:
    """An nstring as text (IMAP strings are bytes; headers should be ASCII, 8-bit happens)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str | int):
        return str(value)
    raise ProtocolViolation("IMAP: string expected, got a list")


def decode_words(value: Value) -> str:
    """An IMAP string with RFC 2047 encoded-words decoded (``=?UTF-8?Q?…?=``); broken ones
    stay raw (see :func:`~maildesk.providers.encoded_words.decode_encoded_words`)."""
    return decode_encoded_words(_text(value))


def format_internaldate(when: datetime) -> bytes:
    """An aware datetime → ``"06-May-2024 07:08:09 +0000"`` (quoted, for APPEND).

    Month names are spelled here rather than by ``strftime``, whose ``%b`` follows the locale.
    A naive datetime is taken as UTC.
    """
    utc = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    month = _MONTH_NAMES[utc.month - 1].capitalize()
    return f'"{utc.day:02d}-{month}-{utc.year:04d} {utc:%H:%M:%S} +0000"'.encode("ascii")


def parse_internaldate(value: Value) -> datetime:
    """``"17-Jul-1996 02:44:25 -0700"`` → an aware UTC datetime (the day may be space-padded)."""
    text = _text(value).strip()
    try:
        date_part, time_part, zone = text.split()
        day, month, year = date_part.split("-")
        hour, minute, second = (int(x) for x in time_part.split(":"))
        sign = -1 if zone[0] == "-" else 1
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5])) * sign
        when = datetime(
            int(year), _MONTHS[month.upper()], int(day), hour, minute, second,
            tzinfo=timezone(offset),
        )
    except (ValueError, KeyError, IndexError):
        raise ProtocolViolation("IMAP: malformed INTERNALDATE") from None
    return when.astimezone(UTC)


# -- ENVELOPE ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Address:
    name: str
    mailbox: str
    host: str

    @property
    def email(self) -> str:
        return f"{self.mailbox}@{self.host}" if self.host else self.mailbox

    def __str__(self) -> str:
        """``Name <box@host>`` for display (names stay Unicode, quoted only if they must be)."""
        if not self.name:
            return self.email
        name = self.name
        if _SPECIALS.search(name):
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{name} <{self.email}>"


@dataclass(frozen=True, slots=True)
class Envelope:
    date: str
    subject: str
    from_: tuple[Address, ...]
    sender: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]
    in_reply_to: str
    message_id: str


def _addresses(value: Value) -> tuple[Address, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ProtocolViolation("IMAP: ENVELOPE address list expected")
    out: list[Address] = []
    for item in value:
        if not isinstance(item, list) or len(item) != 4:
            raise ProtocolViolation("IMAP: ENVELOPE address must have 4 fields")
        name, _route, mailbox, host = item
        if host is None:
            # RFC 3501 group syntax: (NIL NIL "group" NIL) opens, (NIL NIL NIL NIL) closes.
            continue
        out.append(Address(decode_words(name), _text(mailbox), _text(host)))
    return tuple(out)


def parse_envelope(value: Value) -> Envelope:
    if not isinstance(value, list) or len(value) != 10:
        raise ProtocolViolation("IMAP: ENVELOPE must be a list of 10 fields")
    date, subject, from_, sender, reply_to, to, cc, bcc, in_reply_to, message_id = value
    return Envelope(
        date=_text(date),
        subject=decode_words(subject),
        from_=_addresses(from_),
        sender=_addresses(sender),
        reply_to=_addresses(reply_to),
        to=_addresses(to),
        cc=_addresses(cc),
        bcc=_addresses(bcc),
        in_reply_to=_text(in_reply_to).strip(),
        message_id=_text(message_id).strip(),
    )


# -- FETCH ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    """One ``* n FETCH (...)``; an attribute the server did not send is ``None``.

    ``header`` is the data of ``BODY[HEADER…]`` (any header section), ``body`` of ``BODY[]``.
    """

    seq: int
    uid: int | None = None
    flags: frozenset[str] | None = None
    internaldate: datetime | None = None
    size: int | None = None
    modseq: int | None = None
    envelope: Envelope | None = None
    header: bytes | None = None
    body: bytes | None = None

    def merged(self, later: FetchedMessage) -> FetchedMessage:
        """This message updated with every attribute ``later`` carries (same message)."""
        changes = {
            attribute.name: value
            for attribute in fields(later)
            if attribute.name != "seq" and (value := getattr(later, attribute.name)) is not None
        }
        return replace(self, **changes)


def _int(value: Value, what: str) -> int:
    if not isinstance(value, int):
        raise ProtocolViolation(f"IMAP: FETCH {what} must be a number")
    return value


def _flags(value: Value) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(flag, str) for flag in value):
        raise ProtocolViolation("IMAP: FLAGS must be a list of atoms")
    return frozenset(str(flag) for flag in value)


def parse_fetch(response: Untagged) -> FetchedMessage:
    """``* n FETCH (UID 5 FLAGS (...) ...)`` → :class:`FetchedMessage`."""
    if response.keyword != "FETCH" or response.number is None:
        raise ProtocolViolation("IMAP: not a FETCH response")
    if len(response.values) != 1 or not isinstance(response.values[0], list):
        raise ProtocolViolation("IMAP: FETCH data must be one list")
    items = response.values[0]
    if len(items) % 2:
        raise ProtocolViolation("IMAP: FETCH data must be name/value pairs")
    uid: int | None = None
    flags: frozenset[str] | None = None
    internaldate: datetime | None = None
    size: int | None = None
    modseq: int | None = None
    envelope: Envelope | None = None
    header: bytes | None = None
    body: bytes | None = None
    for index in range(0, len(items), 2):
        name, value = items[index], items[index + 1]
        if not isinstance(name, str):
            raise ProtocolViolation("IMAP: FETCH item name must be an atom")
        key = name.upper()
        if key == "UID":
            uid = _int(value, "UID")
        elif key == "FLAGS":
            flags = _flags(value)
        elif key == "INTERNALDATE":
            internaldate = parse_internaldate(value)
        elif key == "RFC822.SIZE":
            size = _int(value, "RFC822.SIZE")
        elif key == "MODSEQ":
            if not isinstance(value, list) or len(value) != 1:
                raise ProtocolViolation("IMAP: MODSEQ must be a one-number list")
            modseq = _int(value[0], "MODSEQ")
        elif key == "ENVELOPE":
            envelope = parse_envelope(value)
        elif key.startswith("BODY[HEADER") or key == "RFC822.HEADER":
            header = _data(value)
        elif key in ("BODY[]", "RFC822", "BINARY[]"):
            body = _data(value)
        # Anything else (BODYSTRUCTURE, X-GM-*, …) we did not ask for and ignore.
    return FetchedMessage(
        response.number, uid, flags, internaldate, size, modseq, envelope, header, body
    )


def _data(value: Value) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, bytes):
        raise ProtocolViolation("IMAP: FETCH section data must be a string")
    return value


# -- events --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exists:
    """``* n EXISTS``: the mailbox now holds n messages (new mail if n grew)."""

    count: int


@dataclass(frozen=True, slots=True)
class Expunged:
    """``* n EXPUNGE``: message sequence number n is gone (numbers above it shift down)."""

    seq: int


@dataclass(frozen=True, slots=True)
class Vanished:
    """``* VANISHED [(EARLIER)] uids`` (QRESYNC): these UIDs are gone."""

    uids: UidSet
    earlier: bool


@dataclass(frozen=True, slots=True)
class FlagsChanged:
    """An unsolicited ``* n FETCH``: flags (and with CONDSTORE the MODSEQ) changed."""

    message: FetchedMessage


MailboxEvent = Exists | Expunged | Vanished | FlagsChanged


def parse_vanished(response: Untagged) -> Vanished:
    values = response.values
    earlier = False
    if values and isinstance(values[0], list):
        earlier = [str(v).upper() for v in values[0]] == ["EARLIER"]
        values = values[1:]
    if len(values) != 1 or not isinstance(values[0], str | int):
        raise ProtocolViolation("IMAP: VANISHED must carry one UID set")
    return Vanished(UidSet.parse(str(values[0])), earlier)


def mailbox_event(response: Untagged) -> MailboxEvent | None:
    """The mailbox change an untagged response reports, or ``None`` if it reports none."""
    if response.keyword == "EXISTS" and response.number is not None:
        return Exists(response.number)
    if response.keyword == "EXPUNGE" and response.number is not None:
        return Expunged(response.number)
    if response.keyword == "VANISHED":
        return parse_vanished(response)
    if response.keyword == "FETCH":
        return FlagsChanged(parse_fetch(response))
    return None


# -- domain types --------------------------------------------------------------------------------


def _thread_root(header: bytes | None, envelope: Envelope | None) -> str:
    """The first Message-ID of References, else In-Reply-To, else the message's own id."""
    if header:
        # The header section holds only the References field (that is all we fetch).
        first = _MSGID.search(header)
        if first is not None:
            return first.group(0).decode("ascii", "replace")
    if envelope is not None:
        if envelope.in_reply_to:
            return envelope.in_reply_to.split()[0]
        return envelope.message_id
    return ""


def to_remote_message(folder: str, uidvalidity: int, message: FetchedMessage) -> RemoteMessage:
    """FETCH data of one message (UID, FLAGS, INTERNALDATE, …) → :class:`RemoteMessage`."""
    if message.uid is None:
        raise ProtocolViolation("IMAP: FETCH response without UID")
    remote_id = make_remote_id(folder, uidvalidity, message.uid)
    envelope = message.envelope
    flags = {flag.lower() for flag in message.flags or ()}
    return RemoteMessage(
        remote_id=remote_id,
        thread_id=_thread_root(message.header, envelope) or remote_id,
        folder_ids=frozenset({folder}),
        received_at=message.internaldate or datetime.fromtimestamp(0, UTC),
        subject=envelope.subject if envelope else "",
        sender=", ".join(map(str, envelope.from_)) if envelope else "",
        recipients=", ".join(map(str, envelope.to + envelope.cc)) if envelope else "",
        message_id_header=envelope.message_id if envelope else "",
        size=message.size or 0,
        unread="\\seen" not in flags,
        starred="\\flagged" in flags,
    )


def _content(part: EmailMessage) -> str:
    try:
        content = part.get_content()
    except (LookupError, ValueError, UnicodeError, AssertionError):
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else ""


def parse_body(remote_id: str, raw: bytes) -> RemoteBody:
    """A whole RFC 5322 message → its text and HTML bodies (attachments are not bodies)."""
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)  # guaranteed by policy.default
    text_part = parsed.get_body(preferencelist=("plain",))
    html_part = parsed.get_body(preferencelist=("html",))
    return RemoteBody(
        remote_id=remote_id,
        text=_content(text_part) if isinstance(text_part, EmailMessage) else "",
        html=_content(html_part) if isinstance(html_part, EmailMessage) else "",
    )
