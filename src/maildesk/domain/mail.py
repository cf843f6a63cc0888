"""Provider-neutral mail types: what a provider client hands the sync engine."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class FolderRole(enum.StrEnum):
    INBOX = "inbox"
    SENT = "sent"
    DRAFTS = "drafts"
    TRASH = "trash"
    SPAM = "spam"
    ARCHIVE = "archive"
    ALL = "all"
    STARRED = "starred"
    IMPORTANT = "important"
    NONE = ""


@dataclass(frozen=True, slots=True)
class RemoteFolder:
    """A folder (IMAP, Graph) or label (Gmail) as the provider names it."""

    remote_id: str
    name: str
    role: FolderRole = FolderRole.NONE
    system: bool = False


@dataclass(frozen=True, slots=True)
class RemoteMessage:
    """Metadata of one message as it is now at the provider.

    ``folder_ids`` are the remote ids of every folder/label the message sits in: the sync engine
    makes the local links equal to this set, which is what makes re-applying a change harmless.
    """

    remote_id: str
    thread_id: str
    folder_ids: frozenset[str]
    received_at: datetime
    subject: str = ""
    sender: str = ""
    recipients: str = ""
    message_id_header: str = ""
    snippet: str = ""
    size: int = 0
    unread: bool = False
    starred: bool = False


@dataclass(frozen=True, slots=True)
class RemoteBody:
    """A message body as fetched. ``html`` is raw provider HTML: sanitize before storing."""

    remote_id: str
    text: str
    html: str
