"""IMAP realtime against a real Dovecot (``sync/imap_idle.py``).

IDLE requests a sync for new mail (no poll involved), reconnects after the server drops it or
the connection dies silently, loses no mail between SELECT and IDLE nor while disconnected,
coalesces bursts, stays within the per-mailbox connection bound, stops on a refused password
until it changes, follows the accounts table, and stays off when IDLE is off.

Every test runs on SQLite and PostgreSQL (``db_url``). The manual clock never moves, and polls
are a day apart, so a sync request can only come from the watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from maildesk.clock import ManualClock
from maildesk.domain.accounts import AccountState, ProviderKind
from maildesk.domain.idle import SYNC_REASON
from maildesk.domain.mail_servers import MailServers, Security, ServerAddress
from maildesk.domain.push import PushState
from maildesk.store import accounts as account_store
from maildesk.store import push as push_store
from maildesk.store.accounts import AccountRow
from maildesk.store.push import SubscriptionRow
from maildesk.store.tables import accounts
from maildesk.sync.imap_idle import IdleSupervisor, WatchStats
from tests.imap.accounts import dovecot_settings, mail_servers, server_state, store_state
from tests.support.dovecot import DovecotServer, make_message
from tests.support.harness import Harness

DAY = 86400.0


@contextlib.asynccontextmanager
async def open_harness(db_url: str, clock: ManualClock, tmp_path: Path, dovecot: DovecotServer,
                       **overrides: Any) -> AsyncIterator[Harness]:
    settings = dovecot_settings(dovecot, **{"poll_interval": DAY, "safety_poll_interval": DAY,
                                            **overrides})
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path, **settings) as h:
        yield h


@pytest.fixture
async def harness(db_url: str, clock: ManualClock, tmp_path: Path,
                  dovecot_full: DovecotServer) -> AsyncIterator[Harness]:
    async with open_harness(db_url, clock, tmp_path, dovecot_full) as h:
        yield h


async def add_account(h: Harness, servers: MailServers, password: str) -> int:
    async with h.services.db.transaction() as conn:
        return await account_store.create(
            conn, provider=ProviderKind.IMAP, email=f"{servers.username}@example.org",
            now=h.clock.now(), password_enc=h.services.secrets.encrypt(password),
            settings={"imap": servers.to_json()})


async def add_user(h: Harness, dovecot: DovecotServer, *, password: str | None = None,
                   **fields: Any) -> tuple[str, int]:
    user = dovecot.new_user()
    servers = dataclasses.replace(mail_servers(dovecot, user), **fields)
    return user, await add_account(h, servers, password or dovecot.password)


def supervisor(h: Harness, **kwargs: Any) -> IdleSupervisor:
    s = h.services
    return IdleSupervisor(db=s.db, clock=s.clock, settings=s.settings,
                          sessions=s.connectors.imap, wake=s.worker.wake,
                          **{"owner": "idle-test", "rescan": 0.2, **kwargs})


@contextlib.asynccontextmanager
async def running(sup: IdleSupervisor) -> AsyncIterator[IdleSupervisor]:
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        group.create_task(sup.serve(stop))
        try:
            yield sup
        finally:
            stop.set()


async def eventually(check: Callable[[], Awaitable[bool]], what: str,
                     within: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def account(h: Harness, account_id: int) -> AccountRow:
    async with h.services.db.read() as conn:
        return await account_store.get(conn, account_id)


async def idle_row(h: Harness, account_id: int) -> SubscriptionRow | None:
    async with h.services.db.read() as conn:
        return await push_store.get(conn, account_id, ProviderKind.IMAP)


def active(h: Harness, account_id: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        row = await idle_row(h, account_id)
        return row is not None and row.sub.state is PushState.ACTIVE
    return check


def requested(h: Harness, account_id: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await account(h, account_id)).sync_requested_at is not None
    return check


async def append(dovecot: DovecotServer, user: str, count: int = 1, *, start: int = 0,
                 folder: str = "INBOX") -> None:
    """APPEND from the test side's own connection (one login, ``count`` APPENDs)."""
    def work() -> None:
        with dovecot.admin(user) as admin:
            admin.append(folder, [make_message(start + i) for i in range(count)])
    await asyncio.to_thread(work)


async def synced(h: Harness) -> None:
    """Run what is due through the real IMAP engine, until nothing is."""
    results = await h.sync_until_idle()
    assert all(r.status == "ok" for r in results), results


async def same_as_server(h: Harness, dovecot: DovecotServer, user: str, account_id: int,
                         count: int) -> None:
    on_server = await asyncio.to_thread(server_state, dovecot, user)
    assert len(on_server) == count
    assert await store_state(h.services, account_id) == on_server


# -- new mail -------------------------------------------------------------------------------------


async def test_idle_requests_a_sync_for_new_mail_without_polling(
    db_url: str, clock: ManualClock, tmp_path: Path, dovecot: DovecotServer
) -> None:
    async with open_harness(db_url, clock, tmp_path, dovecot) as h:
        user, aid = await add_user(h, dovecot)
        await synced(h)
        started = clock.now()
        sup = supervisor(h)
        async with running(sup):
            await eventually(active(h, aid), "IDLE to be established")
            # The store is in step with the server (the engine's UIDNEXT): nothing requested.
            assert (await account(h, aid)).sync_requested_at is None
            await append(dovecot, user)
            await eventually(requested(h, aid), "IDLE's sync request")
            stats = dataclasses.replace(sup.stats(aid))
        row = await account(h, aid)
        assert row.sync_reason == SYNC_REASON
        assert stats.events >= 1
        assert stats.requests >= 1
        assert stats.connects == 1
        # No poll can have been due: the clock never moved and the next poll is a day away.
        assert clock.now() == started
        assert row.next_poll_at > started
        await synced(h)
        await same_as_server(h, dovecot, user, aid, 1)


async def test_delivery_is_committed_through_the_serving_worker(
    harness: Harness, dovecot_full: DovecotServer
) -> None:
    """End to end: the worker (with the supervisor as its companion) syncs the new mailbox,
    IDLE sees an APPEND, and the message is committed; the clock never moves."""
    h = harness
    user, aid = await add_user(h, dovecot_full)
    started = clock_now = h.clock.now()
    async with h.serving():
        await eventually(active(h, aid), "IDLE to be established")

        async def initial_done() -> bool:
            row = await account(h, aid)
            return row.initial_sync_done and row.sync_requested_at is None
        await eventually(initial_done, "the initial sync")
        assert await store_state(h.services, aid) == {}
        await append(dovecot_full, user)

        async def stored() -> bool:
            return len(await store_state(h.services, aid)) == 1
        await eventually(stored, "the new message in the store")
        assert h.services.idle.stats(aid).events >= 1
    assert h.clock.now() == clock_now == started
    await same_as_server(h, dovecot_full, user, aid, 1)
    # The supervisor handed its row back when the worker stopped.
    row = await idle_row(h, aid)
    assert row is not None
    assert row.sub.state is PushState.PENDING
    assert row.sub.subscription_id is None


async def test_watcher_reconnects_after_the_server_drops_it(
    harness: Harness, dovecot_full: DovecotServer
) -> None:
    h = harness
    user, aid = await add_user(h, dovecot_full)
    await synced(h)
    sup = supervisor(h)
    async with running(sup):
        await eventually(active(h, aid), "IDLE to be established")
        await append(dovecot_full, user)
        await eventually(requested(h, aid), "the first sync request")
        await synced(h)
        killed = await asyncio.to_thread(dovecot_full.kill_sessions, user)
        assert killed >= 1

        async def back() -> bool:
            return sup.stats(aid).sessions >= 2 and await active(h, aid)()
        await eventually(back, "the watcher to reconnect")
        # Nothing arrived while it was away, and the reconnect knows it.
        assert (await account(h, aid)).sync_requested_at is None
        await append(dovecot_full, user, start=1)
        await eventually(requested(h, aid), "a sync request after the reconnect")
        assert h.services.connectors.imap.in_use(aid) == 1
    assert (await account(h, aid)).sync_reason == SYNC_REASON
    await synced(h)
    await same_as_server(h, dovecot_full, user, aid, 2)


async def test_mail_between_select_and_idle_is_not_lost(
    harness: Harness, dovecot_full: DovecotServer
) -> None:
    h = harness
    user, aid = await add_user(h, dovecot_full)
    await synced(h)
    selected: list[str] = []

    async def after_select(account_id: int, folder: str) -> None:
        selected.append(folder)
        if len(selected) == 1:
            await append(dovecot_full, user)
            await asyncio.sleep(0.2)  # the APPEND is done (answered) before IDLE starts

    sup = supervisor(h, after_select=after_select)
    async with running(sup):
        await eventually(requested(h, aid), "the sync request")
        stats = dataclasses.replace(sup.stats(aid))
    # SELECT ran before the APPEND, so only IDLE can have told: it reports what is pending.
    assert selected[0] == "INBOX"
    assert stats.events >= 1
    assert stats.sessions == 1
    assert (await account(h, aid)).sync_reason == SYNC_REASON
    await synced(h)
    await same_as_server(h, dovecot_full, user, aid, 1)


async def test_mail_that_arrived_while_nothing_watched_is_requested_on_connect(
    harness: Harness, dovecot_full: DovecotServer
) -> None:
    h = harness
    user, aid = await add_user(h, dovecot_full)
    await synced(h)
    await append(dovecot_full, user, 3)  # after the engine's last FETCH, before any IDLE
    sup = supervisor(h)
    async with running(sup):
        await eventually(requested(h, aid), "the sync request")
        stats = dataclasses.replace(sup.stats(aid))
    # Found by comparing the SELECT's UIDNEXT with the store's, not by an IDLE event.
    assert stats.events == 0
    assert stats.requests >= 1
    await synced(h)
    await same_as_server(h, dovecot_full, user, aid, 3)


async def test_a_burst_during_a_sync_makes_one_follow_up(
    harness: Harness, dovecot_full: DovecotServer
) -> None:
    h = harness
    user, aid = await add_user(h, dovecot_full)
    await synced(h)
    sup = supervisor(h)
    async with running(sup):
        await eventually(active(h, aid), "IDLE to be established")
        # A sync is running (another worker holds the mailbox) while mail pours in.
        async with h.services.db.transaction() as conn:
            claim = await account_store.claim_one(conn, aid, owner="busy-worker",
                                                  now=h.clock.now(), lease=timedelta(minutes=5))
        assert claim is not None
        stats = sup.stats(aid)
        await append(dovecot_full, user, 20)
        await eventually(lambda: _true(stats.requests >= 1), "a request for the burst")
        for i in range(2):  # and a few stragglers, each seen on its own
            more = _more_requests(stats, stats.requests)
            await append(dovecot_full, user, start=20 + i)
            await eventually(more, "a request")
        delivered = 22
        assert stats.requests < delivered
        # The running sync ends having claimed before all this: exactly one follow-up is due.
        async with h.services.db.transaction() as conn:
            await account_store.release(conn, claim, owner="busy-worker", now=h.clock.now(),
                                        values={},
                                        clear_request=True)
        follow_up = await h.sync()
        assert [r.status for r in follow_up] == ["ok"]
        assert await h.sync() == []
    await same_as_server(h, dovecot_full, user, aid, delivered)


async def _true(value: bool) -> bool:
    return value


def _more_requests(stats: WatchStats, before: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return stats.requests > before
    return check


# -- connections ----------------------------------------------------------------------------------


async def test_idle_connections_leave_a_slot_for_the_sync(
    db_url: str, clock: ManualClock, tmp_path: Path, dovecot_full: DovecotServer
) -> None:
    # Four IDLE folders, three connections: INBOX and Sent IDLE, Archive and Drafts are checked
    # with STATUS (every poll interval: 1 s here) on INBOX's connection.
    async with open_harness(db_url, clock, tmp_path, dovecot_full, poll_interval=1.0,
                            imap_max_connections=3) as h:
        user, aid = await add_user(h, dovecot_full,
                                   idle_folders=("INBOX", "Sent", "Archive", "Drafts"))
        await synced(h)
        sessions = h.services.connectors.imap
        sup = supervisor(h)
        async with running(sup):
            await eventually(active(h, aid), "IDLE on INBOX and Sent")
            row = await idle_row(h, aid)
            assert row is not None
            assert row.settings == {"idle": ["INBOX", "Sent"], "polled": ["Archive", "Drafts"]}
            assert sessions.in_use(aid) == 2
            # A sync run still gets its connection at once.
            async with asyncio.timeout(5), sessions.open(await account(h, aid)) as client:
                assert sessions.in_use(aid) == 3
                await client.noop()
            await asyncio.sleep(1.5)  # a STATUS round: the store is in step, nothing requested
            assert (await account(h, aid)).sync_requested_at is None
            stats = sup.stats(aid)
            events = stats.events
            await append(dovecot_full, user, folder="Archive")
            await eventually(requested(h, aid), "the polled folder's sync request")
            assert stats.events == events
            assert stats.connects == 2
        assert sessions.in_use(aid) == 0
        await synced(h)
        await same_as_server(h, dovecot_full, user, aid, 1)


@pytest.mark.parametrize("overrides", [{"imap_idle": False}, {"imap_max_connections": 1}],
                         ids=["idle-off", "no-spare-connection"])
async def test_no_watcher_when_idle_is_off_or_no_connection_is_spare(
    db_url: str, clock: ManualClock, tmp_path: Path, dovecot_full: DovecotServer,
    overrides: dict[str, Any],
) -> None:
    async with open_harness(db_url, clock, tmp_path, dovecot_full, **overrides) as h:
        _, aid = await add_user(h, dovecot_full)
        # A row an earlier run left active (its worker gone) must not keep the mailbox on the
        # safety sweep: it is stopped, and the mailbox polled at the normal interval.
        now = h.clock.now()
        async with h.services.db.transaction() as conn:
            await push_store.upsert(conn, account_id=aid, provider=ProviderKind.IMAP, now=now,
                                    state=PushState.ACTIVE.value, subscription_id="gone-worker",
                                    expiration=now - timedelta(minutes=1))
            await account_store.update_fields(conn, aid, next_poll_at=now + timedelta(days=9))
        sup = supervisor(h)
        async with running(sup):
            await asyncio.sleep(0.6)  # a few rescans
            assert sup.watching() == frozenset()
        assert sup.stats(aid).connects == 0
        assert h.services.connectors.imap.in_use(aid) == 0
        row = await idle_row(h, aid)
        assert row is not None
        assert row.sub.state is PushState.STOPPED
        assert (await account(h, aid)).next_poll_at <= now + timedelta(days=1)


async def test_a_refused_password_stops_the_watcher_until_it_changes(
    harness: Harness, dovecot_full: DovecotServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="maildesk")
    h = harness
    wrong = "wrong-password-123"
    _, aid = await add_user(h, dovecot_full, password=wrong)
    sup = supervisor(h, rescan=0.1)
    async with running(sup):
        async def refused() -> bool:
            row = await idle_row(h, aid)
            return row is not None and row.sub.last_error_kind == "login_failed"
        await eventually(refused, "the refused sign-in on the row")
        row = await idle_row(h, aid)
        assert row is not None
        assert row.sub.state is PushState.ERROR
        marked = await account(h, aid)
        assert marked.state is AccountState.REAUTH_REQUIRED
        assert marked.last_error_kind == "login_failed"
        for _ in range(8):  # rescans and wake-ups do not retry the same password
            sup.wake()
            await asyncio.sleep(0.1)
        assert sup.stats(aid).connects == 1
        assert sup.watching() == frozenset()
        # The operator enters the right password: the watcher starts again by itself.
        async with h.services.db.transaction() as conn:
            await conn.execute(update(accounts).where(accounts.c.id == aid).values(
                password_enc=h.services.secrets.encrypt(dovecot_full.password)))
        await eventually(active(h, aid), "IDLE with the new password")
        assert sup.stats(aid).connects == 2
    assert wrong not in caplog.text
    assert dovecot_full.password not in caplog.text


async def test_supervisor_follows_added_and_removed_mailboxes(
    harness: Harness, dovecot_full: DovecotServer
) -> None:
    h = harness
    sessions = h.services.connectors.imap
    sup = supervisor(h, rescan=60.0)  # only wake-ups make it look again
    async with running(sup):
        await asyncio.sleep(0.2)
        assert sup.watching() == frozenset()
        _, aid = await add_user(h, dovecot_full)
        sup.wake()
        await eventually(active(h, aid), "the new mailbox watched")
        assert sup.watching() == {aid}
        assert sessions.in_use(aid) == 1
        async with h.services.db.transaction() as conn:
            await account_store.remove(conn, aid)
        sup.wake()

        async def dropped() -> bool:
            return sup.watching() == frozenset() and sessions.in_use(aid) == 0
        await eventually(dropped, "the removed mailbox's watch to end")


async def test_two_workers_watch_a_mailbox_once_and_hand_it_over(
    harness: Harness, dovecot_full: DovecotServer
) -> None:
    h = harness
    _, aid = await add_user(h, dovecot_full)
    sessions = h.services.connectors.imap
    first = supervisor(h, owner="worker-a")
    second = supervisor(h, owner="worker-b")
    stop_first, stop_second = asyncio.Event(), asyncio.Event()

    async def held_by(sup: IdleSupervisor) -> bool:
        row = await idle_row(h, aid)
        return (aid in sup.watching() and row is not None
                and row.sub.subscription_id == sup.owner and row.sub.state is PushState.ACTIVE)

    async with asyncio.TaskGroup() as group:
        group.create_task(first.serve(stop_first))
        await eventually(lambda: held_by(first), "worker-a to watch the mailbox")
        group.create_task(second.serve(stop_second))
        await asyncio.sleep(0.6)  # worker-b rescanned a few times
        assert aid not in second.watching()
        assert sessions.in_use(aid) == 1  # one IDLE connection between the two
        stop_first.set()  # worker-a stops cleanly: its row is handed back...
        await eventually(lambda: held_by(second), "worker-b to take the mailbox over")
        assert sessions.in_use(aid) == 1
        stop_second.set()


async def test_a_crashed_workers_watch_is_taken_over_when_its_hold_expires(
    harness: Harness, dovecot_full: DovecotServer
) -> None:
    h = harness
    _, aid = await add_user(h, dovecot_full)
    now = h.clock.now()
    async with h.services.db.transaction() as conn:  # what a crashed worker leaves behind
        await push_store.upsert(conn, account_id=aid, provider=ProviderKind.IMAP, now=now,
                                state=PushState.ACTIVE.value, subscription_id="crashed-worker",
                                expiration=now + timedelta(seconds=90))
    sup = supervisor(h)
    async with running(sup):
        await asyncio.sleep(0.6)  # a few rescans: the hold is still good
        assert sup.watching() == frozenset()
        assert sup.stats(aid).connects == 0
        h.clock.advance(91)

        async def taken_over() -> bool:
            row = await idle_row(h, aid)
            return (aid in sup.watching() and row is not None
                    and row.sub.subscription_id == sup.owner
                    and row.sub.state is PushState.ACTIVE)
        await eventually(taken_over, "the watch taken over")
        assert sup.stats(aid).sessions == 1


# -- liveness -------------------------------------------------------------------------------------


class FreezingProxy:
    """A TCP relay to Dovecot whose open connections can be frozen: no byte passes either way
    any more while both sockets stay open (a peer that died without saying so). Connections
    made after ``freeze()`` relay normally."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._frozen: list[asyncio.Event] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def __aenter__(self) -> FreezingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def freeze(self) -> None:
        for frozen in self._frozen:
            frozen.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, up_writer]
        frozen = asyncio.Event()
        self._frozen.append(frozen)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if frozen.is_set():
                        await asyncio.Event().wait()  # hold the bytes for ever
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


async def test_idle_is_reissued_and_a_dead_connection_is_detected(
    db_url: str, clock: ManualClock, tmp_path: Path, dovecot_full: DovecotServer
) -> None:
    keepalive, timeout = 0.5, 1.5
    async with (
        FreezingProxy(dovecot_full.host, dovecot_full.imap_port) as proxy,
        open_harness(db_url, clock, tmp_path, dovecot_full, imap_idle_keepalive=keepalive,
                     imap_timeout=timeout) as h,
    ):
        user = dovecot_full.new_user()
        servers = MailServers(imap=ServerAddress("127.0.0.1", proxy.port, Security.STARTTLS),
                              username=user)
        aid = await add_account(h, servers, dovecot_full.password)
        await synced(h)
        sup = supervisor(h)
        stats = sup.stats(aid)
        async with running(sup):
            await eventually(active(h, aid), "IDLE to be established")
            await eventually(lambda: _true(stats.idles >= 3), "IDLE re-issued", within=10)
            # Each IDLE ended with DONE within the keepalive, on the same connection.
            assert stats.connects == 1
            assert stats.sessions == 1
            loop = asyncio.get_running_loop()
            frozen_at = loop.time()
            proxy.freeze()

            async def back() -> bool:
                return stats.sessions >= 2 and await active(h, aid)()
            await eventually(back, "the watcher to notice and reconnect")
            # Noticed by the keepalive's unanswered DONE: keepalive + timeout + first backoff.
            assert loop.time() - frozen_at < keepalive + timeout + 1.0 + 3.0
            row = await idle_row(h, aid)
            assert row is not None
            assert row.sub.failure_count == 0
            await append(dovecot_full, user)
            await eventually(requested(h, aid), "a sync request on the new connection")
        assert (await account(h, aid)).sync_reason == SYNC_REASON
