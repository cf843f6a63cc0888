"""The one benchmark entry point: every benchmark, each on SQLite and PostgreSQL, one JSON
document on stdout, and docs/performance.md rewritten with the figures.

``python -m bench`` is the same as ``python bench/run.py``. Each benchmark script runs in its own
process per database (so its memory and CPU are its own), with a time limit: past it, the
process gets SIGINT (so it stops its simulators and its throwaway PostgreSQL), then SIGKILL to
its process group. A failed or timed-out job is reported and leaves its cells empty; the others
still run. The scripts' own progress goes to stderr.

Areas (``--only`` takes these names):

- ``push``: ``bench/push_latency.py``: Gmail and Outlook push-to-visible latency at 0 and 100 ms
  simulated provider round trip (publish → committed → live bus → a signed-in websocket
  client), webhook throughput against a bare endpoint with the 202 p99 under load, and a burst
  of 1,000 notifications for one mailbox (sync runs, provider requests);
- ``imap``: ``bench/imap_latency.py``: APPEND → committed over IDLE against Dovecot, and the IMAP
  initial-sync rate;
- ``sync``: ``bench/sync_throughput.py`` at 20,000 and 100,000 messages: rate and peak RSS;
- ``scheduler``: ``bench/scheduler_tick.py``: one tick at 10,000 and 100,000 mailboxes and the
  idle CPU of a worker with 1,000 mailboxes;
- ``fuzz``: ``bench/fuzz_webhooks.py``: 10,000 hypothesis cases per webhook, each database with
  its own random seed (printed in its JSON: ``--seed`` replays it).

``--quick`` runs every area at small sizes and few samples (a smoke run of a few minutes: its
figures do not speak to the targets). ``--no-write`` leaves docs/performance.md alone. Exit
status 1 if any job failed (missed targets are figures, not failures).

Usage (repo root)::

    .venv/bin/python -m bench [--quick] [--only push,sync] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # Run as a script: make ``bench`` importable.
    sys.path.insert(0, str(ROOT))

from bench._process import child_env  # noqa: E402
from bench._report import (  # noqa: E402
    DB_TITLES,
    EXTRACTORS,
    Area,
    area_block,
    write_performance,
)

AREAS = ("push", "imap", "sync", "scheduler", "fuzz")
PERFORMANCE_MD = ROOT / "docs" / "performance.md"
GRACE_S = 60.0  # after SIGINT, before SIGKILL


@dataclass(frozen=True, slots=True)
class Job:
    area: str
    label: str
    db: str
    script: str  # bench/<script>
    args: tuple[str, ...]
    timeout: float

    def command(self) -> list[str]:
        return [sys.executable, str(ROOT / "bench" / self.script), "--db", self.db, *self.args]


def plan(quick: bool, only: set[str]) -> tuple[list[Job], list[str]]:
    """The jobs of this run, and notes on areas that cannot run here."""
    jobs: list[Job] = []
    notes: list[str] = []
    both = ("sqlite", "postgresql")

    def add(area: str, label: str, script: str, args: list[str], timeout: float,
            dbs: tuple[str, ...] = both) -> None:
        if area in only:
            jobs.extend(Job(area, label, db, script, tuple(args), timeout) for db in dbs)

    if quick:
        add("push", "push", "push_latency.py",
            ["--rtt-ms", "0,100", "--messages", "15", "--warmup", "2", "--requests", "500",
             "--rounds", "1", "--burst", "1000"], 900)
    else:
        add("push", "push", "push_latency.py",
            ["--rtt-ms", "0,100", "--messages", "200", "--warmup", "5", "--requests", "5000",
             "--rounds", "3", "--burst", "1000"], 3600)
    if (ROOT / "bench" / "imap_latency.py").exists():
        add("imap", "imap", "imap_latency.py",
            ["--samples", "10", "--messages", "500"] if quick
            else ["--samples", "40", "--messages", "5000"], 600 if quick else 1800)
    elif "imap" in only:
        # The hook for the IMAP benchmark: it joins the run as soon as the script exists.
        notes.append("imap: bench/imap_latency.py is not there; the IMAP area was skipped")
    for size in (1_000, 3_000) if quick else (20_000, 100_000):
        limit = 300 if quick else 900
        add("sync", f"sync_{size}", "sync_throughput.py",
            ["--messages", str(size), "--timeout", str(limit)], 3 * limit + 120)
    add("scheduler", "scheduler", "scheduler_tick.py",
        ["--sizes", "1000,10000", "--repeat", "5", "--idle-mailboxes", "1000",
         "--idle-seconds", "5"] if quick else
        ["--sizes", "10000,100000", "--repeat", "15", "--idle-mailboxes", "1000",
         "--idle-seconds", "20"], 600 if quick else 2400)
    add("fuzz", "fuzz", "fuzz_webhooks.py",
        ["--examples", "300" if quick else "10000"], 300 if quick else 1800)
    return jobs, notes


def run_job(job: Job) -> dict[str, Any]:
    """Run one job; its JSON document (if it printed one) and its error (if it failed)."""
    print(f"\n== bench: {job.label} on {DB_TITLES[job.db]} "
          f"(limit {job.timeout:.0f} s): {shlex.join(job.command()[1:])}",
          file=sys.stderr, flush=True)
    started = time.monotonic()
    error: str | None = None
    # Its own process group, so a last-resort SIGKILL reaches its simulators too.
    child = subprocess.Popen(job.command(), cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        out, _ = child.communicate(timeout=job.timeout)
    except subprocess.TimeoutExpired:
        error = f"did not finish within {job.timeout:.0f} s"
        child.send_signal(signal.SIGINT)
        try:
            out, _ = child.communicate(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            out, _ = child.communicate()
    if error is None and child.returncode != 0:
        error = f"exit status {child.returncode}"
    document: dict[str, Any] | None = None
    if out and out.strip():
        try:
            document = json.loads(out)
        except ValueError:
            error = error or "its output was not one JSON document"
    elif error is None:
        error = "it printed nothing"
    seconds = round(time.monotonic() - started, 1)
    print(f"== bench: {job.label} on {DB_TITLES[job.db]}: "
          f"{'FAILED: ' + error if error else 'done'} in {seconds} s",
          file=sys.stderr, flush=True)
    return {"label": job.label, "db": job.db, "args": list(job.args), "seconds": seconds,
            "error": error, "document": document}


# ------------------------------------------------------------------------------ the machine
def _first(path: str, key: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        return None
    return None


def _postgres_version() -> str | None:
    try:
        from tests.support.postgres import find_bindir

        answer = subprocess.run([str(find_bindir() / "postgres"), "--version"],
                                capture_output=True, text=True, timeout=30, check=True)
    except (OSError, RuntimeError, subprocess.SubprocessError):
        return None
    # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    return answer.stdout.strip().removeprefix("postgres (PostgreSQL) ")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict[str, Any]:
    mem_kb = _first("/proc/meminfo", "MemTotal")
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _first("/proc/cpuinfo", "model name"),
        "ram_gib": round(int(mem_kb.split()[0]) / 1024**2, 1) if mem_kb else None,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": _postgres_version(),
        "platform": platform.platform(),
        "commit": commit + (" + uncommitted changes" if dirty else ""),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


# ------------------------------------------------------------------------------ the document
def _command(argv: list[str]) -> str:
    python = Path(sys.executable)
    with_root = python.is_relative_to(ROOT) if python.is_absolute() else False
    exe = str(python.relative_to(ROOT)) if with_root else python.name
    return shlex.join([exe, "-m", "bench", *argv])


def _head(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    quick = (" **Quick smoke run** (`--quick`: small sizes, few samples): these figures do "
             "not speak to the targets." if doc["quick"] else "")
    load = f"{m['loadavg'][0]} at the start → {doc['loadavg_at_end'][0]} at the end"
    return "\n".join([
        "## Latest figures",
        "",
        "_Generated by `bench/run.py`; everything between the `bench:begin` and `bench:end` "
        "markers is rewritten by the next run (an `--only` run rewrites only its areas). "
        "The analysis after them is written by hand._",
        "",
        f"Last run: `{doc['command']}` on {doc['started_at']} UTC, {doc['seconds']:.0f} s, "
        f"commit {m['commit'] or '?'}.{quick}",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpus']} × {m['cpu_model'] or '?'} |",
        f"| RAM | {m['ram_gib']} GiB |",
        f"| OS | {m['platform']} |",
        f"| Python | {m['python']} |",
        f"| SQLite | {m['sqlite']} (SQLite file in a temp dir per run) |",
        f"| PostgreSQL | {m['postgresql'] or '?'} (a throwaway cluster per run) |",
        f"| 1-min load average | {load} |",
        "",
        "**Shared machine**: the project's machine runs other sessions' test suites beside the "
        "benchmarks (see the load average), so absolute times and rates are noisy, "
        "latency tails most of all. Ratios measured in the same run (webhook vs bare endpoint, "
        "sync vs provider-only baseline) and counts (sync runs, provider requests) are steadier.",
        "",
    ])


def _area_header(doc: dict[str, Any], area: str, jobs: list[dict[str, Any]]) -> str:
    seconds = sum(j["seconds"] for j in jobs)
    runs = "; ".join(f"`{shlex.join(['bench/' + _script(doc, j), '--db', j['db'], *j['args']])}`"
                     for j in jobs)
    quick = " (quick sizes)" if doc["quick"] else ""
    return (f"Measured {doc['started_at']} UTC{quick} by `{doc['command']}`, {seconds:.0f} s, "
            f"commit {doc['machine']['commit'] or '?'}; the jobs: {runs}.")


def _script(doc: dict[str, Any], job: dict[str, Any]) -> str:
    return str(doc["scripts"][job["label"]])


def build_document(argv: list[str], args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    only = set(args.only)
    jobs, notes = plan(args.quick, only)
    started = datetime.now(UTC)
    doc: dict[str, Any] = {
        "benchmark": "all",
        "command": _command(argv),
        "quick": args.quick,
        "started_at": started.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "scripts": {job.label: job.script for job in jobs},
        "notes": notes,
    }
    results: dict[str, list[dict[str, Any]]] = {area: [] for area in AREAS if area in only}
    for job in jobs:
        results[job.area].append(run_job(job))
    doc["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    doc["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    areas: list[Area] = [EXTRACTORS[name](jobs_) for name, jobs_ in results.items() if jobs_]
    doc["summary"] = [area.to_json() for area in areas]
    doc["failures"] = [f"{j['label']} on {j['db']}: {j['error']}"
                       for jobs_ in results.values() for j in jobs_ if j["error"]]
    doc["results"] = results
    if not args.no_write and areas:
        blocks = {area.name: area_block(area, _area_header(doc, area.name, results[area.name]))
                  for area in areas}
        existing = PERFORMANCE_MD.read_text() if PERFORMANCE_MD.exists() else ""
        PERFORMANCE_MD.write_text(write_performance(existing, _head(doc), blocks, AREAS))
        print(f"\n== bench: wrote {PERFORMANCE_MD.relative_to(ROOT)}", file=sys.stderr)
    return doc, 1 if doc["failures"] else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few samples: a smoke run of a few minutes")
    parser.add_argument("--only", default=",".join(AREAS),
                        help=f"areas to run, comma-separated: {', '.join(AREAS)}")
    parser.add_argument("--no-write", action="store_true",
                        help="do not touch docs/performance.md")
    args = parser.parse_args(argv)
    args.only = [a.strip() for a in args.only.split(",") if a.strip()]
    if not args.only or set(args.only) - set(AREAS):
        parser.error(f"--only takes {', '.join(AREAS)}")
    doc, status = build_document(argv, args)
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
