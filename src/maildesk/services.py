"""Assembly: builds every long-lived object from the settings, and closes them again.

The CLI, the web server, the demo, the tests and the benchmarks all go through ``open_services``
so they run the same wiring; tests inject a manual clock and an HTTP client that talks to the
simulators in-process.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy.exc import SQLAlchemyError

from maildesk.clock import Clock, SystemClock
from maildesk.config import Settings
from maildesk.errors import StoreError
from maildesk.live.bus import LiveBus
from maildesk.live.pg_relay import PgRelay
from maildesk.live.relay import WAKE_PUSH, WAKE_SYNC, Inbox, LocalRelay, Relay
from maildesk.providers.google_certs import GoogleCerts
from maildesk.providers.http import default_client
from maildesk.push.gmail_webhook import GmailWebhook
from maildesk.push.manager import GmailPush, PushManager
from maildesk.push.outlook import OutlookPush
from maildesk.push.outlook_webhook import OutlookWebhook
from maildesk.push.recorder import NotificationRecorder
from maildesk.secretbox import SecretBox
from maildesk.send import outbox_job
from maildesk.send.delivery import Delivery
from maildesk.store import jobs
from maildesk.store import push as push_store
from maildesk.store.database import Database
from maildesk.store.migrate import current_revision, head_revision, upgrade
from maildesk.sync.connectors import Connectors
from maildesk.sync.imap_idle import IdleSupervisor
from maildesk.sync.runner import SyncRunner
from maildesk.sync.worker import PeriodicJob, Worker, new_owner_id

EVENTS_KEPT = timedelta(days=7)
# Lifecycle actions a webhook noted run at once (the webhook makes the job due); this sweep
# only picks up what another process's webhook noted, or a failed action's retry.
LIFECYCLE_SWEEP = 60.0


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
    push: PushManager
    gmail_webhook: GmailWebhook
    outlook_webhook: OutlookWebhook
    # IMAP IDLE watchers; they run inside ``worker.serve`` (a worker companion).
    idle: IdleSupervisor
    # Carries the bus and wake-ups to the other processes on the database (PostgreSQL).
    relay: Relay
    # After stamping a sync request: wakes this process's worker and every other process's.
    wake: Callable[[], None]


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
        try:
            if migrate and await current_revision(db.engine) != head_revision():
                await upgrade(db.engine)
        except (OSError, SQLAlchemyError) as exc:
            raise StoreError(f"cannot reach the database at {db.where}: "
                             f"{type(exc).__name__}") from exc
        if http_client is None:
            http_client = await stack.enter_async_context(default_client())
        secrets = SecretBox(settings.secret_keys)
        # A SQLite file belongs to one process; on PostgreSQL other processes may share it.
        relay: Relay = (LocalRelay() if db.is_sqlite
                        else PgRelay(_relay_connect_options(db), where=db.where))
        bus = LiveBus(relay)
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
                events = await push_store.prune_events(conn, clock.now() - EVENTS_KEPT)
            return f"pruned {removed} job runs, {events} push events"

        worker = Worker(db=db, clock=clock, settings=settings, runner=runner)
        # Graph lifecycle events are acted on by a worker, not inside the webhook request:
        # the webhook marks the subscription and makes this job due at once.
        lifecycle_job = PeriodicJob("push-lifecycle", LIFECYCLE_SWEEP, lambda: push.run_lifecycle())

        def wake() -> None:
            worker.wake()
            relay.wake(WAKE_SYNC)

        def wake_push() -> None:
            lifecycle_job.next_at = None
            worker.wake()
            relay.wake(WAKE_PUSH)

        def woken(topics: frozenset[str]) -> None:
            """Another process asked (harmless where no worker runs: `maildesk web`)."""
            if WAKE_PUSH in topics:
                lifecycle_job.next_at = None
            worker.wake()

        idle = IdleSupervisor(db=db, clock=clock, settings=settings, sessions=connectors.imap,
                              wake=wake, owner=runner.owner, rng=rng)
        worker.companions.append(idle.serve)
        certs = GoogleCerts(connectors.http, settings.google_certs_url, clock)
        recorder = NotificationRecorder(db, clock, wake)
        gmail_webhook = GmailWebhook(db=db, clock=clock, keys=certs, recorder=recorder)
        outlook_webhook = OutlookWebhook(db=db, clock=clock, secrets=secrets, recorder=recorder,
                                         wake=wake, wake_push=wake_push)
        outlook_push = OutlookPush(
            graph_for=lambda a: connectors.graph(a.id, a.tenant),
            secrets=secrets, settings=settings, clock=clock,
        )

        def config_changed() -> None:
            gmail_webhook.invalidate()
            outlook_webhook.invalidate()

        push = PushManager(
            db=db, clock=clock, settings=settings,
            adapters=[GmailPush(connectors.gmail), outlook_push], wake=wake,
            on_config_change=config_changed, secrets=secrets,
        )
        worker.periodic += [
            PeriodicJob("push-renewal", settings.push_renewal_interval, push.run_job),
            lifecycle_job,
            PeriodicJob("maintenance", 3600.0, maintenance),
        ]
        # Sending: retries with backoff, attempts a crash interrupted, owed IMAP Sent copies.
        delivery = Delivery(db=db, clock=clock, settings=settings, bus=bus,
                            connectors=connectors, wake=wake, rng=rng)
        worker.periodic.append(
            PeriodicJob("outbox", outbox_job.INTERVAL, lambda: outbox_job.run(delivery)))
        await stack.enter_async_context(
            relay.running(Inbox(events=bus.deliver, reload=bus.reload, wake=woken)))
        yield Services(settings, db, clock, bus, secrets, connectors, runner, worker, push,
                       gmail_webhook, outlook_webhook, idle=idle, relay=relay, wake=wake)


def _relay_connect_options(db: Database) -> dict[str, Any]:
    """asyncpg.connect's arguments for ``db``'s URL, derived as SQLAlchemy derives them for
    its own connections (host, port, user, password, database, ssl). Never logged."""
    _args, options = db.engine.dialect.create_connect_args(db.engine.url)
    # Options of SQLAlchemy's asyncpg adapter that asyncpg.connect does not take.
    for name in ("prepared_statement_cache_size", "prepared_statement_name_func",
                 "async_creator_fn"):
        options.pop(name, None)
    return dict(options)
