"""Folders, messages and their folder links: idempotent application of provider state.

``apply_messages`` makes the stored rows equal to the provider's current metadata. It compares
before it writes, so replaying a change set (a duplicated notification, a replayed history page,
a resync) writes nothing and logs no change: only real differences reach the change log and the
live bus.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.domain.compose import is_local_folder, is_local_remote_id, local_remote_id
from maildesk.domain.events import ChangeKind, MailEvent
from maildesk.domain.mail import FolderRole, RemoteFolder, RemoteMessage
from maildesk.store.tables import changes, folders, message_folders, messages

# Keep IN lists well under SQLite's 32k variable limit and PostgreSQL's 32k parameter limit.
_CHUNK = 500

_COMPARED = (
    "thread_id", "message_id_header", "subject", "sender", "recipients", "snippet", "size",
    "unread", "starred", "received_at",
)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------------- folders
@dataclass(frozen=True, slots=True)
class FolderRow:
    id: int
    account_id: int
    remote_id: str
    name: str
    role: FolderRole
    is_system: bool
    selected: bool
    backfill_requested: bool
    backfill_done: bool
    backfill_fetched: int
    # IMAP only (None elsewhere): the epoch, the top of the window we hold, the modseq synced to.
    uidvalidity: int | None = None
    uidnext: int | None = None
    highestmodseq: int | None = None


def _folder(r: Any) -> FolderRow:
    return FolderRow(
        id=int(r.id), account_id=int(r.account_id), remote_id=r.remote_id, name=r.name,
        role=FolderRole(r.role), is_system=r.is_system, selected=r.selected,
        backfill_requested=r.backfill_requested, backfill_done=r.backfill_done,
        backfill_fetched=r.backfill_fetched, uidvalidity=r.uidvalidity, uidnext=r.uidnext,
        highestmodseq=r.highestmodseq,
    )


async def list_folders(conn: AsyncConnection, account_id: int) -> list[FolderRow]:
    rows = await conn.execute(
        select(folders).where(folders.c.account_id == account_id).order_by(folders.c.id)
    )
    return [_folder(r) for r in rows]


async def folder_map(conn: AsyncConnection, account_id: int) -> dict[str, int]:
    rows = await conn.execute(
        select(folders.c.remote_id, folders.c.id).where(folders.c.account_id == account_id)
    )
    return {r.remote_id: int(r.id) for r in rows}


async def upsert_folders(
    conn: AsyncConnection, account_id: int, remote: Sequence[RemoteFolder]
) -> dict[str, int]:
    """Create new folders, rename/re-role changed ones. Folders the provider no longer has are
    removed (their links go with them; the messages stay, they may sit elsewhere).

    Stand-in folders of the local namespace (``local:folder:sent``: where a message sent before
    the first folder listing shows) are no provider's: they stay until the provider lists a
    folder of the same role, which then takes over their messages."""
    existing = {
        r.remote_id: r for r in await conn.execute(
            select(folders).where(folders.c.account_id == account_id)
        )
    }
    wanted = {f.remote_id for f in remote}
    for f in remote:
        row = existing.get(f.remote_id)
        if row is None:
            await conn.execute(insert(folders).values(
                account_id=account_id, remote_id=f.remote_id, name=f.name, role=f.role.value,
                is_system=f.system, selected=True, backfill_requested=False,
                backfill_done=False, backfill_fetched=0,
            ))
        elif (row.name, row.role, row.is_system) != (f.name, f.role.value, f.system):
            await conn.execute(update(folders).where(folders.c.id == row.id).values(
                name=f.name, role=f.role.value, is_system=f.system,
            ))
    gone = [r.id for rid, r in existing.items() if rid not in wanted and not is_local_folder(rid)]
    if gone:
        await conn.execute(delete(message_folders).where(message_folders.c.folder_id.in_(gone)))
        await conn.execute(delete(folders).where(folders.c.id.in_(gone)))
    fmap = await folder_map(conn, account_id)
    roles = {f.role.value: fmap[f.remote_id] for f in reversed(remote) if f.role.value}
    stand_ins = [(int(r.id), roles[r.role]) for rid, r in existing.items()
                 if is_local_folder(rid) and rid not in wanted and r.role in roles]
    for stand_in, target in stand_ins:
        linked = set((await conn.execute(select(message_folders.c.message_id).where(
            message_folders.c.folder_id == stand_in))).scalars())
        there = set((await conn.execute(select(message_folders.c.message_id).where(
            message_folders.c.folder_id == target,
            message_folders.c.message_id.in_(linked)))).scalars()) if linked else set()
        if linked - there:
            await conn.execute(insert(message_folders), [
                {"message_id": m, "folder_id": target} for m in sorted(linked - there)])
        await conn.execute(delete(message_folders).where(message_folders.c.folder_id == stand_in))
        await conn.execute(delete(folders).where(folders.c.id == stand_in))
    return await folder_map(conn, account_id) if stand_ins else fmap


async def _ensure_folders(
    conn: AsyncConnection, account_id: int, fmap: dict[str, int], remote_ids: set[str]
) -> None:
    """A message may carry a label created after our last label listing: add a placeholder
    (named after its id) so the link is not lost; the next label sync names it."""
    missing = sorted(remote_ids - fmap.keys())
    for rid in missing:
        result = await conn.execute(insert(folders).values(
            account_id=account_id, remote_id=rid, name=rid, role="", is_system=False,
            selected=True, backfill_requested=False, backfill_done=False, backfill_fetched=0,
        ).returning(folders.c.id))
        fmap[rid] = int(result.scalar_one())


async def record_folder_backfill(
    conn: AsyncConnection, folder_id: int, added: int, *, done: bool
) -> None:
    values: dict[str, Any] = {"backfill_fetched": folders.c.backfill_fetched + added}
    if done:
        values.update(backfill_done=True, backfill_requested=False)
    await conn.execute(update(folders).where(folders.c.id == folder_id).values(**values))


async def set_folder_selected(conn: AsyncConnection, account_id: int, folder_id: int,
                              selected: bool) -> bool:
    """Select a folder for sync, or not; False when it is not a folder of ``account_id``."""
    result = await conn.execute(update(folders).where(
        folders.c.id == folder_id, folders.c.account_id == account_id,
    ).values(selected=selected))
    return bool(result.rowcount)


async def request_folder_backfill(conn: AsyncConnection, folder_id: int) -> None:
    """"Trigger backfill": a deep historical fetch of one folder, from its newest message."""
    await conn.execute(update(folders).where(folders.c.id == folder_id).values(
        backfill_requested=True, backfill_done=False, backfill_fetched=0
    ))


# -------------------------------------------------------------------------------- messages
async def known_remote_ids(
    conn: AsyncConnection, account_id: int, remote_ids: Sequence[str]
) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(remote_ids):
        rows = await conn.execute(select(messages.c.remote_id).where(
            messages.c.account_id == account_id, messages.c.remote_id.in_(chunk)
        ))
        found.update(rows.scalars())
    return found


def provider_messages() -> Any:
    """Rows a provider knows: every message but our local Sent/Draft entries of messages being
    sent. Provider sweeps ("what we hold minus what the provider listed") start from these, so
    no engine's sweep can unlink or delete a local entry."""
    return messages.c.remote_id.not_like(local_remote_id(0)[:-1] + "%")


async def account_of_message(conn: AsyncConnection, message_id: int) -> int | None:
    """The account holding message ``message_id`` (None: no such message)."""
    found = await conn.scalar(select(messages.c.account_id).where(messages.c.id == message_id))
    return None if found is None else int(found)


async def all_remote_ids(conn: AsyncConnection, account_id: int) -> set[str]:
    """Remote ids of the account's provider messages (local entries excluded)."""
    rows = await conn.execute(
        select(messages.c.remote_id).where(messages.c.account_id == account_id,
                                           provider_messages())
    )
    return set(rows.scalars())


def _values(m: RemoteMessage) -> dict[str, Any]:
    return {
        "thread_id": m.thread_id, "message_id_header": m.message_id_header[:998],
        "subject": m.subject, "sender": m.sender, "recipients": m.recipients,
        "snippet": m.snippet, "size": m.size, "unread": m.unread, "starred": m.starred,
        "received_at": m.received_at,
    }


async def apply_messages(
    conn: AsyncConnection,
    account_id: int,
    upserts: Sequence[RemoteMessage],
    deletions: Sequence[str],
    fmap: dict[str, int],
    now: datetime,
) -> list[MailEvent]:
    """Make the store equal to the given provider state; return the real changes, logged.

    Local entries (``local:outbox:<id>``: the Sent or Draft entry of a message we send) are
    no provider's to delete, so deletions of such ids are ignored (a full resync's "everything
    not listed" includes them). A *new* provider message whose Message-ID equals a local
    entry's is that message's provider copy: the local entry is deleted in the same
    transaction, with its ``REMOVED`` event, so whichever engine syncs it exactly one copy is
    left."""
    events: list[MailEvent] = []
    # The last word on a message within one batch wins; a deletion beats an upsert.
    gone = {d for d in deletions if not is_local_remote_id(d)}
    latest = {m.remote_id: m for m in upserts if m.remote_id not in gone}
    await _ensure_folders(
        conn, account_id, fmap, {f for m in latest.values() for f in m.folder_ids}
    )
    for chunk in _chunks(list(latest.values())):
        events += await _upsert_chunk(conn, account_id, chunk, fmap, now)
    for chunk in _chunks(sorted(gone)):
        events += await _delete_chunk(conn, account_id, chunk)
    arrived = {latest[e.remote_id].message_id_header[:998] for e in events
               if e.kind is ChangeKind.ADDED and not is_local_remote_id(e.remote_id)}
    arrived.discard("")
    for chunk in _chunks(sorted(arrived)):
        events += await _replace_local_entries(conn, account_id, chunk)
    if events:
        await _log(conn, events, now)
    return events


async def _replace_local_entries(
    conn: AsyncConnection, account_id: int, message_id_headers: Sequence[str]
) -> list[MailEvent]:
    """Delete the local entries carrying one of ``message_id_headers`` (their provider copies
    just arrived). Walks ``ix_messages_account_msgid``."""
    rows = await conn.execute(select(messages.c.remote_id).where(
        messages.c.account_id == account_id,
        messages.c.message_id_header.in_(message_id_headers),
        messages.c.remote_id.like(local_remote_id(0)[:-1] + "%"),
    ))
    local = sorted(r for r in rows.scalars() if is_local_remote_id(r))
    return await _delete_chunk(conn, account_id, local) if local else []


async def _upsert_chunk(
    conn: AsyncConnection,
    account_id: int,
    chunk: Sequence[RemoteMessage],
    fmap: dict[str, int],
    now: datetime,
) -> list[MailEvent]:
    rows = (await conn.execute(select(messages).where(
        messages.c.account_id == account_id,
        messages.c.remote_id.in_([m.remote_id for m in chunk]),
    ))).all()
    existing = {r.remote_id: r for r in rows}
    links: dict[int, set[int]] = {int(r.id): set() for r in rows}
    if rows:
        for link in await conn.execute(select(message_folders).where(
            message_folders.c.message_id.in_(list(links))
        )):
            links[int(link.message_id)].add(int(link.folder_id))

    new = [m for m in chunk if m.remote_id not in existing]
    events: list[MailEvent] = []
    ids: dict[str, int] = {r.remote_id: int(r.id) for r in rows}
    if new:
        result = await conn.execute(
            # No sort_by_parameter_order: rows are matched by remote_id, and asking for order
            # makes SQLAlchemy fall back to one INSERT per row on SQLite.
            insert(messages).returning(messages.c.id, messages.c.remote_id),
            [{"account_id": account_id, "remote_id": m.remote_id, "created_at": now,
              "updated_at": now, **_values(m)} for m in new],
        )
        for r in result:
            ids[r.remote_id] = int(r.id)
            links[int(r.id)] = set()

    changed: list[dict[str, Any]] = []
    add_links: list[dict[str, int]] = []
    drop_links: list[tuple[int, int]] = []
    for m in chunk:
        mid = ids[m.remote_id]
        want = {fmap[f] for f in m.folder_ids}
        have = links[mid]
        row = existing.get(m.remote_id)
        fields_changed = row is not None and any(
            getattr(row, k) != v for k, v in _values(m).items()
        )
        if fields_changed:
            changed.append({"b_id": mid, "updated_at": now, **_values(m)})
        add_links += [{"message_id": mid, "folder_id": f} for f in sorted(want - have)]
        drop_links += [(mid, f) for f in sorted(have - want)]
        if row is None:
            events.append(MailEvent(account_id, ChangeKind.ADDED, mid, m.remote_id,
                                    tuple(sorted(want))))
        elif fields_changed or want != have:
            events.append(MailEvent(account_id, ChangeKind.UPDATED, mid, m.remote_id,
                                    tuple(sorted(want))))
    if changed:
        stmt = update(messages).where(messages.c.id == bindparam("b_id")).values(
            {k: bindparam(k) for k in (*_COMPARED, "updated_at")}
        )
        await conn.execute(stmt, changed)
    if add_links:
        await conn.execute(insert(message_folders), add_links)
    for mid, fid in drop_links:
        await conn.execute(delete(message_folders).where(
            message_folders.c.message_id == mid, message_folders.c.folder_id == fid
        ))
    return events


async def _delete_chunk(
    conn: AsyncConnection, account_id: int, chunk: Sequence[str]
) -> list[MailEvent]:
    rows = (await conn.execute(select(messages.c.id, messages.c.remote_id).where(
        messages.c.account_id == account_id, messages.c.remote_id.in_(chunk)
    ))).all()
    if not rows:
        return []
    ids = [int(r.id) for r in rows]
    were_in: dict[int, list[int]] = {i: [] for i in ids}
    for link in await conn.execute(select(message_folders).where(
        message_folders.c.message_id.in_(ids)
    )):
        were_in[int(link.message_id)].append(int(link.folder_id))
    await conn.execute(delete(message_folders).where(message_folders.c.message_id.in_(ids)))
    await conn.execute(delete(messages).where(messages.c.id.in_(ids)))
    return [
        MailEvent(account_id, ChangeKind.REMOVED, int(r.id), r.remote_id,
                  tuple(sorted(were_in[int(r.id)])))
        for r in rows
    ]


async def _log(conn: AsyncConnection, events: list[MailEvent], now: datetime) -> None:
    # A batch holds at most one event per message, so message_id maps each change id back.
    result = await conn.execute(
        insert(changes).returning(changes.c.id, changes.c.message_id),
        [{"account_id": e.account_id, "message_id": e.message_id, "remote_id": e.remote_id,
          "kind": e.kind.value, "folder_ids": ",".join(map(str, e.folder_ids)), "at": now}
         for e in events],
    )
    change_ids = {int(r.message_id): int(r.id) for r in result}
    for i, e in enumerate(events):
        events[i] = MailEvent(e.account_id, e.kind, e.message_id, e.remote_id, e.folder_ids,
                              change_ids[e.message_id])


# ------------------------------------------------------------------ single-folder providers
# Outlook (and IMAP) keep a message in exactly one folder and report "left this folder" per
# folder, so a move is an unlink in one folder plus a link in another, in either order. These
# functions let an engine unlink without deleting (the message keeps its local id and cached
# body) and delete only what is left in no folder once it knows the move cannot still arrive.
async def folder_remote_ids(conn: AsyncConnection, folder_id: int) -> set[str]:
    """Remote ids of the provider messages linked to one folder (walks
    ``ix_message_folders_folder``; local entries excluded, see ``provider_messages``)."""
    rows = await conn.execute(
        select(messages.c.remote_id)
        .select_from(message_folders.join(messages, messages.c.id == message_folders.c.message_id))
        .where(message_folders.c.folder_id == folder_id, provider_messages())
    )
    return set(rows.scalars())


async def unlink_messages(
    conn: AsyncConnection,
    account_id: int,
    folder_id: int,
    remote_ids: Iterable[str],
    now: datetime,
) -> list[MailEvent]:
    """Take the given messages out of one folder. Each message that was linked to it gets an
    ``UPDATED`` event carrying the folders it is still in (none: it is now an orphan); ids not
    linked there (unknown, already moved, a replayed removal) change nothing and log nothing."""
    events: list[MailEvent] = []
    for chunk in _chunks(sorted(set(remote_ids))):
        rows = (await conn.execute(
            select(messages.c.id, messages.c.remote_id)
            .select_from(messages.join(
                message_folders, message_folders.c.message_id == messages.c.id
            ))
            .where(
                messages.c.account_id == account_id,
                messages.c.remote_id.in_(chunk),
                message_folders.c.folder_id == folder_id,
            )
        )).all()
        if not rows:
            continue
        ids = [int(r.id) for r in rows]
        await conn.execute(delete(message_folders).where(
            message_folders.c.folder_id == folder_id, message_folders.c.message_id.in_(ids)
        ))
        still: dict[int, list[int]] = {i: [] for i in ids}
        for link in await conn.execute(select(message_folders).where(
            message_folders.c.message_id.in_(ids)
        )):
            still[int(link.message_id)].append(int(link.folder_id))
        events += [
            MailEvent(account_id, ChangeKind.UPDATED, int(r.id), r.remote_id,
                      tuple(sorted(still[int(r.id)])))
            for r in rows
        ]
    if events:
        await _log(conn, events, now)
    return events


async def delete_orphans(
    conn: AsyncConnection, account_id: int, message_ids: Iterable[int], now: datetime
) -> list[MailEvent]:
    """Delete those of ``message_ids`` that sit in no folder (their bodies go with them);
    return the ``REMOVED`` events, logged. A message linked again meanwhile is kept."""
    events: list[MailEvent] = []
    for chunk in _chunks(sorted(set(message_ids))):
        linked = select(message_folders.c.message_id).where(
            message_folders.c.message_id == messages.c.id
        ).exists()
        rows = await conn.execute(select(messages.c.remote_id).where(
            messages.c.account_id == account_id, messages.c.id.in_(chunk), ~linked
        ))
        orphans = sorted(rows.scalars())
        if orphans:
            events += await _delete_chunk(conn, account_id, orphans)
    if events:
        await _log(conn, events, now)
    return events


async def update_flags(
    conn: AsyncConnection,
    account_id: int,
    flags: dict[str, tuple[bool, bool]],
    now: datetime,
) -> list[MailEvent]:
    """Set (unread, starred) of stored messages by remote id, as an IMAP flag change reports
    them (no other metadata is known). Ids we do not store are ignored; only rows that differ
    are written and logged (``UPDATED``, with the folders each message is in)."""
    events: list[MailEvent] = []
    for chunk in _chunks(sorted(flags)):
        rows = (await conn.execute(
            select(messages.c.id, messages.c.remote_id, messages.c.unread, messages.c.starred)
            .where(messages.c.account_id == account_id, messages.c.remote_id.in_(chunk))
        )).all()
        changed = [r for r in rows if (bool(r.unread), bool(r.starred)) != flags[r.remote_id]]
        if not changed:
            continue
        await conn.execute(
            update(messages).where(messages.c.id == bindparam("b_id")).values(
                unread=bindparam("b_unread"), starred=bindparam("b_starred"),
                updated_at=bindparam("b_updated_at"),
            ),
            [{"b_id": int(r.id), "b_unread": flags[r.remote_id][0],
              "b_starred": flags[r.remote_id][1], "b_updated_at": now} for r in changed],
        )
        ids = [int(r.id) for r in changed]
        linked: dict[int, list[int]] = {i: [] for i in ids}
        for link in await conn.execute(select(message_folders).where(
            message_folders.c.message_id.in_(ids)
        )):
            linked[int(link.message_id)].append(int(link.folder_id))
        events += [
            MailEvent(account_id, ChangeKind.UPDATED, int(r.id), r.remote_id,
                      tuple(sorted(linked[int(r.id)])))
            for r in changed
        ]
    if events:
        await _log(conn, events, now)
    return events
