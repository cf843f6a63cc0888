"""Initial-sync throughput and peak memory of one Gmail mailbox synced from the simulator.

Targets (issue: initial-sync rate): at least 1,000 messages/s of metadata on 2 cores, and a peak
RSS below 300 MB, for a 20,000-message mailbox.

What runs where:
- the Google simulator in a child process (``bench._sim_process``), seeded with ``--messages``
  messages, on a free 127.0.0.1 port, so this process's RSS is MailDesk's alone;
- MailDesk in this process, through ``open_services`` exactly as ``maildesk serve`` wires it,
  with the production HTTP client (a request counter is its only addition), on SQLite in a temp
  dir or on a throwaway PostgreSQL (``tests.support.postgres.PostgresCluster``);
- ``--db both`` runs each database in a fresh child process of this script, so every run's peak
  RSS is its own.

The measured run adds the account with ``mailboxes.add_gmail`` and then claims and runs syncs
(as ``Harness.sync_until_idle`` does) until nothing is due: INBOX first, then backfill of the
rest. Afterwards, in the same process and against the same simulator, the baseline lists every
id and fetches all metadata with the same ``GmailClient`` and page/batch sizes, storing nothing.
``store_overhead_ratio`` = provider-only rate / our rate: how much slower syncing is than just
talking to the provider. Ratios are what to compare between machines, not absolute times.

Prints ONE JSON document on stdout; diagnostics go to stderr. Exit status 1 when the run fails
(a sync error, or the store does not end up holding exactly the simulator's messages).

Usage (from the repo root)::

    .venv/bin/python bench/sync_throughput.py [--messages 20000] [--db sqlite|postgresql|both]
        [--seed 1] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import os
import platform
import resource
import select
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # Run as a script: make ``bench`` and ``tests`` importable.
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import func  # noqa: E402
from sqlalchemy import select as sql_select  # noqa: E402

from bench._common import CLIENT_ID, CLIENT_SECRET  # noqa: E402
from bench._process import (  # noqa: E402
    BenchFailure,
    bench_database,
    child_env,
    own_cpu_s,
    request_kind,
    run_per_database,
    tree_cpu_s,
)
from maildesk import mailboxes  # noqa: E402
from maildesk.config import Settings  # noqa: E402
from maildesk.domain.events import ChangeKind, MailEvent  # noqa: E402
from maildesk.live.bus import Subscription  # noqa: E402
from maildesk.providers.http import default_client  # noqa: E402
from maildesk.services import Services, open_services  # noqa: E402
from maildesk.store import accounts as account_store  # noqa: E402
from maildesk.store import mail as mail_store  # noqa: E402
from maildesk.store.tables import folders, message_folders, messages  # noqa: E402
from maildesk.sync.gmail import PAGE_SIZE  # noqa: E402

TARGET_RATE = 1000.0  # messages/s
TARGET_RSS_MB = 300.0
SIM_START_TIMEOUT = 180.0  # seeding 20,000 messages takes a few seconds; be generous
POLL_INTERVAL = 0.05  # resolution of the initial_sync_done / backfill_done marks
MAX_SYNC_RUNS = 1000


# ------------------------------------------------------------------------------ measurements
def current_rss_mb() -> float:
    """This process's resident set size now (Linux ``/proc``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (``ru_maxrss`` is in KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass(slots=True)
class CpuClock:
    """CPU seconds spent by MailDesk (this process), the simulator and PostgreSQL."""

    sim_pid: int
    pg_pid: int | None

    def read(self) -> dict[str, float]:
        values = {"maildesk": own_cpu_s(), "simulator": tree_cpu_s(self.sim_pid)}
        if self.pg_pid is not None:
            values["postgres"] = tree_cpu_s(self.pg_pid)
        return values

    @staticmethod
    def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: round(after[k] - before[k], 3) for k in before}


@dataclass(slots=True)
class RequestCounter:
    """Every HTTP request MailDesk sends to the provider, by kind."""

    kinds: Counter[str] = field(default_factory=Counter)

    async def hook(self, request: httpx.Request) -> None:
        self.kinds[request_kind(request)] += 1

    def snapshot(self) -> Counter[str]:
        return Counter(self.kinds)


@dataclass(slots=True)
class Marks:
    """perf_counter() times of the milestones, filled in as they are observed."""

    first_inbox: float | None = None
    initial_done: float | None = None
    backfill_done: float | None = None
    events: int = 0
    added: int = 0
    overflowed: bool = False


# ------------------------------------------------------------------------------ the simulator
@dataclass(frozen=True, slots=True)
class SimInfo:
    url: str
    refresh_token: str
    email: str
    messages: int
    inbox: int
    seed_seconds: float
    pid: int


@contextlib.contextmanager
def simulator(messages: int, seed: int, profile: Path | None) -> Iterator[SimInfo]:
    """Start ``bench._sim_process``; always stop it (EOF on stdin, then SIGTERM, then SIGKILL)."""
    command = [sys.executable, "-m", "bench._sim_process", "--messages", str(messages),
               "--seed", str(seed)]
    if profile is not None:
        command += ["--profile", str(profile)]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + SIM_START_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchFailure(f"the simulator did not start within {SIM_START_TIMEOUT:.0f}s")
            ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 1.0))
            if ready:
                break
            if proc.poll() is not None:
                raise BenchFailure(f"the simulator exited with status {proc.returncode}")
        line = proc.stdout.readline()
        if not line:
            raise BenchFailure(f"the simulator exited with status {proc.wait(10)}")
        hello = json.loads(line)
        yield SimInfo(
            url=hello["url"], refresh_token=hello["refresh_token"], email=hello["email"],
            messages=int(hello["messages"]), inbox=int(hello["inbox"]),
            seed_seconds=float(hello["seed_seconds"]), pid=proc.pid,
        )
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


# ------------------------------------------------------------------------------ the database


def bench_settings(data_dir: Path, db_url: str, sim_url: str, prefetch: int | None) -> Settings:
    settings = Settings(
        data_dir=data_dir,
        database_url=db_url,
        secret_key="bench-secret-key",
        google_client_id=CLIENT_ID,
        google_client_secret=CLIENT_SECRET,
        google_token_url=f"{sim_url}/token",
        google_revoke_url=f"{sim_url}/revoke",
        google_authorize_url=f"{sim_url}/o/oauth2/v2/auth",
        gmail_api_url=sim_url,
    )
    if prefetch is not None:
        settings = settings.replace(prefetch_bodies=prefetch)
    return settings


# ------------------------------------------------------------------------------ the run
async def _watch_events(sub: Subscription, services: Services, marks: Marks) -> None:
    inbox_id: int | None = None
    while True:
        event = await sub.get()
        now = time.perf_counter()
        _note(marks, event)
        if event is not None and marks.first_inbox is None:
            if inbox_id is None:
                async with services.db.read() as conn:
                    inbox_id = (await mail_store.folder_map(conn, event.account_id)).get("INBOX")
            if inbox_id is not None and inbox_id in event.folder_ids:
                marks.first_inbox = now


def _note(marks: Marks, event: MailEvent | None) -> None:
    if event is None:  # the queue overflowed (it is sized not to)
        marks.overflowed = True
        return
    marks.events += 1
    marks.added += event.kind is ChangeKind.ADDED


async def _poll_account(services: Services, account_id: int, marks: Marks) -> None:
    while marks.backfill_done is None:
        await _check_account(services, account_id, marks)
        await asyncio.sleep(POLL_INTERVAL)


async def _check_account(services: Services, account_id: int, marks: Marks) -> None:
    async with services.db.read() as conn:
        row = await account_store.get(conn, account_id)
    now = time.perf_counter()
    if row.initial_sync_done and marks.initial_done is None:
        marks.initial_done = now
    if row.backfill_done and marks.backfill_done is None:
        marks.backfill_done = now


async def _stored_counts(services: Services, account_id: int) -> tuple[int, int]:
    async with services.db.read() as conn:
        total = (await conn.execute(
            sql_select(func.count()).select_from(messages)
            .where(messages.c.account_id == account_id)
        )).scalar_one()
        inbox = (await conn.execute(
            sql_select(func.count()).select_from(message_folders)
            .join(folders, folders.c.id == message_folders.c.folder_id)
            .where(folders.c.account_id == account_id, folders.c.remote_id == "INBOX")
        )).scalar_one()
    return int(total), int(inbox)


async def sync_mailbox(
    services: Services, sim: SimInfo, counter: RequestCounter, cpu: CpuClock, limit_s: float
) -> dict[str, Any]:
    """Add the mailbox and sync until nothing is due; the timed part of the benchmark."""
    marks = Marks()
    requests_before = counter.snapshot()
    cpu_before = cpu.read()
    with services.bus.subscribe(maxsize=1_000_000) as sub:
        watcher = asyncio.create_task(_watch_events(sub, services, marks))
        poller: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(limit_s):
                started = time.perf_counter()
                account_id = await mailboxes.add_gmail(
                    services, email=sim.email, refresh_token=sim.refresh_token
                )
                poller = asyncio.create_task(_poll_account(services, account_id, marks))
                runs = 0
                while claims := await services.worker.claim(
                    services.settings.worker_concurrency
                ):
                    for claim in claims:
                        result = await services.runner.run(claim)
                        runs += 1
                        if result.status != "ok":
                            raise BenchFailure(
                                f"sync run {runs} ended {result.status}: "
                                f"{result.error_kind}: {result.error}"
                            )
                    if runs >= MAX_SYNC_RUNS:
                        raise BenchFailure(f"still syncing after {runs} runs")
                finished = time.perf_counter()
                await _check_account(services, account_id, marks)
        finally:
            for task in (watcher, poller):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        # Count what the last run published after the watcher's last look.
        while not sub.queue.empty():
            _note(marks, sub.queue.get_nowait())
    cpu_spent = CpuClock.spent(cpu_before, cpu.read())
    requests = counter.snapshot() - requests_before
    if marks.initial_done is None or marks.backfill_done is None:
        raise BenchFailure("the sync went idle before the account's backfill was done")
    stored, stored_inbox = await _stored_counts(services, account_id)
    if stored != sim.messages or stored_inbox != sim.inbox:
        raise BenchFailure(
            f"the store holds {stored} messages ({stored_inbox} in INBOX); "
            f"the simulator has {sim.messages} ({sim.inbox} in INBOX)"
        )
    if marks.first_inbox is None:
        raise BenchFailure("no INBOX message was ever published on the live bus")
    total_s = marks.backfill_done - started
    initial_s = marks.initial_done - started
    return {
        "account_id": account_id,
        "stored": stored,
        "stored_inbox": stored_inbox,
        "time_to_first_inbox_s": round(marks.first_inbox - started, 3),
        "initial_sync_s": round(initial_s, 3),
        "backfill_done_s": round(total_s, 3),
        "until_idle_s": round(finished - started, 3),
        "sync_runs": runs,
        "rate_msgs_per_s": round(stored / total_s, 1),
        "inbox_rate_msgs_per_s": round(stored_inbox / initial_s, 1),
        "bus_events": marks.events,
        "bus_added_events": marks.added,
        "bus_overflowed": marks.overflowed,
        "provider_requests": sum(requests.values()),
        "provider_requests_by_kind": dict(sorted(requests.items())),
        "cpu_s": cpu_spent,
    }


async def provider_only(
    services: Services, account_id: int, counter: RequestCounter, cpu: CpuClock, limit_s: float
) -> dict[str, Any]:
    """The baseline: list every id and fetch all metadata as the sync does, storing nothing."""
    client = services.connectors.gmail(account_id)
    requests_before = counter.snapshot()
    cpu_before = cpu.read()
    fetched = 0
    async with asyncio.timeout(limit_s):
        started = time.perf_counter()
        token: str | None = None
        while True:
            page = await client.list_message_ids(None, token, PAGE_SIZE, True)
            found = await client.get_metadata(page.ids)
            fetched += sum(1 for m in found.values() if m is not None)
            token = page.next_page_token
            if token is None:
                break
        elapsed = time.perf_counter() - started
    requests = counter.snapshot() - requests_before
    return {
        "messages": fetched,
        "seconds": round(elapsed, 3),
        "rate_msgs_per_s": round(fetched / elapsed, 1),
        "provider_requests": sum(requests.values()),
        "cpu_s": CpuClock.spent(cpu_before, cpu.read()),
    }


async def measure(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    profile_dir: Path | None = args.profile
    sim_profile = profile_dir / f"sim_{kind}.pstats" if profile_dir else None
    with simulator(args.messages, args.seed, sim_profile) as sim:
        async with bench_database(kind, "maildesk_bench", dict(args.pg_setting)) as store:
            with tempfile.TemporaryDirectory(prefix="maildesk-bench-") as tmp:
                settings = bench_settings(Path(tmp), store.url, sim.url, args.prefetch)
                counter = RequestCounter()
                cpu = CpuClock(sim.pid, store.pg_pid)
                rss_before = current_rss_mb()
                async with (
                    default_client(event_hooks={"request": [counter.hook]}) as http,
                    open_services(settings, http_client=http) as services,
                ):
                    rss_services = current_rss_mb()
                    profiler = cProfile.Profile() if profile_dir else None
                    if profiler is not None:
                        profiler.enable()
                    try:
                        sync = await sync_mailbox(services, sim, counter, cpu, args.timeout)
                    finally:
                        if profiler is not None and profile_dir is not None:
                            profiler.disable()
                            profiler.dump_stats(profile_dir / f"maildesk_{kind}.pstats")
                    rss_after = current_rss_mb()
                    peak = max(peak_rss_mb(), rss_after)
                    baseline = await provider_only(
                        services, sync["account_id"], counter, cpu, args.timeout
                    )
    if baseline["messages"] != sim.messages:
        raise BenchFailure(
            f"the baseline fetched {baseline['messages']} of {sim.messages} messages"
        )
    rate = sync["rate_msgs_per_s"]
    sync_cpu_us = sync["cpu_s"]["maildesk"] / sync["stored"] * 1e6
    base_cpu_us = baseline["cpu_s"]["maildesk"] / baseline["messages"] * 1e6
    return {
        "db": kind,
        "messages": sim.messages,
        "inbox_messages": sim.inbox,
        "simulator_seed_s": sim.seed_seconds,
        **{k: v for k, v in sync.items() if k != "account_id"},
        "rss_before_mb": round(rss_before, 1),
        "rss_after_open_services_mb": round(rss_services, 1),
        "rss_after_sync_mb": round(rss_after, 1),
        "peak_rss_mb": round(peak, 1),
        "baseline": baseline,
        "provider_only_rate": baseline["rate_msgs_per_s"],
        "store_overhead_ratio": round(baseline["rate_msgs_per_s"] / rate, 2),
        # CPU time is steadier than wall time on a shared machine: MailDesk's own CPU per
        # message while syncing, against the same client's CPU per message in the baseline.
        "maildesk_cpu_us_per_msg": round(sync_cpu_us, 1),
        "provider_only_cpu_us_per_msg": round(base_cpu_us, 1),
        "cpu_overhead_ratio": round(sync_cpu_us / base_cpu_us, 2),
        "meets_target": {
            "rate_ge_1000_msgs_per_s": rate >= TARGET_RATE,
            "peak_rss_lt_300_mb": peak < TARGET_RSS_MB,
        },
    }


# ------------------------------------------------------------------------------ entry point
def _document(args: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    defaults = Settings()
    return {
        "benchmark": "sync_throughput",
        "messages": args.messages,
        "seed": args.seed,
        "targets": {"rate_msgs_per_s": TARGET_RATE, "peak_rss_mb": TARGET_RSS_MB},
        "settings": {
            "page_size": PAGE_SIZE,
            "backfill_pages_per_run": defaults.backfill_pages_per_run,
            "prefetch_bodies": defaults.prefetch_bodies if args.prefetch is None
            else args.prefetch,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "pg_settings": dict(args.pg_setting),
        "runs": runs,
    }


def _pg_setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    return name.strip(), value.strip()


def _child_command(kind: str, args: argparse.Namespace) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--db", kind,
               "--messages", str(args.messages), "--seed", str(args.seed),
               "--timeout", str(args.timeout)]
    if args.prefetch is not None:
        command += ["--prefetch", str(args.prefetch)]
    if args.profile is not None:
        command += ["--profile", str(args.profile)]
    for name, value in args.pg_setting:
        command += ["--pg-setting", f"{name}={value}"]
    return command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds allowed for the sync, and again for the baseline")
    parser.add_argument("--prefetch", type=int, default=None,
                        help="bodies prefetched after each sync run (default: the setting's)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="write cProfile stats of MailDesk and the simulator to this folder")
    parser.add_argument("--pg-setting", type=_pg_setting, action="append", default=[],
                        metavar="NAME=VALUE",
                        help="extra postgresql.conf entry of the throwaway server (experiments)")
    args = parser.parse_args(argv)
    if args.messages < 1:
        parser.error("--messages must be at least 1")
    if args.profile is not None:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        if args.db == "both":
            runs = run_per_database(lambda kind: _child_command(kind, args),
                                    timeout=3 * args.timeout + SIM_START_TIMEOUT)
        else:
            runs = [asyncio.run(measure(args.db, args))]
    except BenchFailure as exc:
        print(f"sync_throughput: FAILED: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"sync_throughput: FAILED: not done within --timeout {args.timeout:g}s",
              file=sys.stderr)
        return 1
    json.dump(_document(args, runs), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
