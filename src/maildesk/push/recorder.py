"""Durable recording of verified notifications with group commit.

Every verified notification must be stored (last-notification time, timeline checkpoints, the
sync stamp) before we answer 202, or a crash could lose it. One transaction per request would
cap the webhook at the database's commit rate, so requests that arrive while a commit is in
flight are batched into the next one: one request flushes one batch, the next waiter the next.
No background task is needed, and nothing is acknowledged before it is durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection

from maildesk.clock import Clock
from maildesk.domain.accounts import ProviderKind
from maildesk.store import accounts as account_store
from maildesk.store import push as push_store
from maildesk.store.database import Database


@dataclass(slots=True)
class _Item:
    account_id: int
    provider: ProviderKind
    detail: str


@dataclass(slots=True)
class _Batch:
    """Notifications that will commit together, and one future for all their waiters."""

    items: list[_Item]
    done: asyncio.Future[None]


async def _ended(round_: asyncio.Future[None]) -> None:
    """Wait until ``round_`` is over, whatever its outcome (another batch's failure is not
    ours); cancelling the waiter leaves the round alone."""
    waiter = asyncio.get_running_loop().create_future()

    def wake(_: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    round_.add_done_callback(wake)
    await waiter


class NotificationRecorder:
    def __init__(self, db: Database, clock: Clock, wake: Callable[[], None]) -> None:
        self._db = db
        self._clock = clock
        self._wake = wake
        self._next: _Batch | None = None  # filling: commits after the round in flight
        self._round: asyncio.Future[None] | None = None  # the batch committing, if any
        self.commits = 0

    async def notified(self, account_id: int, provider: ProviderKind, detail: str) -> None:
        """Record a verified notification and stamp the mailbox for sync; returns once durable.

        Whoever finds no flush in progress commits one batch (everything queued, its own item
        included) and returns; requests queued meanwhile wait for that round to end and the
        first of them flushes the next batch. No request ever flushes on behalf of others for
        longer than one commit, so no 202 waits behind a stream of later arrivals.
        """
        batch = self._next
        if batch is None:
            batch = self._next = _Batch([], asyncio.get_running_loop().create_future())
        batch.items.append(_Item(account_id, provider, detail))
        done = batch.done
        while not done.done():
            if self._round is not None:
                await _ended(self._round)
                continue
            # Nothing committing: ours is the oldest batch, and we flush it.
            self._next, self._round = None, done
            try:
                await self._flush(batch.items)
            except BaseException as exc:
                done.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                done.set_result(None)
            finally:
                self._round = None
        done.result()  # raises the batch's failure

    async def _flush(self, batch: list[_Item]) -> None:
        now = self._clock.now()
        events: list[dict[str, object]] = []
        by_provider: dict[ProviderKind, set[int]] = {}
        for item in batch:
            name = item.provider.value
            events.append({"account_id": item.account_id, "provider": name,
                           "kind": "delivered", "detail": item.detail, "at": now})
            events.append({"account_id": item.account_id, "provider": name,
                           "kind": "verified", "detail": item.detail, "at": now})
            by_provider.setdefault(item.provider, set()).add(item.account_id)
        ids = sorted({i.account_id for i in batch})

        if self._db.is_sqlite:
            def record(conn: Connection) -> list[int]:
                # A constant number of statements per batch, whatever its size or mailbox
                # count, in one call on SQLite's writer thread.
                push_store.add_events_blocking(conn, events)
                for provider, provider_ids in by_provider.items():
                    push_store.record_notifications_blocking(conn, sorted(provider_ids),
                                                             provider, now)
                return account_store.request_syncs_blocking(conn, ids, reason="push", now=now)

            to_wake = await self._db.run_write(record)
        else:
            # PostgreSQL: all of it as one statement (data-modifying CTEs), one round trip.
            statement = push_store.record_batch_statement(
                events, {p: sorted(a) for p, a in by_provider.items()}, ids,
                reason="push", now=now)

            def record_one(conn: Connection) -> list[int]:
                return account_store.needs_wake(conn.execute(statement).all(), now)

            to_wake = await self._db.run_single(record_one)
        self.commits += 1
        if to_wake:
            # A mailbox under a live lease is being synced: its run ends keeping the newer
            # request and its worker claims the follow-up itself; a settling follow-up is due
            # on that worker's timer. Waking for those would only cost a claim that finds
            # nothing (the webhook commits many batches per sync).
            self._wake()
