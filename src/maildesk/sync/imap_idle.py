"""IMAP realtime: IDLE watchers for IMAP mailboxes, kept by a supervisor beside the worker.

The supervisor (:class:`IdleSupervisor`, a companion of ``Worker.serve``) re-reads the IMAP
mailboxes every few seconds (or when woken) and keeps one watch per mailbox: one IDLE connection
per IDLE folder (``MailServers.idle_folders``, default INBOX), at most
``MAILDESK_IMAP_MAX_CONNECTIONS - 1`` of them so a sync run always finds a free slot; folders
beyond that are checked with STATUS on the first folder's connection every poll interval.

A watch, per folder::

    connect (a slot of ImapSessions) ─► EXAMINE ─► compare UIDNEXT/EXISTS/… with the store
        ─► IDLE ≤ keepalive ─► DONE (proves the connection alive) ─► IDLE … ─┐
    any EXISTS/EXPUNGE/FETCH/VANISHED ─► request a sync (a stamp; N become one) ◄┘
    a dropped or dead connection ─► jittered backoff (≤ MAILDESK_IMAP_RECONNECT_MAX) ─► again
    a refused sign-in ─► mailbox reauth_required; no retry until its sign-in changes

Health is kept on the mailbox's ``push_subscriptions`` row of provider ``imap``: ``pending``
while starting, ``active`` while every IDLE folder idles (the runner then only runs the safety
sweep), ``error`` with the typed reason while a folder cannot connect (polled every
``MAILDESK_POLL_INTERVAL``), ``stopped`` with IDLE off. The row also says which worker holds
the watch (``subscription_id``) until when (``expiration``, renewed by a heartbeat), so several
worker processes on one PostgreSQL watch each mailbox once, and a crashed worker's watches
are taken over. Nothing sent or received is logged (the connection layer never logs either).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection

from maildesk.clock import Clock
from maildesk.config import Settings
from maildesk.domain.accounts import AccountState, ProviderKind
from maildesk.domain.backoff import Backoff
from maildesk.domain.idle import (
    SYNC_REASON,
    FolderSnapshot,
    Health,
    IdlePlan,
    WatchHealth,
    moved,
    plan_folders,
    sign_in_fingerprint,
)
from maildesk.domain.mail_servers import DEFAULT_IDLE_FOLDERS, SETTINGS_KEY, MailServers
from maildesk.domain.push import PushState
from maildesk.errors import (
    AuthError,
    CapabilityMissing,
    InputError,
    MailDeskError,
    MessageGone,
    ProviderRejected,
)
from maildesk.providers.imap import ImapClient
from maildesk.providers.imap_fetch import MailboxEvent
from maildesk.store import accounts as account_store
from maildesk.store import idle_watches
from maildesk.store.accounts import AccountRow
from maildesk.store.database import Database
from maildesk.sync.imap_sessions import ImapSessions

__all__ = ["IdleSupervisor", "WatchStats"]

log = logging.getLogger(__name__)

RESCAN = 5.0  # seconds between re-reads of the IMAP mailboxes
HEARTBEAT = 30.0  # seconds between renewals of the watches this worker holds
HOLD = timedelta(seconds=90)  # a watch not renewed for this long may be taken over
STABLE_AFTER = 30.0  # a session that idled this long reconnects at once when dropped
RECONNECT_BASE = 1.0

AfterSelect = Callable[[int, str], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class WatchStats:
    """Counters of one mailbox's watches since the supervisor first watched it (tests, status)."""

    connects: int = 0  # connection attempts
    sessions: int = 0  # sessions that reached IDLE
    idles: int = 0  # IDLE commands ended with DONE (or by an event)
    events: int = 0  # mailbox events IDLE reported
    requests: int = 0  # sync requests written


@dataclass(frozen=True, slots=True)
class _Parked:
    """A watch stopped until the mailbox's sign-in changes (``fingerprint``); after an auth
    failure also once the mailbox is no longer ``reauth_required`` (a sync got in again)."""

    fingerprint: str
    reauth: bool


class _Park(Exception):
    """Stops one mailbox's watch (a signal inside the watch, never raised out of it)."""

    def __init__(self, error: MailDeskError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(slots=True)
class _Running:
    watch: _AccountWatch
    task: asyncio.Task[_Parked | None]


class IdleSupervisor:
    """Starts, restarts and stops the IDLE watches of this worker's IMAP mailboxes.

    ``wake`` is the worker's wake-up (called after a sync request for an unleased mailbox);
    ``owner`` names this worker on the rows it holds. ``sleep`` (backoff waits) and
    ``after_select`` (called after a folder's SELECT, before its first IDLE) are for tests.
    """

    def __init__(
        self,
        *,
        db: Database,
        clock: Clock,
        settings: Settings,
        sessions: ImapSessions,
        wake: Callable[[], None],
        owner: str,
        rng: random.Random | None = None,
        rescan: float = RESCAN,
        sleep: Sleep = asyncio.sleep,
        after_select: AfterSelect | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
        self.sessions = sessions
        self.owner = owner
        self.rng = rng or random.Random()
        self.backoff = Backoff(base=RECONNECT_BASE, cap=settings.imap_reconnect_max)
        self.sleep = sleep
        self.after_select = after_select
        self._wake_worker = wake
        self._rescan_every = rescan
        self._wake = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._watches: dict[int, _Running] = {}
        self._parked: dict[int, _Parked] = {}
        self._stats: dict[int, WatchStats] = {}
        self._claimed = False  # whether this worker ever held a row (so has any to release)
        self._unwanted: set[int] = set()  # mailboxes seen wanting no watch (rows stopped)

    # -- public ------------------------------------------------------------------------------------

    def wake(self) -> None:
        """Re-read the mailboxes now (after one was added, removed or reconnected)."""
        self._wake.set()

    def watching(self) -> frozenset[int]:
        """Mailboxes with a running watch."""
        return frozenset(a for a, r in self._watches.items() if not r.task.done())

    def stats(self, account_id: int) -> WatchStats:
        return self._stats.setdefault(account_id, WatchStats())

    def wake_worker(self) -> None:
        self._wake_worker()

    async def serve(self, stop: asyncio.Event) -> None:
        """Keep the watches until ``stop`` is set; then end them and hand their rows back."""
        if not self.settings.imap_idle:
            await _guarded("switching IDLE off", self._switch_off())
            return
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as group:
            self._group = group
            group.create_task(self._wake_on(stop))
            next_beat = loop.time()
            try:
                while not stop.is_set():
                    self._wake.clear()
                    if loop.time() >= next_beat:
                        await _guarded("IDLE heartbeat", self._heartbeat())
                        next_beat = loop.time() + HEARTBEAT
                    await _guarded("IDLE rescan", self._rescan())
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._rescan_every):
                            await self._wake.wait()
            finally:
                for running in self._watches.values():
                    running.task.cancel()
                self._group = None
        self._watches.clear()
        await _guarded("releasing IDLE watches", self._release_all())

    # -- the supervisor's rounds -------------------------------------------------------------------

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    def _wanted(self, account: AccountRow) -> tuple[str, IdlePlan] | None:
        """The watch the mailbox should have (sign-in fingerprint, folder plan), or None."""
        raw = account.settings.get(SETTINGS_KEY)
        try:
            idle_folders = MailServers.of_account(account.settings).idle_folders
        except InputError:
            # Broken settings: the watch fails on them and shows why on the mailbox's row.
            idle_folders = DEFAULT_IDLE_FOLDERS
        plan = plan_folders(idle_folders, self.settings.imap_max_connections)
        if not plan.idle:
            return None
        return sign_in_fingerprint(account.password_enc, account.refresh_token_enc, raw), plan

    async def _rescan(self) -> None:
        async with self.db.read() as conn:
            rows = [a for a in await account_store.list_all(conn)
                    if a.provider is ProviderKind.IMAP]
            holders = await idle_watches.holders(conn)
        now = self.clock.now()
        present = {a.id for a in rows}
        for account_id, running in list(self._watches.items()):
            if running.task.done():
                del self._watches[account_id]
                parked = None if running.task.cancelled() else running.task.result()
                if parked is not None:
                    self._parked[account_id] = parked
            elif account_id not in present:
                await self._drop(account_id, stopped=False)
        for gone in (self._parked.keys() | self._stats.keys()) - present:
            self._parked.pop(gone, None)
            self._stats.pop(gone, None)
        unwanted: set[int] = set()
        for account in rows:
            wanted = self._wanted(account)
            current = self._watches.get(account.id)
            if current is not None:
                if wanted is not None and wanted[0] == current.watch.fingerprint:
                    continue
                await self._drop(account.id, stopped=wanted is None)
            if wanted is None:
                unwanted.add(account.id)
                continue
            fingerprint, plan = wanted
            parked = self._parked.get(account.id)
            if parked is not None:
                if parked.fingerprint == fingerprint and (
                    not parked.reauth or account.state is AccountState.REAUTH_REQUIRED
                ):
                    continue
                del self._parked[account.id]
            holder, until = holders.get(account.id, (None, None))
            if holder not in (None, self.owner) and until is not None and until >= now:
                continue  # another worker watches it (checked again, atomically, by the claim)
            if await self._claim(account, plan):
                self._start(account, plan, fingerprint)
        if unwanted - self._unwanted:
            # A row left by an earlier run (or a crashed worker) must not keep claiming IDLE
            # for a mailbox nobody watches now (a bound of one connection leaves none spare).
            await self._stop_free_rows(sorted(unwanted - self._unwanted))
        self._unwanted = unwanted

    def _start(self, account: AccountRow, plan: IdlePlan, fingerprint: str) -> None:
        assert self._group is not None
        watch = _AccountWatch(self, account, plan, fingerprint, self.stats(account.id))
        task = self._group.create_task(_run_watch(watch))
        self._watches[account.id] = _Running(watch, task)
        log.info("account %s: IDLE on %s%s", account.id, ", ".join(plan.idle),
                 f" (polling {', '.join(plan.polled)})" if plan.polled else "")

    async def _drop(self, account_id: int, *, stopped: bool) -> None:
        """End a watch (the mailbox is gone, changed or no longer wants IDLE)."""
        running = self._watches.pop(account_id)
        running.task.cancel()
        await asyncio.wait({running.task})
        if stopped:
            now = self.clock.now()
            await self.db.run_write(lambda conn: idle_watches.set_rows_blocking(
                conn, [account_id], owner=self.owner, now=now,
                poll_interval=self.settings.poll_interval,
                state=PushState.STOPPED.value, subscription_id=None, expiration=None))

    # -- rows --------------------------------------------------------------------------------------

    async def _claim(self, account: AccountRow, plan: IdlePlan) -> bool:
        now = self.clock.now()
        owner = self.owner

        def claim(conn: Connection) -> bool:
            return idle_watches.claim_blocking(conn, account.id, plan, owner=owner, now=now,
                                               hold=HOLD)

        try:
            claimed = await self.db.run_write(claim)
        except MailDeskError as exc:  # lost an insert race, or the mailbox was just removed
            log.debug("account %s: IDLE watch not claimed: %s", account.id, exc.kind)
            return False
        self._claimed = self._claimed or claimed
        return claimed

    async def _heartbeat(self) -> None:
        """Renew the rows this worker holds; a watch whose row another worker took is ended."""
        now = self.clock.now()

        owner = self.owner

        def beat(conn: Connection) -> set[int]:
            return idle_watches.renew_blocking(conn, owner=owner, now=now, hold=HOLD)

        if not self._watches and not self._parked:
            return
        held = await self.db.run_write(beat)
        for account_id in [a for a in self._watches if a not in held]:
            log.warning("account %s: another worker took over the IDLE watch", account_id)
            await self._drop(account_id, stopped=False)

    async def _release_all(self) -> None:
        """Shutting down: hand the rows back; an ``active`` one becomes ``pending`` (and its
        mailbox is polled again) until a worker watches it."""
        if not self._claimed:
            return
        now = self.clock.now()

        owner, poll = self.owner, self.settings.poll_interval

        def release(conn: Connection) -> None:
            idle_watches.release_blocking(conn, owner=owner, now=now, poll_interval=poll)

        await self.db.run_write(release)

    async def _switch_off(self) -> None:
        """``MAILDESK_IMAP_IDLE=false``: rows no live worker holds say ``stopped``."""
        await self._stop_free_rows(None)

    async def _stop_free_rows(self, account_ids: list[int] | None) -> None:
        """Rows (of ``account_ids``, or all) that no live worker holds say ``stopped``, and
        their mailboxes are polled at the normal interval."""
        now = self.clock.now()

        owner, poll = self.owner, self.settings.poll_interval

        def stop(conn: Connection) -> None:
            idle_watches.stop_free_blocking(conn, account_ids, owner=owner, now=now,
                                            poll_interval=poll)

        await self.db.run_write(stop)


class _AccountWatch:
    """The IDLE connections of one mailbox and the sync requests they make."""

    def __init__(self, supervisor: IdleSupervisor, account: AccountRow, plan: IdlePlan,
                 fingerprint: str, stats: WatchStats) -> None:
        self._sup = supervisor
        self.account = account
        self.plan = plan
        self.fingerprint = fingerprint
        self.stats = stats
        self._health = WatchHealth(plan.idle)
        self._written: Health | None = None
        self._write_lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._polled_seen: dict[str, FolderSnapshot] = {}

    async def run(self) -> _Parked | None:
        """Watch until cancelled; returns only when parked (sign-in refused, IDLE missing,
        unusable settings)."""
        error: MailDeskError | None = None
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._requests())
                for index, folder in enumerate(self.plan.idle):
                    polled = self.plan.polled if index == 0 else ()
                    group.create_task(self._folder(folder, polled))
        except* _Park as parked:
            first = parked.exceptions[0]
            error = first.error if isinstance(first, _Park) else MailDeskError("parked")
        if error is None:
            return None
        await self._park(error)
        return _Parked(self.fingerprint, reauth=isinstance(error, AuthError))

    # -- one folder --------------------------------------------------------------------------------

    async def _folder(self, folder: str, polled: tuple[str, ...]) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            up_since: float | None = None
            error: MailDeskError
            try:
                self.stats.connects += 1
                async with self._sup.sessions.open(self.account, enable_sync=False) as client:
                    selected = await client.select(folder, readonly=True)
                    await self._compare(folder, FolderSnapshot(
                        selected.uidvalidity, selected.uidnext, selected.exists,
                        selected.highest_modseq))
                    if polled:
                        await self._check_polled(client, polled)
                    if self._sup.after_select is not None:
                        await self._sup.after_select(self.account.id, folder)
                    await self._set_health(self._health.up(folder))
                    self.stats.sessions += 1
                    up_since = loop.time()
                    attempt = 0
                    await self._idle(client, polled)
            except (AuthError, InputError, CapabilityMissing) as exc:
                raise _Park(exc) from None
            except MailDeskError as exc:
                error = exc
            except Exception as exc:  # a bug: keep the watch alive, retry with backoff
                log.exception("account %s: IDLE on %r failed", self.account.id, folder)
                error = MailDeskError(f"internal error: {type(exc).__name__}")
            if up_since is not None and loop.time() - up_since >= STABLE_AFTER:
                attempt = 1  # a routine drop after a good session: reconnect at once
            else:
                attempt += 1
                await self._set_health(self._health.down(folder, error.kind, error.message),
                                       failed=True)
            delay = self._sup.backoff.delay(attempt, self._sup.rng)
            log.info("account %s: IDLE on %r ended (%s: %s); reconnecting in %.1f s",
                     self.account.id, folder, error.kind, error.message, delay)
            await self._sup.sleep(delay)

    async def _idle(self, client: ImapClient, polled: tuple[str, ...]) -> None:
        """IDLE until the connection fails; every IDLE ends within the keepalive with DONE,
        whose answer proves the connection alive. Leftover folders are checked meanwhile."""
        loop = asyncio.get_running_loop()
        interval = self._sup.settings.poll_interval
        next_check = loop.time() + interval
        while True:
            wait = self._sup.settings.imap_idle_keepalive
            if polled:
                wait = max(0.01, min(wait, next_check - loop.time()))
            events = await client.idle(wait)
            self.stats.idles += 1
            if events:
                self._note(events)
            if polled and loop.time() >= next_check:
                await self._check_polled(client, polled)
                next_check = loop.time() + interval

    def _note(self, events: Sequence[MailboxEvent]) -> None:
        self.stats.events += len(events)
        self._dirty.set()

    async def _compare(self, folder: str, seen: FolderSnapshot) -> None:
        """After SELECT: request a sync if the folder moved since the store saw it (mail that
        arrived between the engine's last FETCH and this SELECT, or while reconnecting)."""
        reason = moved(await self._stored(folder), seen)
        if reason is not None:
            log.debug("account %s: %r needs a sync: %s", self.account.id, folder, reason)
            self._dirty.set()

    async def _check_polled(self, client: ImapClient, polled: tuple[str, ...]) -> None:
        for folder in polled:
            try:
                status = await client.status(folder)
            except (ProviderRejected, MessageGone) as exc:
                log.info("account %s: cannot check %r: %s", self.account.id, folder, exc.message)
                continue
            seen = FolderSnapshot(status.uidvalidity, status.uidnext, status.messages,
                                  status.highest_modseq)
            last = self._polled_seen.get(folder)
            self._polled_seen[folder] = seen
            if moved(last if last is not None else await self._stored(folder), seen):
                self._dirty.set()

    async def _stored(self, folder: str) -> FolderSnapshot | None:
        """What the engine last synced of ``folder`` (``store/imap_state.py``): ``uidnext`` is
        the top of the window it holds. The message count is comparable with EXISTS only once
        the window reaches down to UID 1 (backfill done); before that it is left unknown."""
        async with self._sup.db.read() as conn:
            return await idle_watches.synced_snapshot(conn, self.account.id, folder)

    # -- sync requests -----------------------------------------------------------------------------

    async def _requests(self) -> None:
        """One request write at a time: events during a write coalesce into the next one, and
        the stamp makes any number of requests during a sync one follow-up."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._request()
            except Exception:
                log.exception("account %s: could not request a sync", self.account.id)
                self._dirty.set()
                await self._sup.sleep(1.0)

    async def _request(self) -> None:
        now = self._sup.clock.now()
        account_id, owner = self.account.id, self._sup.owner

        def request(conn: Connection) -> list[int]:
            return idle_watches.request_sync_blocking(conn, account_id, reason=SYNC_REASON,
                                                      owner=owner, now=now)

        unleased = await self._sup.db.run_write(request)
        self.stats.requests += 1
        if unleased:
            self._sup.wake_worker()

    # -- health ------------------------------------------------------------------------------------

    async def _set_health(self, health: Health, *, failed: bool = False) -> None:
        """Write the row's state when it changed; ``failed`` (a folder failed to connect) is
        always written and counted."""
        async with self._write_lock:
            if health == self._written and not failed:
                return
            now = self._sup.clock.now()
            values: dict[str, Any] = {"state": health.state.value}
            if health.state is PushState.ACTIVE:
                values.update(failure_count=0, last_error_kind=None, last_error=None)
            elif health.state is PushState.ERROR:
                values.update(last_error_kind=health.error_kind, last_error=health.error)
            if failed:
                values["failure_count"] = idle_watches.failure_counted()
            settings, owner = self._sup.settings, self._sup.owner
            # An IDLE that is not running must not leave the mailbox on the safety sweep.
            poll = settings.poll_interval if health.state is not PushState.ACTIVE else None
            await self._sup.db.run_write(lambda conn: idle_watches.set_rows_blocking(
                conn, [self.account.id], owner=owner, now=now, poll_interval=poll, **values))
            self._written = health

    async def _park(self, error: MailDeskError) -> None:
        log.warning("account %s: IDLE stopped until the mailbox's sign-in changes (%s: %s)",
                    self.account.id, error.kind, error.message)
        if self._dirty.is_set():
            with contextlib.suppress(Exception):
                await self._request()
        await self._set_health(Health(PushState.ERROR, error.kind, error.message), failed=True)
        if isinstance(error, AuthError):
            now = self._sup.clock.now()
            await self._sup.db.run_write(lambda conn: account_store.update_fields_blocking(
                conn, self.account.id, state=AccountState.REAUTH_REQUIRED.value,
                last_error_kind=error.kind, last_error=error.message, last_error_at=now))


async def _run_watch(watch: _AccountWatch) -> _Parked | None:
    try:
        return await watch.run()
    except Exception:  # never take the supervisor down: the next rescan starts it again
        log.exception("account %s: IDLE watch failed", watch.account.id)
        return None


async def _guarded(what: str, work: Awaitable[None]) -> None:
    try:
        await work
    except Exception:
        log.exception("%s failed", what)
