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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

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
    ) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
        self.runner = runner
        self.owner = runner.owner
        self.periodic = periodic or []
        self._wake = asyncio.Event()
        self._running: dict[int, asyncio.Task[SyncResult]] = {}

    def wake(self) -> None:
        """Look for due mailboxes now (called after a sync request in this process)."""
        self._wake.set()

    async def claim(self, limit: int) -> list[Claim]:
        if limit <= 0:
            return []
        now = self.clock.now()
        lease = timedelta(seconds=self.settings.lease_seconds)
        skip_locked = not self.db.is_sqlite
        # One call on SQLite's writer thread; claimed rows come back with the claims.
        return await self.db.run_write(lambda conn: account_store.claim_due_blocking(
            conn, owner=self.owner, now=now, lease=lease, limit=limit, skip_locked=skip_locked))

    async def run_due(self) -> list[SyncResult]:
        """Claim and sync every due mailbox, to completion (tests, `maildesk account sync`)."""
        results: list[SyncResult] = []
        while claims := await self.claim(self.settings.worker_concurrency):
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._sync(c)) for c in claims]
            results += [t.result() for t in tasks]
        return results

    async def run_periodic(self, *, force: bool = False) -> None:
        """Run every periodic job that is due (all of them with ``force``)."""
        for job in self.periodic:
            now = self.clock.now()
            if not force and job.next_at is not None and now < job.next_at:
                continue
            job.next_at = now + timedelta(seconds=job.interval)
            await run_job(self.db, self.clock, job.name, job.run)

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set: claim due mailboxes as slots free up, run periodic jobs."""
        try:
            async with asyncio.TaskGroup() as group:
                while not stop.is_set():
                    self._reap()
                    free = self.settings.worker_concurrency - len(self._running)
                    for claim in await self.claim(free):
                        task = group.create_task(self._sync(claim))
                        self._running[claim.account_id] = task
                        task.add_done_callback(lambda _t: self._wake.set())
                    await self.run_periodic()
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.settings.worker_tick):
                            waiter = asyncio.ensure_future(self._wake.wait())
                            stopper = asyncio.ensure_future(stop.wait())
                            try:
                                await asyncio.wait(
                                    {waiter, stopper}, return_when=asyncio.FIRST_COMPLETED
                                )
                            finally:
                                waiter.cancel()
                                stopper.cancel()
                for task in self._running.values():
                    task.cancel()
        finally:
            self._running.clear()

    def _reap(self) -> None:
        for account_id, task in list(self._running.items()):
            if task.done():
                del self._running[account_id]

    async def _sync(self, claim: Claim) -> SyncResult:
        try:
            return await self.runner.run(claim)
        except asyncio.CancelledError:
            # Shutting down: hand the mailbox back at once instead of waiting for the lease.
            with contextlib.suppress(Exception):
                async with self.db.transaction() as conn:
                    await account_store.release(
                        conn, claim, owner=self.owner, values={}, clear_request=False
                    )
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
