"""What the IMAP sync engine keeps per folder, besides the messages themselves.

In the ``folders`` row: ``uidvalidity`` (the UID epoch our rows belong to), ``uidnext`` (the top
of the window we hold: every message below it and at or above the window's low end is stored)
and ``highestmodseq`` (CONDSTORE: changes up to it are applied). The IDLE watcher compares a
fresh SELECT's UIDNEXT against ``uidnext`` to tell new mail.

In ``cursors`` (scope = the folder's path), each written in the transaction that applied what
it stands for:

- ``imap_low``: the low end of the held window (``1``: nothing older is left to backfill);
- ``imap_deep``: where a requested deep fetch ("Trigger backfill") continues downwards;
- ``imap_epochs``: when we refetched the folder after a UIDVALIDITY change (the loop guard);
- ``imap_error``: the folder's last failure (kind, message, time), cleared by its next success,
  for the account page.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.store import cursors
from maildesk.store.tables import folders, message_folders, messages

LOW = "imap_low"
DEEP = "imap_deep"
EPOCHS = "imap_epochs"
ERROR = "imap_error"
FOLDER_CURSORS = frozenset({LOW, DEEP, EPOCHS, ERROR})

_CHUNK = 500


@dataclass(frozen=True, slots=True)
class FolderError:
    """A folder's last sync failure, as the account page shows it."""

    kind: str
    message: str
    at: datetime

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "message": self.message,
                           "at": self.at.isoformat()})

    @classmethod
    def from_json(cls, raw: str) -> FolderError:
        data: dict[str, Any] = json.loads(raw)
        return cls(str(data["kind"]), str(data["message"]), datetime.fromisoformat(data["at"]))


async def set_folder_sync(
    conn: AsyncConnection,
    folder_id: int,
    *,
    uidvalidity: int | None,
    uidnext: int | None,
    highestmodseq: int | None,
) -> None:
    await conn.execute(update(folders).where(folders.c.id == folder_id).values(
        uidvalidity=uidvalidity, uidnext=uidnext, highestmodseq=highestmodseq,
    ))


async def record_progress(
    conn: AsyncConnection, folder_id: int, added: int, *, done: bool | None = None
) -> None:
    """Count messages a folder's listing added; ``done`` sets whether nothing older is left.
    Unlike ``mail.record_folder_backfill`` this never touches an operator's backfill request."""
    values: dict[str, Any] = {}
    if added:
        values["backfill_fetched"] = folders.c.backfill_fetched + added
    if done is not None:
        values["backfill_done"] = done
    if values:
        await conn.execute(update(folders).where(folders.c.id == folder_id).values(**values))


async def held_flags(conn: AsyncConnection, folder_id: int) -> dict[str, tuple[bool, bool]]:
    """remote id → (unread, starred) of every message linked to the folder."""
    rows = await conn.execute(
        select(messages.c.remote_id, messages.c.unread, messages.c.starred)
        .select_from(message_folders.join(messages, messages.c.id == message_folders.c.message_id))
        .where(message_folders.c.folder_id == folder_id)
    )
    return {r.remote_id: (bool(r.unread), bool(r.starred)) for r in rows}


async def linked_message_ids(conn: AsyncConnection, folder_ids: Sequence[int]) -> list[int]:
    """Local ids of the messages linked to any of ``folder_ids``."""
    found: list[int] = []
    for start in range(0, len(folder_ids), _CHUNK):
        rows = await conn.execute(select(message_folders.c.message_id).where(
            message_folders.c.folder_id.in_(folder_ids[start:start + _CHUNK])
        ))
        found += [int(i) for i in rows.scalars()]
    return found


async def drop_folder_cursors(
    conn: AsyncConnection, account_id: int, scope: str, names: Iterable[str] = FOLDER_CURSORS
) -> None:
    for name in names:
        await cursors.drop(conn, account_id, name, scope=scope)


async def folder_errors(conn: AsyncConnection, account_id: int) -> dict[str, FolderError]:
    """folder path → its last failure, for folders whose last sync failed."""
    stored = await cursors.get_named(conn, account_id, frozenset({ERROR}))
    return {scope: FolderError.from_json(value) for (scope, _), value in stored.items()}


async def put_folder_error(
    conn: AsyncConnection, account_id: int, scope: str, error: FolderError
) -> None:
    await cursors.put(conn, account_id, ERROR, error.to_json(), error.at, scope=scope)
