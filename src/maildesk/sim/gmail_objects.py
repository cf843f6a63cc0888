"""The objects a simulated Gmail mailbox holds: labels, messages, history records, the watch."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from maildesk.sim.gmail_mime import (
    MessageContent,
    attachment_token,
    b64url,
    filter_headers,
    parse_headers,
    payload_of,
)

SYSTEM_LABELS = (
    "INBOX", "SPAM", "TRASH", "UNREAD", "STARRED", "IMPORTANT", "SENT", "DRAFT", "CHAT",
    "CATEGORY_PERSONAL", "CATEGORY_SOCIAL", "CATEGORY_PROMOTIONS", "CATEGORY_UPDATES",
    "CATEGORY_FORUMS",
)  # fmt: skip
HISTORY_TYPES = ("messageAdded", "messageDeleted", "labelAdded", "labelRemoved")

Key = tuple[int, str]


@dataclass(slots=True)
class Label:
    """A Gmail label: ``system`` labels have their id as name; ``user`` ids are ``Label_N``."""

    id: str
    name: str
    type: str

    def to_json(self) -> dict[str, Any]:
        """The label as ``labels.list`` shows it."""
        data: dict[str, Any] = {"id": self.id, "name": self.name, "type": self.type}
        if self.type == "user":
            data["messageListVisibility"] = "show"
            data["labelListVisibility"] = "labelShow"
        return data


@dataclass(slots=True)
class SimMessage:
    """A stored message. Exactly one of ``content`` (built lazily) and ``raw_bytes`` is set."""

    id: str
    thread_id: str
    label_ids: set[str]
    internal_date: int
    history_id: int
    snippet: str
    size_estimate: int
    content: MessageContent | None = None
    raw_bytes: bytes | None = None

    @property
    def key(self) -> Key:
        """Sort key: listings are newest first by (internalDate, id)."""
        return (self.internal_date, self.id)

    def raw(self) -> bytes:
        """The RFC 5322 bytes."""
        if self.raw_bytes is not None:
            return self.raw_bytes
        assert self.content is not None
        return self.content.build()

    def headers(self) -> list[tuple[str, str]]:
        """Top-level headers, decoded, without building the whole message when possible."""
        if self.content is not None:
            return self.content.headers()
        return parse_headers(self.raw())

    def to_json(
        self, fmt: str, metadata_headers: Collection[str] = (), *, keys: Collection[str] = ()
    ) -> dict[str, Any]:
        """The Message resource in ``fmt`` (minimal, metadata, full, raw); ``keys`` keeps
        only those fields. Empty ``labelIds`` are left out, as Google leaves out empty lists."""
        data: dict[str, Any] = {"id": self.id, "threadId": self.thread_id}
        if self.label_ids:
            data["labelIds"] = sorted(self.label_ids)
        data["snippet"] = self.snippet
        data["sizeEstimate"] = self.size_estimate
        data["historyId"] = str(self.history_id)
        data["internalDate"] = str(self.internal_date)
        if fmt == "metadata":
            headers = self.headers()
            content_type = next((v for n, v in headers if n.lower() == "content-type"), "")
            data["payload"] = {
                "mimeType": content_type.split(";")[0].strip().lower() or "text/plain",
                "headers": filter_headers(headers, metadata_headers),
            }
        elif fmt == "full":
            data["payload"] = payload_of(self.raw(), lambda part: attachment_token(self.id, part))
        elif fmt == "raw":
            data["raw"] = b64url(self.raw())
        return {k: v for k, v in data.items() if k in keys} if keys else data


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    """One change to one message. ``label_ids`` are the message's labels right after it."""

    id: int
    message_id: str
    thread_id: str
    label_ids: tuple[str, ...]
    added: bool = False
    deleted: bool = False
    labels_added: tuple[str, ...] = ()
    labels_removed: tuple[str, ...] = ()

    def types(self) -> set[str]:
        """The ``historyTypes`` values this record answers to."""
        kinds = set()
        if self.added:
            kinds.add("messageAdded")
        if self.deleted:
            kinds.add("messageDeleted")
        if self.labels_added:
            kinds.add("labelAdded")
        if self.labels_removed:
            kinds.add("labelRemoved")
        return kinds

    def to_json(self, types: Collection[str] = HISTORY_TYPES) -> dict[str, Any]:
        """The record as ``history.list`` shows it, limited to the requested ``types``."""
        message: dict[str, Any] = {"id": self.message_id, "threadId": self.thread_id}
        if self.label_ids:
            message["labelIds"] = list(self.label_ids)
        data: dict[str, Any] = {
            "id": str(self.id),
            "messages": [{"id": self.message_id, "threadId": self.thread_id}],
        }
        if self.added and "messageAdded" in types:
            data["messagesAdded"] = [{"message": message}]
        if self.deleted and "messageDeleted" in types:
            data["messagesDeleted"] = [{"message": message}]
        if self.labels_added and "labelAdded" in types:
            data["labelsAdded"] = [{"message": message, "labelIds": list(self.labels_added)}]
        if self.labels_removed and "labelRemoved" in types:
            data["labelsRemoved"] = [{"message": message, "labelIds": list(self.labels_removed)}]
        return data


@dataclass(slots=True)
class Watch:
    """The mailbox's push watch, as ``users.watch`` set it."""

    topic_name: str
    label_ids: tuple[str, ...]
    label_filter_behavior: str
    expiration_ms: int
    history_id: int
