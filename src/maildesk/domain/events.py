"""Events published on the live bus after a change is committed."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ChangeKind(enum.StrEnum):
    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class MailEvent:
    """One message changed in the local store. ``folder_ids`` are local folder ids the message
    is in now (for ``removed``: the ones it was in), so an open folder view knows whether to
    show, update or drop it."""

    account_id: int
    kind: ChangeKind
    message_id: int
    remote_id: str
    folder_ids: tuple[int, ...]
    change_id: int = 0
