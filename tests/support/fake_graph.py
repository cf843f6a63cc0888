"""An in-memory Microsoft Graph mailbox implementing ``GraphApi`` for fast sync tests.

It models what the Outlook engine relies on: a folder tree, messages that each sit in exactly
one folder, and per-folder delta rounds. A round from scratch lists the folder as it is when the
round starts (newest first) and ends with a deltaLink remembering that moment; a round from a
deltaLink reports every message that changed in, entered or left the folder since — present
ones with their current state, the others as ``@removed``. Changes made while a round is being
paged are reported by the next round (or also by a later page: items can repeat). Links are
opaque strings; every link of a folder dies when ``expire(folder)`` is called (410 →
``CursorExpired``). Faults are injected per method and folder; ``echo`` makes every page repeat
its own items and the previous page's (duplicated delta items).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from maildesk.domain.mail import FolderRole, RemoteBody, RemoteFolder, RemoteMessage
from maildesk.errors import CursorExpired, MessageGone, ProviderRejected
from maildesk.providers.graph_types import DeltaPage, GraphProfile, GraphSubscription

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class FakeMessage:
    id: str
    folder: str
    received_at: datetime
    subject: str
    sender: str = "someone@example.com"
    unread: bool = True
    starred: bool = False

    def remote(self) -> RemoteMessage:
        return RemoteMessage(
            remote_id=self.id, thread_id=f"conv-{self.id}", folder_ids=frozenset({self.folder}),
            received_at=self.received_at, subject=self.subject, sender=self.sender,
            snippet=self.subject[:20], unread=self.unread, starred=self.starred,
        )


@dataclass(slots=True)
class _Round:
    folder: str
    generation: int
    items: list[tuple[str, bool]]  # (message id, reported present?)
    end_seq: int
    served: int = 0
    last_page: list[tuple[str, bool]] = field(default_factory=list)


@dataclass(slots=True)
class Fault:
    method: str
    folder: str | None
    error: Exception
    skip: int = 0
    count: int = 1


class FakeGraph:
    """One mailbox. Mutate it with the helpers; sync against it through the ``GraphApi``."""

    def __init__(self, email: str = "olive@example.com") -> None:
        self.email = email
        self.folders_by_id: dict[str, RemoteFolder] = {}
        self.messages: dict[str, FakeMessage] = {}
        self.seq = 0
        # (seq, folder, message id): the message changed in, entered or left the folder.
        self.log: list[tuple[int, str, str]] = []
        self.generation: dict[str, int] = {}
        self.rounds: dict[str, _Round] = {}
        self.calls: list[tuple[str, str | None, str | None]] = []
        self.faults: list[Fault] = []
        self.hooks: list[tuple[str, str | None, Callable[[], None]]] = []
        self.echo = False
        self._ids = itertools.count(1)
        for rid, name, role in (
            ("inbox-id", "Inbox", FolderRole.INBOX), ("sent-id", "Sent Items", FolderRole.SENT),
            ("archive-id", "Archive", FolderRole.ARCHIVE),
            ("trash-id", "Deleted Items", FolderRole.TRASH),
        ):
            self.add_folder(name, role, remote_id=rid)

    # ------------------------------------------------------------------ mailbox changes
    def add_folder(self, name: str, role: FolderRole = FolderRole.NONE,
                   *, remote_id: str | None = None) -> str:
        rid = remote_id or f"folder-{next(self._ids)}"
        self.folders_by_id[rid] = RemoteFolder(rid, name, role, role is not FolderRole.NONE)
        self.generation[rid] = 0
        return rid

    def rename_folder(self, folder: str, name: str) -> None:
        old = self.folders_by_id[folder]
        self.folders_by_id[folder] = RemoteFolder(folder, name, old.role, old.system)

    def remove_folder(self, folder: str) -> None:
        """A hard-deleted folder: it and its messages are gone."""
        for m in [m for m in self.messages.values() if m.folder == folder]:
            self.delete(m.id)
        del self.folders_by_id[folder]

    def add(self, folder: str, subject: str = "", *, minutes: int | None = None) -> str:
        """A new message in ``folder``; ``minutes`` after the epoch (default: newest)."""
        n = next(self._ids)
        mid = f"AAMkAD{n:08d}"
        when = _EPOCH + timedelta(minutes=n if minutes is None else minutes)
        self.messages[mid] = FakeMessage(mid, folder, when, subject or f"message {n}")
        self._touch(folder, mid)
        return mid

    def seed(self, folder: str, count: int) -> list[str]:
        return [self.add(folder) for _ in range(count)]

    def update(self, mid: str, *, unread: bool | None = None, starred: bool | None = None,
               subject: str | None = None) -> None:
        m = self.messages[mid]
        if unread is not None:
            m.unread = unread
        if starred is not None:
            m.starred = starred
        if subject is not None:
            m.subject = subject
        self._touch(m.folder, mid)

    def move(self, mid: str, folder: str) -> None:
        m = self.messages[mid]
        old, m.folder = m.folder, folder
        self._touch(old, mid)
        self._touch(folder, mid)

    def delete(self, mid: str) -> None:
        m = self.messages.pop(mid)
        self._touch(m.folder, mid)

    def expire(self, folder: str) -> None:
        """Every delta/next link of ``folder`` is now dead (410 syncStateNotFound)."""
        self.generation[folder] += 1

    def fail(self, method: str, error: Exception, *, folder: str | None = None,
             skip: int = 0, count: int = 1) -> None:
        """Raise ``error`` on ``count`` matching calls, after letting ``skip`` of them pass."""
        self.faults.append(Fault(method, folder, error, skip, count))

    def before(self, method: str, action: Callable[[], None], *, folder: str | None = None
               ) -> None:
        """Run ``action`` (a mailbox change) once, just before the next matching call."""
        self.hooks.append((method, folder, action))

    def state(self) -> dict[str, list[str]]:
        """remote id -> [folder id], as the provider has it now (the shape of store_state)."""
        return {m.id: [m.folder] for m in self.messages.values()}

    def delta_calls(self, folder: str | None = None) -> list[str | None]:
        return [link for method, f, link in self.calls
                if method == "delta" and (folder is None or f == folder)]

    def _touch(self, folder: str, mid: str) -> None:
        self.seq += 1
        self.log.append((self.seq, folder, mid))

    def _check(self, method: str, folder: str | None, link: str | None = None) -> None:
        self.calls.append((method, folder, link))
        for hook in list(self.hooks):
            if hook[0] == method and hook[1] in (None, folder):
                self.hooks.remove(hook)
                hook[2]()
        for fault in self.faults:
            if fault.method != method or fault.folder not in (None, folder) or fault.count <= 0:
                continue
            if fault.skip > 0:
                fault.skip -= 1
                continue
            fault.count -= 1
            raise fault.error

    def _newest_first(self, folder: str) -> list[FakeMessage]:
        return sorted((m for m in self.messages.values() if m.folder == folder),
                      key=lambda m: (m.received_at, m.id), reverse=True)

    # ------------------------------------------------------------------ GraphApi
    async def profile(self) -> GraphProfile:
        self._check("profile", None)
        return GraphProfile(self.email, "Olive")

    async def folders(self) -> list[RemoteFolder]:
        self._check("folders", None)
        return list(self.folders_by_id.values())

    async def newest(self, folder_id: str, count: int) -> list[RemoteMessage]:
        self._check("newest", folder_id)
        if folder_id not in self.folders_by_id:
            raise MessageGone(f"folder {folder_id} not found")
        return [m.remote() for m in self._newest_first(folder_id)[:count]]

    async def delta(self, folder_id: str, link: str | None, *, page_size: int) -> DeltaPage:
        self._check("delta", folder_id, link)
        if folder_id not in self.folders_by_id:
            raise MessageGone(f"folder {folder_id} not found")
        gen = self.generation[folder_id]
        if link is None:
            items = [(m.id, True) for m in self._newest_first(folder_id)]
            rnd = _Round(folder_id, gen, items, self.seq)
            token = f"next:{len(self.rounds)}"
            self.rounds[token] = rnd
        elif link.startswith("delta:"):
            _, folder, lgen, lseq = link.split(":")
            if folder != folder_id:
                raise ProviderRejected("link of another folder", status=400)
            if int(lgen) != gen:
                raise CursorExpired("410 syncStateNotFound")
            latest: dict[str, int] = {}
            for seq, f, mid in self.log:
                if f == folder_id and seq > int(lseq):
                    latest[mid] = seq
            ordered = sorted(latest, key=latest.__getitem__)
            items = [(mid, mid in self.messages and self.messages[mid].folder == folder_id)
                     for mid in ordered]
            rnd = _Round(folder_id, gen, items, self.seq)
            token = f"next:{len(self.rounds)}"
            self.rounds[token] = rnd
        else:
            token = link
            found = self.rounds.get(link)
            if found is None or found.folder != folder_id:
                raise ProviderRejected("unknown link", status=400)
            rnd = found
            if rnd.generation != gen:
                raise CursorExpired("410 syncStateNotFound")
        page = rnd.items[rnd.served:rnd.served + page_size]
        served_to = rnd.served + len(page)
        listed = page + (rnd.last_page + page if self.echo else [])
        messages: list[RemoteMessage] = []
        removed: list[str] = []
        for mid, present in listed:
            if present:
                m = self.messages.get(mid)
                # A listed message that moved or vanished since is reported by the next round.
                if m is not None and m.folder == folder_id:
                    messages.append(m.remote())
            else:
                removed.append(mid)
        # Serving a page does not move the round: a repeated link serves the same page.
        if served_to < len(rnd.items):
            nxt = f"next:{len(self.rounds)}"
            self.rounds[nxt] = _Round(rnd.folder, rnd.generation, rnd.items, rnd.end_seq,
                                      served_to, page)
            return DeltaPage(messages, removed, next_link=nxt)
        return DeltaPage(messages, removed,
                         delta_link=f"delta:{folder_id}:{rnd.generation}:{rnd.end_seq}")

    async def get_body(self, remote_id: str) -> RemoteBody:
        self._check("get_body", None)
        m = self.messages.get(remote_id)
        if m is None:
            raise MessageGone(f"message {remote_id} not found")
        return RemoteBody(remote_id, f"text of {m.subject}", f"<p>{m.subject}</p>")

    async def send_mime(self, message: bytes) -> None:
        raise NotImplementedError("sending is not modelled by the sync fake")

    async def create_subscription(
        self, *, resource: str, change_type: str, notification_url: str, lifecycle_url: str,
        expiration: datetime, client_state: str,
    ) -> GraphSubscription:
        raise NotImplementedError("subscriptions are not modelled by the sync fake")

    async def list_subscriptions(self) -> list[GraphSubscription]:
        return []

    async def renew_subscription(self, subscription_id: str, expiration: datetime
                                 ) -> GraphSubscription:
        raise NotImplementedError("subscriptions are not modelled by the sync fake")

    async def reauthorize_subscription(self, subscription_id: str) -> None:
        raise NotImplementedError("subscriptions are not modelled by the sync fake")

    async def delete_subscription(self, subscription_id: str) -> None:
        raise NotImplementedError("subscriptions are not modelled by the sync fake")
