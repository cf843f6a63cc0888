"""The worker: claims due mailboxes with a lease and syncs them; runs the periodic jobs.

A mailbox is due when it has a pending sync request (push notification, operator action,
follow-up) or its poll time has come. Claims are leases, so a crashed worker's mailboxes are
taken over when its leases expire. Every task the worker starts lives in its TaskGroup and is
awaited or cancelled when the worker stops; cancelled syncs give their lease back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from maildesk.clock import Clock
from maildesk.config import Settings
from maildesk.store import accounts as account_store
from maildesk.store import jobs
from maildesk.store.accounts import Claim
from maildesk.store.database import Database
from maildesk.sync.runner import SyncResult, SyncRunner

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PeriodicJob:
    """A job run every ``interval`` seconds; ``run`` returns a short detail for the job log."""

    name: str
    interval: float
    run: Callable[[], Awaitable[str]]
    next_at: datetime | None = field(default=None)


# A long-lived task that runs beside the claim loop for as long as ``serve`` does (the IMAP IDLE
# supervisor): it is given the stop event and must return soon after it is set.
Companion = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


# How long a stopping worker waits for its running syncs to finish before cancelling them.
SHUTDOWN_GRACE = 5.0


def new_owner_id() -> str:
    return f"worker-{secrets.token_hex(6)}"


class Worker:
    def __init__(
        self,
        *,
        db: Database,
        clock: Clock,
        settings: Settings,
        runner: SyncRunner,
        periodic: list[PeriodicJob] | None = None,
        companions: list[Companion] | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
        self.runner = runner
        self.owner = runner.owner
        self.periodic = periodic or []
        self.companions = companions or []
        self._wake = asyncio.Event()
        self._running: dict[int, asyncio.Task[SyncResult]] = {}
        self.settle = account_store.FollowupSettle(
            quiet=timedelta(seconds=settings.sync_followup_quiet),
            max_wait=timedelta(seconds=max(settings.sync_followup_max_wait,
                                           settings.sync_followup_quiet)),
        )
        # When the earliest settling follow-up becomes due (from the last claim pass).
        self._followup_at: datetime | None = None

    def wake(self) -> None:
        """Look for due mailboxes now (called after a sync request in this process)."""
        self._wake.set()

    async def claim(self, limit: int) -> list[Claim]:
        """Claim up to ``limit`` due mailboxes. With room to spare, also note when the
        earliest settling follow-up becomes due, so ``serve`` wakes for it in time."""
        if limit <= 0:
            return []
        now = self.clock.now()
        lease = timedelta(seconds=self.settings.lease_seconds)
        skip_locked = not self.db.is_sqlite
        settle = self.settle

        def claim(conn: Connection) -> tuple[list[Claim], datetime | None]:
            claims = account_store.claim_due_blocking(
                conn, owner=self.owner, now=now, lease=lease, limit=limit,
                skip_locked=skip_locked, settle=settle)
            later = (account_store.next_followup_blocking(conn, now=now, settle=settle)
                     if len(claims) < limit else None)
            return claims, later

        # One call on SQLite's writer thread; claimed rows come back with the claims.
        claims, self._followup_at = await self.db.run_write(claim)
        return claims

    def _wait_seconds(self) -> float:
        """How long ``serve`` may sleep when nothing wakes it: a tick, or less when a settling
        follow-up becomes due sooner."""
        tick = self.settings.worker_tick
        if self._followup_at is None:
            return tick
        due = (self._followup_at - self.clock.now()).total_seconds()
        # A little after the due moment, so the claim's ``now`` is past it.
        return min(tick, max(due, 0.0) + 0.005)

    async def run_periodic(self, *, force: bool = False) -> None:
        """Run every periodic job that is due (all of them with ``force``)."""
        await self._run_jobs(self._due_jobs(force=force))

    def _due_jobs(self, *, force: bool = False) -> list[PeriodicJob]:
        """The jobs due now, each with its next time set (so it is not due again meanwhile)."""
        now = self.clock.now()
        due = [job for job in self.periodic
               if force or job.next_at is None or now >= job.next_at]
        for job in due:
            job.next_at = now + timedelta(seconds=job.interval)
        return due

    async def _run_jobs(self, due: list[PeriodicJob]) -> None:
        # One after another: jobs such as push renewal and the lifecycle sweep act on the same
        # subscriptions and must not race each other.
        for job in due:
            await run_job(self.db, self.clock, job.name, job.run)

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set: claim due mailboxes as slots free up, run periodic jobs
        and the companions (which end by themselves once ``stop`` is set).

        Periodic jobs run beside the claim loop, never inside it: a slow job (a provider that
        takes its time to renew a subscription) must not hold up every mailbox's sync."""
        jobs_task: asyncio.Task[None] | None = None
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._wake_on(stop))
                for companion in self.companions:
                    group.create_task(companion(stop))
                while not stop.is_set():
                    # Cleared before looking, so a wake-up during the claim is not lost.
                    self._wake.clear()
                    self._reap()
                    free = self.settings.worker_concurrency - len(self._running)
                    for claim in await self.claim(free):
                        task = group.create_task(self._sync(claim))
                        self._running[claim.account_id] = task
                        task.add_done_callback(lambda _t: self._wake.set())
                    # A job made due while the previous batch runs waits for that batch.
                    if (jobs_task is None or jobs_task.done()) and (due := self._due_jobs()):
                        jobs_task = group.create_task(self._run_jobs(due))
                        jobs_task.add_done_callback(lambda _t: self._wake.set())
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._wait_seconds()):
                            await self._wake.wait()
                # Let running syncs end by themselves for a moment: one cancelled inside a
                # transaction on SQLite can leave the write lock with a connection that only
                # the garbage collector closes, stalling the writes that follow.
                running = [t for t in self._running.values() if not t.done()]
                if running:
                    await asyncio.wait(running, timeout=SHUTDOWN_GRACE)
                for task in self._running.values():
                    task.cancel()
        finally:
            self._running.clear()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        """``stop`` is a wake-up too: the loop then sees it at once instead of after a tick."""
        await stop.wait()
        self._wake.set()

    def _reap(self) -> None:
        for account_id, task in list(self._running.items()):
            if task.done():
                del self._running[account_id]

    async def _sync(self, claim: Claim) -> SyncResult:
        try:
            return await self.runner.run(claim)
        except asyncio.CancelledError:
            # Shutting down: hand the mailbox back at once instead of waiting for the lease.
            now = self.clock.now()
            with contextlib.suppress(Exception):
                # ``run_write`` finishes its transaction even if cancelled again meanwhile.
                await self.db.run_write(lambda conn: account_store.release_blocking(
                    conn, claim, owner=self.owner, now=now, values={}, clear_request=False))
            raise


async def run_job(
    db: Database, clock: Clock, name: str, fn: Callable[[], Awaitable[str]]
) -> str:
    """Run one job and record its run (start, duration, status, error) in job_runs."""
    started = clock.now()
    async with db.transaction() as conn:
        run_id = await jobs.start(conn, name, started)
    status, error, detail = "ok", None, ""
    try:
        detail = await fn()
    except Exception as exc:
        log.exception("job %s failed", name)
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    async with db.transaction() as conn:
        await jobs.finish(conn, run_id, started_at=started, now=clock.now(), status=status,
                          error=error, detail=detail)
    return detail
