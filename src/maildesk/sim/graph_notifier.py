"""Delivery of Graph change and lifecycle notifications to subscribers' webhooks.

Items queue up as mailbox changes happen (synchronously, inside the change). A deliverer runs
only inside ``async with notifier.running(client):``, which owns its worker and every delivery
task; ``await notifier.drain()`` waits until everything queued is acknowledged or given up.

The worker takes everything queued, groups it by (URL, kind) — so one POST may carry items of
several subscriptions — and POSTs ``{"value": [...]}`` batches of at most ``max_batch`` items.
A 2xx within ``ack_timeout`` (3 s, real time) acknowledges; anything else is retried with
exponential backoff (``min_backoff`` doubling to ``max_backoff``, times ``backoff_scale``, on
the injected clock) until ``retention`` (4 h, times ``backoff_scale``) has passed since the
batch was queued. ``log`` records every batch with its attempts (status codes and times).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import httpx

from maildesk.clock import Clock
from maildesk.errors import InputError
from maildesk.sim.delivery import Deliverer

WRONG_CLIENT_STATE = "sim-wrong-client-state"


@dataclass(slots=True)
class NotifyFaults:
    """What goes wrong with notifications until cleared; counters count down as used.

    ``drop``: the next N items are lost; ``duplicate``: every batch is POSTed this many times
    (1 = normal); ``delay_ms``: every attempt waits this long first (clock sleep);
    ``wrong_client_state``: the next N items carry a wrong ``clientState``; ``reorder``: the
    next N batches are each held back and sent after the batch that follows them.
    """

    drop: int = 0
    duplicate: int = 1
    delay_ms: float = 0.0
    wrong_client_state: int = 0
    reorder: int = 0

    def update(self, data: Mapping[str, Any]) -> None:
        """Set fields from control-API JSON; ``InputError`` (and no change) on bad input."""
        known = {f.name for f in fields(self)}
        if unknown := set(data) - known:
            raise InputError(f"unknown notification fault fields: {sorted(unknown)}")
        staged: dict[str, Any] = {}
        for name, value in data.items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            low = 1 if name == "duplicate" else 0
            if not number or value < low or (name != "delay_ms" and not isinstance(value, int)):
                raise InputError(f"{name} must be a number >= {low}")
            staged[name] = float(value) if name == "delay_ms" else value
        for name, value in staged.items():
            setattr(self, name, value)

    def to_json(self) -> dict[str, Any]:
        """Every field."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def reset(self) -> None:
        """Back to no faults (every field's default)."""
        for f in fields(self):
            setattr(self, f.name, f.default)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One POST of a batch: ``status`` None when no answer came (``error`` says why)."""

    number: int
    copy: int
    sent_at: datetime
    answered_at: datetime
    status: int | None
    error: str | None = None

    @property
    def acked(self) -> bool:
        """Whether the answer acknowledged the batch."""
        return self.status is not None and 200 <= self.status < 300


@dataclass(slots=True)
class Delivery:
    """One batch and what became of it: ``pending`` → ``acked`` | ``gave_up`` | ``cancelled``
    (the deliverer stopped first)."""

    id: int
    url: str
    kind: str  # "change" | "lifecycle"
    items: list[dict[str, Any]]
    queued_at: datetime
    attempts: list[Attempt] = field(default_factory=list)
    outcome: str = "pending"
    acked_at: datetime | None = None
    open_copies: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON for the control API."""
        return {
            "id": self.id,
            "url": self.url,
            "kind": self.kind,
            "items": self.items,
            "queuedAt": self.queued_at.isoformat(),
            "outcome": self.outcome,
            "ackedAt": None if self.acked_at is None else self.acked_at.isoformat(),
            "attempts": [
                {
                    "number": a.number,
                    "copy": a.copy,
                    "sentAt": a.sent_at.isoformat(),
                    "answeredAt": a.answered_at.isoformat(),
                    "status": a.status,
                    "error": a.error,
                }
                for a in self.attempts
            ],
        }


@dataclass(slots=True)
class _Item:
    url: str
    kind: str
    body: dict[str, Any]
    queued_at: datetime


class Notifier(Deliverer[Delivery]):
    """The queue, the deliverer and the log of notifications."""

    _what = "the notification deliverer"
    _owner = "notifier"
    _task_name = "sim-graph-notifier"
    _undelivered = "notifications still undelivered after {timeout} s"

    def __init__(
        self,
        clock: Clock,
        *,
        backoff_scale: float = 1.0,
        ack_timeout: float = 3.0,
        min_backoff: float = 10.0,
        max_backoff: float = 600.0,
        retention: float = 4 * 3600.0,
        max_batch: int = 100,
        reorder_hold: float = 5.0,
        log_limit: int = 100_000,
    ) -> None:
        super().__init__(reorder_hold=reorder_hold)
        self.clock = clock
        self.backoff_scale = backoff_scale
        self.ack_timeout = ack_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.retention = retention
        self.max_batch = max_batch
        self.faults = NotifyFaults()
        self.log: deque[Delivery] = deque(maxlen=log_limit)
        self.dropped: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        # Outstanding (see Deliverer): queued items + batches not yet finished.
        self._pending: deque[_Item] = deque()

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based), scaled."""
        base = min(self.max_backoff, self.min_backoff * 2.0 ** min(attempt - 1, 16))
        return base * self.backoff_scale

    # -- enqueueing (synchronous) ----------------------------------------------------------

    def enqueue(self, url: str, kind: str, item: dict[str, Any]) -> bool:
        """Queue one item for ``url``; False if a ``drop`` fault lost it."""
        if self.faults.drop > 0:
            self.faults.drop -= 1
            self.dropped.append(item)
            return False
        if self.faults.wrong_client_state > 0 and "clientState" in item:
            self.faults.wrong_client_state -= 1
            item = {**item, "clientState": WRONG_CLIENT_STATE}
        self._pending.append(_Item(url, kind, item, self.clock.now()))
        self._queued()
        return True

    # -- the deliverer ---------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Notifications queued and not yet grouped into a POST."""
        return len(self._pending)

    def _has_pending(self) -> bool:
        return bool(self._pending)

    async def _work(self, client: httpx.AsyncClient) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                while True:
                    released = await self._wait_for_work()
                    if released is not None:
                        self._start(group, client, released)
                        continue
                    for delivery in self._batches():
                        if self.faults.reorder > 0 and self._held is None:
                            self.faults.reorder -= 1
                            self._held = delivery
                            continue
                        self._start(group, client, delivery)
                        if self._held is not None:
                            self._start(group, client, self._held)
                            self._held = None
        finally:
            if self._held is not None:  # never started: it ends here, as cancelled
                self._held.outcome = "cancelled"
                self._held = None
                self._settled()

    def _batches(self) -> list[Delivery]:
        groups: dict[tuple[str, str], list[_Item]] = {}
        while self._pending:
            item = self._pending.popleft()
            groups.setdefault((item.url, item.kind), []).append(item)
        batches: list[Delivery] = []
        for (url, kind), items in groups.items():
            for start in range(0, len(items), self.max_batch):
                chunk = items[start : start + self.max_batch]
                # Items become one batch: the outstanding count moves from items to the batch.
                self._outstanding -= len(chunk) - 1
                delivery = Delivery(
                    next(self._ids), url, kind, [i.body for i in chunk], chunk[0].queued_at
                )
                self.log.append(delivery)
                batches.append(delivery)
        return batches

    def _start(self, group: asyncio.TaskGroup, client: httpx.AsyncClient, batch: Delivery) -> None:
        copies = max(1, self.faults.duplicate)
        batch.open_copies = copies
        for copy in range(copies):
            group.create_task(self._deliver(client, batch, copy))

    async def _deliver(self, client: httpx.AsyncClient, batch: Delivery, copy: int) -> None:
        outcome = "cancelled"
        try:
            attempt = 0
            while True:
                attempt += 1
                if await self._attempt(client, batch, copy, attempt):
                    outcome = "acked"
                    return
                elapsed = (self.clock.now() - batch.queued_at).total_seconds()
                if elapsed >= self.retention * self.backoff_scale:
                    outcome = "gave_up"
                    return
                await self.clock.sleep(self.backoff(attempt))
        finally:
            self._finish(batch, outcome)

    async def _attempt(
        self, client: httpx.AsyncClient, batch: Delivery, copy: int, number: int
    ) -> bool:
        if self.faults.delay_ms > 0:
            await self.clock.sleep(self.faults.delay_ms / 1000)
        body = json.dumps({"value": batch.items}, separators=(",", ":")).encode()
        sent_at = self.clock.now()
        status: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self.ack_timeout):
                response = await client.post(
                    batch.url,
                    content=body,
                    timeout=self.ack_timeout,
                    headers={"Content-Type": "application/json; charset=utf-8"},
                )
            status = response.status_code
        except (TimeoutError, httpx.TimeoutException):
            error = f"no answer within {self.ack_timeout} s"
        except Exception as exc:  # any failure of the receiver is a failed attempt, never ours
            error = f"{type(exc).__name__}: {exc}"
        attempt = Attempt(number, copy, sent_at, self.clock.now(), status, error)
        batch.attempts.append(attempt)
        return attempt.acked

    def _finish(self, batch: Delivery, outcome: str) -> None:
        batch.open_copies -= 1
        if outcome == "acked" and batch.acked_at is None:
            batch.acked_at = self.clock.now()
        if outcome == "gave_up" or (outcome == "cancelled" and batch.outcome == "pending"):
            batch.outcome = outcome
        if batch.open_copies > 0:
            return
        if batch.outcome == "pending":
            batch.outcome = "acked"
        self._settled()
