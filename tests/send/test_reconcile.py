"""The store's side of sending (``store.mail``): a provider copy replaces the local entry with
the same Message-ID in the same transaction; provider deletions never touch local entries;
stand-in folders stay until the provider's folder of the same role takes their messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from maildesk.domain.accounts import ProviderKind
from maildesk.domain.compose import local_folder_id, local_remote_id
from maildesk.domain.events import ChangeKind
from maildesk.domain.mail import FolderRole, RemoteFolder, RemoteMessage
from maildesk.store import accounts as account_store
from maildesk.store import idle_watches
from maildesk.store import mail as mail_store
from maildesk.store.database import Database
from maildesk.store.tables import changes, folders, message_folders, messages

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
SENT = RemoteFolder("SENT", "Sent", FolderRole.SENT, system=True)
INBOX = RemoteFolder("INBOX", "Inbox", FolderRole.INBOX, system=True)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    try:
        yield database
    finally:
        await database.dispose()


async def _account(db: Database) -> int:
    async with db.transaction() as conn:
        return await account_store.create(conn, provider=ProviderKind.GMAIL,
                                          email="alice@example.com", now=NOW)


def _message(remote_id: str, header: str, folder: str = "SENT") -> RemoteMessage:
    return RemoteMessage(remote_id=remote_id, thread_id="t", folder_ids=frozenset({folder}),
                         received_at=NOW, subject="Hello", message_id_header=header)


async def _rows(db: Database, account_id: int) -> dict[str, list[str]]:
    async with db.read() as conn:
        found = (await conn.execute(
            select(messages.c.remote_id, folders.c.remote_id.label("folder"))
            .outerjoin(message_folders, message_folders.c.message_id == messages.c.id)
            .outerjoin(folders, folders.c.id == message_folders.c.folder_id)
            .where(messages.c.account_id == account_id)
        )).all()
    rows: dict[str, list[str]] = {}
    for remote_id, folder in found:
        rows.setdefault(remote_id, [])
        if folder is not None:
            rows[remote_id].append(folder)
    return rows


async def test_a_new_provider_copy_replaces_the_local_entry_in_one_transaction(
    db: Database,
) -> None:
    account_id = await _account(db)
    local = local_remote_id(1)
    async with db.transaction() as conn:
        fmap = await mail_store.upsert_folders(conn, account_id, [INBOX, SENT])
        await mail_store.apply_messages(conn, account_id, [
            _message(local, "<ours@example.com>"),
            _message(local_remote_id(2), "<other@example.com>"),
        ], [], fmap, NOW)

    async with db.transaction() as conn:
        # A provider's "everything it no longer has" includes our local entries: ignored.
        assert await mail_store.apply_messages(conn, account_id, [], [local], fmap, NOW) == []
        events = await mail_store.apply_messages(
            conn, account_id, [_message("p1", "<ours@example.com>"),
                               _message("p2", "<unrelated@example.com>", "INBOX")], [], fmap, NOW)
    kinds = {(e.remote_id, e.kind) for e in events}
    assert kinds == {("p1", ChangeKind.ADDED), ("p2", ChangeKind.ADDED),
                     (local, ChangeKind.REMOVED)}
    assert all(e.change_id for e in events)
    assert await _rows(db, account_id) == {
        "p1": ["SENT"], "p2": ["INBOX"], local_remote_id(2): ["SENT"]}
    async with db.read() as conn:
        logged = (await conn.execute(select(changes.c.remote_id, changes.c.kind).where(
            changes.c.remote_id == local))).all()
    assert [tuple(r) for r in logged] == [(local, "added"), (local, "removed")]

    # Replaying the provider state changes nothing; an update of a known message neither.
    async with db.transaction() as conn:
        assert await mail_store.apply_messages(
            conn, account_id, [_message("p1", "<ours@example.com>")], [], fmap, NOW) == []
        events = await mail_store.apply_messages(
            conn, account_id, [_message("p2", "<other@example.com>", "INBOX")], [], fmap, NOW)
    assert [(e.remote_id, e.kind) for e in events] == [("p2", ChangeKind.UPDATED)]
    assert local_remote_id(2) in await _rows(db, account_id)


async def test_stand_in_folders_stay_until_the_providers_folder_takes_their_messages(
    db: Database,
) -> None:
    account_id = await _account(db)
    stand_in = local_folder_id(FolderRole.SENT)
    async with db.transaction() as conn:
        await conn.execute(folders.insert().values(
            account_id=account_id, remote_id=stand_in, name="Sent", role="sent",
            is_system=True, selected=True, backfill_requested=False, backfill_done=True,
            backfill_fetched=0))
        fmap = await mail_store.folder_map(conn, account_id)
        await mail_store.apply_messages(
            conn, account_id, [_message(local_remote_id(1), "<a@x.example>", stand_in)], [],
            fmap, NOW)
        # A listing without a Sent folder keeps the stand-in (it is no provider's folder).
        fmap = await mail_store.upsert_folders(conn, account_id, [INBOX])
    assert stand_in in fmap
    assert await _rows(db, account_id) == {local_remote_id(1): [stand_in]}

    async with db.transaction() as conn:
        fmap = await mail_store.upsert_folders(conn, account_id, [INBOX, SENT])
    assert set(fmap) == {"INBOX", "SENT"}
    assert await _rows(db, account_id) == {local_remote_id(1): ["SENT"]}


async def test_local_entries_are_not_provider_messages_of_their_folder(db: Database) -> None:
    """Sweeps (``folder_remote_ids``, ``all_remote_ids``) and the IDLE watcher's message count
    see provider messages only: a local entry in Sent is not news from the server."""
    account_id = await _account(db)
    async with db.transaction() as conn:
        fmap = await mail_store.upsert_folders(conn, account_id, [INBOX, SENT])
        await mail_store.apply_messages(conn, account_id, [
            _message(local_remote_id(1), "<ours@example.com>"),
            _message("p1", "<theirs@example.com>"),
        ], [], fmap, NOW)
        await mail_store.record_folder_backfill(conn, fmap["SENT"], 1, done=True)
    async with db.read() as conn:
        assert await mail_store.folder_remote_ids(conn, fmap["SENT"]) == {"p1"}
        assert await mail_store.all_remote_ids(conn, account_id) == {"p1"}
        snapshot = await idle_watches.synced_snapshot(conn, account_id, "SENT")
    assert snapshot is not None
    assert snapshot.exists == 1
