"""RFC 5322 messages for the Gmail simulator: building raw bytes and Gmail's ``payload`` trees.

Raw bytes are built on demand from a small ``MessageContent`` (100,000 simulated messages would
otherwise hold ~150 MB of MIME). The top-level headers of a built message are known without
building it, so ``format=metadata`` stays cheap; the test suite checks both views agree.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, BytesParser
from email.utils import format_datetime
from typing import Any

_SNIPPET_LENGTH = 140
# Per-message constant of the MIME skeleton (MIME-Version, part headers, boundaries), used to
# estimate the size without building the message.
_SKELETON_BYTES = 420


@dataclass(frozen=True, slots=True)
class MessageContent:
    """What a simulated message says; enough to rebuild its raw bytes deterministically."""

    sender: str
    to: str
    subject: str
    text: str
    html: str
    date_ms: int
    message_id_header: str
    boundary: str

    def date_header(self) -> str:
        """The ``Date`` header value (RFC 5322)."""
        return format_datetime(datetime.fromtimestamp(self.date_ms / 1000, UTC))

    def headers(self) -> list[tuple[str, str]]:
        """Top-level headers of the built message, in order, decoded and unfolded."""
        return [
            ("MIME-Version", "1.0"),
            ("From", self.sender),
            ("To", self.to),
            ("Subject", self.subject),
            ("Date", self.date_header()),
            ("Message-ID", self.message_id_header),
            ("Content-Type", f'multipart/alternative; boundary="{self.boundary}"'),
        ]

    def size_estimate(self) -> int:
        """Roughly the raw size in bytes, as Gmail's ``sizeEstimate`` is only an estimate."""
        head = sum(len(n) + len(v.encode()) + 4 for n, v in self.headers())
        return head + len(self.text.encode()) + len(self.html.encode()) + _SKELETON_BYTES

    def build(self) -> bytes:
        """The RFC 5322 bytes (CRLF line ends), text/plain and text/html alternatives."""
        msg = EmailMessage(policy=policy.SMTP)
        msg["MIME-Version"] = "1.0"
        msg["From"] = self.sender
        msg["To"] = self.to
        msg["Subject"] = self.subject
        msg["Date"] = self.date_header()
        msg["Message-ID"] = self.message_id_header
        msg.set_content(self.text)
        msg.add_alternative(self.html, subtype="html")
        # A fixed boundary keeps the bytes deterministic (the stdlib draws one from global random).
        msg.set_boundary(self.boundary)
        return msg.as_bytes()


# Display names that survive a round trip unchanged: words of letters and digits, one space apart.
_SIMPLE_ADDRESS = re.compile(r"^(?:(?:[A-Za-z0-9]+ )+<[\w.+-]+@[\w.-]+>|[\w.+-]+@[\w.-]+)$")
_NEEDS_ROUND_TRIP = re.compile(r"=\?|[\r\n]|  ")
_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "bcc", "reply-to", "sender"})


def canonical_header(name: str, value: str) -> str:
    """``value`` as Gmail will show it after a round trip through the raw bytes.

    The stdlib re-quotes display names and RFC 2047-encodes non-ASCII text; storing the
    round-tripped form keeps ``format=metadata`` (built from stored values) equal to what
    ``format=full`` parses out of the built bytes. Plain values skip the slow round trip.
    """
    if name.lower() in _ADDRESS_HEADERS:
        if _SIMPLE_ADDRESS.match(value):
            return value
    elif value.isascii() and value == value.strip() and not _NEEDS_ROUND_TRIP.search(value):
        return value
    message = EmailMessage(policy=policy.SMTP)
    message[name] = value
    parsed = BytesHeaderParser(policy=policy.default).parsebytes(message.as_bytes())
    return str(parsed[name])


def snippet_of(text: str) -> str:
    """Gmail-style snippet: whitespace collapsed, cut short, HTML-escaped like Google does."""
    flat = " ".join(text.split())[:_SNIPPET_LENGTH]
    return (
        flat.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#39;")
    )


def b64url(data: bytes) -> str:
    """Base64url with padding, as Gmail sends ``raw`` and ``body.data``."""
    return base64.urlsafe_b64encode(data).decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url or standard base64, padding optional (clients send every variant)."""
    cleaned = re.sub(r"\s+", "", text).replace("+", "-").replace("/", "_")
    return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))


def parse_headers(raw: bytes) -> list[tuple[str, str]]:
    """Top-level headers of raw bytes, decoded (RFC 2047) and unfolded."""
    message = BytesHeaderParser(policy=policy.default).parsebytes(raw)
    return [(name, str(value)) for name, value in message.items()]


def filter_headers(
    headers: Iterable[tuple[str, str]], wanted: Iterable[str]
) -> list[dict[str, str]]:
    """``[{name, value}]`` for the headers named in ``wanted`` (all if empty), case-insensitive."""
    names = {w.lower() for w in wanted}
    return [{"name": n, "value": v} for n, v in headers if not names or n.lower() in names]


def text_of(raw: bytes) -> str:
    """The first text/plain part of ``raw`` (for the snippet of a message sent through the API)."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        content = part.get_content()
    except (LookupError, ValueError):
        return ""
    text = content if isinstance(content, str) else ""
    if part.get_content_subtype() == "html":
        text = re.sub(r"<[^>]*>", " ", text)
    return text


def payload_of(raw: bytes, attachment_id: Callable[[str], str]) -> dict[str, Any]:
    """Gmail's ``payload`` (MessagePart tree) for ``format=full``.

    Parts with a filename carry ``body.attachmentId`` (named by ``attachment_id(partId)``)
    instead of inline data, as Gmail does for attachments.
    """
    message = BytesParser(policy=policy.default).parsebytes(raw)
    return _part(message, "", attachment_id)


def attachment_data(raw: bytes, part_id: str) -> bytes | None:
    """The decoded body of the part numbered ``part_id`` (e.g. ``"1.0"``), if it exists."""
    node: Message = BytesParser(policy=policy.default).parsebytes(raw)
    for step in part_id.split(".") if part_id else ():
        children = node.get_payload()
        if not node.is_multipart() or not isinstance(children, list):
            return None
        index = int(step)
        if index >= len(children):
            return None
        child = children[index]
        if not isinstance(child, Message):
            return None
        node = child
    data = node.get_payload(decode=True)
    return data if isinstance(data, bytes) else None


def attachment_token(message_id: str, part_id: str) -> str:
    """A stable opaque attachment id for a part (Gmail's ids are long opaque strings)."""
    digest = hashlib.sha256(f"{message_id}/{part_id}".encode()).digest()
    return "ANGjdJ" + b64url(digest).rstrip("=") + "." + part_id


def _part(node: Message, part_id: str, attachment_id: Callable[[str], str]) -> dict[str, Any]:
    filename = node.get_filename() or ""
    part: dict[str, Any] = {
        "partId": part_id,
        "mimeType": node.get_content_type(),
        "filename": filename,
        "headers": [{"name": n, "value": _header_text(v)} for n, v in node.items()],
    }
    children = node.get_payload()
    if node.is_multipart() and isinstance(children, list):
        part["body"] = {"size": 0}
        prefix = f"{part_id}." if part_id else ""
        part["parts"] = [
            _part(child, f"{prefix}{i}", attachment_id) for i, child in enumerate(children)
        ]
        return part
    data = node.get_payload(decode=True)
    data = data if isinstance(data, bytes) else b""
    if filename:
        part["body"] = {"attachmentId": attachment_id(part_id), "size": len(data)}
    else:
        part["body"] = {"size": len(data), "data": b64url(data)} if data else {"size": 0}
    return part


def _header_text(value: Any) -> str:
    # Gmail shows header values decoded (RFC 2047) and unfolded.
    return re.sub(r"\r?\n[ \t]+", " ", str(value))
