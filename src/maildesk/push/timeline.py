"""The realtime test timeline: did one message travel the whole push pipeline?

An administrator starts a test (a ``test_started`` push event, which also notes the mailbox's
latest change id), a mail arrives (sent by the administrator, or by the demo's generator), and
the six checkpoints are read from what the pipeline already records:

1. delivered — a ``delivered`` push event (the webhook received a notification);
2. verified — a ``verified`` push event (Gmail: OIDC signature + audience + signer; Outlook:
   ``clientState``); a ``rejected`` event explains a stall here;
3. sync triggered — a ``sync_started`` push event (the runner writes it for mailboxes with push);
4. row created/updated — a ``changes`` row after the change id noted at the start;
5. body cached — ``bodies.fetched_at`` of a message changed since the start;
6. visible — a ``visible`` push event, reported by the browser when a live-arrived row was
   actually rendered in an open inbox (``record_visible``).

Events are matched by id after the ``test_started`` event rather than by time, so a manual
clock (or two events in one clock tick) cannot mix up before and after. ``evaluate`` is pure:
each checkpoint is observed (with its time), waiting (the test is young and nothing later was
seen) or missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.store import views as view_store
from maildesk.store.tables import bodies, changes, push_events

Status = Literal["observed", "waiting", "missing"]

TEST_STARTED = "test_started"
TEST_FINISHED = "test_finished"
VISIBLE = "visible"
# A checkpoint not seen within this long after the start is reported missing, not waiting.
PATIENCE = timedelta(minutes=2)

_SHARED_STEPS = (
    ("Single-source-of-truth row created/updated",
     "The message was ingested into MailDesk's mail store"),
    ("Message body prefetched and cached",
     "The body was warmed so the message opens instantly"),
    ("Message visible in the MailDesk inbox",
     "The message reached the inbox UI and is live on screen"),
)

STEPS: dict[str, tuple[tuple[str, str], ...]] = {
    "gmail": (
        ("Pub/Sub delivered the notification to your webhook",
         "Google published and Pub/Sub reached the MailDesk webhook"),
        ("MailDesk verified the OIDC signature + audience",
         "The notification was authentic — correct signature, audience, and an allow-listed "
         "signer"),
        ("Gmail history sync triggered for the mailbox",
         "The notification triggered the incremental Gmail fetch"),
        *_SHARED_STEPS,
    ),
    "outlook": (
        ("Microsoft Graph delivered the notification to your webhook",
         "Microsoft Graph reached the MailDesk webhook"),
        ("MailDesk verified the notification's clientState",
         "The notification was authentic — it carried this subscription's secret clientState"),
        ("Outlook delta sync triggered for the mailbox",
         "The notification triggered the incremental Outlook (delta) fetch"),
        *_SHARED_STEPS,
    ),
}

_STALL_HINTS: dict[str, tuple[str, ...]] = {
    "gmail": (
        "A stall at checkpoint 1 points at reachability or the Pub/Sub wiring: re-run "
        "preflight and confirm the push URL returns HTTP 405 on a GET.",
        "A stall at checkpoint 2 points at the audience or signer allow-list: re-run "
        "validation so MailDesk re-aligns the audience and saves the signer.",
    ),
    "outlook": (
        "A stall at checkpoint 1 points at reachability: confirm MAILDESK_BASE_URL is the "
        "public HTTPS address and that the subscription is active.",
        "A stall at checkpoint 2 means the notification did not carry this subscription's "
        "clientState: register the subscription again.",
    ),
}
_LATER_HINTS = (
    "A stall at checkpoint 3 points at the sync worker: check the Jobs page and the "
    "mailbox's connection state.",
    "A stall at checkpoint 4 points at sync or ingestion: was the test mail delivered to "
    "the inbox? Check the mailbox's last error.",
    "A stall at checkpoint 5 points at the body prefetch: the message still opens, fetched "
    "on demand.",
    "Checkpoint 6 is observed when the message appears live in an open inbox: open the "
    "mailbox's inbox in another tab and keep it open while the mail arrives.",
)


@dataclass(frozen=True, slots=True)
class Observations:
    """When each checkpoint was first seen during a test (None: not seen)."""

    delivered: datetime | None = None
    verified: datetime | None = None
    sync_started: datetime | None = None
    row: datetime | None = None
    body: datetime | None = None
    visible: datetime | None = None
    rejected: str | None = None  # the last refusal reason, if a notification was refused

    def times(self) -> tuple[datetime | None, ...]:
        return (self.delivered, self.verified, self.sync_started, self.row, self.body,
                self.visible)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    number: int
    title: str
    proves: str
    status: Status
    at: datetime | None


@dataclass(frozen=True, slots=True)
class Timeline:
    provider: str
    started_at: datetime
    finished_at: datetime | None
    checkpoints: tuple[Checkpoint, ...]
    hint: str  # what the first checkpoint not observed points at ("" when all six are)

    @property
    def observed(self) -> int:
        return sum(1 for c in self.checkpoints if c.status == "observed")

    @property
    def complete(self) -> bool:
        return self.observed == len(self.checkpoints)


def evaluate(
    provider: str,
    started_at: datetime,
    seen: Observations,
    now: datetime,
    *,
    finished_at: datetime | None = None,
    patience: timedelta = PATIENCE,
) -> Timeline:
    """Each checkpoint observed, waiting or missing.

    Not seen is *missing* once the test is finished or older than ``patience``, or when a later
    checkpoint was seen (the pipeline got past it some other way, e.g. a scheduled sync);
    otherwise *waiting*.
    """
    steps = STEPS.get(provider, STEPS["gmail"])
    times = seen.times()
    expired = finished_at is not None or now - started_at > patience
    out = []
    for i, ((title, proves), at) in enumerate(zip(steps, times, strict=True)):
        later = any(t is not None for t in times[i + 1:])
        status: Status = ("observed" if at is not None
                          else "missing" if expired or later else "waiting")
        out.append(Checkpoint(i + 1, title, proves, status, at))
    first_gap = next((c.number for c in out if c.status != "observed"), None)
    hint = ""
    if first_gap is not None:
        hints = (*_STALL_HINTS.get(provider, _STALL_HINTS["gmail"]), *_LATER_HINTS)
        hint = hints[first_gap - 1]
        if first_gap == 2 and seen.rejected:
            hint += f" The last refusal: {seen.rejected}."
    return Timeline(provider, started_at, finished_at, tuple(out), hint)


# ----------------------------------------------------------------------------- the store side

@dataclass(frozen=True, slots=True)
class TestRun:
    """One realtime test of a mailbox: the ``test_started`` event and what it noted."""

    __test__ = False  # not a pytest class

    event_id: int
    account_id: int
    provider: str
    started_at: datetime
    change_id: int
    finished_at: datetime | None


async def start_test(conn: AsyncConnection, account_id: int, provider: str,
                     now: datetime) -> None:
    change_id = await view_store.latest_change_id(conn, account_id)
    await conn.execute(insert(push_events).values(
        account_id=account_id, provider=provider, kind=TEST_STARTED,
        detail=f"after change {change_id}", at=now))


async def finish_test(conn: AsyncConnection, run: TestRun, now: datetime) -> None:
    await conn.execute(insert(push_events).values(
        account_id=run.account_id, provider=run.provider, kind=TEST_FINISHED,
        detail=f"test {run.event_id}", at=now))


async def current_test(conn: AsyncConnection, account_id: int) -> TestRun | None:
    """The mailbox's latest test (finished or not), or None."""
    started = (await conn.execute(
        select(push_events).where(push_events.c.account_id == account_id,
                                  push_events.c.kind == TEST_STARTED)
        .order_by(push_events.c.id.desc()).limit(1))).first()
    if started is None:
        return None
    finished = await conn.scalar(select(func.min(push_events.c.at)).where(
        push_events.c.account_id == account_id, push_events.c.kind == TEST_FINISHED,
        push_events.c.id > started.id))
    _, _, number = str(started.detail).rpartition(" ")
    return TestRun(int(started.id), account_id, str(started.provider), started.at,
                   int(number) if number.isdigit() else 0, finished)


async def observe(conn: AsyncConnection, run: TestRun) -> Observations:
    rows = (await conn.execute(
        select(push_events.c.id, push_events.c.kind, push_events.c.detail, push_events.c.at)
        .where(push_events.c.account_id == run.account_id, push_events.c.id > run.event_id,
               push_events.c.provider == run.provider,
               push_events.c.kind.in_(["delivered", "verified", "sync_started", "rejected",
                                       VISIBLE]))
        .order_by(push_events.c.id))).all()
    first: dict[str, datetime] = {}
    rejected: str | None = None
    for _, kind, detail, at in rows:
        if kind == "rejected":
            rejected = str(detail)
        elif kind == "sync_started" and "verified" not in first and "delivered" in first:
            continue  # a sync that began before the notification was verified is not its own
        else:
            first.setdefault(str(kind), at)
    changed = (await conn.execute(
        select(changes.c.message_id, changes.c.at)
        .where(changes.c.account_id == run.account_id, changes.c.id > run.change_id,
               changes.c.kind.in_(["added", "updated"]), changes.c.message_id.is_not(None))
        .order_by(changes.c.id).limit(200))).all()
    row_at = changed[0].at if changed else None
    body_at = None
    if changed:
        body_at = await conn.scalar(select(func.min(bodies.c.fetched_at)).where(
            bodies.c.message_id.in_(sorted({int(m) for m, _ in changed}))))
    return Observations(first.get("delivered"), first.get("verified"),
                        first.get("sync_started"), row_at, body_at, first.get(VISIBLE),
                        rejected)


async def changed_since(conn: AsyncConnection, run: TestRun) -> Sequence[int]:
    rows = await conn.execute(select(changes.c.message_id).where(
        changes.c.account_id == run.account_id, changes.c.id > run.change_id,
        changes.c.message_id.is_not(None)).limit(1000))
    return [int(m) for (m,) in rows]


async def record_visible(conn: AsyncConnection, account_id: int, message_id: int,
                         now: datetime) -> bool:
    """Checkpoint 6: a browser rendered ``message_id`` live in the inbox. Recorded only while a
    test of the mailbox runs, for a message changed since it started, and once per test (so
    viewers of a busy inbox cost one query each, not a write)."""
    run = await current_test(conn, account_id)
    if run is None or run.finished_at is not None:
        return False
    if message_id not in await changed_since(conn, run):
        return False
    seen = await conn.scalar(select(func.count()).select_from(push_events).where(
        push_events.c.account_id == account_id, push_events.c.id > run.event_id,
        push_events.c.kind == VISIBLE))
    if seen:
        return False
    await conn.execute(insert(push_events).values(
        account_id=account_id, provider=run.provider, kind=VISIBLE,
        detail=f"message {message_id}", at=now))
    return True
