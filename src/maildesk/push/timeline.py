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

from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.store import timeline as timeline_store
from maildesk.store import views as view_store

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


# ------------------------------------------------- tests as recorded (queries: store/timeline.py)

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
    await timeline_store.add_event(conn, account_id=account_id, provider=provider,
                                   kind=TEST_STARTED, detail=f"after change {change_id}", at=now)


async def finish_test(conn: AsyncConnection, run: TestRun, now: datetime) -> None:
    await timeline_store.add_event(conn, account_id=run.account_id, provider=run.provider,
                                   kind=TEST_FINISHED, detail=f"test {run.event_id}", at=now)


async def current_test(conn: AsyncConnection, account_id: int) -> TestRun | None:
    """The mailbox's latest test (finished or not), or None."""
    started = await timeline_store.latest_event(conn, account_id, TEST_STARTED)
    if started is None:
        return None
    finished = await timeline_store.first_event_at(conn, account_id, TEST_FINISHED,
                                                   after_id=started.id)
    _, _, number = started.detail.rpartition(" ")
    return TestRun(started.id, account_id, started.provider, started.at,
                   int(number) if number.isdigit() else 0, finished)


async def observe(conn: AsyncConnection, run: TestRun) -> Observations:
    events = await timeline_store.events_after(
        conn, run.account_id, run.provider,
        ["delivered", "verified", "sync_started", "rejected", VISIBLE], after_id=run.event_id)
    first: dict[str, datetime] = {}
    rejected: str | None = None
    for event in events:
        if event.kind == "rejected":
            rejected = event.detail
        elif event.kind == "sync_started" and "verified" not in first and "delivered" in first:
            continue  # a sync that began before the notification was verified is not its own
        else:
            first.setdefault(event.kind, event.at)
    changed = await timeline_store.changes_after(
        conn, run.account_id, after_id=run.change_id, kinds=["added", "updated"], limit=200)
    row_at = changed[0].at if changed else None
    body_at = None
    if changed:
        body_at = await timeline_store.first_body_fetched_at(
            conn, sorted({c.message_id for c in changed}))
    return Observations(first.get("delivered"), first.get("verified"),
                        first.get("sync_started"), row_at, body_at, first.get(VISIBLE),
                        rejected)


async def changed_since(conn: AsyncConnection, run: TestRun) -> Sequence[int]:
    changed = await timeline_store.changes_after(conn, run.account_id, after_id=run.change_id,
                                                 limit=1000)
    return [c.message_id for c in changed]


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
    if await timeline_store.has_event_after(conn, account_id, VISIBLE, after_id=run.event_id):
        return False
    await timeline_store.add_event(conn, account_id=account_id, provider=run.provider,
                                   kind=VISIBLE, detail=f"message {message_id}", at=now)
    return True
