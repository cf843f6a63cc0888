"""IMAP mailboxes for tests: account rows for Dovecot users, harness settings that trust Dovecot,
the store compared with the server, and a way to drive the sync engine over a recorded session."""

from __future__ import annotations

import contextlib
import imaplib
import re
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from maildesk.clock import ManualClock
from maildesk.domain.accounts import ProviderKind
from maildesk.domain.mail import RemoteBody, RemoteFolder
from maildesk.domain.mail_servers import MailServers, Security, ServerAddress
from maildesk.errors import ProviderUnavailable
from maildesk.providers.imap import Changes, ImapMessage, QresyncState
from maildesk.providers.imap_folders import SelectedFolder
from maildesk.providers.imap_wire import UidSet
from maildesk.services import Services
from maildesk.store import accounts as account_store
from maildesk.store.tables import folders, message_folders, messages
from maildesk.sync.context import SyncContext
from maildesk.sync.imap import ImapMailbox, ImapSync
from tests.support.dovecot import DovecotServer
from tests.support.harness import Harness


def dovecot_settings(dovecot: DovecotServer, **overrides: Any) -> dict[str, Any]:
    """Settings overrides for ``Harness.open`` that trust ``dovecot``'s certificate."""
    return {"tls_ca_file": str(dovecot.cert_path), "imap_timeout": 10.0,
            "imap_connect_timeout": 10.0, **overrides}


def mail_servers(dovecot: DovecotServer, user: str,
                 security: Security = Security.STARTTLS) -> MailServers:
    port = dovecot.imaps_port if security is Security.SSL else dovecot.imap_port
    return MailServers(imap=ServerAddress(dovecot.host, port, security), username=user)


async def add_imap_account(
    services: Services,
    dovecot: DovecotServer,
    user: str,
    *,
    email: str | None = None,
    password: str | None = None,
    security: Security = Security.STARTTLS,
) -> int:
    """An IMAP account row for Dovecot's ``user`` (stored as ``mailboxes`` would store it)."""
    servers = mail_servers(dovecot, user, security)
    async with services.db.transaction() as conn:
        return await account_store.create(
            conn,
            provider=ProviderKind.IMAP,
            email=email or f"{user}@example.org",
            now=services.clock.now(),
            password_enc=services.secrets.encrypt(password or dovecot.password),
            settings={"imap": servers.to_json()},
        )


# -- comparing the store with the server -----------------------------------------------------------

_UNSELECTABLE = re.compile(rb"\\No(?:select|nexistent)\b", re.IGNORECASE)
# remote id -> (folder path, unread, starred)
MailState = dict[str, tuple[str, bool, bool]]


def server_state(dovecot: DovecotServer, user: str, folders: Iterable[str] | None = None
                 ) -> MailState:
    """Every message on the server as our store should hold it, read with stdlib imaplib (not
    our client): ``"{folder}:{uidvalidity}:{uid}"`` -> (folder, unread, starred)."""
    imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=30)
    try:
        imap.login(user, dovecot.password)
        if folders is None:
            typ, listing = imap.list()
            assert typ == "OK"
            folders = [
                _list_name(line) for line in listing
                if isinstance(line, bytes) and not _UNSELECTABLE.search(line)
            ]
        state: MailState = {}
        for folder in folders:
            typ, _ = imap.select(f'"{folder}"', readonly=True)
            assert typ == "OK", folder
            validity = int(imap.response("UIDVALIDITY")[1][0] or b"0")
            typ, data = imap.uid("FETCH", "1:*", "(UID FLAGS)")
            assert typ == "OK"
            for item in data:
                if not isinstance(item, bytes):
                    continue
                match = re.search(rb"UID (\d+)", item)
                flags = re.search(rb"FLAGS \(([^)]*)\)", item)
                if match is None or flags is None:
                    continue
                names = {f.lower() for f in flags.group(1).decode().split()}
                state[f"{folder}:{validity}:{int(match.group(1))}"] = (
                    folder, "\\seen" not in names, "\\flagged" in names
                )
        return state
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            imap.logout()


def _list_name(line: bytes) -> str:
    name = line.decode().rsplit(' "/" ', 1)[1]
    return name[1:-1] if name.startswith('"') else name


async def store_state(services: Services, account_id: int) -> MailState:
    """The store's messages: remote id -> (folder path, unread, starred). A message in no folder
    or in several would show as a failure (IMAP messages sit in exactly one)."""
    async with services.db.read() as conn:
        rows = (await conn.execute(
            select(messages.c.remote_id, messages.c.unread, messages.c.starred,
                   folders.c.remote_id.label("folder"))
            .select_from(messages)
            .outerjoin(message_folders, message_folders.c.message_id == messages.c.id)
            .outerjoin(folders, folders.c.id == message_folders.c.folder_id)
            .where(messages.c.account_id == account_id)
        )).all()
    state: MailState = {}
    for r in rows:
        assert r.remote_id not in state, f"{r.remote_id} is linked to several folders"
        state[r.remote_id] = (r.folder or "", bool(r.unread), bool(r.starred))
    return state


# -- driving the engine directly -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def imap_harness(db_url: str, clock: ManualClock, data_dir: Path, dovecot: DovecotServer,
                       **overrides: Any) -> AsyncIterator[Harness]:
    """The test harness with settings that trust ``dovecot``."""
    async with Harness.open(db_url=db_url, clock=clock, data_dir=data_dir,
                            **dovecot_settings(dovecot, **overrides)) as h:
        yield h


class Recorder:
    """An :class:`ImapMailbox` in front of a real session that records what the engine asks
    (and can fail the ``fail_at``-th metadata FETCH, as a dropped connection would)."""

    def __init__(self, client: ImapMailbox, *, fail_at: int | None = None) -> None:
        self.client = client
        self.fail_at = fail_at
        self.calls: list[tuple[str, str]] = []  # (method, folder or criteria)
        self.fetched: list[tuple[str, int]] = []  # (folder, uid) of every metadata FETCH
        self.fetch_sizes: list[tuple[str, int]] = []
        self.folder = ""

    @property
    def closed(self) -> bool:
        return self.client.closed

    @property
    def condstore(self) -> bool:
        return self.client.condstore

    @property
    def qresync(self) -> bool:
        return self.client.qresync

    async def list_folders(self) -> list[RemoteFolder]:
        self.calls.append(("list_folders", ""))
        return await self.client.list_folders()

    async def select(self, folder: str, *, readonly: bool = False) -> SelectedFolder:
        self.calls.append(("select", folder))
        self.folder = folder
        return await self.client.select(folder, readonly=readonly)

    async def resync(self, folder: str, since: QresyncState, *, readonly: bool = False
                     ) -> tuple[SelectedFolder, Changes]:
        self.calls.append(("resync", folder))
        self.folder = folder
        return await self.client.resync(folder, since, readonly=readonly)

    async def uid_search(self, criteria: str = "ALL") -> list[int]:
        self.calls.append(("uid_search", criteria))
        return await self.client.uid_search(criteria)

    async def fetch_messages(self, uids: UidSet | str) -> list[ImapMessage]:
        self.calls.append(("fetch_messages", self.folder))
        if self.fail_at is not None and len(self.fetch_sizes) + 1 >= self.fail_at:
            raise ProviderUnavailable("IMAP: connection lost (injected by the test)")
        found = await self.client.fetch_messages(uids)
        self.fetch_sizes.append((self.folder, len(found)))
        self.fetched += [(self.folder, m.uid) for m in found]
        return found

    async def fetch_changes(self, since_modseq: int, uids: UidSet | str = "1:*") -> Changes:
        self.calls.append(("fetch_changes", self.folder))
        return await self.client.fetch_changes(since_modseq, uids)

    async def fetch_body(self, remote_id: str) -> RemoteBody:
        self.calls.append(("fetch_body", remote_id))
        return await self.client.fetch_body(remote_id)

    def searched(self, word: str) -> bool:
        return any(name == "uid_search" and word in arg for name, arg in self.calls)


@contextlib.asynccontextmanager
async def claimed(h: Harness, account_id: int, owner: str = "test-worker"
                  ) -> AsyncIterator[SyncContext]:
    """A sync context holding the account's lease, released when the block ends."""
    lease = timedelta(minutes=5)
    async with h.services.db.transaction() as conn:
        claim = await account_store.claim_one(conn, account_id, owner=owner,
                                              now=h.clock.now(), lease=lease)
    assert claim is not None
    ctx = SyncContext(h.services.db, h.clock, h.services.bus, account_id, owner, lease)
    try:
        yield ctx
    finally:
        async with h.services.db.transaction() as conn:
            await account_store.release(conn, claim, owner=owner, now=h.clock.now(), values={},
                                        clear_request=False)


async def run_sync(h: Harness, account_id: int, *, pages: int = 20, fail_at: int | None = None,
                   enable_sync: bool = True) -> tuple[SyncContext, Recorder]:
    """One ``ImapSync`` run over a fresh session, observed by a :class:`Recorder`. An error
    (say the injected one) propagates; the session is logged out either way."""
    async with h.services.db.read() as conn:
        account = await account_store.get(conn, account_id)
    async with (
        h.services.connectors.imap.open(account, enable_sync=enable_sync) as client,
        claimed(h, account_id) as ctx,
    ):
        recorder = Recorder(client, fail_at=fail_at)
        try:
            await ImapSync(recorder, ctx, backfill_pages=pages).run()
        except ProviderUnavailable as exc:
            exc.add_note(f"recorder: {recorder.fetch_sizes}")
            raise
        return ctx, recorder
