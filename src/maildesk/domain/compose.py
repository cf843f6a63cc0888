"""Composing mail: drafts, reply/forward prefills and the RFC 5322 message we send. Pure.

``build`` turns a :class:`Draft` into the bytes every sender uses (stdlib ``email`` with policy
SMTP: CRLF line ends, RFC 2047 encoded UTF-8 headers, a UTF-8 text body). Bcc recipients are
in the envelope only, never in the headers; providers whose API reads the recipients from the
headers (Gmail, Graph) get them back through :func:`with_bcc` at the edge.

Also here, because the store and the sync engines need them without importing the sending
pipeline: the outbox states and the *local namespace* — remote ids that no provider produces,
used for the local Sent/Draft entry of a message we send (``local:outbox:<id>``) and for
stand-in Sent/Drafts folders of a mailbox whose folders are not listed yet
(``local:folder:sent``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import format_datetime, getaddresses, parseaddr

from maildesk.domain.mail import FolderRole
from maildesk.errors import InputError

# How many ids a References header keeps (the thread root and the newest ones, RFC 5322 3.6.4
# allows trimming the middle); the header stays bounded in endless threads.
MAX_REFERENCES = 20
_REPLY_PREFIX = re.compile(r"^\s*(re|aw|sv|antw)\s*(\[\d+\])?\s*:\s*", re.IGNORECASE)
_FORWARD_PREFIX = re.compile(r"^\s*(fwd?|wg)\s*(\[\d+\])?\s*:\s*", re.IGNORECASE)
_MSGID = re.compile(r"<[^<>\s]+>")


class ComposeMode(enum.StrEnum):
    NEW = "new"
    REPLY = "reply"
    REPLY_ALL = "reply_all"
    FORWARD = "forward"


@dataclass(frozen=True, slots=True)
class Draft:
    """What the user wrote. Addresses are ``addr@example.org`` or ``Name <addr@example.org>``
    (an entry may hold several, comma-separated). ``source_message_id`` is the local message
    replied to or forwarded."""

    to: tuple[str, ...]
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    subject: str = ""
    text: str = ""
    mode: ComposeMode = ComposeMode.NEW
    source_message_id: int | None = None


@dataclass(frozen=True, slots=True)
class Original:
    """The message a reply or forward refers to, as far as we know it."""

    message_id_header: str
    subject: str
    sender: str
    recipients: str  # To (and Cc) as stored, comma-separated
    received_at: datetime
    text: str = ""
    references: tuple[str, ...] = ()  # its own References, when known


@dataclass(frozen=True, slots=True)
class Composed:
    """A message ready to send: ``message`` has no Bcc header; ``envelope`` holds every
    recipient (To, Cc and Bcc) as bare addresses."""

    message: bytes
    message_id: str
    sender: str
    envelope: tuple[str, ...]
    subject: str
    to_header: str  # To and Cc, for the local entry's recipients column
    references: tuple[str, ...]


class OutboxState(enum.StrEnum):
    """``queued`` (stored, not tried yet) → ``sending`` (an attempt runs; a crash leaves it
    here and it is tried again once stale) → ``sent``; or ``retrying`` (a transient failure,
    tried again after a backoff) → … → ``failed`` (permanent, or out of attempts: the message
    waits in Drafts with its error)."""

    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"


# ------------------------------------------------------------------------- local namespace
_LOCAL_ENTRY = re.compile(r"local:outbox:(\d+)")
_LOCAL_FOLDER_PREFIX = "local:folder:"


def local_remote_id(outbox_id: int) -> str:
    """The remote id of the local Sent/Draft entry of an outbox item."""
    return f"local:outbox:{outbox_id}"


def is_local_remote_id(remote_id: str) -> bool:
    """True for local entries only. IMAP ids end in ``:<uidvalidity>:<uid>`` (two numbers),
    Gmail ids are hex and Graph ids base64, so none of them can match."""
    return _LOCAL_ENTRY.fullmatch(remote_id) is not None


def local_folder_id(role: FolderRole) -> str:
    """The remote id of a stand-in folder for ``role`` (a mailbox whose folders are not
    listed yet); the provider's own folder of that role replaces it on the next listing."""
    return _LOCAL_FOLDER_PREFIX + role.value


def is_local_folder(remote_id: str) -> bool:
    return remote_id.startswith(_LOCAL_FOLDER_PREFIX)


# ------------------------------------------------------------------------------ addresses
def _address(name: str, addr: str, field: str, raw: str) -> Address:
    addr = addr.strip()
    local, at, domain = addr.rpartition("@")
    if (not at or not local or not domain or "@" in local or "." not in domain.strip(".")
            or any(c.isspace() or ord(c) < 32 or c in "<>,;\"()[]\\" for c in addr)):
        raise InputError(f"{field}: not an email address: {raw.strip()!r}")
    if not local.isascii():
        raise InputError(f"{field}: international (non-ASCII) mailbox names are not supported: "
                         f"{raw.strip()!r}")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise InputError(f"{field}: not an email address: {raw.strip()!r}") from None
    name = " ".join(name.split())
    return Address(display_name=name, username=local, domain=domain.lower())


def parse_addresses(values: Iterable[str], field: str) -> tuple[Address, ...]:
    """Every address in ``values`` (each may hold several, comma-separated), deduplicated.
    InputError names ``field`` and the offending entry."""
    found: list[Address] = []
    seen: set[str] = set()
    for raw in values:
        if not raw.strip():
            continue
        if "\r" in raw or "\n" in raw:
            raise InputError(f"{field}: line breaks are not allowed in addresses")
        pairs = getaddresses([raw])
        # The stdlib's strict parser answers ("", "") both for an empty entry (", ,") and for
        # one it cannot read ("x@"): only as many empty pairs as blank entries are harmless.
        blank = sum(1 for part in raw.split(",") if not part.strip())
        if sum(1 for pair in pairs if pair == ("", "")) > blank:
            raise InputError(f"{field}: not an email address: {raw.strip()!r}")
        for name, addr in pairs:
            if not addr and not name:
                continue
            address = _address(name, addr, field, raw)
            key = address.addr_spec.lower()
            if key not in seen:
                seen.add(key)
                found.append(address)
    return tuple(found)


def addr_spec(value: str) -> str:
    """The bare, lower-cased address of ``Name <addr>`` (empty when there is none)."""
    return parseaddr(value)[1].strip().lower()


# -------------------------------------------------------------------------------- subjects
def _strip(pattern: re.Pattern[str], subject: str) -> str:
    while (match := pattern.match(subject)) is not None:
        subject = subject[match.end():]
    return subject.strip()


def reply_subject(subject: str) -> str:
    """``Re: `` once, whatever reply prefixes the subject already had (Re:, RE:, AW:, Re[2]:)."""
    return "Re: " + _strip(_REPLY_PREFIX, " ".join(subject.split()))


def forward_subject(subject: str) -> str:
    """``Fwd: `` once (an existing Fwd:/FW:/WG: prefix is not stacked)."""
    return "Fwd: " + _strip(_FORWARD_PREFIX, " ".join(subject.split()))


# ----------------------------------------------------------------------------- message ids
def new_message_id(token: str, sender: str) -> str:
    """``<token@domain-of-sender>``; ``token`` must be unique (the caller draws it)."""
    domain = addr_spec(sender).rpartition("@")[2] or "maildesk.invalid"
    return f"<{token}@{domain}>"


def message_ids(value: str) -> tuple[str, ...]:
    """The ``<…>`` ids in a References / In-Reply-To / Message-ID value, in order."""
    return tuple(_MSGID.findall(value or ""))


def reference_chain(original: Original) -> tuple[str, ...]:
    """References of a reply: the original's References plus its Message-ID, trimmed to
    the thread root and the newest ids."""
    chain: list[str] = []
    for ref in (*original.references, *message_ids(original.message_id_header)):
        if ref not in chain:
            chain.append(ref)
    if len(chain) > MAX_REFERENCES:
        chain = [chain[0], *chain[-(MAX_REFERENCES - 1):]]
    return tuple(chain)


def references_of(message: bytes) -> tuple[str, ...]:
    """The References of a composed message (headers only are parsed)."""
    headers = BytesHeaderParser(policy=policy.SMTP).parsebytes(message)
    return message_ids(str(headers.get("References", "")))


# --------------------------------------------------------------------------------- prefill
def _when(moment: datetime) -> str:
    return moment.strftime("%a, %d %b %Y %H:%M %Z").strip()


def quote_reply(original: Original) -> str:
    """``On <date>, <sender> wrote:`` and the original text, each line prefixed ``> ``."""
    lines = original.text.replace("\r\n", "\n").strip("\n").split("\n")
    quoted = "\n".join(">" if not line else f"> {line}" for line in lines)
    return f"On {_when(original.received_at)}, {original.sender} wrote:\n{quoted}\n"


def forward_block(original: Original) -> str:
    header = [
        "---------- Forwarded message ----------",
        f"From: {original.sender}",
        f"Date: {_when(original.received_at)}",
        f"Subject: {original.subject}",
        f"To: {original.recipients}",
    ]
    return "\n".join(header) + "\n\n" + original.text.replace("\r\n", "\n").strip("\n") + "\n"


def _split(recipients: str) -> list[str]:
    return [
        f"{name} <{addr}>" if name else addr
        for name, addr in getaddresses([recipients]) if addr
    ]


def _unique(entries: Iterable[str], taken: set[str]) -> tuple[str, ...]:
    """``entries`` whose address is not in ``taken`` yet (which they are added to)."""
    kept: list[str] = []
    for entry in entries:
        key = addr_spec(entry)
        if key not in taken:
            taken.add(key)
            kept.append(entry)
    return tuple(kept)


def prefill(
    mode: ComposeMode, original: Original, *, source_message_id: int, own: Iterable[str]
) -> Draft:
    """The draft a reply, reply-all or forward starts from. ``own`` are the mailbox's own
    addresses: they are never a recipient of a reply (replying to our own sent message goes
    to its recipients instead)."""
    mine = {a.strip().lower() for a in own if a.strip()}
    if mode is ComposeMode.FORWARD:
        return Draft(to=(), subject=forward_subject(original.subject),
                     text=forward_block(original), mode=mode,
                     source_message_id=source_message_id)
    if mode not in (ComposeMode.REPLY, ComposeMode.REPLY_ALL):
        return Draft(to=(), mode=ComposeMode.NEW)
    others = [r for r in _split(original.recipients) if addr_spec(r) not in mine]
    if addr_spec(original.sender) in mine or not addr_spec(original.sender):
        to = others if mode is ComposeMode.REPLY_ALL else others[:1]
        cc: list[str] = []
    else:
        to = [original.sender]
        cc = others if mode is ComposeMode.REPLY_ALL else []
    taken: set[str] = set()
    return Draft(to=_unique(to, taken), cc=_unique(cc, taken),
                 subject=reply_subject(original.subject), text=quote_reply(original),
                 mode=mode, source_message_id=source_message_id)


# ----------------------------------------------------------------------------------- build
@dataclass(frozen=True, slots=True)
class Recipients:
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]

    @property
    def envelope(self) -> tuple[str, ...]:
        seen: dict[str, str] = {}
        for a in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(a.addr_spec.lower(), a.addr_spec)
        return tuple(seen.values())


def recipients_of(draft: Draft) -> Recipients:
    """The draft's parsed recipients; InputError names the field of a bad address, and says
    ``to`` when there is nobody to send to."""
    parsed = Recipients(parse_addresses(draft.to, "to"), parse_addresses(draft.cc, "cc"),
                        parse_addresses(draft.bcc, "bcc"))
    if not parsed.envelope:
        raise InputError("to: at least one recipient is required")
    return parsed


def _clean_header(value: str) -> str:
    return " ".join(value.replace("\r", " ").replace("\n", " ").split())


def build(
    draft: Draft,
    *,
    sender: Address,
    message_id: str,
    date: datetime,
    original: Original | None = None,
) -> Composed:
    """The RFC 5322 message of ``draft`` (no Bcc header), sent from ``sender``.

    A reply (``original`` given, mode reply/reply-all) carries In-Reply-To and References; a
    forward carries References only (it starts no reply chain but stays in the thread)."""
    parsed = recipients_of(draft)
    subject = _clean_header(draft.subject)
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = sender
    if parsed.to:
        msg["To"] = parsed.to
    if parsed.cc:
        msg["Cc"] = parsed.cc
    if not parsed.to and not parsed.cc:
        # RFC 5322 wants a destination field; an all-Bcc message gets the usual empty group.
        msg["To"] = "undisclosed-recipients:;"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id
    references: tuple[str, ...] = ()
    if original is not None and draft.mode is not ComposeMode.NEW:
        references = reference_chain(original)
        parent = message_ids(original.message_id_header)
        if draft.mode in (ComposeMode.REPLY, ComposeMode.REPLY_ALL) and parent:
            msg["In-Reply-To"] = parent[0]
        if references:
            msg["References"] = " ".join(references)
    text = draft.text.replace("\r\n", "\n").replace("\r", "\n")
    # 7-bit clean on the wire (servers without 8BITMIME, IMAP APPEND): quoted-printable for
    # anything that is not short-lined ASCII.
    plain = text.isascii() and all(len(line) <= 78 for line in text.split("\n"))
    msg.set_content(text, charset="utf-8", cte="7bit" if plain else "quoted-printable")
    shown = ", ".join(str(a) for a in (*parsed.to, *parsed.cc))
    return Composed(
        message=msg.as_bytes(policy=policy.SMTP),
        message_id=message_id,
        sender=sender.addr_spec,
        envelope=parsed.envelope,
        subject=subject,
        to_header=shown,
        references=references,
    )


def with_bcc(message: bytes, bcc: Sequence[str]) -> bytes:
    """``message`` with a Bcc header in front, for APIs that take the recipients from the
    headers (Gmail ``messages.send``, Graph ``sendMail`` MIME) and for our own Sent copy; the
    providers strip it from what the recipients get."""
    addresses = parse_addresses(bcc, "bcc")
    if not addresses:
        return message
    header = EmailMessage(policy=policy.SMTP)
    header["Bcc"] = addresses
    head = header.as_bytes(policy=policy.SMTP).split(b"\r\n\r\n", 1)[0]
    return head + b"\r\n" + message
