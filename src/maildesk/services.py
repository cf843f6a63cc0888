"""Assembly: builds every long-lived object from the settings, and closes them again.

The CLI, the web server, the demo, the tests and the benchmarks all go through ``open_services``
so they run the same wiring; tests inject a manual clock and an HTTP client that talks to the
simulators in-process.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from maildesk.clock import Clock, SystemClock
from maildesk.config import Settings
from maildesk.live.bus import LiveBus
from maildesk.providers.http import default_client
from maildesk.secretbox import SecretBox
from maildesk.store import jobs
from maildesk.store.database import Database
from maildesk.store.migrate import current_revision, head_revision, upgrade
from maildesk.sync.connectors import Connectors
from maildesk.sync.runner import SyncRunner
from maildesk.sync.worker import PeriodicJob, Worker, new_owner_id


@dataclass(slots=True)
class Services:
    settings: Settings
    db: Database
    clock: Clock
    bus: LiveBus
    secrets: SecretBox
    connectors: Connectors
    runner: SyncRunner
    worker: Worker


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    clock: Clock | None = None,
    http_client: httpx.AsyncClient | None = None,
    owner: str | None = None,
    rng: random.Random | None = None,
    migrate: bool = True,
) -> AsyncIterator[Services]:
    settings = settings.with_secret_key()
    clock = clock or SystemClock()
    db = Database(settings.effective_database_url)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(db.dispose)
        # Only take the schema lock when there is something to do: read-only commands run
        # beside a live server (SQLite has one writer) and should not queue behind it.
        if migrate and await current_revision(db.engine) != head_revision():
            await upgrade(db.engine)
        if http_client is None:
            http_client = await stack.enter_async_context(default_client())
        secrets = SecretBox(settings.secret_keys)
        bus = LiveBus()
        connectors = Connectors(
            settings, db=db, clock=clock, secrets=secrets, http_client=http_client, rng=rng
        )
        runner = SyncRunner(
            db=db, clock=clock, bus=bus, settings=settings, connectors=connectors,
            owner=owner or new_owner_id(), rng=rng,
        )

        async def maintenance() -> str:
            async with db.transaction() as conn:
                removed = await jobs.prune(conn)
            return f"pruned {removed} job runs"

        worker = Worker(
            db=db, clock=clock, settings=settings, runner=runner,
            periodic=[PeriodicJob("maintenance", 3600.0, maintenance)],
        )
        yield Services(settings, db, clock, bus, secrets, connectors, runner, worker)
