"""Cloud Pub/Sub push delivery of Gmail notifications, as Google does it (PROVIDERS.md).

When a watched mailbox changes in a way its watch's label filter lets through, Gmail publishes
``{"emailAddress", "historyId"}`` to the watch's topic — at most one notification per mailbox per
second, the rest are dropped (and counted) — and a successful ``watch`` publishes one at once.
Every push subscription on the topic then gets a POST with an OIDC ``Bearer`` token
(``OidcKeys``); 102/200/201/202/204 acknowledge, anything else or no answer within the ack deadline
is redelivered with exponential backoff (10 s doubling to 600 s, times ``backoff_scale``) and an
incremented ``deliveryAttempt``.

Nothing runs in the background on its own: publishes queue up until a deliverer runs, inside
``async with pubsub.running(client):``, which owns the delivery worker and its tasks and stops
them on exit. ``await pubsub.drain()`` waits until everything queued is acked or given up.
All waits (backoff, injected delay) use the injected clock's ``sleep``; ``pubsub.log`` records
every publish and every delivery attempt with clock times.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from maildesk.clock import Clock
from maildesk.sim.delivery import Deliverer
from maildesk.sim.gmail_objects import Watch
from maildesk.sim.mailbox import Mailbox
from maildesk.sim.oidc_keys import OidcKeys
from maildesk.sim.pubsub_gmail import change_record, push_body, watch_wants
from maildesk.sim.pubsub_types import (
    DeliveryAttempt,
    PublishRecord,
    PushFaults,
    PushStats,
    PushSubscription,
)

ACK_STATUSES = frozenset({102, 200, 201, 202, 204})
MIN_BACKOFF = 10.0
MAX_BACKOFF = 600.0
RETENTION = 7 * 86_400.0
USER_AGENT = "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)"


@dataclass(slots=True)
class _Job:
    record: PublishRecord
    subscriptions: tuple[PushSubscription, ...]


class PubSub(Deliverer[_Job]):
    """Topics' push subscriptions, the publish side fed by Gmail, and the push deliverer.

    ``lookup(email)`` finds a mailbox (for its watch and the change's history record).
    ``backoff_scale`` multiplies every redelivery wait and the retention; ``max_attempts`` (None:
    until retention runs out) bounds the attempts per delivery; ``max_in_flight`` bounds the
    concurrent POSTs; ``reorder_hold`` is how many real seconds a held-back (``reorder``) message
    waits for a successor before it goes anyway.
    """

    _what = "the push deliverer"
    _owner = "pubsub"
    _task_name = "sim-pubsub-deliverer"
    _undelivered = "{outstanding} publishes still undelivered after {timeout} s"

    def __init__(
        self,
        clock: Clock,
        *,
        lookup: Callable[[str], Mailbox | None] = lambda _: None,
        keys: OidcKeys | None = None,
        rng: random.Random | None = None,
        backoff_scale: float = 1.0,
        ack_deadline: float = 10.0,
        max_attempts: int | None = None,
        retention: float = RETENTION,
        max_in_flight: int = 32,
        rate_limit_interval: float = 1.0,
        reorder_hold: float = 5.0,
        log_limit: int = 100_000,
    ) -> None:
        super().__init__(reorder_hold=reorder_hold)
        self.clock = clock
        self.keys = keys or OidcKeys(clock)
        self.backoff_scale = backoff_scale
        self.ack_deadline = ack_deadline
        self.max_attempts = max_attempts
        self.retention = retention
        self.max_in_flight = max_in_flight
        self.rate_limit_interval = rate_limit_interval
        self.subscriptions: dict[str, PushSubscription] = {}
        self.faults = PushFaults()
        self.log: deque[PublishRecord] = deque(maxlen=log_limit)
        self.stats = PushStats()
        self._lookup = lookup
        self._rng = rng or random.Random(0x9B5B)
        self._next_id = self._rng.randrange(10**15, 9 * 10**15)
        self._last_publish: dict[str, datetime] = {}
        self._pending: deque[_Job] = deque()
        self._slots: asyncio.Semaphore | None = None

    # -- configuration ---------------------------------------------------------------------

    def add_subscription(
        self,
        topic: str,
        endpoint: str,
        *,
        audience: str | None = None,
        service_account: str | None = None,
        subscription: str | None = None,
    ) -> PushSubscription:
        """Create or replace a push subscription on ``topic`` (defaults: see
        ``PushSubscription.build``)."""
        sub = PushSubscription.build(
            topic,
            endpoint,
            audience=audience,
            service_account=service_account,
            subscription=subscription,
        )
        self.subscriptions[sub.name] = sub
        return sub

    def remove_subscription(self, name: str) -> bool:
        """Delete a subscription by name; whether it existed. Queued pushes still go out."""
        return self.subscriptions.pop(name, None) is not None

    def inject(self, **fields: Any) -> PushFaults:
        """Set push fault fields (see ``PushFaults``); returns the live faults."""
        self.faults.update(fields)
        return self.faults

    def clear_faults(self) -> None:
        """No push faults any more (a message held back by ``reorder`` still goes out)."""
        self.faults = PushFaults()

    def rotate_key(self, *, drop_old: bool = False) -> str:
        """Publish a new signing key and sign with it; returns the new kid."""
        return self.keys.rotate(drop_old=drop_old)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): 10, 20, 40 … 600, scaled."""
        return min(MAX_BACKOFF, MIN_BACKOFF * 2.0 ** min(attempt - 1, 16)) * self.backoff_scale

    # -- publishing (synchronous: runs inside the mailbox change) --------------------------

    def on_change(self, email: str, history_id: int) -> None:
        """``GoogleState`` listener: publish if the mailbox's live watch wants this change."""
        mailbox = self._lookup(email)
        watch = None if mailbox is None else mailbox.watch
        if mailbox is None or watch is None or not self._live(watch):
            return
        record = change_record(mailbox, history_id)
        if record is not None and not watch_wants(watch, record):
            self.stats.filtered += 1
            return
        self.publish(email, history_id, watch.topic_name)

    def watch_started(self, email: str) -> None:
        """A successful ``watch`` publishes one notification at once."""
        mailbox = self._lookup(email)
        if mailbox is not None and mailbox.watch is not None:
            self.publish(email, mailbox.history_id, mailbox.watch.topic_name)

    def publish(self, email: str, history_id: int, topic: str) -> PublishRecord | None:
        """Publish a Gmail notification to ``topic`` now, subject to the per-mailbox rate limit
        and ``drop`` faults. Returns the record, or None if rate-limited or no subscription."""
        now = self.clock.now()
        last = self._last_publish.get(email)
        if last is not None and (now - last).total_seconds() < self.rate_limit_interval:
            self.stats.rate_limited[email] += 1
            return None
        self._last_publish[email] = now
        subs = tuple(s for s in self.subscriptions.values() if s.topic == topic)
        if not subs:
            self.stats.unrouted += 1
            return None
        self._next_id += self._rng.randint(1, 997)
        record = PublishRecord(
            message_id=str(self._next_id),
            email=email,
            history_id=history_id,
            topic=topic,
            published_at=now,
            subscriptions=tuple(s.name for s in subs),
        )
        self.log.append(record)
        self.stats.published += 1
        if self.faults.drop > 0:
            self.faults.drop -= 1
            self.stats.dropped += 1
            record.outcome = "dropped"
            return record
        self._pending.append(_Job(record, subs))
        self._queued()
        return record

    def _live(self, watch: Watch) -> bool:
        return watch.expiration_ms > int(self.clock.now().timestamp() * 1000)

    # -- the deliverer ---------------------------------------------------------------------
    # Publishes not yet started when the deliverer stops (a held-back one included) stay
    # queued for the next run.

    def _has_pending(self) -> bool:
        return bool(self._pending)

    async def _work(self, client: httpx.AsyncClient) -> None:
        self._slots = asyncio.Semaphore(self.max_in_flight)
        try:
            async with asyncio.TaskGroup() as group:
                while True:
                    released = await self._wait_for_work()
                    job = self._pending.popleft() if released is None else released
                    if released is None and self.faults.reorder > 0 and self._held is None:
                        self.faults.reorder -= 1
                        self._held = job
                        continue
                    self._start(group, client, job)
                    if self._held is not None:
                        self._start(group, client, self._held)
                        self._held = None
        finally:
            self._slots = None
            if self._held is not None:
                self._pending.appendleft(self._held)
                self._held = None

    def _start(self, group: asyncio.TaskGroup, client: httpx.AsyncClient, job: _Job) -> None:
        copies = max(1, self.faults.duplicate)
        job.record.open_deliveries = len(job.subscriptions) * copies
        for sub in job.subscriptions:
            for copy in range(copies):
                group.create_task(self._deliver(client, job.record, sub, copy))

    async def _deliver(
        self, client: httpx.AsyncClient, record: PublishRecord, sub: PushSubscription, copy: int
    ) -> None:
        outcome = "cancelled"
        try:
            attempt = 0
            while True:
                attempt += 1
                if await self._attempt(client, record, sub, copy, attempt):
                    outcome = "acked"
                    return
                elapsed = (self.clock.now() - record.published_at).total_seconds()
                if (self.max_attempts is not None and attempt >= self.max_attempts) or (
                    elapsed >= self.retention * self.backoff_scale
                ):
                    outcome = "gave_up"
                    return
                await self.clock.sleep(self.backoff(attempt))
        finally:
            self._finish(record, outcome)

    async def _attempt(
        self,
        client: httpx.AsyncClient,
        record: PublishRecord,
        sub: PushSubscription,
        copy: int,
        attempt: int,
    ) -> bool:
        if self.faults.delay_ms > 0:
            await self.clock.sleep(self.faults.delay_ms / 1000)
        assert self._slots is not None
        async with self._slots:
            headers = {
                "Authorization": f"Bearer {self._token(sub)}",
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
            }
            body = push_body(record, sub.name, attempt)
            sent_at = self.clock.now()
            status: int | None = None
            error: str | None = None
            self.stats.attempts += 1
            try:
                async with asyncio.timeout(self.ack_deadline):
                    response = await client.post(
                        sub.endpoint, content=body, headers=headers, timeout=self.ack_deadline
                    )
                status = response.status_code
            except (TimeoutError, httpx.TimeoutException):
                error = "no answer within the ack deadline"
            except Exception as exc:  # any failure of the receiver is a nack, never our crash
                error = f"{type(exc).__name__}: {exc}"
        acked = status in ACK_STATUSES
        record.attempts.append(
            DeliveryAttempt(
                sub.name, attempt, copy, sent_at, self.clock.now(), status, acked, error
            )
        )
        return acked

    def _token(self, sub: PushSubscription) -> str:
        faults = self.faults
        if not faults.token_faulty():
            return self.keys.push_token(audience=sub.audience, email=sub.service_account)
        issued_at = None
        if faults.expired:
            issued_at = self.clock.now().timestamp() - 2 * 3600
        return self.keys.push_token(
            audience=faults.wrong_audience or sub.audience,
            email=faults.service_account or sub.service_account,
            issued_at=issued_at,
            key=self.keys.foreign_key() if faults.foreign_signer else None,
        )

    def _finish(self, record: PublishRecord, outcome: str) -> None:
        record.open_deliveries -= 1
        if outcome == "acked":
            self.stats.acked += 1
            record.acked_at = self.clock.now()
        elif outcome == "gave_up":
            self.stats.gave_up += 1
            record.outcome = "gave_up"
        elif record.outcome == "pending":
            record.outcome = "cancelled"
        if record.open_deliveries > 0:
            return
        if record.outcome == "pending":
            record.outcome = "acked"
        self._settled()
