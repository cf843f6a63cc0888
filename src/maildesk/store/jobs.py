"""Job runs: every scheduled job's runs, for `maildesk jobs` and the scheduled-jobs page."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.store.tables import job_runs

KEEP_PER_JOB = 200


@dataclass(frozen=True, slots=True)
class JobRun:
    job: str
    account_id: int | None
    started_at: datetime
    finished_at: datetime | None
    duration_ms: int | None
    status: str
    error: str | None
    detail: str
    runs: int = 0


async def start(
    conn: AsyncConnection, job: str, now: datetime, account_id: int | None = None
) -> int:
    result = await conn.execute(insert(job_runs).values(
        job=job, account_id=account_id, started_at=now, status="running", detail=""
    ).returning(job_runs.c.id))
    return int(result.scalar_one())


async def finish(
    conn: AsyncConnection,
    run_id: int,
    *,
    started_at: datetime,
    now: datetime,
    status: str,
    error: str | None = None,
    detail: str = "",
) -> None:
    duration = int((now - started_at).total_seconds() * 1000)
    await conn.execute(update(job_runs).where(job_runs.c.id == run_id).values(
        finished_at=now, duration_ms=duration, status=status, error=error, detail=detail
    ))


def record_blocking(
    conn: Connection,
    job: str,
    *,
    account_id: int | None,
    started_at: datetime,
    now: datetime,
    status: str,
    error: str | None = None,
    detail: str = "",
) -> None:
    """Record a finished run in one statement (``start`` + ``finish`` for runs that are not
    shown while they run: a mailbox sync, many per second under push)."""
    duration = int((now - started_at).total_seconds() * 1000)
    conn.execute(insert(job_runs).values(
        job=job, account_id=account_id, started_at=started_at, finished_at=now,
        duration_ms=duration, status=status, error=error, detail=detail,
    ))


async def latest(conn: AsyncConnection) -> list[JobRun]:
    """The last run of each job, with the number of runs kept."""
    last = (
        select(job_runs.c.job, func.max(job_runs.c.id).label("last_id"),
               func.count().label("runs"))
        .group_by(job_runs.c.job)
        .subquery()
    )
    rows = await conn.execute(
        select(job_runs, last.c.runs).join(last, last.c.last_id == job_runs.c.id)
        .order_by(job_runs.c.job)
    )
    return [
        JobRun(r.job, r.account_id, r.started_at, r.finished_at, r.duration_ms, r.status,
               r.error, r.detail, int(r.runs))
        for r in rows
    ]


async def prune(conn: AsyncConnection, keep: int = KEEP_PER_JOB) -> int:
    """Keep the newest ``keep`` runs of each job."""
    removed = 0
    for job in (await conn.execute(select(job_runs.c.job).distinct())).scalars().all():
        cutoff = await conn.scalar(
            select(job_runs.c.id).where(job_runs.c.job == job)
            .order_by(job_runs.c.id.desc()).offset(keep).limit(1)
        )
        if cutoff is not None:
            result = await conn.execute(delete(job_runs).where(
                job_runs.c.job == job, job_runs.c.id <= cutoff
            ))
            removed += result.rowcount
    return removed
