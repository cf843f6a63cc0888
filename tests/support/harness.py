"""MailDesk wired to the Google simulator in-process (httpx ASGITransport), on a manual clock.

The production wiring (``open_services``) is used unchanged; only the HTTP client and the
clock are swapped, so these tests exercise the real client, retry and sync code.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from maildesk import mailboxes
from maildesk.clock import ManualClock
from maildesk.config import Settings
from maildesk.domain.accounts import GMAIL_SCOPE_FULL
from maildesk.services import Services, open_services
from maildesk.sim.gmail_state import GoogleState
from maildesk.sim.google import create_google_app
from maildesk.sim.microsoft import create_microsoft_app
from maildesk.sim.microsoft_state import MicrosoftState
from maildesk.store.tables import folders, message_folders, messages
from maildesk.sync.runner import SyncResult

SIM = "http://sim"
MS_SIM = "http://mssim"
MAILDESK = "http://maildesk"
CLIENT_ID = "maildesk-test-client"
CLIENT_SECRET = "maildesk-test-secret"


def sim_settings(data_dir: Path, db_url: str, **overrides: Any) -> Settings:
    base = Settings(
        data_dir=data_dir,
        database_url=db_url,
        secret_key="test-secret-key",
        google_client_id=CLIENT_ID,
        google_client_secret=CLIENT_SECRET,
        google_token_url=f"{SIM}/token",
        google_revoke_url=f"{SIM}/revoke",
        google_authorize_url=f"{SIM}/o/oauth2/v2/auth",
        gmail_api_url=SIM,
        google_certs_url=f"{SIM}/oauth2/v1/certs",
        microsoft_client_id=CLIENT_ID,
        microsoft_client_secret=CLIENT_SECRET,
        microsoft_authority_url=MS_SIM,
        graph_api_url=f"{MS_SIM}/v1.0",
        base_url=MAILDESK,
        allow_loopback_webhooks=True,
        prefetch_bodies=5,
        # Tests drive a ManualClock: a settling follow-up would wait for clock time that never
        # passes. Settling has its own tests (tests/sync/test_followup_settle.py).
        sync_followup_quiet=0.0,
    )
    return base.replace(**overrides)


class _LateApp(httpx.AsyncBaseTransport):
    """An ASGI transport to an app that exists only later: the Microsoft simulator needs a
    client to MailDesk (for the validation handshake) before MailDesk's services are built."""

    def __init__(self) -> None:
        self.app: Any = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.app is None:
            raise httpx.ConnectError("MailDesk is not up yet", request=request)
        return await httpx.ASGITransport(app=self.app).handle_async_request(request)


class Harness:
    def __init__(
        self, services: Services, google: GoogleState, clock: ManualClock,
        requests: list[httpx.Request], microsoft: MicrosoftState,
        to_maildesk: httpx.AsyncClient,
    ) -> None:
        self.services = services
        self.google = google
        self.microsoft = microsoft
        self.clock = clock
        # Every request MailDesk sent to the simulators, in order.
        self.requests = requests
        # The simulators' client to MailDesk's app (validation handshakes, notifications).
        self.to_maildesk = to_maildesk

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        *,
        db_url: str,
        clock: ManualClock,
        data_dir: Path,
        owner: str = "worker-test",
        google: GoogleState | None = None,
        **overrides: Any,
    ) -> AsyncIterator[Harness]:
        google = google or GoogleState(clock=clock, rng=random.Random(7))
        google.create_client(CLIENT_ID, CLIENT_SECRET)
        microsoft = MicrosoftState(clock=clock, rng=random.Random(8),
                                   notify_backoff_scale=0.001)
        microsoft.register_app(CLIENT_ID, CLIENT_SECRET)
        transport = httpx.ASGITransport(app=create_google_app(google))
        late = _LateApp()
        requests: list[httpx.Request] = []

        async def record(request: httpx.Request) -> None:
            requests.append(request)

        async with (
            httpx.AsyncClient(transport=late, base_url=MAILDESK) as to_maildesk,
            httpx.AsyncClient(
                transport=transport, base_url=SIM, event_hooks={"request": [record]},
                mounts={MS_SIM: httpx.ASGITransport(
                    app=create_microsoft_app(microsoft, outbound=to_maildesk))},
            ) as client,
        ):
            settings = sim_settings(data_dir, db_url, **overrides)
            async with open_services(
                settings, clock=clock, http_client=client, owner=owner, rng=random.Random(3)
            ) as services:
                from maildesk.app import create_app

                late.app = create_app(services)
                yield cls(services, google, clock, requests, microsoft, to_maildesk)

    @contextlib.asynccontextmanager
    async def second_worker(self, owner: str) -> AsyncIterator[Services]:
        """Another worker on the same database and simulator (lease tests)."""
        transport = httpx.ASGITransport(app=create_google_app(self.google))
        async with (
            httpx.AsyncClient(transport=transport, base_url=SIM) as client,
            open_services(self.services.settings, clock=self.clock, http_client=client,
                          owner=owner, rng=random.Random(4), migrate=False) as services,
        ):
            yield services

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[httpx.AsyncClient]:
        """MailDesk's app reachable in-process (yielded client), the simulator's Pub/Sub
        delivering to it, and the worker serving in the background, until the block ends."""
        from maildesk.app import create_app

        app_transport = httpx.ASGITransport(app=create_app(self.services))
        stop = asyncio.Event()
        async with (
            httpx.AsyncClient(transport=app_transport, base_url=MAILDESK) as client,
            self.google.pubsub.running(client),
            self.microsoft.notifier.running(client),
            asyncio.TaskGroup() as group,
        ):
            group.create_task(self.services.worker.serve(stop))
            try:
                yield client
            finally:
                stop.set()

    def grant(self, email: str, scopes: tuple[str, ...] = (GMAIL_SCOPE_FULL,)) -> str:
        return self.google.create_grant(email, scopes, client_id=CLIENT_ID)

    async def add_gmail(
        self, email: str = "alice@example.com", *, seed: int = 0,
        scopes: tuple[str, ...] = (GMAIL_SCOPE_FULL,),
    ) -> int:
        token = self.grant(email, scopes)
        if seed:
            self.google.seed_mailbox(email, seed)
        return await mailboxes.add_gmail(self.services, email=email, refresh_token=token)

    def outlook_grant(self, email: str, *, kind: str = "graph") -> str:
        self.microsoft.ensure_mailbox(email)
        return self.microsoft.grant(email, CLIENT_ID, kind=kind)

    async def add_outlook(
        self, email: str = "olivia@example.com", *, seed: int = 0, kind: str = "graph",
    ) -> int:
        token = self.outlook_grant(email, kind=kind)
        if seed:
            self.microsoft.seed_mailbox(email, seed)
        return await mailboxes.add_outlook(self.services, email=email, refresh_token=token)

    def outlook_state(self, email: str) -> dict[str, list[str]]:
        """remote id -> [folder id], as the Microsoft simulator has them now."""
        snapshot = self.microsoft.snapshot(email)
        return {mid: [m["folder"]] for mid, m in snapshot["messages"].items()}

    async def sync(self) -> list[SyncResult]:
        """One scheduler round: claim the due mailboxes and run one sync of each."""
        worker = self.services.worker
        claims = await worker.claim(self.services.settings.worker_concurrency)
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self.services.runner.run(c)) for c in claims]
        return [t.result() for t in tasks]

    async def sync_until_idle(self, rounds: int = 50) -> list[SyncResult]:
        """Sync, then keep syncing follow-ups (backfill, retries) until nothing is due."""
        results: list[SyncResult] = []
        for _ in range(rounds):
            batch = await self.sync()
            if not batch:
                return results
            results += batch
            if any(r.status != "ok" for r in batch):
                return results
        raise AssertionError("still syncing after many rounds")

    def provider_state(self, email: str) -> dict[str, list[str]]:
        """remote id -> sorted labels, as the simulator has them now."""
        snapshot = self.google.snapshot(email)
        return {mid: sorted(labels) for mid, labels in snapshot["messages"].items()}

    async def store_state(self, account_id: int) -> dict[str, list[str]]:
        """remote id -> sorted folder remote ids, as our store has them now."""
        async with self.services.db.read() as conn:
            rows = await conn.execute(
                select(messages.c.remote_id, folders.c.remote_id.label("folder"))
                .select_from(messages)
                .outerjoin(message_folders, message_folders.c.message_id == messages.c.id)
                .outerjoin(folders, folders.c.id == message_folders.c.folder_id)
                .where(messages.c.account_id == account_id)
            )
            state: dict[str, list[str]] = {}
            for remote_id, folder in rows:
                state.setdefault(remote_id, [])
                if folder is not None:
                    state[remote_id].append(folder)
        return {k: sorted(v) for k, v in state.items()}

    async def message_count(self, account_id: int) -> int:
        return len(await self.store_state(account_id))


def without_unread(state: dict[str, list[str]]) -> dict[str, list[str]]:
    """Our folders are Gmail's labels minus UNREAD (a flag, not a place)."""
    return {k: [label for label in v if label != "UNREAD"] for k, v in state.items()}
