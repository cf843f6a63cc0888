"""Outlook mail folders and messages as the simulator stores them, and their Graph JSON."""

from __future__ import annotations

import html
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parseaddr
from typing import Any

from maildesk.sim.graph_wire import graph_time

# Well-known folder names and their display names; ``msgfolderroot`` is the hidden top.
WELL_KNOWN = {
    "inbox": "Inbox",
    "sentitems": "Sent Items",
    "drafts": "Drafts",
    "deleteditems": "Deleted Items",
    "junkemail": "Junk Email",
    "archive": "Archive",
}
ROOT = "msgfolderroot"
FLAG_STATUSES = ("notFlagged", "flagged", "complete")
# What $select may name (the simulator ignores names outside this set, as Graph refuses them).
MESSAGE_FIELDS = (
    "createdDateTime",
    "lastModifiedDateTime",
    "changeKey",
    "categories",
    "receivedDateTime",
    "sentDateTime",
    "hasAttachments",
    "internetMessageId",
    "subject",
    "bodyPreview",
    "importance",
    "parentFolderId",
    "conversationId",
    "isDeliveryReceiptRequested",
    "isReadReceiptRequested",
    "isRead",
    "isDraft",
    "webLink",
    "inferenceClassification",
    "body",
    "sender",
    "from",
    "toRecipients",
    "ccRecipients",
    "bccRecipients",
    "replyTo",
    "flag",
)
_TAGS = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


@dataclass(slots=True)
class GraphFolder:
    """A mail folder. ``well_known`` is the folder's well-known name, if it has one."""

    id: str
    display_name: str
    parent_id: str
    well_known: str | None = None
    hidden: bool = False
    children: list[str] = field(default_factory=list)

    def to_json(self, *, total: int, unread: int) -> dict[str, Any]:
        """Graph's ``mailFolder`` resource."""
        return {
            "id": self.id,
            "displayName": self.display_name,
            "parentFolderId": self.parent_id,
            "childFolderCount": len(self.children),
            "unreadItemCount": unread,
            "totalItemCount": total,
            "sizeInBytes": 0,
            "isHidden": self.hidden,
        }


@dataclass(slots=True)
class GraphMessage:
    """A message. ``id`` is immutable (it survives moves, as with ``IdType="ImmutableId"``);
    ``change_key`` changes with every update."""

    id: str
    folder_id: str
    subject: str
    sender: tuple[str, str] | None  # (name, address); None for drafts
    to: tuple[tuple[str, str], ...]
    html: str
    text: str
    received_at: datetime
    internet_message_id: str
    conversation_id: str
    change_key: str
    is_read: bool = False
    flag_status: str = "notFlagged"
    is_draft: bool = False
    modified_at: datetime | None = None

    @property
    def key(self) -> tuple[float, str]:
        """The sort key of folder listings (oldest first; lists read it backwards)."""
        return (self.received_at.timestamp(), self.id)

    @property
    def etag(self) -> str:
        """The ``@odata.etag`` (a weak etag of the change key)."""
        return f'W/"{self.change_key}"'

    def preview(self) -> str:
        """``bodyPreview``: the first 255 characters of the text."""
        return _SPACE.sub(" ", self.plain_text()).strip()[:255]

    def plain_text(self) -> str:
        """The text body, or the HTML body without its tags."""
        if self.text:
            return self.text
        return html.unescape(_TAGS.sub(" ", self.html))

    def body(self, prefer: str | None) -> dict[str, str]:
        """The ``body`` resource: HTML unless ``prefer`` is ``"text"`` (or there is no HTML)."""
        if prefer == "text" or not (self.html or prefer == "html"):
            return {"contentType": "text", "content": self.plain_text()}
        content = self.html or f"<html><body><pre>{html.escape(self.text)}</pre></body></html>"
        return {"contentType": "html", "content": content}

    def to_json(
        self, select: Collection[str] | None = None, *, body_type: str | None = None
    ) -> dict[str, Any]:
        """Graph's ``message`` resource, limited to ``select`` (plus ``id`` and the etag)."""
        everything = self._fields(body_type)
        chosen = MESSAGE_FIELDS if not select else [n for n in MESSAGE_FIELDS if n in select]
        out: dict[str, Any] = {"@odata.etag": self.etag, "id": self.id}
        for name in chosen:
            if name == "from" and self.sender is None:
                continue  # drafts have no sender yet; Graph leaves the field out
            out[name] = everything[name]
        return out

    def _fields(self, body_type: str | None) -> dict[str, Any]:
        modified = graph_time(self.modified_at or self.received_at)
        sender = None if self.sender is None else _address(self.sender)
        return {
            "createdDateTime": graph_time(self.received_at),
            "lastModifiedDateTime": modified,
            "changeKey": self.change_key,
            "categories": [],
            "receivedDateTime": graph_time(self.received_at),
            "sentDateTime": graph_time(self.received_at),
            "hasAttachments": False,
            "internetMessageId": self.internet_message_id,
            "subject": self.subject,
            "bodyPreview": self.preview(),
            "importance": "normal",
            "parentFolderId": self.folder_id,
            "conversationId": self.conversation_id,
            "isDeliveryReceiptRequested": False,
            "isReadReceiptRequested": False,
            "isRead": self.is_read,
            "isDraft": self.is_draft,
            "webLink": f"https://outlook.office365.com/owa/?ItemID={self.id}&viewmodel=ReadMessageItem",
            "inferenceClassification": "focused",
            "body": self.body(body_type),
            "sender": sender,
            "from": sender,
            "toRecipients": [_address(a) for a in self.to],
            "ccRecipients": [],
            "bccRecipients": [],
            "replyTo": [],
            "flag": {"flagStatus": self.flag_status},
        }


def parse_address(text: str) -> tuple[str, str]:
    """``"Name <a@b>"`` or ``"a@b"`` → (name, address)."""
    name, address = parseaddr(text)
    return (name or address, address or text)


def recipient_of(value: Any) -> tuple[str, str] | None:
    """A Graph ``recipient`` object (``{"emailAddress": {name, address}}``) → (name, address)."""
    if not isinstance(value, dict) or not isinstance(value.get("emailAddress"), dict):
        return None
    email = value["emailAddress"]
    address = email.get("address")
    if not isinstance(address, str) or not address:
        return None
    name = email.get("name")
    return (name if isinstance(name, str) and name else address, address)


def _address(pair: tuple[str, str]) -> dict[str, dict[str, str]]:
    return {"emailAddress": {"name": pair[0], "address": pair[1]}}
