"""Microsoft Graph wire format: pure parsers from Graph's JSON to domain types, and its errors.

No IO here: :mod:`maildesk.providers.graph` sends the requests and hands the decoded answers to
these functions. A malformed answer raises :class:`ProtocolViolation` naming the field
(``value[3].receivedDateTime``); an error answer becomes one of our exceptions through
:func:`graph_error`. Shapes are those of ``docs/microsoft-wire.md``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple

from maildesk.domain.mail import FolderRole, RemoteBody, RemoteFolder, RemoteMessage
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
from maildesk.providers.graph_types import DeltaPage, GraphProfile, GraphSubscription

__all__ = [
    "CURSOR_DEAD_CODES",
    "MESSAGE_SELECT",
    "SCOPE_DENIED_CODES",
    "WELL_KNOWN_FOLDERS",
    "FolderEntry",
    "FolderPage",
    "GraphErrorInfo",
    "format_address",
    "format_graph_datetime",
    "graph_error",
    "json_object",
    "parse_body",
    "parse_delta_page",
    "parse_error",
    "parse_folder",
    "parse_folder_page",
    "parse_graph_datetime",
    "parse_message",
    "parse_messages",
    "parse_profile",
    "parse_subscription",
    "parse_subscription_page",
    "unauthorized_error",
]

WELL_KNOWN_FOLDERS: Mapping[str, FolderRole] = {
    "inbox": FolderRole.INBOX,
    "sentitems": FolderRole.SENT,
    "drafts": FolderRole.DRAFTS,
    "deleteditems": FolderRole.TRASH,
    "junkemail": FolderRole.SPAM,
    "archive": FolderRole.ARCHIVE,
}
"""Graph's well-known folder names (``/me/mailFolders/{name}``) and the role each one has."""

MESSAGE_SELECT = (
    "id,conversationId,internetMessageId,subject,bodyPreview,isRead,flag,receivedDateTime,"
    "from,toRecipients,parentFolderId"
)
"""``$select`` for message metadata: exactly what :func:`parse_message` reads."""

# Lower-cased; Graph spells them inconsistently (syncStateNotFound / SyncStateNotFound).
CURSOR_DEAD_CODES = frozenset({"syncstatenotfound", "resyncrequired", "syncstateinvalid"})
SCOPE_DENIED_CODES = frozenset({
    "erroraccessdenied", "authorization_requestdenied", "accessdenied",
    "errorinsufficientpermissions",
})


# --- field access ------------------------------------------------------------------------------

def _violation(where: str, problem: str) -> ProtocolViolation:
    return ProtocolViolation(f"Graph answer: field '{where}' {problem}")


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _violation(where, "is not an object" if value is not None else "is missing")
    return value


def _str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise _violation(f"{where}{key}", "is missing" if value is None else "is not a string")
    return value


def _id(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = _str(obj, key, where)
    if not value:
        raise _violation(f"{where}{key}", "is empty")
    return value


def _opt_str(obj: Mapping[str, Any], key: str, where: str) -> str:
    """A string that Graph may send as null or leave out (subject, internetMessageId …)."""
    return "" if obj.get(key) is None else _str(obj, key, where)


def _opt_link(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    return _opt_str(obj, key, where) or None


def _bool(obj: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _violation(f"{where}{key}", "is not a boolean")
    return value


def _count(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key, 0)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _violation(f"{where}{key}", "is not a count")
    return value


def _list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _violation(f"{where}{key}", "is not a list")
    return value


def json_object(body: bytes, where: str) -> dict[str, Any]:
    """Parse a JSON object from bytes, or ProtocolViolation naming ``where``."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ProtocolViolation(f"Graph answer: {where} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise ProtocolViolation(f"Graph answer: {where} is not a JSON object")
    return value


# --- dates ---------------------------------------------------------------------------------------

_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))?"
)


def parse_graph_datetime(value: Any, where: str) -> datetime:
    """An ISO 8601 date-time as Graph writes it → aware UTC.

    Graph sends anywhere from 0 to 7 fractional digits (``2026-11-27T10:00:00.0000000Z``); extra
    digits beyond microseconds are dropped. A value without a zone is UTC (Graph's default).
    """
    if not isinstance(value, str):
        raise _violation(where, "is missing" if value is None else "is not a string")
    match = _DATETIME.fullmatch(value.strip())
    if match is None:
        raise _violation(where, "is not an ISO 8601 date-time")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    zone: timezone = UTC
    if sign is not None and zulu is None:
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        zone = timezone(-offset if sign == "-" else offset)
    try:
        parsed = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                          micros, tzinfo=zone)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise _violation(where, "is not a valid date-time") from exc


def format_graph_datetime(when: datetime) -> str:
    """An aware datetime as Graph expects it in requests: UTC, milliseconds, ``Z``."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("format_graph_datetime needs an aware datetime")
    utc = when.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


# --- profile and folders -------------------------------------------------------------------------

def parse_profile(data: Mapping[str, Any]) -> GraphProfile:
    """``GET /me`` → address (``mail``, else ``userPrincipalName``) and display name."""
    email = _opt_str(data, "mail", "") or _opt_str(data, "userPrincipalName", "")
    if not email:
        raise _violation("mail", "and 'userPrincipalName' are both missing")
    return GraphProfile(email=email, display_name=_opt_str(data, "displayName", ""))


class FolderEntry(NamedTuple):
    """One ``mailFolder``: the domain folder plus what the tree walk needs."""

    folder: RemoteFolder
    parent_id: str
    child_count: int
    hidden: bool


class FolderPage(NamedTuple):
    entries: list[FolderEntry]
    next_link: str | None


def parse_folder(
    data: Mapping[str, Any],
    where: str = "",
    *,
    role: FolderRole = FolderRole.NONE,
    path_prefix: str = "",
) -> FolderEntry:
    """A ``mailFolder`` object. ``path_prefix`` (``"Parent/"``) names nested folders by path,
    like Gmail's nested labels, so the tree stays readable once flattened."""
    folder_id = _id(data, "id", where)
    name = _opt_str(data, "displayName", where) or folder_id
    return FolderEntry(
        folder=RemoteFolder(
            remote_id=folder_id,
            name=path_prefix + name,
            role=role,
            system=role is not FolderRole.NONE,
        ),
        parent_id=_opt_str(data, "parentFolderId", where),
        child_count=_count(data, "childFolderCount", where),
        hidden=_bool(data, "isHidden", where, default=False),
    )


def parse_folder_page(data: Mapping[str, Any], *, path_prefix: str = "") -> FolderPage:
    """``GET /me/mailFolders`` or ``…/childFolders`` → entries (no roles yet) and nextLink."""
    entries = [
        parse_folder(_obj(item, f"value[{i}]"), f"value[{i}].", path_prefix=path_prefix)
        for i, item in enumerate(_list(data, "value", ""))
    ]
    return FolderPage(entries, _opt_link(data, "@odata.nextLink", ""))


# --- messages --------------------------------------------------------------------------------

_SPECIALS = frozenset('()<>[]:;@\\,."')


def format_address(recipient: Any, where: str) -> str:
    """``{"emailAddress": {"name", "address"}}`` → ``Name <address>`` (what ``parseaddr``
    reads back); the bare address when there is no distinct name, the name when no address."""
    if recipient is None:
        return ""
    email_address = _obj(_obj(recipient, where).get("emailAddress"), f"{where}.emailAddress")
    name = _opt_str(email_address, "name", f"{where}.emailAddress.").strip()
    address = _opt_str(email_address, "address", f"{where}.emailAddress.").strip()
    if not address:
        return name
    if not name or name.lower() == address.lower():
        return address
    if any(char in _SPECIALS for char in name):
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        name = f'"{escaped}"'
    return f"{name} <{address}>"


def parse_message(
    data: Mapping[str, Any], where: str = "", *, folder_id: str | None = None
) -> RemoteMessage:
    """A ``message`` (metadata ``$select``) → RemoteMessage.

    An Outlook message lives in exactly one folder: ``folder_id`` (the folder that was listed)
    when given, else ``parentFolderId``. Graph v1.0 has no size (0). Starred means
    ``flag.flagStatus == "flagged"``.
    """
    parent = folder_id if folder_id is not None else _id(data, "parentFolderId", where)
    flag = data.get("flag")
    flag_status = "" if flag is None else _opt_str(_obj(flag, f"{where}flag"), "flagStatus",
                                                   f"{where}flag.")
    recipients = [
        format_address(item, f"{where}toRecipients[{i}]")
        for i, item in enumerate(_list(data, "toRecipients", where))
    ]
    return RemoteMessage(
        remote_id=_id(data, "id", where),
        thread_id=_opt_str(data, "conversationId", where),
        folder_ids=frozenset({parent}),
        received_at=parse_graph_datetime(data.get("receivedDateTime"),
                                         f"{where}receivedDateTime"),
        subject=_opt_str(data, "subject", where),
        sender=format_address(data.get("from"), f"{where}from"),
        recipients=", ".join(r for r in recipients if r),
        message_id_header=_opt_str(data, "internetMessageId", where),
        snippet=_opt_str(data, "bodyPreview", where),
        size=0,
        unread=not _bool(data, "isRead", where, default=True),
        starred=flag_status.lower() == "flagged",
    )


def parse_messages(data: Mapping[str, Any], *, folder_id: str) -> list[RemoteMessage]:
    """``GET /me/mailFolders/{id}/messages`` → messages in the order Graph listed them."""
    return [
        parse_message(_obj(item, f"value[{i}]"), f"value[{i}].", folder_id=folder_id)
        for i, item in enumerate(_list(data, "value", ""))
    ]


def parse_delta_page(data: Mapping[str, Any], *, folder_id: str) -> DeltaPage:
    """One delta page → present messages, removed ids and the link to go on with.

    Items may repeat: within a page the last mention of an id wins (a message removed and then
    listed again is present, and the reverse is removed), so each id appears once in the result.
    Exactly one link is required; if Graph sent both, the round is not over and the nextLink is
    followed.
    """
    latest: dict[str, RemoteMessage | None] = {}
    for i, item in enumerate(_list(data, "value", "")):
        where = f"value[{i}]."
        entry = _obj(item, where[:-1])
        message_id = _id(entry, "id", where)
        latest.pop(message_id, None)  # re-insert so the order is that of the last mention
        if "@removed" in entry:
            _obj(entry["@removed"], f"{where}@removed")
            latest[message_id] = None
        else:
            latest[message_id] = parse_message(entry, where, folder_id=folder_id)
    next_link = _opt_link(data, "@odata.nextLink", "")
    delta_link = _opt_link(data, "@odata.deltaLink", "")
    if next_link is None and delta_link is None:
        raise _violation("@odata.nextLink", "and '@odata.deltaLink' are both missing")
    return DeltaPage(
        messages=[m for m in latest.values() if m is not None],
        removed=[mid for mid, m in latest.items() if m is None],
        next_link=next_link,
        delta_link=None if next_link is not None else delta_link,
    )


def parse_body(data: Mapping[str, Any]) -> RemoteBody:
    """``GET /me/messages/{id}?$select=body`` → RemoteBody (raw: the caller sanitizes)."""
    body = _obj(data.get("body"), "body")
    content = _opt_str(body, "content", "body.")
    content_type = _opt_str(body, "contentType", "body.").lower() or "text"
    if content_type not in {"html", "text"}:
        raise _violation("body.contentType", "is neither 'html' nor 'text'")
    return RemoteBody(
        remote_id=_id(data, "id", ""),
        text=content if content_type == "text" else "",
        html=content if content_type == "html" else "",
    )


# --- subscriptions -------------------------------------------------------------------------------

def parse_subscription(data: Mapping[str, Any], where: str = "") -> GraphSubscription:
    """A ``subscription`` object, with the expiration Graph chose (aware UTC)."""
    return GraphSubscription(
        id=_id(data, "id", where),
        resource=_opt_str(data, "resource", where),
        expiration=parse_graph_datetime(data.get("expirationDateTime"),
                                        f"{where}expirationDateTime"),
        change_type=_opt_str(data, "changeType", where),
        notification_url=_opt_str(data, "notificationUrl", where),
    )


def parse_subscription_page(
    data: Mapping[str, Any],
) -> tuple[list[GraphSubscription], str | None]:
    """``GET /subscriptions`` → subscriptions and the nextLink, if any."""
    subscriptions = [
        parse_subscription(_obj(item, f"value[{i}]"), f"value[{i}].")
        for i, item in enumerate(_list(data, "value", ""))
    ]
    return subscriptions, _opt_link(data, "@odata.nextLink", "")


# --- errors --------------------------------------------------------------------------------------

class GraphErrorInfo(NamedTuple):
    """``{"error": {"code", "message", "innerError": {"code"?}}}``; empty strings if absent."""

    code: str
    message: str
    inner_code: str


def parse_error(body: bytes) -> GraphErrorInfo:
    """Read a Graph error body tolerantly: anything else yields empty fields, never raises."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return GraphErrorInfo("", "", "")
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return GraphErrorInfo("", "", "")
    inner = error.get("innerError") or error.get("innererror")
    inner_code = inner.get("code") if isinstance(inner, dict) else None

    def text(value: Any) -> str:
        return value if isinstance(value, str) else ""

    return GraphErrorInfo(text(error.get("code")), text(error.get("message")), text(inner_code))


def graph_error(
    status: int,
    body: bytes,
    *,
    what: str,
    not_found: type[ProviderError] = MessageGone,
    gone: type[ProviderError] = CursorExpired,
    retry_after: float | None = None,
) -> ProviderError:
    """The exception for a non-success Graph answer.

    A dead sync state (``syncStateNotFound``, ``resyncRequired``, ``syncStateInvalid``, any case,
    any status) is CursorExpired; a bare 410 is ``gone``; 404 is ``not_found``. The message
    names the call, status, Graph's code and its (short) explanation, never a token.
    """
    info = parse_error(body)
    codes = {info.code.lower(), info.inner_code.lower()} - {""}
    detail = info.code or "no error code"
    if info.message:
        detail += f": {info.message[:200]}"
    described = f"{what}: Graph answered {status} ({detail})"
    if codes & CURSOR_DEAD_CODES:
        return CursorExpired(described)
    if status == 401:
        return unauthorized_error(body, what=what)
    if status == 403 and codes & SCOPE_DENIED_CODES:
        return ScopeMissing(described + ": the grant lacks a mail permission; reconnect the "
                            "mailbox and consent")
    if status == 404:
        return not_found(described)
    if status == 410:
        return gone(described)
    if status == 429:
        return RateLimited(described, retry_after=retry_after)
    if status == 408 or status >= 500:
        return ProviderUnavailable(described, retry_after=retry_after)
    if 400 <= status < 500:
        return ProviderRejected(described, status=status)
    return ProtocolViolation(described + ": unexpected status")


def unauthorized_error(body: bytes, *, what: str) -> OAuthInvalid | WrongTokenKind:
    """A 401 that a refreshed token did not cure: a token for another API (an Outlook IMAP
    token on Graph says "Invalid audience") is WrongTokenKind, anything else OAuthInvalid."""
    info = parse_error(body)
    if "audience" in info.message.lower():
        return WrongTokenKind(
            f"{what}: Graph rejected the token's audience: this Microsoft grant is for IMAP, "
            "not Graph; reconnect the mailbox for Graph"
        )
    return OAuthInvalid(
        f"{what}: Graph rejected a freshly refreshed token ({info.code or 'no error code'}); "
        "the mailbox must be reconnected"
    )
