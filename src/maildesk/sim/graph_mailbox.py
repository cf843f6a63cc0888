"""One simulated Outlook mailbox: folders (well-known, custom, nested), messages and the
per-folder change sequence that delta queries read.

Every change gets the next number of a mailbox-wide sequence and is appended to the change list
of each folder it touches (a move touches both). Delta links remember a sequence number, so a
delta round is "what changed in this folder after N". Folder listings are kept sorted by
(received time, id) with ``bisect``, so a page costs O(page).
"""

from __future__ import annotations

import base64
import bisect
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from maildesk.errors import InputError, NotFound
from maildesk.sim.graph_objects import FLAG_STATUSES, ROOT, WELL_KNOWN, GraphFolder, GraphMessage

# (mailbox, change type "created"|"updated"|"deleted"|"moved", message, folder it left or None)
ChangeListener = Callable[["OutlookMailbox", str, GraphMessage, str | None], None]


@dataclass(slots=True)
class DeltaExpiry:
    """Delta tokens of a folder older than ``epoch`` are dead and answer ``status``/``code``."""

    epoch: int = 0
    status: int = 410
    code: str = "SyncStateNotFound"


class OutlookMailbox:
    """Folders, messages and change sequence of one user."""

    def __init__(
        self,
        *,
        user_id: str,
        email: str,
        display_name: str,
        rng: random.Random,
        listener: ChangeListener | None = None,
        well_known: Iterable[str] = tuple(WELL_KNOWN),
    ) -> None:
        self.user_id = user_id
        self.email = email
        self.display_name = display_name
        # What ``/me`` shows as ``mail`` (Graph leaves it null for some accounts).
        self.profile_mail: str | None = email
        self._rng = rng
        self._listener = listener
        self.folders: dict[str, GraphFolder] = {}
        self.well_known: dict[str, str] = {}
        self.messages: dict[str, GraphMessage] = {}
        self._index: dict[str, list[tuple[float, str]]] = {}
        self._changes: dict[str, list[tuple[int, str]]] = {}
        self.deleted: set[str] = set()
        self.seq = 0
        self.expiry: dict[str, DeltaExpiry] = {}
        root = GraphFolder(self._id("AQMkADAw", 40), "Top of Information Store", "", ROOT, True)
        self._store_folder(root)
        self.root_id = root.id
        for name in well_known:
            if name not in WELL_KNOWN:
                raise InputError(f"unknown well-known folder {name!r}")
            self.add_folder(WELL_KNOWN[name], well_known=name)

    def _id(self, prefix: str, size: int) -> str:
        return prefix + base64.urlsafe_b64encode(self._rng.randbytes(size)).decode()

    # -- folders ---------------------------------------------------------------------------

    def _store_folder(self, folder: GraphFolder) -> None:
        self.folders[folder.id] = folder
        self._index[folder.id] = []
        self._changes[folder.id] = []
        self.expiry[folder.id] = DeltaExpiry()
        if folder.well_known:
            self.well_known[folder.well_known] = folder.id

    def add_folder(
        self,
        name: str,
        parent: str | None = None,
        *,
        well_known: str | None = None,
        hidden: bool = False,
    ) -> GraphFolder:
        """A new folder under ``parent`` (an id or well-known name; default the top)."""
        parent_folder = self.folder(parent or ROOT)
        if any(self.folders[c].display_name == name for c in parent_folder.children):
            raise InputError(f"A folder with the specified name already exists: {name}")
        folder = GraphFolder(self._id("AAMkAGI2", 60), name, parent_folder.id, well_known, hidden)
        self._store_folder(folder)
        parent_folder.children.append(folder.id)
        return folder

    def folder(self, ref: str) -> GraphFolder:
        """The folder with id or well-known name ``ref`` (names case-insensitively)."""
        found = self.folders.get(ref)
        if found is None:
            folder_id = self.well_known.get(ref.lower())
            found = None if folder_id is None else self.folders[folder_id]
        if found is None:
            raise NotFound(f"The specified folder could not be found in the store: {ref}")
        return found

    def counts(self, folder_id: str) -> tuple[int, int]:
        """(total, unread) of a folder."""
        keys = self._index[folder_id]
        return len(keys), sum(1 for _, mid in keys if not self.messages[mid].is_read)

    def folder_json(self, folder: GraphFolder) -> dict[str, object]:
        """The folder's Graph JSON with its counts."""
        total, unread = self.counts(folder.id)
        return folder.to_json(total=total, unread=unread)

    # -- messages --------------------------------------------------------------------------

    def get(self, message_id: str) -> GraphMessage:
        """The message, or ``NotFound``."""
        try:
            return self.messages[message_id]
        except KeyError:
            raise NotFound(
                f"The specified object was not found in the store: {message_id}"
            ) from None

    def newest(self, folder_id: str, skip: int, top: int) -> tuple[list[GraphMessage], bool]:
        """Messages of a folder newest first from ``skip``; whether more follow."""
        keys = self._index[folder_id]
        end = len(keys) - skip
        start = max(0, end - top)
        page = [self.messages[mid] for _, mid in reversed(keys[start : max(0, end)])]
        return page, start > 0

    def oldest(self, folder_id: str, skip: int, top: int) -> tuple[list[GraphMessage], bool]:
        """Messages of a folder oldest first from ``skip``; whether more follow."""
        keys = self._index[folder_id]
        page = [self.messages[mid] for _, mid in keys[skip : skip + top]]
        return page, skip + top < len(keys)

    def before(
        self, folder_id: str, after_key: tuple[float, str] | None, top: int
    ) -> tuple[list[GraphMessage], bool]:
        """Up to ``top`` messages of a folder newest first, older than ``after_key``."""
        keys = self._index[folder_id]
        end = len(keys) if after_key is None else bisect.bisect_left(keys, after_key)
        start = max(0, end - top)
        return [self.messages[mid] for _, mid in reversed(keys[start:end])], start > 0

    def add(
        self,
        *,
        folder: str,
        subject: str,
        sender: tuple[str, str] | None,
        to: Iterable[tuple[str, str]],
        html: str,
        text: str,
        received_at: datetime,
        is_read: bool = False,
        flag_status: str = "notFlagged",
        is_draft: bool = False,
        internet_message_id: str | None = None,
        conversation_id: str | None = None,
    ) -> GraphMessage:
        """Create a message (change ``created``)."""
        target = self.folder(folder)
        _check_flag(flag_status)
        message_id = self._id("AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0A", 108)
        while message_id in self.messages:  # pragma: no cover - 864 random bits
            message_id = self._id("AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0A", 108)
        domain = self.email.rpartition("@")[2] or "sim.invalid"
        message = GraphMessage(
            id=message_id,
            folder_id=target.id,
            subject=subject,
            sender=sender,
            to=tuple(to),
            html=html,
            text=text,
            received_at=received_at,
            internet_message_id=internet_message_id
            or f"<{self._rng.getrandbits(64):016x}.sim@{domain}>",
            conversation_id=conversation_id or self._id("AAQkADAw", 48),
            change_key=self._change_key(),
            is_read=is_read,
            flag_status=flag_status,
            is_draft=is_draft,
            modified_at=received_at,
        )
        self.messages[message_id] = message
        bisect.insort(self._index[target.id], message.key)
        self._record("created", message, None, (target.id,))
        return message

    def update(
        self,
        message_id: str,
        *,
        is_read: bool | None = None,
        flag_status: str | None = None,
        subject: str | None = None,
        when: datetime | None = None,
    ) -> GraphMessage:
        """Change read/flag/subject (change ``updated``; a no-op records nothing)."""
        message = self.get(message_id)
        if flag_status is not None:
            _check_flag(flag_status)
        before = (message.is_read, message.flag_status, message.subject)
        if is_read is not None:
            message.is_read = is_read
        if flag_status is not None:
            message.flag_status = flag_status
        if subject is not None:
            message.subject = subject
        if (message.is_read, message.flag_status, message.subject) != before:
            message.change_key = self._change_key()
            message.modified_at = when or message.modified_at
            self._record("updated", message, None, (message.folder_id,))
        return message

    def move(self, message_id: str, folder: str, when: datetime | None = None) -> GraphMessage:
        """Move to another folder; the id stays (change ``moved``)."""
        message = self.get(message_id)
        target = self.folder(folder)
        if target.id == message.folder_id:
            return message
        old = message.folder_id
        self._unindex(message)
        message.folder_id = target.id
        message.change_key = self._change_key()
        message.modified_at = when or message.modified_at
        bisect.insort(self._index[target.id], message.key)
        self._record("moved", message, old, (old, target.id))
        return message

    def delete(self, message_id: str) -> GraphMessage:
        """Delete permanently (change ``deleted``)."""
        message = self.get(message_id)
        self._unindex(message)
        del self.messages[message_id]
        self.deleted.add(message_id)
        self._record("deleted", message, message.folder_id, (message.folder_id,))
        return message

    # -- delta support ---------------------------------------------------------------------

    def changed_since(self, folder_id: str, after: int, upto: int) -> list[str]:
        """Ids changed in the folder in sequence ``(after, upto]``, each once, in the order of
        their last change there."""
        changes = self._changes[folder_id]
        lo = bisect.bisect_right(changes, (after, "\U0010ffff"))
        hi = bisect.bisect_right(changes, (upto, "\U0010ffff"))
        last: dict[str, int] = {}
        for seq, message_id in changes[lo:hi]:
            last.pop(message_id, None)
            last[message_id] = seq
        return list(last)

    def expire_delta(
        self, folder: str | None = None, *, status: int = 410, code: str = "SyncStateNotFound"
    ) -> None:
        """Kill the delta tokens issued so far for ``folder`` (default: every folder)."""
        targets = [self.folder(folder).id] if folder else list(self.folders)
        for folder_id in targets:
            expiry = self.expiry[folder_id]
            expiry.epoch, expiry.status, expiry.code = expiry.epoch + 1, status, code

    # -- internals -------------------------------------------------------------------------

    def _change_key(self) -> str:
        return self._id("CQAAABYAAAD", 12)

    def _unindex(self, message: GraphMessage) -> None:
        keys = self._index[message.folder_id]
        position = bisect.bisect_left(keys, message.key)
        if position < len(keys) and keys[position] == message.key:
            del keys[position]

    def _record(
        self, kind: str, message: GraphMessage, left: str | None, folders: Iterable[str]
    ) -> None:
        self.seq += 1
        for folder_id in folders:
            self._changes[folder_id].append((self.seq, message.id))
        if self._listener is not None:
            self._listener(self, kind, message, left)


def _check_flag(flag_status: str) -> None:
    if flag_status not in FLAG_STATUSES:
        raise InputError(f"flagStatus must be one of {FLAG_STATUSES}")
