"""IMAP realtime (IDLE) rules, pure: which folders get an IDLE connection, whether a folder moved
since the store last saw it, how a mailbox's watch reads as a push state, and the fingerprint
that tells a watcher the mailbox's sign-in changed.

The IO side (connections, the store) is ``sync/imap_idle.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from maildesk.domain.push import PushState

# The reason stamped on a mailbox's sync request when IDLE reported a change.
SYNC_REASON = "imap_idle"


@dataclass(frozen=True, slots=True)
class IdlePlan:
    """``idle``: folders that get their own IDLE connection; ``polled``: configured IDLE folders
    left over because of the connection bound, checked with STATUS on the first folder's
    connection every poll interval instead."""

    idle: tuple[str, ...]
    polled: tuple[str, ...]

    @property
    def folders(self) -> tuple[str, ...]:
        return self.idle + self.polled


def _folder_key(name: str) -> str:
    # INBOX is case-insensitive in IMAP (RFC 3501 §5.1); every other name is exact.
    return "INBOX" if name.upper() == "INBOX" else name


def plan_folders(folders: Sequence[str], max_connections: int) -> IdlePlan:
    """Split the configured IDLE folders by the per-mailbox connection bound.

    At most ``max_connections - 1`` IDLE connections, so one slot always stays for the sync run
    (and sending): a watcher must never starve the engine. The rest are polled (see
    :class:`IdlePlan`). With a bound of 1 nothing IDLEs and the mailbox is simply polled.
    """
    unique: list[str] = []
    for name in folders:
        key = _folder_key(name)
        if key and key not in unique:
            unique.append(key)
    room = max(0, max_connections - 1)
    if room == 0:
        return IdlePlan((), ())
    return IdlePlan(tuple(unique[:room]), tuple(unique[room:]))


@dataclass(frozen=True, slots=True)
class FolderSnapshot:
    """What is known of one folder: from SELECT/STATUS, or what the store last synced (``exists``
    is then the number of messages the store links to the folder). ``None``: unknown."""

    uidvalidity: int | None
    uidnext: int | None
    exists: int | None
    highest_modseq: int | None = None


def moved(stored: FolderSnapshot | None, seen: FolderSnapshot) -> str | None:
    """Why the folder needs a sync (``seen`` on the server vs ``stored``), or None.

    Mail that arrived while no IDLE ran (between the engine's last FETCH and our SELECT, or
    while reconnecting) shows here: UIDNEXT moved, the message count differs (expunges), the
    folder was recreated (UIDVALIDITY), or flags changed (HIGHESTMODSEQ, when both know it).
    """
    if stored is None or stored.uidvalidity is None or stored.uidnext is None:
        return "the folder has not been synced yet"
    if seen.uidvalidity is not None and seen.uidvalidity != stored.uidvalidity:
        return "UIDVALIDITY changed"
    if seen.uidnext is not None and seen.uidnext != stored.uidnext:
        return "UIDNEXT moved"
    if seen.exists is not None and stored.exists is not None and seen.exists != stored.exists:
        return "the message count differs"
    if (seen.highest_modseq is not None and stored.highest_modseq is not None
            and seen.highest_modseq != stored.highest_modseq):
        return "HIGHESTMODSEQ moved"
    return None


@dataclass(frozen=True, slots=True)
class Health:
    """How a mailbox's watch reads as a push subscription state (with the typed error)."""

    state: PushState
    error_kind: str | None = None
    error: str | None = None


class WatchHealth:
    """Per-folder health of one mailbox's IDLE connections, read as one state.

    ``active`` when every IDLE folder is idling; ``error`` (with the first failing folder's
    typed error) when any is failing to connect; ``pending`` while they are still starting.
    """

    def __init__(self, folders: Iterable[str]) -> None:
        self._folders: dict[str, Health] = {f: Health(PushState.PENDING) for f in folders}

    def up(self, folder: str) -> Health:
        self._folders[folder] = Health(PushState.ACTIVE)
        return self.overall()

    def down(self, folder: str, kind: str, error: str) -> Health:
        self._folders[folder] = Health(PushState.ERROR, kind, f"{folder}: {error}")
        return self.overall()

    def overall(self) -> Health:
        states = list(self._folders.values())
        for health in states:
            if health.state is PushState.ERROR:
                return health
        if states and all(h.state is PushState.ACTIVE for h in states):
            return Health(PushState.ACTIVE)
        return Health(PushState.PENDING)


def sign_in_fingerprint(
    password_enc: str | None, refresh_token_enc: str | None, imap_settings: Any
) -> str:
    """A digest of what a watcher signs in and connects with: when it changes (a new password,
    a reconnect, other servers or IDLE folders) the watcher is restarted, and a watcher stopped
    by an auth failure may try again. Only digests of the (encrypted) secrets are kept."""
    raw = json.dumps([password_enc, refresh_token_enc, imap_settings], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:32]
