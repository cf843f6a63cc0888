"""One simulated Gmail mailbox: messages, labels and the history log, all in memory.

Listing and history reads cost O(page), not O(mailbox): every label has its own list of message
keys ``(internalDate, id)`` kept sorted with ``bisect`` as labels change, and the history is an
append-only list whose ids only grow, searched with ``bisect`` too.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Collection, Iterable

from maildesk.errors import InputError, NotFound
from maildesk.sim.gmail_mime import MessageContent, canonical_header, snippet_of, text_of
from maildesk.sim.gmail_objects import (
    SYSTEM_LABELS,
    HistoryRecord,
    Key,
    Label,
    SimMessage,
    Watch,
)

SPAM_TRASH = frozenset({"SPAM", "TRASH"})
MAX_HISTORY_SCAN = 1000  # records looked at per history page when filters reject most of them

# Pseudo-labels of the two unfiltered listing indexes; NUL keeps them apart from real label ids.
_ALL = "\x00all"
_VISIBLE = "\x00visible"

Listener = Callable[[str, int], None]


class Mailbox:
    """Messages, labels and history of one address. Every change appends one history record."""

    def __init__(self, email: str, rng: random.Random, listener: Listener | None = None) -> None:
        self.email = email
        self._rng = rng
        self._listener = listener
        self.labels: dict[str, Label] = {i: Label(i, i, "system") for i in SYSTEM_LABELS}
        self._next_user_label = 1
        self._messages: dict[str, SimMessage] = {}
        self._index: dict[str, list[Key]] = {_ALL: [], _VISIBLE: []}
        self._threads: dict[str, int] = {}
        self._history: list[HistoryRecord] = []
        self._history_ids: list[int] = []
        self.history_id = rng.randint(100_000, 9_999_999)
        self.min_history_id = self.history_id
        self.watch: Watch | None = None
        self._canonical_cache: dict[tuple[str, str], str] = {}

    # -- reading ---------------------------------------------------------------------------

    @property
    def messages_total(self) -> int:
        """How many messages the mailbox holds (SPAM and TRASH included)."""
        return len(self._messages)

    @property
    def threads_total(self) -> int:
        """How many distinct threads the messages belong to."""
        return len(self._threads)

    def has_thread(self, thread_id: str) -> bool:
        """Whether any message of the thread still exists."""
        return thread_id in self._threads

    def get(self, message_id: str) -> SimMessage:
        """The message, or ``NotFound``."""
        try:
            return self._messages[message_id]
        except KeyError:
            raise NotFound(f"no message {message_id} in {self.email}") from None

    def all_messages(self) -> Iterable[SimMessage]:
        """Every message, in no particular order."""
        return self._messages.values()

    def list_page(
        self,
        label_ids: Collection[str],
        *,
        include_spam_trash: bool,
        page_token: str | None,
        max_results: int,
    ) -> tuple[list[SimMessage], str | None, int]:
        """One ``messages.list`` page newest first: (messages, next page token, size estimate).

        Walks the smallest index among the requested labels, so a page costs O(page) unless the
        other filters reject most of that index.
        """
        wanted = set(label_ids)
        hide = set() if include_spam_trash or wanted & SPAM_TRASH else set(SPAM_TRASH)
        candidates = [self._index.get(label, []) for label in wanted]
        candidates.append(self._index[_ALL if include_spam_trash else _VISIBLE])
        keys = min(candidates, key=len)
        position = len(keys) - 1
        if page_token:
            position = bisect.bisect_left(keys, _parse_list_token(page_token)) - 1
        page: list[SimMessage] = []
        while position >= 0 and len(page) < max_results:
            message = self._messages[keys[position][1]]
            position -= 1
            if wanted <= message.label_ids and not (hide & message.label_ids):
                page.append(message)
        next_token = None
        if position >= 0 and page:
            next_token = f"{page[-1].internal_date}.{page[-1].id}"
        return page, next_token, len(keys)

    def history_page(
        self,
        start_history_id: int,
        *,
        types: Collection[str],
        label_id: str | None,
        page_token: str | None,
        max_results: int,
    ) -> tuple[list[HistoryRecord], str | None]:
        """Records after ``start_history_id`` (or after the page token), oldest first.

        ``NotFound`` if the start lies before the retained history. A page may come back short
        (even empty) with a next token when filters skip many records, as Google's do.
        """
        after = start_history_id
        if page_token:
            try:
                after = int(page_token)
            except ValueError:
                raise InputError("Invalid pageToken") from None
        if after < self.min_history_id:
            raise NotFound(f"startHistoryId {after} is older than the retained history")
        position = bisect.bisect_right(self._history_ids, after)
        end = min(len(self._history), position + max(MAX_HISTORY_SCAN, 10 * max_results))
        wanted = set(types)
        page: list[HistoryRecord] = []
        while position < end and len(page) < max_results:
            record = self._history[position]
            position += 1
            if wanted and not (record.types() & wanted):
                continue
            if (
                label_id is not None
                and label_id not in record.label_ids
                and (label_id not in record.labels_removed)
            ):
                continue
            page.append(record)
        if position < len(self._history):
            return page, str(self._history_ids[position - 1])
        return page, None

    # -- changing --------------------------------------------------------------------------

    def create_label(self, name: str) -> Label:
        """A new user label (or the existing one with that name)."""
        for label in self.labels.values():
            if label.name == name:
                return label
        label = Label(f"Label_{self._next_user_label}", name, "user")
        self._next_user_label += 1
        self.labels[label.id] = label
        return label

    def new_message_id(self, internal_date: int) -> str:
        """A fresh 16-hex-digit id that, like Gmail's, grows with the date."""
        while True:
            value = ((internal_date << 20) | self._rng.getrandbits(20)) & 0xFFFF_FFFF_FFFF_FFFF
            candidate = f"{value:016x}"
            if candidate not in self._messages:
                return candidate

    def add(
        self,
        *,
        subject: str,
        sender: str,
        to: str,
        text: str,
        html: str,
        labels: Iterable[str],
        internal_date: int,
        message_id_header: str | None = None,
        thread_id: str | None = None,
    ) -> SimMessage:
        """Create a message from its parts (raw bytes are built only when asked for)."""
        message_id = self.new_message_id(internal_date)
        domain = self.email.rpartition("@")[2] or "sim.invalid"
        content = MessageContent(
            sender=self._canonical("From", sender),
            to=self._canonical("To", to),
            subject=self._canonical("Subject", subject),
            text=text,
            html=html,
            date_ms=internal_date,
            message_id_header=message_id_header or f"<{message_id}.sim@{domain}>",
            boundary=f"000000000000{message_id}",
        )
        message = SimMessage(
            id=message_id,
            thread_id=thread_id or message_id,
            label_ids=set(labels),
            internal_date=internal_date,
            history_id=0,
            snippet=snippet_of(text),
            size_estimate=content.size_estimate(),
            content=content,
        )
        return self.insert(message)

    def add_raw(
        self, raw: bytes, *, labels: Iterable[str], internal_date: int, thread_id: str | None
    ) -> SimMessage:
        """Store a message given as RFC 5322 bytes (``messages.send``)."""
        message_id = self.new_message_id(internal_date)
        message = SimMessage(
            id=message_id,
            thread_id=thread_id or message_id,
            label_ids=set(labels),
            internal_date=internal_date,
            history_id=0,
            snippet=snippet_of(text_of(raw)),
            size_estimate=len(raw),
            raw_bytes=raw,
        )
        return self.insert(message)

    def insert(self, message: SimMessage) -> SimMessage:
        """Store a new message and record ``messagesAdded``."""
        self._check_labels(message.label_ids)
        if message.id in self._messages:
            raise InputError(f"message {message.id} already exists")
        self._messages[message.id] = message
        self._threads[message.thread_id] = self._threads.get(message.thread_id, 0) + 1
        self._index_add(message, message.label_ids | {_ALL})
        if not message.label_ids & SPAM_TRASH:
            self._index_add(message, {_VISIBLE})
        self._record(message, added=True)
        return message

    def delete(self, message_id: str) -> None:
        """Delete permanently and record ``messagesDeleted``."""
        message = self.get(message_id)
        self._index_remove(message, message.label_ids | {_ALL, _VISIBLE})
        del self._messages[message_id]
        left = self._threads[message.thread_id] - 1
        if left:
            self._threads[message.thread_id] = left
        else:
            del self._threads[message.thread_id]
        self._record(message, deleted=True)

    def modify(
        self, message_id: str, add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> SimMessage:
        """Add and remove labels in one history record (a no-op records nothing, as at Google)."""
        message = self.get(message_id)
        add_set, remove_set = set(add), set(remove)
        self._check_labels(add_set | remove_set)
        if add_set & remove_set:
            raise InputError("a label cannot be both added and removed")
        added = add_set - message.label_ids
        removed = remove_set & message.label_ids
        if not added and not removed:
            return message
        was_visible = not message.label_ids & SPAM_TRASH
        self._index_remove(message, removed)
        message.label_ids = (message.label_ids | added) - removed
        self._index_add(message, added)
        is_visible = not message.label_ids & SPAM_TRASH
        if was_visible and not is_visible:
            self._index_remove(message, {_VISIBLE})
        elif is_visible and not was_visible:
            self._index_add(message, {_VISIBLE})
        self._record(
            message, labels_added=tuple(sorted(added)), labels_removed=tuple(sorted(removed))
        )
        return message

    def trash(self, message_id: str) -> SimMessage:
        """Move to Bin: ``labelsAdded TRASH`` + ``labelsRemoved INBOX`` in one record."""
        return self.modify(message_id, add=["TRASH"], remove=["INBOX"])

    def untrash(self, message_id: str) -> SimMessage:
        """Take out of Bin back into the inbox."""
        return self.modify(message_id, add=["INBOX"], remove=["TRASH"])

    def expire_history(self, keep_after: int | None = None) -> int:
        """Forget history up to ``keep_after`` (default: all of it); returns the new minimum.

        A later ``history.list`` starting before the minimum answers 404.
        """
        floor = self.history_id if keep_after is None else min(keep_after, self.history_id)
        floor = max(floor, self.min_history_id)
        cut = bisect.bisect_right(self._history_ids, floor)
        del self._history[:cut]
        del self._history_ids[:cut]
        self.min_history_id = floor
        return floor

    # -- internals -------------------------------------------------------------------------

    def _canonical(self, name: str, value: str) -> str:
        # The round trip costs ~1 ms and seeded mailboxes repeat the same few correspondents.
        key = (name, value)
        found = self._canonical_cache.get(key)
        if found is None:
            if len(self._canonical_cache) >= 4096:
                self._canonical_cache.clear()
            found = self._canonical_cache[key] = canonical_header(name, value)
        return found

    def _check_labels(self, label_ids: Iterable[str]) -> None:
        for label_id in label_ids:
            if label_id not in self.labels:
                raise InputError(f"Invalid label: {label_id}")

    def _index_add(self, message: SimMessage, labels: Iterable[str]) -> None:
        for label in labels:
            bisect.insort(self._index.setdefault(label, []), message.key)

    def _index_remove(self, message: SimMessage, labels: Iterable[str]) -> None:
        key = message.key
        for label in labels:
            keys = self._index.get(label)
            if keys is None:
                continue
            position = bisect.bisect_left(keys, key)
            if position < len(keys) and keys[position] == key:
                del keys[position]

    def _record(
        self,
        message: SimMessage,
        *,
        added: bool = False,
        deleted: bool = False,
        labels_added: tuple[str, ...] = (),
        labels_removed: tuple[str, ...] = (),
    ) -> None:
        # Google's ids grow with gaps (other mailboxes' events share the counter space).
        self.history_id += self._rng.randint(1, 60)
        record = HistoryRecord(
            id=self.history_id,
            message_id=message.id,
            thread_id=message.thread_id,
            label_ids=tuple(sorted(message.label_ids)),
            added=added,
            deleted=deleted,
            labels_added=labels_added,
            labels_removed=labels_removed,
        )
        self._history.append(record)
        self._history_ids.append(record.id)
        message.history_id = record.id
        if self._listener is not None:
            self._listener(self.email, record.id)


def _parse_list_token(token: str) -> Key:
    date, _, message_id = token.partition(".")
    try:
        return (int(date), message_id)
    except ValueError:
        raise InputError("Invalid pageToken") from None
