"""IMAP: new-mail latency over IDLE, and the initial-sync rate, each against a floor.

Targets (issue: classic IMAP mailboxes): from an APPEND to the message **committed** in our
store within **1 s** (Dovecot's own notification delay of about 0.5 s is the floor), and an
initial sync of at least **1,000 messages/s** of metadata.

What runs where (one run per database; ``--db both`` runs each in a fresh child process):

- Dovecot (``tests.support.dovecot.DovecotServer``, the full flavour: CONDSTORE, QRESYNC) on
  free loopback ports, STARTTLS with its own certificate, a fresh user per part;
- MailDesk in this process through ``open_services`` exactly as ``maildesk serve`` wires it
  (the IDLE supervisor runs inside ``worker.serve``), on SQLite in a temp dir or a throwaway
  PostgreSQL.

(a) Latency. The worker serves (IDLE on INBOX, no polling: the poll interval is an hour). Each
sample APPENDs one message over a separate connection of our client on this event loop; the
next sample starts ``--spacing`` s after the previous one was committed and its sync released
the mailbox. Times are ``time.perf_counter()``:

- append: just before the APPEND is sent (``append_rtt_ms`` says how long its OK took; the
  message exists on the server somewhere within that window, so latencies are over-stated by at
  most that, never under-stated);
- committed: when ``LiveBus.publish`` is called with the message's ``added`` event, which the
  engine does right after COMMIT returned (a thin wrapper on ``services.bus.publish``);
- sync start: when the runner began the sync that committed it (a wrapper on ``runner.run``);
- floor: a bare IDLE connection of our client on the same INBOX, in its own thread and event
  loop, stamps each EXISTS as it arrives. ``floor_append_to_exists_ms`` is Dovecot's notify
  delay plus one read; ``overhead_above_floor_ms`` is, per sample, committed minus that sample's
  EXISTS: what MailDesk adds (request stamp, wake, claim, SELECT/QRESYNC, FETCH, COMMIT).

(b) Initial sync. ``--messages`` messages are written straight into a fresh user's Maildir; one
untimed pass of our client over them warms Dovecot's index and cache, so both timed parts read a
warm server. Timed: the account is created and synced by claiming and running syncs (as
``Harness.sync_until_idle`` does) until nothing is due, which must leave exactly those messages
in the store. Floor, afterwards: our client alone ``UID FETCH``es the same metadata in the
engine's page size (500), storing nothing. ``store_overhead_ratio`` = floor rate / our rate.

Prints ONE JSON document on stdout; diagnostics go to stderr. Exit status 1 when the run fails.

Usage (from the repo root)::

    .venv/bin/python bench/imap_latency.py [--db sqlite|postgresql|both] [--samples 40]
        [--spacing 0.5] [--messages 5000] [--prefetch N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # Run as a script: make ``bench`` and ``tests`` importable.
    sys.path.insert(0, str(ROOT))

from sqlalchemy import func  # noqa: E402
from sqlalchemy import select as sql_select  # noqa: E402
from tests.support.dovecot import DovecotServer, Flavour, make_message  # noqa: E402

from bench._process import (  # noqa: E402
    BenchFailure,
    Store,
    bench_database,
    own_cpu_s,
    run_per_database,
    tree_cpu_s,
)
from maildesk.config import Settings  # noqa: E402
from maildesk.domain.accounts import ProviderKind  # noqa: E402
from maildesk.domain.events import ChangeKind, MailEvent  # noqa: E402
from maildesk.domain.mail_servers import MailServers, Security, ServerAddress  # noqa: E402
from maildesk.domain.push import PushState  # noqa: E402
from maildesk.providers.imap import ImapClient, ImapServer, PasswordLogin  # noqa: E402
from maildesk.providers.imap_fetch import Exists  # noqa: E402
from maildesk.providers.imap_wire import UidSet  # noqa: E402
from maildesk.services import Services, open_services  # noqa: E402
from maildesk.store import accounts as account_store  # noqa: E402
from maildesk.store import push as push_store  # noqa: E402
from maildesk.store.accounts import Claim  # noqa: E402
from maildesk.store.tables import messages  # noqa: E402
from maildesk.sync.imap_folder import PAGE_SIZE  # noqa: E402
from maildesk.sync.runner import SyncResult  # noqa: E402

TARGET_LATENCY_MS = 1000.0
TARGET_RATE = 1000.0
STEP_TIMEOUT = 15.0
SETUP_TIMEOUT = 60.0

log = logging.getLogger("bench.imap_latency")


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max (nearest rank) and the count, rounded to 0.001."""
    if not values:
        return {}
    ordered = sorted(values)

    def rank(p: float) -> float:
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
        return round(ordered[index], 3)

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "max": round(ordered[-1], 3),
            "n": len(ordered)}


def imap_server(dovecot: DovecotServer) -> ImapServer:
    return ImapServer(dovecot.host, dovecot.imap_port, Security.STARTTLS,
                      ssl_context=dovecot.ssl_context(), connect_timeout=10.0,
                      command_timeout=60.0)


def settings_for(store: Store, data_dir: Path, dovecot: DovecotServer,
                 prefetch: int | None) -> Settings:
    base = Settings(
        data_dir=data_dir, database_url=store.url, secret_key="imap-bench-secret",
        tls_ca_file=str(dovecot.cert_path), imap_timeout=60.0, imap_connect_timeout=10.0,
        # No polling during the run: a sync can only come from IDLE (or the initial request).
        poll_interval=3600.0, safety_poll_interval=3600.0, log_level="WARNING",
    )
    return base if prefetch is None else base.replace(prefetch_bodies=prefetch)


async def add_account(services: Services, dovecot: DovecotServer, user: str) -> int:
    servers = MailServers(imap=ServerAddress(dovecot.host, dovecot.imap_port, Security.STARTTLS),
                          username=user)
    async with services.db.transaction() as conn:
        return await account_store.create(
            conn, provider=ProviderKind.IMAP, email=f"{user}@example.org",
            now=services.clock.now(), password_enc=services.secrets.encrypt(dovecot.password),
            settings={"imap": servers.to_json()})


async def stored_count(services: Services, account_id: int) -> int:
    async with services.db.read() as conn:
        return int(await conn.scalar(sql_select(func.count()).select_from(messages).where(
            messages.c.account_id == account_id)) or 0)


# ------------------------------------------------------------------------------ probes
@dataclass(slots=True)
class Probe:
    """perf_counter() stamps taken inside MailDesk."""

    committed: dict[str, float] = field(default_factory=dict)  # remote id → added published
    sync_started: list[float] = field(default_factory=list)
    waiters: dict[str, asyncio.Future[float]] = field(default_factory=dict)


def instrument(services: Services, probe: Probe) -> None:
    publish = services.bus.publish
    run = services.runner.run

    def timed_publish(events: Sequence[MailEvent]) -> None:
        now = time.perf_counter()
        publish(events)
        for event in events:
            if event.kind is ChangeKind.ADDED and event.remote_id not in probe.committed:
                probe.committed[event.remote_id] = now
                waiter = probe.waiters.pop(event.remote_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(now)

    async def timed_run(claim: Claim) -> SyncResult:
        probe.sync_started.append(time.perf_counter())
        return await run(claim)

    services.bus.publish = timed_publish  # type: ignore[method-assign]
    services.runner.run = timed_run  # type: ignore[method-assign]


class FloorWatcher:
    """A bare IDLE connection of our client, in its own thread and event loop: the time Dovecot
    takes to tell an IDLE client about an APPEND, with nothing of MailDesk in between."""

    def __init__(self, server: ImapServer, user: str, password: str) -> None:
        self._server, self._user, self._password = server, user, password
        self.stamps: queue.SimpleQueue[float] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="imap-floor", daemon=True)

    def __enter__(self) -> FloorWatcher:
        self._thread.start()
        if not self._ready.wait(SETUP_TIMEOUT) or self._error is not None:
            raise BenchFailure(f"the floor IDLE connection did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(30)

    def _main(self) -> None:
        try:
            asyncio.run(self._watch())
        except BaseException as exc:  # reported by __enter__ or lost on purpose at the end
            self._error = exc
            self._ready.set()

    async def _watch(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        client = await ImapClient.connect(self._server, PasswordLogin(self._user, self._password))
        try:
            await client.select("INBOX", readonly=True)
            self._ready.set()
            while True:
                events = await client.idle(3600.0)  # ends within the server's keepalive
                if any(isinstance(e, Exists) for e in events):
                    self.stamps.put(time.perf_counter())
        finally:
            client.abort()

    def exists_after(self, t0: float, limit: float = STEP_TIMEOUT) -> float | None:
        """The first EXISTS stamp at or after ``t0`` (older ones are dropped)."""
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                stamp = self.stamps.get(timeout=left)
            except queue.Empty:
                return None
            if stamp >= t0:
                return stamp


# ------------------------------------------------------------------------------ (a) latency
async def wait_until(check: Any, what: str, limit: float = SETUP_TIMEOUT) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            raise BenchFailure(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def mailbox_idle(services: Services, account_id: int) -> bool:
    """Nothing pending for the mailbox: no request stamp and no lease."""
    async with services.db.read() as conn:
        row = await account_store.get(conn, account_id)
    return row.sync_requested_at is None and row.lease_owner is None


async def idle_active(services: Services, account_id: int) -> bool:
    async with services.db.read() as conn:
        row = await push_store.get(conn, account_id, ProviderKind.IMAP)
    return row is not None and row.sub.state is PushState.ACTIVE


async def measure_latency(services: Services, dovecot: DovecotServer, probe: Probe,
                          samples: int, spacing: float) -> dict[str, Any]:
    user = dovecot.new_user("latency")
    account_id = await add_account(services, dovecot, user)
    server = imap_server(dovecot)
    appender = await ImapClient.connect(server, PasswordLogin(user, dovecot.password))
    stop = asyncio.Event()
    rows: list[dict[str, float]] = []
    try:
        selected = await appender.select("INBOX")
        async with asyncio.TaskGroup() as group:
            group.create_task(services.worker.serve(stop))
            try:
                await wait_until(lambda: idle_active(services, account_id), "IDLE to start")
                await wait_until(lambda: mailbox_idle(services, account_id), "the initial sync")
                with FloorWatcher(server, user, dovecot.password) as floor:
                    for index in range(samples):
                        await asyncio.sleep(spacing)
                        rows.append(await one_sample(services, account_id, appender, floor,
                                                     probe, selected.uidvalidity, index))
                        await wait_until(lambda: mailbox_idle(services, account_id),
                                         "the sync to finish", STEP_TIMEOUT)
            finally:
                stop.set()
        stats = services.idle.stats(account_id)
    finally:
        await appender.logout()
    ours = [r["committed_ms"] for r in rows]
    floor_ms = [r["floor_ms"] for r in rows]
    overhead = [r["committed_ms"] - r["floor_ms"] for r in rows]
    p50_ours, p50_floor = statistics.median(ours), statistics.median(floor_ms)
    return {
        "samples": len(rows),
        "spacing_s": spacing,
        "append_to_committed_ms": percentiles(ours),
        "floor_append_to_exists_ms": percentiles(floor_ms),
        "overhead_above_floor_ms": percentiles(overhead),
        "append_to_sync_start_ms": percentiles([r["sync_start_ms"] for r in rows]),
        "sync_start_to_committed_ms": percentiles(
            [r["committed_ms"] - r["sync_start_ms"] for r in rows]),
        "append_rtt_ms": percentiles([r["append_rtt_ms"] for r in rows]),
        "ratio_p50_to_floor": round(p50_ours / p50_floor, 3) if p50_floor else None,
        "idle": {"connects": stats.connects, "sessions": stats.sessions, "events": stats.events,
                 "requests": stats.requests},
        # Per sample, in order: [committed, floor EXISTS, sync start] ms after the APPEND.
        "per_sample_ms": [[round(r["committed_ms"]), round(r["floor_ms"]),
                           round(r["sync_start_ms"])] for r in rows],
    }


async def one_sample(services: Services, account_id: int, appender: ImapClient,
                     floor: FloorWatcher, probe: Probe, uidvalidity: int,
                     index: int) -> dict[str, float]:
    raw = make_message(index, subject=f"latency sample {index}")
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    uid = await appender.append("INBOX", raw)
    t1 = time.perf_counter()
    if uid is None:
        raise BenchFailure("Dovecot did not report the APPENDUID")
    remote_id = f"INBOX:{uidvalidity}:{uid}"
    waiter = probe.waiters[remote_id] = loop.create_future()
    if remote_id in probe.committed:
        waiter.set_result(probe.committed[remote_id])
    try:
        committed = await asyncio.wait_for(waiter, STEP_TIMEOUT)
    except TimeoutError:
        raise BenchFailure(f"sample {index} was not committed within {STEP_TIMEOUT:g} s"
                           ) from None
    exists = await asyncio.to_thread(floor.exists_after, t0)
    if exists is None:
        raise BenchFailure(f"the floor connection saw no EXISTS for sample {index}")
    started = min((s for s in probe.sync_started if t0 <= s <= committed), default=committed)
    return {"committed_ms": ms(committed - t0), "floor_ms": ms(exists - t0),
            "sync_start_ms": ms(started - t0), "append_rtt_ms": ms(t1 - t0)}


# ------------------------------------------------------------------------------ (b) initial sync
async def fetch_all(server: ImapServer, user: str, password: str, total: int) -> float:
    """Our client alone: every message's metadata in the engine's page size; seconds."""
    client = await ImapClient.connect(server, PasswordLogin(user, password))
    try:
        started = time.perf_counter()
        selected = await client.select("INBOX", readonly=True)
        top = (selected.uidnext or 1) - 1
        fetched = 0
        while top >= 1:
            low = max(1, top - PAGE_SIZE + 1)
            fetched += len(await client.fetch_messages(UidSet([(low, top)])))
            top = low - 1
        elapsed = time.perf_counter() - started
    finally:
        await client.logout()
    if fetched != total:
        raise BenchFailure(f"the floor fetched {fetched} messages, not {total}")
    return elapsed


async def sync_until_done(services: Services, limit: float) -> int:
    """Claim and run syncs until nothing is due; the number of runs."""
    runs = 0
    deadline = time.monotonic() + limit
    while True:
        claims = await services.worker.claim(services.settings.worker_concurrency)
        if not claims:
            return runs
        for claim in claims:
            result = await services.runner.run(claim)
            runs += 1
            if result.status != "ok":
                raise BenchFailure(f"sync failed: {result.error_kind}: {result.error}")
        if time.monotonic() > deadline:
            raise BenchFailure(f"the initial sync did not finish within {limit:g} s")


async def measure_initial_sync(services: Services, dovecot: DovecotServer, probe: Probe,
                               total: int, limit: float) -> dict[str, Any]:
    user = dovecot.new_user("initial")
    server = imap_server(dovecot)
    # The user's Maildir exists after a first login; then write the messages straight in.
    await (await ImapClient.connect(server, PasswordLogin(user, dovecot.password))).logout()
    written = await asyncio.to_thread(
        dovecot.deliver, user, "INBOX", (make_message(i) for i in range(total)))
    warm_s = await fetch_all(server, user, dovecot.password, written)  # untimed: warms Dovecot
    cpu0, wall0 = own_cpu_s(), time.perf_counter()
    account_id = await add_account(services, dovecot, user)
    runs = await sync_until_done(services, limit)
    elapsed = time.perf_counter() - wall0
    cpu = own_cpu_s() - cpu0
    first = min((t for rid, t in probe.committed.items() if rid.startswith("INBOX:")),
                default=None)
    count = await stored_count(services, account_id)
    if count != total:
        raise BenchFailure(f"the store holds {count} messages, not {total}")
    floor_s = await fetch_all(server, user, dovecot.password, total)
    rate, floor_rate = total / elapsed, total / floor_s
    return {
        "messages": total, "sync_runs": runs, "seconds": round(elapsed, 3),
        "rate_msgs_per_s": round(rate, 1),
        "time_to_first_message_s": round(first - wall0, 3) if first is not None else None,
        "maildesk_cpu_s": round(cpu, 3),
        "floor_seconds": round(floor_s, 3), "floor_rate_msgs_per_s": round(floor_rate, 1),
        "warm_up_seconds": round(warm_s, 3),
        "store_overhead_ratio": round(floor_rate / rate, 3),
    }


# ------------------------------------------------------------------------------ one run
@contextlib.asynccontextmanager
async def dovecot_running() -> AsyncIterator[DovecotServer]:
    server = DovecotServer(Flavour.FULL)
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def measure(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="maildesk-imap-bench-") as tmp:
        async with dovecot_running() as dovecot, bench_database(kind, "imap_bench") as store:
            settings = settings_for(store, Path(tmp), dovecot, args.prefetch)
            async with open_services(settings) as services:
                probe = Probe()
                instrument(services, probe)
                cpu_pg0 = tree_cpu_s(store.pg_pid)
                initial = await measure_initial_sync(services, dovecot, probe, args.messages,
                                                     args.timeout)
                print(f"[{kind}] initial sync: {initial['rate_msgs_per_s']} msg/s "
                      f"(floor {initial['floor_rate_msgs_per_s']})", file=sys.stderr)
                latency = await measure_latency(services, dovecot, probe, args.samples,
                                                args.spacing)
                print(f"[{kind}] latency p50 {latency['append_to_committed_ms']['p50']} ms "
                      f"(floor {latency['floor_append_to_exists_ms']['p50']} ms)",
                      file=sys.stderr)
                pg_cpu = tree_cpu_s(store.pg_pid) - cpu_pg0 if store.pg_pid else None
    committed = latency["append_to_committed_ms"]
    return {
        "db": kind,
        "latency": latency,
        "initial_sync": initial,
        "postgres_cpu_s": round(pg_cpu, 3) if pg_cpu is not None else None,
        "meets_target": {
            "latency_p50_le_1s": committed["p50"] <= TARGET_LATENCY_MS,
            "latency_p95_le_1s": committed["p95"] <= TARGET_LATENCY_MS,
            "latency_p99_le_1s": committed["p99"] <= TARGET_LATENCY_MS,
            "initial_sync_ge_1000_msgs_per_s": initial["rate_msgs_per_s"] >= TARGET_RATE,
        },
    }


def _child_command(kind: str, args: argparse.Namespace) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--db", kind,
               "--samples", str(args.samples), "--spacing", str(args.spacing),
               "--messages", str(args.messages), "--timeout", str(args.timeout)]
    if args.prefetch is not None:
        command += ["--prefetch", str(args.prefetch)]
    return command


def _document(args: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "benchmark": "imap_latency",
        "targets": {"append_to_committed_ms": TARGET_LATENCY_MS,
                    "initial_sync_msgs_per_s": TARGET_RATE},
        "settings": {"samples": args.samples, "spacing_s": args.spacing,
                     "messages": args.messages, "prefetch": args.prefetch},
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--samples", type=int, default=40, help="latency samples (>= 30)")
    parser.add_argument("--spacing", type=float, default=0.5,
                        help="seconds between one sample's sync and the next APPEND")
    parser.add_argument("--messages", type=int, default=5000,
                        help="messages of the initial-sync mailbox")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds allowed for the initial sync")
    parser.add_argument("--prefetch", type=int, default=None,
                        help="bodies prefetched after each sync run (default: the setting's)")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.messages < 1:
        parser.error("--samples and --messages must be at least 1")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        if args.db == "both":
            runs = run_per_database(lambda kind: _child_command(kind, args),
                                    timeout=args.timeout + args.samples * (args.spacing + 20) + 120)
        else:
            runs = [asyncio.run(measure(args.db, args))]
    except BenchFailure as exc:
        print(f"imap_latency: FAILED: {exc}", file=sys.stderr)
        return 1
    json.dump(_document(args, runs), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
