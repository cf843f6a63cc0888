"""Google's batch wire format: ``multipart/mixed`` bodies of ``application/http`` parts.

Request part::

    --BOUNDARY
    Content-Type: application/http
    Content-ID: <item1>

    GET /gmail/v1/users/me/messages/ID?format=metadata HTTP/1.1
    Authorization: Bearer ...            (optional; else the outer request's header applies)

    (optional body)

Response part: ``Content-Type: application/http``, ``Content-ID: <response-item1>``, a blank
line, then a whole HTTP/1.1 response (status line, headers, blank line, body).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote, urlsplit

from maildesk.errors import InputError
from maildesk.sim.wire import SimRequest, SimResponse

MAX_PARTS = 100
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True, slots=True)
class BatchPart:
    """One sub-request and the Content-ID it came with (without angle brackets)."""

    content_id: str | None
    request: SimRequest


def boundary_of(content_type: str) -> str:
    """The boundary of a ``multipart/mixed`` Content-Type, or ``InputError``."""
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/mixed" or not isinstance(boundary, str):
        raise InputError("batch requests must be multipart/mixed with a boundary")
    return boundary


def parse_batch(content_type: str, body: bytes) -> list[BatchPart]:
    """Split a batch body into sub-requests, in order. ``InputError`` when malformed."""
    delimiter = b"--" + boundary_of(content_type).encode()
    pieces = body.split(delimiter)
    parts: list[BatchPart] = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):  # the close delimiter; the rest is epilogue
            break
        # Drop the remainder of the delimiter line; the line break before the next delimiter
        # belongs to that delimiter (RFC 2046 §5.1.1).
        _, _, piece = piece.partition(b"\n")
        piece = piece.removesuffix(b"\n").removesuffix(b"\r")
        parts.append(_parse_part(piece))
    if not parts:
        raise InputError("batch request has no parts")
    return parts


def _parse_part(piece: bytes) -> BatchPart:
    split = _BLANK_LINE.search(piece)
    if split is None:
        raise InputError("batch part has no blank line after its headers")
    headers = _headers(piece[: split.start()])
    if headers.get("content-type", "").split(";")[0].strip().lower() != "application/http":
        raise InputError("batch parts must have Content-Type: application/http")
    content_id = headers.get("content-id")
    if content_id is not None:
        content_id = content_id.strip().removeprefix("<").removesuffix(">")
    return BatchPart(content_id, _parse_request(piece[split.end() :]))


def _parse_request(embedded: bytes) -> SimRequest:
    embedded = embedded.lstrip(b"\r\n")
    split = _BLANK_LINE.search(embedded)
    head, body = embedded, b""
    if split is not None:
        head, body = embedded[: split.start()], embedded[split.end() :]
    request_line, _, header_block = head.partition(b"\n")
    words = request_line.decode("latin-1").strip().split()
    if len(words) not in (2, 3) or not words[0].isalpha():
        raise InputError(f"bad request line in batch part: {request_line[:80]!r}")
    method, target = words[0].upper(), words[1]
    url = urlsplit(target)
    return SimRequest(
        method=method,
        path=unquote(url.path),
        query=parse_qsl(url.query, keep_blank_values=True),
        headers=_headers(header_block),
        body=body,
    )


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").splitlines():
        if not line.strip():
            continue
        if line[0] in " \t" and headers:  # folded continuation line
            last = next(reversed(headers))
            headers[last] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise InputError(f"bad header line in batch part: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


def format_batch(answers: list[tuple[str | None, SimResponse]], boundary: str) -> bytes:
    """The multipart/mixed answer body: one ``application/http`` part per answer, in order."""
    out = bytearray()
    for content_id, response in answers:
        out += f"--{boundary}\r\nContent-Type: application/http\r\n".encode()
        if content_id is not None:
            out += f"Content-ID: <response-{content_id}>\r\n".encode()
        body = response.body()
        try:
            phrase = HTTPStatus(response.status).phrase
        except ValueError:
            phrase = "Unknown"
        out += f"\r\nHTTP/1.1 {response.status} {phrase}\r\n".encode()
        headers = dict(response.headers)
        if body:
            headers.setdefault("Content-Type", response.media_type)
        headers["Content-Length"] = str(len(body))
        for name, value in headers.items():
            out += f"{name}: {value}\r\n".encode("latin-1")
        out += b"\r\n" + body + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)
