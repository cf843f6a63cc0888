"""The IMAP wire format (RFC 3501/9051 and the extensions we use): pure parsers and encoders.

No IO here. The connection (``imap_connection.py``) reads one complete response — a line, and for
every ``{n}`` at its end the n bytes of the literal and the line that follows — and hands the raw
bytes, literals inline, to :func:`parse_response`. Keeping this pure lets recorded server answers
be tested without a server.

Values in responses are mapped to plain Python: a number is ``int``, an atom (``\\Seen``,
``FLAGS``, ``BODY[HEADER.FIELDS (SUBJECT)]``) is ``str``, a quoted string or literal is ``bytes``
(its charset is for the caller to know), ``NIL`` is ``None`` and a parenthesized list is ``list``.

Anything malformed raises :class:`~maildesk.errors.ProtocolViolation`. Messages name the position
and never quote the response: it may hold mail headers or bodies.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from maildesk.errors import ProtocolViolation

__all__ = [
    "CommandPart",
    "Continuation",
    "Literal",
    "Response",
    "StatusResponse",
    "UidSet",
    "Untagged",
    "Value",
    "decode_mailbox_name",
    "encode_mailbox_name",
    "encode_string",
    "literal_length",
    "parse_response",
    "render_command",
]

Value: TypeAlias = "int | str | bytes | list[Value] | None"

STATUS_WORDS = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})
# Untagged keywords whose data we interpret: a parse failure there is the server's fault. Other
# (vendor) keywords that we cannot tokenize are kept without values instead of failing.
_KNOWN = frozenset(
    {
        "CAPABILITY", "ENABLED", "LIST", "LSUB", "STATUS", "SEARCH", "ESEARCH", "FLAGS",
        "EXISTS", "RECENT", "EXPUNGE", "FETCH", "VANISHED", "NAMESPACE", "ID",
    }
)
_LITERAL_AT_END = re.compile(rb"~?\{(\d+)\+?\}\r\n\Z")
_MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class StatusResponse:
    """``tag OK|NO|BAD …`` or an untagged ``* OK|NO|BAD|BYE|PREAUTH …`` (``tag == "*"``).

    ``code`` is the bracketed response code, upper-cased (``""`` if none), with its arguments.
    """

    tag: str
    status: str
    code: str
    code_args: tuple[Value, ...]
    text: str

    @property
    def ok(self) -> bool:
        return self.status == "OK"


@dataclass(frozen=True, slots=True)
class Untagged:
    """Untagged data: ``* 23 EXISTS`` is ``Untagged("EXISTS", 23, ())``; ``* LIST (...) "/" x``
    is ``Untagged("LIST", None, ([...], b"/", "x"))``."""

    keyword: str
    number: int | None
    values: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Continuation:
    """``+ text``: the server waits for a literal, IDLE is running, or a SASL challenge."""

    text: str


Response: TypeAlias = StatusResponse | Untagged | Continuation


def literal_length(line: bytes) -> int | None:
    """The length announced by a ``{n}`` (or ``~{n}``) ending ``line``, else ``None``."""
    match = _LITERAL_AT_END.search(line)
    return int(match.group(1)) if match else None


_ATOM = re.compile(rb'[^ ()"{\[\]\x00-\x1f\x7f]+')
_QUOTED = re.compile(rb'"([^"\\\r\n]*(?:\\.[^"\\\r\n]*)*)"', re.DOTALL)
_UNESCAPE = re.compile(rb"\\(.)", re.DOTALL)
_LITERAL = re.compile(rb"~?\{(\d+)\+?\}\r\n")


class _Tokens:
    """A cursor over one response. Hot path (every FETCH of a sync goes through it): regexes
    and local variables instead of per-byte method calls."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def fail(self, what: str) -> ProtocolViolation:
        return ProtocolViolation(f"IMAP: malformed response ({what} at byte {self.pos})")

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def skip_spaces(self) -> None:
        data, pos = self.data, self.pos
        while pos < len(data) and data[pos] == 0x20:
            pos += 1
        self.pos = pos

    def word(self) -> str:
        """Up to the next space (tags, status words, keywords)."""
        end = self.data.find(b" ", self.pos)
        if end < 0:
            end = len(self.data)
        token = self.data[self.pos : end]
        self.pos = end
        return token.decode("ascii", "replace")

    def values(self, *, stop: int | None = None) -> tuple[Value, ...]:
        """Values up to the end (or up to the byte ``stop``, which is consumed)."""
        out: list[Value] = []
        data = self.data
        while True:
            self.skip_spaces()
            if self.pos >= len(data):
                if stop is not None:
                    raise self.fail(f"missing {chr(stop)!r}")
                return tuple(out)
            if data[self.pos] == stop:
                self.pos += 1
                return tuple(out)
            out.append(self.value(0))

    def value(self, depth: int) -> Value:
        data = self.data
        pos = self.pos
        if pos >= len(data):
            raise self.fail("value expected")
        char = data[pos]
        if char == 0x28:  # (
            if depth >= _MAX_DEPTH:
                raise self.fail("lists nested too deeply")
            pos += 1
            items: list[Value] = []
            while True:
                while pos < len(data) and data[pos] == 0x20:
                    pos += 1
                if pos >= len(data):
                    self.pos = pos
                    raise self.fail("unterminated list")
                if data[pos] == 0x29:  # )
                    self.pos = pos + 1
                    return items
                self.pos = pos
                items.append(self.value(depth + 1))
                pos = self.pos
        if char == 0x22:  # "
            match = _QUOTED.match(data, pos)
            if match is None:
                raise self.fail("unterminated quoted string")
            self.pos = match.end()
            text = match.group(1)
            return _UNESCAPE.sub(rb"\1", text) if b"\\" in text else text
        if char == 0x7B or (char == 0x7E and data[pos + 1 : pos + 2] == b"{"):  # { or ~{
            match = _LITERAL.match(data, pos)
            if match is None:
                raise self.fail("malformed literal")
            start = match.end()
            end = start + int(match.group(1))
            if end > len(data):
                raise self.fail("literal shorter than announced")
            self.pos = end
            return data[start:end]
        return self.atom()

    def atom(self) -> Value:
        data = self.data
        start = pos = self.pos
        while True:
            match = _ATOM.match(data, pos)
            if match is not None:
                pos = match.end()
            if pos < len(data) and data[pos] == 0x5B:  # [ opens a section: BODY[HEADER…]<0>
                close = data.find(b"]", pos)
                if close < 0:
                    self.pos = pos
                    raise self.fail("unterminated section")
                pos = close + 1
                if pos < len(data) and data[pos] == 0x3C:  # <partial>
                    close = data.find(b">", pos)
                    if close < 0:
                        self.pos = pos
                        raise self.fail("unterminated partial")
                    pos = close + 1
                continue
            break
        self.pos = pos
        if pos == start:
            raise self.fail("unexpected character")
        token = data[start:pos]
        if token.isdigit():
            return int(token)
        if len(token) == 3 and token.upper() == b"NIL":
            return None
        return token.decode("utf-8", "replace")


def parse_response(raw: bytes) -> Response:
    """One complete server response (literals inline, trailing CRLF optional)."""
    data = raw[:-2] if raw.endswith(b"\r\n") else raw
    if data.startswith(b"+"):
        return Continuation(data[1:].lstrip(b" ").decode("utf-8", "replace"))
    tokens = _Tokens(data)
    tag = tokens.word()
    if not tag or tokens.peek() != 0x20:
        raise tokens.fail("tag and response expected")
    tokens.pos += 1
    word = tokens.word()
    upper = word.upper()
    if upper in STATUS_WORDS:
        return _status(tag, upper, tokens)
    if tag != "*":
        raise tokens.fail("tagged response without a status")
    number: int | None = None
    if word.isdigit():
        number = int(word)
        tokens.skip_spaces()
        upper = tokens.word().upper()
        if not upper:
            raise tokens.fail("keyword expected after the number")
    start = tokens.pos
    try:
        values = tokens.values()
    except ProtocolViolation:
        if upper in _KNOWN or number is not None:
            raise
        tokens.pos = start
        values = ()
    return Untagged(upper, number, values)


def _status(tag: str, status: str, tokens: _Tokens) -> StatusResponse:
    tokens.skip_spaces()
    code = ""
    args: tuple[Value, ...] = ()
    if tokens.peek() == 0x5B:  # [
        tokens.pos += 1
        code_end = tokens.pos
        while code_end < len(tokens.data) and tokens.data[code_end] not in b" ]":
            code_end += 1
        code = tokens.data[tokens.pos : code_end].decode("ascii", "replace").upper()
        tokens.pos = code_end
        if not code:
            raise tokens.fail("empty response code")
        start = tokens.pos
        try:
            args = tokens.values(stop=0x5D)
        except ProtocolViolation:
            # Free-form arguments (REFERRAL URLs, vendor codes): keep them as one text.
            close = tokens.data.find(b"]", start)
            if close < 0:
                raise tokens.fail("unterminated response code") from None
            raw_args = tokens.data[start:close].strip().decode("utf-8", "replace")
            args = (raw_args,) if raw_args else ()
            tokens.pos = close + 1
        tokens.skip_spaces()
    text = tokens.data[tokens.pos :].decode("utf-8", "replace")
    return StatusResponse(tag, status, code, args, text)


# -- sequence sets ------------------------------------------------------------------------------


class UidSet:
    """A set of UIDs kept as sorted, merged, inclusive ranges (``1:3,7`` is ``[(1,3),(7,7)]``).

    VANISHED (EARLIER) can name millions of UIDs in a few bytes, so ranges are never expanded
    unless the caller iterates.
    """

    __slots__ = ("ranges",)

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        merged: list[tuple[int, int]] = []
        for low, high in sorted((min(a, b), max(a, b)) for a, b in ranges):
            if merged and low <= merged[-1][1] + 1:
                if high > merged[-1][1]:
                    merged[-1] = (merged[-1][0], high)
            else:
                merged.append((low, high))
        self.ranges: tuple[tuple[int, int], ...] = tuple(merged)

    @classmethod
    def of(cls, uids: Iterable[int]) -> UidSet:
        return cls((uid, uid) for uid in uids)

    @classmethod
    def parse(cls, text: str | bytes) -> UidSet:
        """Parse ``1:3,5,9:7``; ``*`` is refused (it has no value outside a command)."""
        raw = text.decode("ascii", "replace") if isinstance(text, bytes) else text
        ranges = []
        for part in raw.split(","):
            low, sep, high = part.partition(":")
            if not low.isdigit() or (sep and not high.isdigit()):
                raise ProtocolViolation(f"IMAP: malformed sequence set ({len(raw)} bytes)")
            first = int(low)
            last = int(high) if sep else first
            if first == 0 or last == 0:
                raise ProtocolViolation("IMAP: sequence set contains 0")
            ranges.append((first, last))
        return cls(ranges)

    def __iter__(self) -> Iterator[int]:
        for low, high in self.ranges:
            yield from range(low, high + 1)

    def __len__(self) -> int:
        return sum(high - low + 1 for low, high in self.ranges)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and any(low <= uid <= high for low, high in self.ranges)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UidSet) and other.ranges == self.ranges

    def __hash__(self) -> int:
        return hash(self.ranges)

    def __str__(self) -> str:
        return ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in self.ranges)

    def __repr__(self) -> str:
        return f"UidSet({str(self)!r})"


# -- mailbox names (modified UTF-7, RFC 3501 5.1.3) -----------------------------------------------


def decode_mailbox_name(raw: bytes | str | int) -> str:
    """A mailbox name as sent by the server (modified UTF-7) → text.

    Names that are not valid modified UTF-7 (servers with UTF8=ACCEPT, or broken ones) are
    returned as they were rather than refused: a folder must stay reachable by its name.
    """
    if isinstance(raw, int):  # a name made only of digits was read as a number
        return str(raw)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if "&" not in text:
        return text
    out: list[str] = []
    pos = 0
    while pos < len(text):
        amp = text.find("&", pos)
        if amp < 0:
            out.append(text[pos:])
            break
        out.append(text[pos:amp])
        dash = text.find("-", amp)
        if dash < 0:
            return text
        chunk = text[amp + 1 : dash]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            try:
                utf16 = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
                out.append(utf16.decode("utf-16-be"))
            except (ValueError, UnicodeDecodeError):
                return text
        pos = dash + 1
    return "".join(out)


def encode_mailbox_name(name: str) -> bytes:
    """Text → modified UTF-7, as mailbox names go on the wire."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            utf16 = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(utf16).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out).encode("ascii")


# -- commands -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Literal:
    """Command data sent as ``{n}`` + bytes (anything quoting cannot carry)."""

    data: bytes


CommandPart: TypeAlias = bytes | Literal
_SAFE_ATOM = re.compile(rb"[!#$&'+,\-./0-9:;<=>?@A-Z^_`a-z|}~]+\Z")


def encode_string(value: str | bytes) -> CommandPart:
    """An astring argument: a bare atom if safe, a quoted string if possible, else a literal."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    if _SAFE_ATOM.match(data) and data.upper() != b"NIL":
        return data
    if all(0x20 <= byte <= 0x7E for byte in data) and len(data) <= 1024:
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return Literal(data)


def render_command(
    tag: str, parts: Sequence[CommandPart], *, literal_plus: bool = False
) -> list[bytes]:
    """The bytes of one command, split where the client must wait for a ``+`` continuation.

    With ``literal_plus`` (the server advertised LITERAL+) literals are sent as ``{n+}``
    without waiting, so the result is one segment.
    """
    segments: list[bytes] = []
    current = bytearray(tag.encode("ascii"))
    for part in parts:
        current += b" "
        if isinstance(part, Literal):
            marker = b"+}" if literal_plus else b"}"
            current += b"{" + str(len(part.data)).encode() + marker + b"\r\n"
            if not literal_plus:
                segments.append(bytes(current))
                current = bytearray()
            current += part.data
        else:
            if b"\r" in part or b"\n" in part:
                raise ValueError("command part contains a line break")
            current += part
    current += b"\r\n"
    segments.append(bytes(current))
    return segments
