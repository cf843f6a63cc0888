"""What the benchmarks share: processes (CPU accounting, child runs, the simulator child's wait),
the database under test, and the classification of provider requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")


class BenchFailure(Exception):
    """The benchmark cannot produce honest figures (a wrong count, a timeout, a crash)."""


# ------------------------------------------------------------------------------ CPU accounting
def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return float(usage.ru_utime + usage.ru_stime)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # Field 2 (comm) may contain spaces; everything after its closing parenthesis is plain.
    return data[data.rindex(")") + 2 :].split()


def tree_cpu_s(pid: int | None) -> float:
    """CPU seconds of ``pid`` plus its reaped and its live direct children (PostgreSQL's
    backends are children of the postmaster)."""
    if pid is None:
        return 0.0
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # After comm: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14)
    ticks = sum(int(v) for v in fields[11:15])
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            child = _stat_fields(int(entry))
            if child is not None and child[1] == str(pid):
                ticks += int(child[11]) + int(child[12])
    return ticks / _TICKS


# ------------------------------------------------------------------------------ processes
def child_env() -> dict[str, str]:
    """The environment of a ``python -m bench.…`` child: ours, with the repo root importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


async def announce_and_wait(hello: dict[str, Any]) -> None:
    """A simulator child's side of the handshake: print ``hello`` as the ONE JSON line the
    parent waits for, then serve until stdin closes or SIGTERM/SIGINT arrives."""
    sys.stdout.write(json.dumps(hello) + "\n")
    sys.stdout.flush()
    await wait_for_eof_or_signal()


async def wait_for_eof_or_signal() -> None:
    """What a child process waits for before it exits: its stdin closing or SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def until_eof() -> None:
        while await reader.read(4096):
            pass
        stop.set()

    eof = asyncio.create_task(until_eof())
    try:
        await stop.wait()
    finally:
        eof.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await eof


def run_per_database(
    command_for: Callable[[str], list[str]], *, timeout: float
) -> list[dict[str, Any]]:
    """``--db both``: run the script once per database in a fresh process (so each one's
    memory and CPU are its own) and collect the ``runs`` of their JSON documents. A run past
    ``timeout`` gets SIGINT first, so its cleanup (simulator, PostgreSQL) still happens."""
    runs: list[dict[str, Any]] = []
    for kind in ("sqlite", "postgresql"):
        child = subprocess.Popen(command_for(kind), cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            out, _ = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGINT)
            try:
                child.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.communicate()
            raise BenchFailure(f"the {kind} run did not finish in time") from None
        if child.returncode != 0:
            raise BenchFailure(f"the {kind} run failed (exit status {child.returncode})")
        runs += json.loads(out)["runs"]
    return runs


# ------------------------------------------------------------------------------ the database
@dataclass(slots=True)
class Store:
    kind: str
    url: str  # "" = SQLite in the data dir
    pg_pid: int | None = None


@contextlib.asynccontextmanager
async def bench_database(
    kind: str, name: str, pg_settings: dict[str, str] | None = None
) -> AsyncIterator[Store]:
    """SQLite in the run's data dir, or a throwaway PostgreSQL from Debian's package."""
    if kind == "sqlite":
        yield Store(kind, "")
        return
    from tests.support.postgres import PostgresCluster

    cluster = PostgresCluster(settings=pg_settings)
    await asyncio.to_thread(cluster.start)
    try:
        url = await cluster.create_database(name)
        pid_file = cluster.directory / "data" / "postmaster.pid"
        pg_pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        yield Store(kind, url, pg_pid)
    finally:
        await asyncio.to_thread(cluster.stop)


# ------------------------------------------------------------------------------ requests
def request_kind(request: httpx.Request) -> str:
    """A provider request's kind: batch, token, revoke, messages.list, messages.get, history…"""
    path = request.url.path
    if path.startswith("/batch"):
        return "batch"
    if path in ("/token", "/revoke"):
        return path[1:]
    tail = path.rsplit("/gmail/v1/users/", 1)[-1].split("/", 1)
    rest = tail[1] if len(tail) == 2 else ""
    if rest == "messages":
        return "messages.list"
    if rest.startswith("messages/"):
        return "messages.get"
    return rest or "other"
