"""Scheduler cost at scale: one tick's selections with 10,000 and 100,000 mailboxes, and the idle
CPU of a worker holding 1,000 push-healthy mailboxes.

Issue targets: one tick (claim due mailboxes + renewal, silence and lifecycle selection) at
100,000 subscriptions ≤ 20 ms, growing with the DUE rows, not with all rows.

The store is filled with Core bulk inserts: N Gmail mailboxes, each with an active push
subscription that expires in days, renewed recently and heard from recently, polled hours from
now — the quiet majority — plus a fixed handful that IS due: 10 with a sync request, 10 whose
poll time came, 10 subscriptions expiring, 10 silent. The same due rows at every N, so a query
that walks all rows shows up as a ratio ≫ 1 between the two sizes.

Each query is timed ``--repeat`` times (median, milliseconds); the claim runs in a transaction
that is rolled back, so every repetition claims the same rows. ``idle`` runs ``worker.serve`` over
``--idle-mailboxes`` quiet mailboxes for ``--idle-seconds`` and reports the process CPU it used
(% of one core), next to the CPU of the same seconds spent asleep (the floor).

Prints ONE JSON document. Usage (repo root)::

    .venv/bin/python bench/scheduler_tick.py [--db sqlite|postgresql|both] [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import insert  # noqa: E402

from bench._process import bench_database, own_cpu_s, run_per_database  # noqa: E402
from maildesk.config import Settings  # noqa: E402
from maildesk.domain.accounts import ProviderKind  # noqa: E402
from maildesk.services import open_services  # noqa: E402
from maildesk.store import accounts as account_store  # noqa: E402
from maildesk.store import push as push_store  # noqa: E402
from maildesk.store.database import Database  # noqa: E402
from maildesk.store.tables import accounts, push_subscriptions  # noqa: E402

TARGET_TICK_MS = 20.0
DUE_EACH = 10
CHUNK = 5_000


def _account(i: int, now: datetime) -> dict[str, Any]:
    return {
        "provider": "gmail", "email": f"m{i}@bench.example", "display_name": "",
        "state": "ok", "scopes": "", "settings_json": "{}", "sync_request_seq": 1,
        "sync_done_seq": 1, "next_poll_at": now + timedelta(hours=6), "failure_count": 0,
        "initial_sync_done": True, "backfill_done": True, "backfill_fetched": 0,
        "created_at": now, "refresh_token_enc": "x", "sync_requested_at": None,
        "sync_reason": None,
    }


def _subscription(account_id: int, now: datetime) -> dict[str, Any]:
    return {
        "account_id": account_id, "provider": "gmail", "resource": "projects/p/topics/t",
        "subscription_id": str(account_id), "expiration": now + timedelta(days=5),
        "state": "active", "failure_count": 0, "last_notification_at": now - timedelta(minutes=5),
        "last_renewal_at": now - timedelta(hours=1), "settings_json": "{}",
        "created_at": now, "updated_at": now,
    }


async def _fill(db: Database, total: int, start: int, now: datetime) -> None:
    """Grow the store to ``total`` quiet mailboxes (ids continue from ``start``)."""
    for low in range(start, total, CHUNK):
        high = min(total, low + CHUNK)
        async with db.transaction() as conn:
            result = await conn.execute(insert(accounts).returning(accounts.c.id),
                                        [_account(i, now) for i in range(low, high)])
            ids = [int(r.id) for r in result]
            await conn.execute(insert(push_subscriptions),
                               [_subscription(a, now) for a in ids])


async def _make_due(db: Database, now: datetime) -> None:
    """The same small set of due rows at every size: requested, poll due, expiring, silent."""
    rows = [_account(10_000_000 + i, now) for i in range(4 * DUE_EACH)]
    for i, row in enumerate(rows):
        if i < DUE_EACH:
            row.update(sync_requested_at=now - timedelta(seconds=1), sync_reason="push",
                       sync_request_seq=2)
        elif i < 2 * DUE_EACH:
            row["next_poll_at"] = now - timedelta(seconds=5)
    async with db.transaction() as conn:
        result = await conn.execute(insert(accounts).returning(accounts.c.id), rows)
        ids = [int(r.id) for r in result]
        subs = [_subscription(a, now) for a in ids]
        for i, sub in enumerate(subs):
            if 2 * DUE_EACH <= i < 3 * DUE_EACH:
                sub["expiration"] = now + timedelta(minutes=30)
            elif i >= 3 * DUE_EACH:
                sub["last_notification_at"] = now - timedelta(days=2)
        await conn.execute(insert(push_subscriptions), subs)


async def _median_ms(fn: Callable[[], Awaitable[Any]], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 3)


async def _tick(db: Database, now: datetime, repeat: int) -> dict[str, float]:
    async def claim() -> None:
        async with db.engine.connect() as conn:
            trans = await conn.begin()
            claims = await account_store.claim_due(
                conn, owner="bench", now=now, lease=timedelta(minutes=2), limit=4,
                skip_locked=not db.is_sqlite)
            assert len(claims) == 4, claims
            await trans.rollback()

    async def renewal() -> None:
        async with db.read() as conn:
            rows = await push_store.renewal_candidates(
                conn, provider=ProviderKind.GMAIL, expiring_before=now + timedelta(hours=1),
                renewed_before=None)
        assert len(rows) == DUE_EACH, len(rows)

    async def silence() -> None:
        async with db.read() as conn:
            rows = await push_store.silence_candidates(conn, heard_before=now - timedelta(hours=6))
        assert len(rows) == DUE_EACH, len(rows)

    async def lifecycle() -> None:
        async with db.read() as conn:
            await push_store.lifecycle_pending(conn, ProviderKind.OUTLOOK)

    out = {
        "claim_ms": await _median_ms(claim, repeat),
        "renewal_select_ms": await _median_ms(renewal, repeat),
        "silence_select_ms": await _median_ms(silence, repeat),
        "lifecycle_select_ms": await _median_ms(lifecycle, repeat),
    }
    out["tick_ms"] = round(sum(out.values()), 3)
    return out


async def _idle_cpu(settings: Settings, mailboxes: int, seconds: float) -> dict[str, float]:
    """CPU of a worker serving ``mailboxes`` quiet mailboxes, against sleeping as long."""
    started = own_cpu_s()
    await asyncio.sleep(seconds)
    floor = own_cpu_s() - started
    async with open_services(settings) as services:
        now = services.clock.now()
        await _fill(services.db, mailboxes, 0, now)
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            group.create_task(services.worker.serve(stop))
            await asyncio.sleep(1.0)  # the start-up jobs
            began = own_cpu_s()
            await asyncio.sleep(seconds)
            used = own_cpu_s() - began
            stop.set()
    return {"mailboxes": mailboxes, "seconds": seconds,
            "cpu_percent": round(100 * used / seconds, 2),
            "sleep_floor_percent": round(100 * floor / seconds, 2)}


async def measure(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    sizes = sorted(int(s) for s in args.sizes.split(","))
    now = datetime.now(UTC)
    result: dict[str, Any] = {"db": kind, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="maildesk-tick-") as tmp:
        async with bench_database(kind, "tick") as store:
            settings = Settings(data_dir=Path(tmp), database_url=store.url,
                                secret_key="bench-key")
            async with open_services(settings) as services:
                db = services.db
                await _make_due(db, now)
                filled = 0
                for size in sizes:
                    started = time.perf_counter()
                    await _fill(db, size, filled, now)
                    filled = size
                    if kind == "postgresql":
                        async with db.engine.connect() as conn:
                            await conn.exec_driver_sql("ANALYZE")
                            await conn.commit()
                    print(f"{kind}: {size} mailboxes in {time.perf_counter() - started:.1f}s",
                          file=sys.stderr)
                    result["sizes"][str(size)] = await _tick(db, now, args.repeat)
        small, large = (result["sizes"][str(sizes[0])], result["sizes"][str(sizes[-1])])
        result["growth_ratio"] = {k: round(large[k] / max(small[k], 1e-3), 2) for k in small}
        result["tick_at_largest_ms"] = large["tick_ms"]
        result["tick_target_ms"] = TARGET_TICK_MS
        result["tick_target_met"] = large["tick_ms"] <= TARGET_TICK_MS
    if args.idle_seconds > 0:
        with tempfile.TemporaryDirectory(prefix="maildesk-idle-") as tmp:
            async with bench_database(kind, "idle") as store:
                settings = Settings(data_dir=Path(tmp), database_url=store.url,
                                    secret_key="bench-key")
                result["idle"] = await _idle_cpu(settings, args.idle_mailboxes,
                                                 args.idle_seconds)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--idle-mailboxes", type=int, default=1_000)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    if args.db == "both":
        def command(kind: str) -> list[str]:
            return [sys.executable, str(Path(__file__).resolve()), "--db", kind,
                    "--sizes", args.sizes, "--repeat", str(args.repeat),
                    "--idle-mailboxes", str(args.idle_mailboxes),
                    "--idle-seconds", str(args.idle_seconds)]
        runs = run_per_database(command, timeout=1800)
    else:
        runs = [asyncio.run(measure(args.db, args))]
    print(json.dumps({
        "bench": "scheduler_tick", "machine": {"python": platform.python_version(),
                                                "cpus": os.cpu_count()},
        "runs": runs,
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
