"""Gmail API wire format: pure functions from Gmail JSON (and batch bodies) to domain types.

No IO here, so every function is tested with recorded payloads. A missing or mistyped field the
sync engine relies on raises :class:`ProtocolViolation` naming the field's path; nothing else
(KeyError, TypeError, binascii.Error, ...) escapes. Gmail omits empty repeated fields (no
``messages`` in an empty list page, no ``history`` when nothing changed), so lists default to
empty, and 64-bit ids (``historyId``, ``internalDate``) arrive as decimal strings. The batch
format lives in :mod:`maildesk.providers.gmail_batch` and is re-exported here.
"""

from __future__ import annotations

import base64
import binascii
import email.message
import html
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from maildesk.domain.mail import FolderRole, RemoteBody, RemoteFolder, RemoteMessage
from maildesk.errors import ProtocolViolation
from maildesk.providers.encoded_words import decode_encoded_words
from maildesk.providers.gmail_batch import BatchPart, decode_batch, encode_batch

__all__ = [
    "LABEL_ROLES",
    "BatchPart",
    "GmailErrorInfo",
    "HistoryPage",
    "HistoryRecord",
    "ListPage",
    "Profile",
    "WatchResult",
    "b64url_decode",
    "decode_batch",
    "encode_batch",
    "json_object",
    "parse_error",
    "parse_history_page",
    "parse_labels",
    "parse_list_page",
    "parse_message_body",
    "parse_message_metadata",
    "parse_profile",
    "parse_sent",
    "parse_watch",
]

LABEL_ROLES: Mapping[str, FolderRole] = {
    "INBOX": FolderRole.INBOX,
    "SENT": FolderRole.SENT,
    "DRAFT": FolderRole.DRAFTS,
    "TRASH": FolderRole.TRASH,
    "SPAM": FolderRole.SPAM,
    "STARRED": FolderRole.STARRED,
    "IMPORTANT": FolderRole.IMPORTANT,
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Profile(NamedTuple):
    email: str
    history_id: int
    messages_total: int


class ListPage(NamedTuple):
    ids: list[str]
    next_page_token: str | None
    result_size_estimate: int


class WatchResult(NamedTuple):
    history_id: int
    expiration: datetime


class GmailErrorInfo(NamedTuple):
    code: int
    status: str
    reasons: list[str]


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    """One history entry; label changes are ``(message id, label ids)`` pairs."""

    id: int
    added: list[str]
    deleted: list[str]
    labels_added: list[tuple[str, list[str]]]
    labels_removed: list[tuple[str, list[str]]]


@dataclass(frozen=True, slots=True)
class HistoryPage:
    records: list[HistoryRecord]
    next_page_token: str | None
    history_id: int


# --- field access ------------------------------------------------------------------------------

def _violation(where: str, problem: str) -> ProtocolViolation:
    return ProtocolViolation(f"Gmail answer: field '{where}' {problem}")


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _violation(where, "is not an object" if value is not None else "is missing")
    return value


def _str(obj: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise _violation(f"{where}{key}", "is missing" if value is None else "is not a string")
    return value


def _opt_str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    return None if value is None or value == "" else _str(obj, key, where)


def _uint(obj: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    """A non-negative integer sent as a JSON number or (uint64 style) a decimal string."""
    value = obj.get(key, default)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _violation(f"{where}{key}", "is missing" if value is None else "is not a number")


def _list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise _violation(f"{where}{key}", "is not a list")
    return value


def _str_list(obj: Mapping[str, Any], key: str, where: str) -> list[str]:
    values = _list(obj, key, where)
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise _violation(f"{where}{key}[{index}]", "is not a string")
    return values


def _epoch_ms(obj: Mapping[str, Any], key: str, where: str) -> datetime:
    millis = _uint(obj, key, where)
    try:
        return _EPOCH + timedelta(milliseconds=millis)
    except OverflowError as exc:
        raise _violation(f"{where}{key}", "is out of range") from exc


# --- resources ---------------------------------------------------------------------------------

def parse_profile(data: Mapping[str, Any]) -> Profile:
    """``GET users/me/profile`` → (email, history id, messages total)."""
    return Profile(
        _str(data, "emailAddress", ""),
        _uint(data, "historyId", ""),
        _uint(data, "messagesTotal", "", default=0),
    )


def parse_labels(data: Mapping[str, Any]) -> list[RemoteFolder]:
    """``GET users/me/labels`` → folders; system labels get their role, user labels none."""
    folders = []
    for index, item in enumerate(_list(data, "labels", "")):
        where = f"labels[{index}]."
        label = _obj(item, where[:-1])
        label_id = _str(label, "id", where)
        folders.append(
            RemoteFolder(
                remote_id=label_id,
                name=_str(label, "name", where, default=label_id),
                role=LABEL_ROLES.get(label_id, FolderRole.NONE),
                system=_str(label, "type", where, default="user") == "system",
            )
        )
    return folders


def _headers(payload: Mapping[str, Any], where: str) -> dict[str, str]:
    """Header name (lower case) → first value, with RFC 2047 encoded words decoded."""
    found: dict[str, str] = {}
    for index, item in enumerate(_list(payload, "headers", where)):
        header = _obj(item, f"{where}headers[{index}]")
        name = _str(header, "name", f"{where}headers[{index}].").lower()
        value = _str(header, "value", f"{where}headers[{index}].", default="")
        found.setdefault(name, value)
    return found


def parse_message_metadata(data: Mapping[str, Any]) -> RemoteMessage:
    """``messages.get`` (format ``metadata`` or ``full``) → RemoteMessage.

    Every label except UNREAD is a folder id (STARRED included: it is a folder role too).
    """
    labels = _str_list(data, "labelIds", "")
    payload = data.get("payload")
    headers = _headers(_obj(payload, "payload"), "payload.") if payload is not None else {}

    def header(name: str) -> str:
        # Gmail returns header values with their RFC 2047 words undecoded.
        return decode_encoded_words(headers.get(name.lower(), ""))

    return RemoteMessage(
        remote_id=_str(data, "id", ""),
        thread_id=_str(data, "threadId", ""),
        folder_ids=frozenset(labels) - {"UNREAD"},
        received_at=_epoch_ms(data, "internalDate", ""),
        subject=header("Subject"),
        sender=header("From"),
        recipients=header("To"),
        message_id_header=header("Message-ID"),
        snippet=html.unescape(_str(data, "snippet", "", default="")),
        size=_uint(data, "sizeEstimate", "", default=0),
        unread="UNREAD" in labels,
        starred="STARRED" in labels,
    )


def b64url_decode(data: str, where: str) -> bytes:
    """Decode base64url, padded or not (Gmail sends both), or ProtocolViolation."""
    try:
        return base64.b64decode(data + "=" * (-len(data) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _violation(where, "is not valid base64url") from exc


def _part_text(part: Mapping[str, Any], headers: Mapping[str, str], where: str) -> str:
    body = _obj(part.get("body", {}), f"{where}body")
    raw = b64url_decode(_str(body, "data", f"{where}body.", default=""), f"{where}body.data")
    parsed = email.message.Message()
    parsed["Content-Type"] = headers.get("content-type", "text/plain")
    charset = parsed.get_content_charset() or "utf-8"
    try:
        return raw.decode(charset, errors="replace")
    except LookupError:  # an unknown charset name: UTF-8 is the likeliest truth
        return raw.decode("utf-8", errors="replace")


def parse_message_body(data: Mapping[str, Any]) -> RemoteBody:
    """``messages.get?format=full`` → RemoteBody with the first inline HTML and text parts.

    Attachments (a filename, an ``attachmentId`` or ``Content-Disposition: attachment``) are
    skipped; nested multiparts are walked depth first, which is display order.
    """
    text: str | None = None
    html_body: str | None = None
    root = _obj(data.get("payload"), "payload")
    stack: list[tuple[Mapping[str, Any], str]] = [(root, "payload.")]
    while stack:
        part, where = stack.pop()
        children = _list(part, "parts", where)
        stack.extend(
            (_obj(child, f"{where}parts[{i}]"), f"{where}parts[{i}].")
            for i, child in reversed(list(enumerate(children)))
        )
        mime_type = _str(part, "mimeType", where, default="").lower()
        if mime_type not in {"text/plain", "text/html"}:
            continue
        headers = _headers(part, where)
        body = _obj(part.get("body", {}), f"{where}body")
        if (
            _str(part, "filename", where, default="")
            or body.get("attachmentId")
            or headers.get("content-disposition", "").lower().startswith("attachment")
        ):
            continue
        if mime_type == "text/html" and html_body is None:
            html_body = _part_text(part, headers, where)
        elif mime_type == "text/plain" and text is None:
            text = _part_text(part, headers, where)
    return RemoteBody(remote_id=_str(data, "id", ""), text=text or "", html=html_body or "")


def parse_list_page(data: Mapping[str, Any]) -> ListPage:
    """``messages.list`` → (ids newest first, next page token, result size estimate)."""
    ids = [
        _str(_obj(item, f"messages[{i}]"), "id", f"messages[{i}].")
        for i, item in enumerate(_list(data, "messages", ""))
    ]
    return ListPage(
        ids,
        _opt_str(data, "nextPageToken", ""),
        _uint(data, "resultSizeEstimate", "", default=0),
    )


def _message_ids(record: Mapping[str, Any], key: str, where: str) -> list[str]:
    return [
        _str(_obj(_obj(item, f"{where}{key}[{i}]").get("message"), f"{where}{key}[{i}].message"),
             "id", f"{where}{key}[{i}].message.")
        for i, item in enumerate(_list(record, key, where))
    ]


def _label_changes(record: Mapping[str, Any], key: str, where: str) -> list[tuple[str, list[str]]]:
    changes = []
    for i, item in enumerate(_list(record, key, where)):
        entry = _obj(item, f"{where}{key}[{i}]")
        message = _obj(entry.get("message"), f"{where}{key}[{i}].message")
        changes.append(
            (_str(message, "id", f"{where}{key}[{i}].message."),
             _str_list(entry, "labelIds", f"{where}{key}[{i}]."))
        )
    return changes


def parse_history_page(data: Mapping[str, Any]) -> HistoryPage:
    """``history.list`` → records in the provider's (ascending) order and the page cursor."""
    records = []
    for index, item in enumerate(_list(data, "history", "")):
        where = f"history[{index}]."
        record = _obj(item, where[:-1])
        records.append(
            HistoryRecord(
                id=_uint(record, "id", where),
                added=_message_ids(record, "messagesAdded", where),
                deleted=_message_ids(record, "messagesDeleted", where),
                labels_added=_label_changes(record, "labelsAdded", where),
                labels_removed=_label_changes(record, "labelsRemoved", where),
            )
        )
    return HistoryPage(records, _opt_str(data, "nextPageToken", ""), _uint(data, "historyId", ""))


def parse_watch(data: Mapping[str, Any]) -> WatchResult:
    """``users.watch`` → (history id, expiration as UTC datetime)."""
    return WatchResult(_uint(data, "historyId", ""), _epoch_ms(data, "expiration", ""))


def parse_sent(data: Mapping[str, Any]) -> tuple[str, str]:
    """``messages.send`` → (message id, thread id)."""
    return _str(data, "id", ""), _str(data, "threadId", "")


def parse_error(data: Mapping[str, Any]) -> GmailErrorInfo:
    """``{"error": {code, status, errors[].reason, details[].reason}}`` → GmailErrorInfo."""
    error = _obj(data.get("error"), "error")
    reasons = []
    for key in ("errors", "details"):
        for i, item in enumerate(_list(error, key, "error.")):
            entry = _obj(item, f"error.{key}[{i}]")
            if entry.get("reason") is not None:
                reasons.append(_str(entry, "reason", f"error.{key}[{i}]."))
    return GmailErrorInfo(
        _uint(error, "code", "error."), _str(error, "status", "error.", default=""), reasons
    )


def json_object(body: bytes, where: str) -> dict[str, Any]:
    """Parse a JSON object from bytes (e.g. a batch part), or ProtocolViolation."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ProtocolViolation(f"Gmail answer: {where} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise ProtocolViolation(f"Gmail answer: {where} is not a JSON object")
    return value
