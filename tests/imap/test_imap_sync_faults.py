"""Folder failures in the IMAP sync engine, against an in-memory mailbox behind the engine's port
(``ImapMailbox``): a failing folder never stops the others, its error is recorded where the
account page shows it and cleared by its next success; only when every folder fails does the
run fail; auth and connection errors end the run at once. On SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from maildesk.domain.accounts import ProviderKind
from maildesk.domain.compose import local_folder_id, local_remote_id
from maildesk.domain.mail import FolderRole, RemoteBody, RemoteFolder, RemoteMessage
from maildesk.errors import (
    CapabilityMissing,
    LoginFailed,
    MailDeskError,
    ProtocolViolation,
    ProviderRejected,
    ProviderUnavailable,
)
from maildesk.providers.imap import Changes, ImapMessage, QresyncState
from maildesk.providers.imap_fetch import make_remote_id, parse_remote_id
from maildesk.providers.imap_folders import SelectedFolder
from maildesk.providers.imap_wire import UidSet
from maildesk.store import accounts as account_store
from maildesk.store import imap_state
from maildesk.store import mail as mail_store
from maildesk.store.tables import folders
from maildesk.sync.imap import ImapSync
from tests.support.harness import Harness

from .accounts import claimed, store_state


@dataclass
class Folder:
    uidvalidity: int
    messages: dict[int, tuple[bool, bool]] = field(default_factory=dict)  # uid -> (seen, flagged)


class FakeMailbox:
    """A plain IMAP mailbox (no CONDSTORE/QRESYNC) in memory; ``fail`` makes a folder's SELECT
    (or, under ``fail_fetch``, its FETCH) raise the given error."""

    def __init__(self, folders: dict[str, int]) -> None:
        self.folders = {
            name: Folder(100 + n, {uid: (False, False) for uid in range(1, count + 1)})
            for n, (name, count) in enumerate(folders.items())
        }
        self.fail: dict[str, MailDeskError] = {}
        self.fail_fetch: dict[str, MailDeskError] = {}
        self.selected = ""
        self.dropped = False
        self.sessions = 1
        self.selects: list[str] = []

    async def reopen(self) -> FakeMailbox:
        """A new session (the same mailbox)."""
        self.dropped = False
        self.sessions += 1
        return self

    def _command(self) -> None:
        if self.dropped:
            raise ProviderUnavailable("IMAP: the connection is closed")

    @property
    def closed(self) -> bool:
        return self.dropped

    @property
    def condstore(self) -> bool:
        return False

    @property
    def qresync(self) -> bool:
        return False

    async def list_folders(self) -> list[RemoteFolder]:
        roles = {"INBOX": FolderRole.INBOX, "Sent": FolderRole.SENT}
        return [RemoteFolder(name, name, roles.get(name, FolderRole.NONE))
                for name in self.folders]

    async def select(self, folder: str, *, readonly: bool = False) -> SelectedFolder:
        self._command()
        self.selects.append(folder)
        if folder in self.fail:
            raise self.fail[folder]
        self.selected = folder
        box = self.folders[folder]
        return SelectedFolder(folder, box.uidvalidity, max(box.messages, default=0) + 1,
                              len(box.messages), None, frozenset(), frozenset(), readonly)

    async def resync(self, folder: str, since: QresyncState, *, readonly: bool = False
                     ) -> tuple[SelectedFolder, Changes]:
        raise CapabilityMissing("QRESYNC")

    async def uid_search(self, criteria: str = "ALL") -> list[int]:
        self._command()
        box = self.folders[self.selected]
        words = criteria.split()
        uids = sorted(box.messages)
        if words[0] == "UID":
            low, _, high = words[1].partition(":")
            top = max(uids, default=0) if high == "*" else int(high)
            low_n, high_n = sorted((int(low), top))
            uids = [u for u in uids if low_n <= u <= high_n]
        if "UNSEEN" in words:
            uids = [u for u in uids if not box.messages[u][0]]
        if "FLAGGED" in words:
            uids = [u for u in uids if box.messages[u][1]]
        return uids

    async def fetch_messages(self, uids: UidSet | str) -> list[ImapMessage]:
        self._command()
        if self.selected in self.fail_fetch:
            # As the real client does: an error inside a command drops the session.
            self.dropped = True
            raise self.fail_fetch[self.selected]
        box = self.folders[self.selected]
        if isinstance(uids, str):
            low = int(uids.split(":")[0])
            wanted = [u for u in box.messages if u >= low] or [max(box.messages)]
        else:
            wanted = [u for u in uids if u in box.messages]
        return [self._message(uid) for uid in sorted(wanted)]

    def _message(self, uid: int) -> ImapMessage:
        box = self.folders[self.selected]
        seen, flagged = box.messages[uid]
        remote_id = make_remote_id(self.selected, box.uidvalidity, uid)
        return ImapMessage(uid, None, frozenset(), RemoteMessage(
            remote_id=remote_id, thread_id=remote_id, folder_ids=frozenset({self.selected}),
            received_at=datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=uid),
            subject=f"{self.selected} {uid}", unread=not seen, starred=flagged,
        ))

    async def fetch_changes(self, since_modseq: int, uids: UidSet | str = "1:*") -> Changes:
        raise CapabilityMissing("CONDSTORE")

    async def fetch_body(self, remote_id: str) -> RemoteBody:
        folder, _, uid = parse_remote_id(remote_id)
        return RemoteBody(remote_id, f"body of {uid} in {folder}", "")


async def fake_account(h: Harness) -> int:
    async with h.services.db.transaction() as conn:
        return await account_store.create(
            conn, provider=ProviderKind.IMAP, email="fake@example.org", now=h.clock.now(),
            settings={"imap": {"imap": {"host": "imap.invalid", "port": 993, "security": "ssl"},
                               "username": "fake"}},
        )


async def sync(h: Harness, account_id: int, mailbox: FakeMailbox) -> None:
    async with claimed(h, account_id) as ctx:
        await ImapSync(mailbox, ctx, reopen=mailbox.reopen).run()


def folders_of(state: dict[str, tuple[str, bool, bool]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for folder, _, _ in state.values():
        counts[folder] = counts.get(folder, 0) + 1
    return counts


async def test_a_failing_folder_does_not_stop_the_others(harness: Harness) -> None:
    h = harness
    aid = await fake_account(h)
    mailbox = FakeMailbox({"INBOX": 3, "Broken": 2, "Odd": 5, "Other": 4})
    mailbox.fail["Broken"] = ProviderRejected("IMAP: SELECT 'Broken' answered NO: no access")
    mailbox.fail_fetch["Odd"] = ProtocolViolation("IMAP: ENVELOPE must be a list of 10 fields")

    await sync(h, aid, mailbox)  # no exception: two folders worked
    assert folders_of(await store_state(h.services, aid)) == {"INBOX": 3, "Other": 4}
    # Odd's failure dropped the session: Other was synced over a new one.
    assert mailbox.sessions == 2
    async with h.services.db.read() as conn:
        errors = await imap_state.folder_errors(conn, aid)
        account = await account_store.get(conn, aid)
    assert {k: e.kind for k, e in errors.items()} == {"Broken": "rejected", "Odd": "protocol"}
    assert "no access" in errors["Broken"].message
    assert errors["Odd"].at == h.clock.now()
    assert not account.initial_sync_done  # two folders have not been listed yet

    # The folder's next success clears its error; the still broken one keeps its own.
    del mailbox.fail_fetch["Odd"]
    mailbox.folders["INBOX"].messages[4] = (True, False)
    h.clock.advance(60)
    await sync(h, aid, mailbox)
    assert folders_of(await store_state(h.services, aid)) == {"INBOX": 4, "Odd": 5, "Other": 4}
    async with h.services.db.read() as conn:
        assert list(await imap_state.folder_errors(conn, aid)) == ["Broken"]

    del mailbox.fail["Broken"]
    await sync(h, aid, mailbox)
    state = await store_state(h.services, aid)
    assert folders_of(state) == {"INBOX": 4, "Broken": 2, "Odd": 5, "Other": 4}
    async with h.services.db.read() as conn:
        assert await imap_state.folder_errors(conn, aid) == {}
        account = await account_store.get(conn, aid)
    assert account.initial_sync_done
    assert account.backfill_done


async def test_when_every_folder_fails_the_run_fails_with_the_first_error(
    harness: Harness,
) -> None:
    h = harness
    aid = await fake_account(h)
    mailbox = FakeMailbox({"INBOX": 1, "Other": 1})
    mailbox.fail["INBOX"] = ProviderRejected("IMAP: SELECT 'INBOX' answered NO: locked")
    mailbox.fail["Other"] = ProtocolViolation("IMAP: SELECT answered without UIDVALIDITY")
    with pytest.raises(ProviderRejected, match=r"^folder 'INBOX': IMAP: SELECT 'INBOX'"):
        await sync(h, aid, mailbox)
    async with h.services.db.read() as conn:
        errors = await imap_state.folder_errors(conn, aid)
    assert set(errors) == {"INBOX", "Other"}
    assert await store_state(h.services, aid) == {}


@pytest.mark.parametrize("error", [
    ProviderUnavailable("IMAP: connection reset by peer"),
    LoginFailed("AUTH: the server refused the password"),
], ids=["connection", "auth"])
async def test_auth_and_connection_failures_end_the_run_and_keep_what_was_committed(
    harness: Harness, error: MailDeskError
) -> None:
    h = harness
    aid = await fake_account(h)
    mailbox = FakeMailbox({"INBOX": 3, "Other": 2, "Zeta": 2})
    mailbox.fail["Other"] = error
    with pytest.raises(type(error)):
        await sync(h, aid, mailbox)
    # INBOX went first and stays; the run stopped before Zeta; no folder is blamed.
    assert folders_of(await store_state(h.services, aid)) == {"INBOX": 3}
    async with h.services.db.read() as conn:
        assert await imap_state.folder_errors(conn, aid) == {}


async def test_a_local_stand_in_folder_is_never_selected(harness: Harness) -> None:
    """Mail sent before the first listing sits in a local stand-in Sent folder: it is not the
    server's, so the engine neither SELECTs it nor blames it, and once the server lists a Sent
    folder the local entry moves there and survives that folder's sync."""
    h = harness
    aid = await fake_account(h)
    stand_in = local_folder_id(FolderRole.SENT)
    async with h.services.db.transaction() as conn:
        fmap = await mail_store.folder_map(conn, aid)
        await mail_store.apply_messages(conn, aid, [RemoteMessage(
            remote_id=local_remote_id(1), thread_id="t", folder_ids=frozenset({stand_in}),
            received_at=h.clock.now(), subject="sent before the listing",
        )], [], fmap, h.clock.now())
        await conn.execute(folders.update().where(folders.c.remote_id == stand_in).values(
            role=FolderRole.SENT.value))
    mailbox = FakeMailbox({"INBOX": 2})
    await sync(h, aid, mailbox)
    assert mailbox.selects == ["INBOX"]
    async with h.services.db.read() as conn:
        assert await imap_state.folder_errors(conn, aid) == {}
    state = await store_state(h.services, aid)
    assert state[local_remote_id(1)][0] == stand_in  # no server Sent yet: it stays

    mailbox.folders["Sent"] = Folder(900, {1: (True, False)})
    mailbox.selects.clear()
    await sync(h, aid, mailbox)
    assert "Sent" in mailbox.selects
    assert stand_in not in mailbox.selects
    state = await store_state(h.services, aid)
    assert state[local_remote_id(1)][0] == "Sent"
    assert folders_of(state) == {"INBOX": 2, "Sent": 2}
    async with h.services.db.read() as conn:
        names = {f.remote_id for f in await mail_store.list_folders(conn, aid)}
    assert names == {"INBOX", "Sent"}
