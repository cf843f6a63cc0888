"""SIGKILL a `maildesk worker` process at random points of its syncs, again and again, while the
mailbox keeps changing; then let a worker finish. The store must equal the simulator's mailbox
exactly: every message, every label, every unread flag, nothing missing, nothing doubled.

The Google simulator serves over real loopback HTTP from the test's event loop; each worker is
a real process (`maildesk worker`) on the same database, killed with SIGKILL (no handler runs,
no lease is handed back, a transaction may be cut anywhere). Leases are 1 s so the next worker
takes over at once; backfill does one page per run so a kill lands inside the backfill as often
as inside the incremental sync.
"""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

from sqlalchemy import func, select

from maildesk import mailboxes
from maildesk.clock import SystemClock
from maildesk.config import Settings
from maildesk.domain.accounts import GMAIL_SCOPE_FULL
from maildesk.services import open_services
from maildesk.sim.gmail_state import GoogleState
from maildesk.sim.google import create_google_app
from maildesk.sim.server import serve_app
from maildesk.store.database import Database
from maildesk.store.tables import folders, message_folders, messages
from tests.support.process_env import google_sim_env
from tests.test_cli import maildesk_script

EMAIL = "kill@example.com"
CLIENT_ID = "kill-test-client"
CLIENT_SECRET = "kill-test-secret"
TRIALS = 20
SEEDED = 1_200
CONVERGE_WITHIN = 60.0


def _worker_env(sim: str, db_url: str, data_dir: Path) -> dict[str, str]:
    return google_sim_env(
        sim, db_url=db_url, data_dir=data_dir, client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET, secret_key="kill-test-secret-key",
        MAILDESK_LEASE_SECONDS="1", MAILDESK_WORKER_TICK="0.05",
        MAILDESK_POLL_INTERVAL="0.3", MAILDESK_BACKFILL_PAGES_PER_RUN="1",
        MAILDESK_PREFETCH_BODIES="3", MAILDESK_IMAP_IDLE="false", MAILDESK_LOG_LEVEL="INFO",
    )


async def _start_worker(env: dict[str, str]) -> asyncio.subprocess.Process:
    """A worker process, returned once it says it started (its syncs begin right after)."""
    proc = await asyncio.create_subprocess_exec(
        maildesk_script(), "worker", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    async with asyncio.timeout(30):
        while True:
            line = await proc.stderr.readline()
            assert line, f"the worker exited before it started (code {await proc.wait()})"
            if b"worker" in line and b"started" in line:
                break
    return proc


async def _drain(proc: asyncio.subprocess.Process) -> None:
    """Keep reading the worker's log so a full pipe never blocks it."""
    assert proc.stderr is not None
    while await proc.stderr.read(65536):
        pass


def _mutate(state: GoogleState, rng: random.Random, round_no: int) -> None:
    """What a busy mailbox does between two kills: mail arrives, is read, starred, binned,
    deleted for good."""
    for i in range(3):
        state.add_message(EMAIL, subject=f"round {round_no} #{i}", sender="a@example.org",
                          to=EMAIL, text="hello", html="<p>hello</p>")
    ids = sorted(state.snapshot(EMAIL)["messages"])
    state.delete_message(EMAIL, rng.choice(ids))
    ids = sorted(state.snapshot(EMAIL)["messages"])
    for mid in rng.sample(ids, 3):
        state.modify_labels(EMAIL, mid, add=["STARRED"], remove=["UNREAD"])
    state.trash_message(EMAIL, rng.choice(ids))


def _expected(state: GoogleState) -> dict[str, tuple[tuple[str, ...], bool]]:
    """remote id -> (labels except UNREAD, unread) as the simulator has them."""
    return {mid: (tuple(sorted(set(labels) - {"UNREAD"})), "UNREAD" in labels)
            for mid, labels in state.snapshot(EMAIL)["messages"].items()}


async def _stored(db: Database, account_id: int) -> dict[str, tuple[tuple[str, ...], bool]]:
    async with db.read() as conn:
        rows = (await conn.execute(
            select(messages.c.remote_id, messages.c.unread, folders.c.remote_id.label("folder"))
            .select_from(messages)
            .outerjoin(message_folders, message_folders.c.message_id == messages.c.id)
            .outerjoin(folders, folders.c.id == message_folders.c.folder_id)
            .where(messages.c.account_id == account_id)
        )).all()
    labels: dict[str, set[str]] = {}
    unread: dict[str, bool] = {}
    for remote_id, is_unread, folder in rows:
        labels.setdefault(remote_id, set())
        unread[remote_id] = bool(is_unread)
        if folder is not None:
            labels[remote_id].add(folder)
    return {mid: (tuple(sorted(labels[mid])), unread[mid]) for mid in labels}


async def _row_count(db: Database, account_id: int) -> int:
    async with db.read() as conn:
        count = await conn.scalar(
            select(func.count()).select_from(messages).where(messages.c.account_id == account_id))
    return int(count or 0)


async def test_sigkill_at_random_points_loses_and_doubles_nothing(
    db_url: str, tmp_path: Path
) -> None:
    rng = random.Random(20261121)
    state = GoogleState(clock=SystemClock(), rng=random.Random(5))
    state.create_client(CLIENT_ID, CLIENT_SECRET)
    refresh_token = state.create_grant(EMAIL, (GMAIL_SCOPE_FULL,), client_id=CLIENT_ID)
    state.seed_mailbox(EMAIL, SEEDED)

    async with serve_app(create_google_app(state), host="127.0.0.1") as sim:
        env = _worker_env(sim, db_url, tmp_path)
        settings = Settings.from_env(env)
        async with open_services(settings) as services:
            account_id = await mailboxes.add_gmail(services, email=EMAIL,
                                                   refresh_token=refresh_token)
            killed_mid_backfill = 0
            for trial in range(TRIALS):
                proc = await _start_worker(env)
                drain = asyncio.create_task(_drain(proc))
                try:
                    _mutate(state, rng, trial)
                    await asyncio.sleep(rng.uniform(0.0, 0.5))
                    proc.send_signal(signal.SIGKILL)
                    assert await proc.wait() == -signal.SIGKILL
                finally:
                    await drain
                account = await mailboxes.find(services, str(account_id))
                killed_mid_backfill += not account.backfill_done
            # The kills did land inside syncs, backfill included, not only at start-up.
            assert await _row_count(services.db, account_id) > 0
            assert killed_mid_backfill >= 3

            proc = await _start_worker(env)
            drain = asyncio.create_task(_drain(proc))
            try:
                want = _expected(state)
                got: dict[str, tuple[tuple[str, ...], bool]] = {}
                async with asyncio.timeout(CONVERGE_WITHIN):
                    while got != want:
                        await asyncio.sleep(0.3)
                        got = await _stored(services.db, account_id)
            finally:
                proc.send_signal(signal.SIGTERM)
                assert await proc.wait() == 0
                await drain
            assert got == want
            # Exactly one row per message: nothing doubled by a replayed page.
            assert await _row_count(services.db, account_id) == len(want)
            assert len(want) > SEEDED
