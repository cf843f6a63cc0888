"""Google's batch format: many API calls in one ``multipart/mixed`` request, pure functions.

Request parts are ``application/http`` with ``Content-ID: <item-N>`` and a bare request line;
the answer is ``multipart/mixed`` with one ``application/http`` part per call, ``Content-ID:
<response-item-N>``, a status line, headers and the body. Anything malformed raises
:class:`ProtocolViolation`, so a broken answer never becomes a wrong message.
"""

from __future__ import annotations

import email.message
import itertools
import re
from typing import NamedTuple

from maildesk.errors import ProtocolViolation


class BatchPart(NamedTuple):
    """One answer inside a batch response. ``headers`` have lower-case names."""

    status: int
    headers: dict[str, str]
    body: bytes


_BOUNDARY_CHARS = re.compile(r"[0-9A-Za-z'()+_,\-./:=?]{1,70}")
_STATUS_LINE = re.compile(rb"HTTP/\d(?:\.\d)? (\d{3})(?: [^\r\n]*)?")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


def encode_batch(requests: list[tuple[str, str]], boundary: str) -> tuple[bytes, str]:
    """Encode ``(method, path?query)`` sub-requests as Google's ``multipart/mixed`` batch body.

    Returns ``(body, content_type)``. Part N (from 1) carries ``Content-ID: <item-N>``; Google
    answers with ``<response-item-N>``.
    """
    if not _BOUNDARY_CHARS.fullmatch(boundary):
        raise ValueError("invalid multipart boundary")
    lines: list[str] = []
    for number, (method, path) in enumerate(requests, start=1):
        if not path.startswith("/") or any(c.isspace() for c in method + path):
            raise ValueError(f"invalid batch request line: {method} {path!r}")
        lines += [
            f"--{boundary}",
            "Content-Type: application/http",
            f"Content-ID: <item-{number}>",
            "",
            f"{method} {path} HTTP/1.1",
            "",
        ]
    lines += [f"--{boundary}--", ""]
    return "\r\n".join(lines).encode("ascii"), f"multipart/mixed; boundary={boundary}"


def _parse_headers(block: bytes, where: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").splitlines():
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ProtocolViolation(f"Gmail batch answer: {where} has a malformed header line")
        headers[name.strip().lower()] = value.strip()
    return headers


def _split_head(block: bytes) -> tuple[bytes, bytes]:
    match = _BLANK_LINE.search(block)
    return (block, b"") if match is None else (block[: match.start()], block[match.end() :])


def _content_id_number(value: str | None) -> int | None:
    match = re.fullmatch(r"<?response-item-(\d+)>?", (value or "").strip())
    return int(match.group(1)) if match else None


def decode_batch(
    content_type: str, body: bytes, *, expected: int | None = None
) -> list[BatchPart]:
    """Decode a batch response into its parts, in request order.

    Parts are placed by their ``Content-ID: <response-item-N>`` when every part has one, else
    kept in the order received. ``expected`` (the number of sub-requests) is checked when given.
    Anything malformed raises ProtocolViolation.
    """
    header = email.message.Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/mixed" or not isinstance(boundary, str):
        raise ProtocolViolation(f"Gmail batch answer: not multipart/mixed ({content_type!r})")
    try:
        boundary_bytes = boundary.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ProtocolViolation("Gmail batch answer: the boundary is not latin-1") from exc
    delimiter = re.compile(
        rb"(?:\A|\r?\n)--" + re.escape(boundary_bytes) + rb"(--)?[ \t]*(?:\r?\n|\Z)"
    )
    marks = list(delimiter.finditer(body))
    if not marks or not marks[-1].group(1):
        raise ProtocolViolation("Gmail batch answer: missing the closing boundary")
    parts: list[BatchPart] = []
    numbers: list[int | None] = []
    for index, (mark, following) in enumerate(itertools.pairwise(marks)):
        if mark.group(1):
            break
        where = f"part {index + 1}"
        outer, inner = _split_head(body[mark.end() : following.start()])
        outer_headers = _parse_headers(outer, where)
        status_line, _, rest = inner.partition(b"\n")
        match = _STATUS_LINE.fullmatch(status_line.rstrip(b"\r"))
        if match is None:
            raise ProtocolViolation(f"Gmail batch answer: {where} has no HTTP status line")
        head, payload = _split_head(rest)
        headers = _parse_headers(head, where)
        length = headers.get("content-length", "")
        if length.isascii() and length.isdigit() and int(length) <= len(payload):
            payload = payload[: int(length)]
        parts.append(BatchPart(int(match.group(1)), headers, payload))
        numbers.append(_content_id_number(outer_headers.get("content-id")))
    if expected is not None and len(parts) != expected:
        raise ProtocolViolation(
            f"Gmail batch answer: {len(parts)} parts for {expected} requests"
        )
    known = [number for number in numbers if number is not None]
    if parts and len(known) == len(parts):
        if sorted(known) != list(range(1, len(parts) + 1)):
            raise ProtocolViolation("Gmail batch answer: Content-IDs do not match the requests")
        by_number = dict(zip(known, parts, strict=True))
        parts = [by_number[number] for number in range(1, len(parts) + 1)]
    return parts
