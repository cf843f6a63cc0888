"""The engine's port to an IMAP session: the part of ``ImapClient`` the sync engine uses.

Tests put an in-memory mailbox (or a recorder in front of a real session) behind it.
"""

from __future__ import annotations

from typing import Protocol

from maildesk.domain.mail import RemoteBody, RemoteFolder
from maildesk.providers.imap import Changes, ImapMessage, QresyncState
from maildesk.providers.imap_folders import SelectedFolder
from maildesk.providers.imap_wire import UidSet

__all__ = ["ImapMailbox"]


class ImapMailbox(Protocol):
    """The part of :class:`maildesk.providers.imap.ImapClient` the sync engine uses (the port;
    tests may put an in-memory mailbox behind it)."""

    @property
    def closed(self) -> bool:
        """The session is gone (an error inside a command drops it: its state is unknown)."""
        ...

    @property
    def condstore(self) -> bool: ...

    @property
    def qresync(self) -> bool: ...

    async def list_folders(self) -> list[RemoteFolder]: ...

    async def select(self, folder: str, *, readonly: bool = False) -> SelectedFolder: ...

    async def resync(
        self, folder: str, since: QresyncState, *, readonly: bool = False
    ) -> tuple[SelectedFolder, Changes]: ...

    async def uid_search(self, criteria: str = "ALL") -> list[int]: ...

    async def fetch_messages(self, uids: UidSet | str) -> list[ImapMessage]: ...

    async def fetch_changes(self, since_modseq: int, uids: UidSet | str = "1:*") -> Changes: ...

    async def fetch_body(self, remote_id: str) -> RemoteBody: ...
