"""Durable recording of verified notifications with group commit.

Every verified notification must be stored (last-notification time, timeline checkpoints, the
sync stamp) before we answer 202, or a crash could lose it. One transaction per request would
cap the webhook at the database's commit rate, so requests that arrive while a commit is in
flight are batched into the next one: the first waiting request flushes, the others wait for
their batch. No background task is needed, and nothing is acknowledged before it is durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

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
    done: asyncio.Future[None]


class NotificationRecorder:
    def __init__(self, db: Database, clock: Clock, wake: Callable[[], None]) -> None:
        self._db = db
        self._clock = clock
        self._wake = wake
        self._pending: list[_Item] = []
        self._flushing = False
        self.commits = 0

    async def notified(self, account_id: int, provider: ProviderKind, detail: str) -> None:
        """Record a verified notification and stamp the mailbox for sync; returns once durable."""
        item = _Item(account_id, provider, detail, asyncio.get_running_loop().create_future())
        self._pending.append(item)
        if not self._flushing:
            self._flushing = True
            try:
                while self._pending:
                    batch, self._pending = self._pending, []
                    await self._flush(batch)
            finally:
                self._flushing = False
                # If this flusher was cancelled, nobody else is flushing: fail the waiters
                # rather than leave them hanging (the provider redelivers a non-2xx).
                for left in self._pending:
                    if not left.done.done():
                        left.done.set_exception(RuntimeError("notification not recorded"))
                self._pending = []
        await item.done

    async def _flush(self, batch: list[_Item]) -> None:
        now = self._clock.now()
        try:
            async with self._db.transaction() as conn:
                events = []
                for item in batch:
                    for kind in ("delivered", "verified"):
                        events.append({"account_id": item.account_id,
                                       "provider": item.provider.value, "kind": kind,
                                       "detail": item.detail, "at": now})
                await push_store.add_events(conn, events)
                by_provider: dict[ProviderKind, set[int]] = {}
                for item in batch:
                    by_provider.setdefault(item.provider, set()).add(item.account_id)
                for provider, ids in by_provider.items():
                    await push_store.record_notifications(conn, sorted(ids), provider, now)
                for account_id in sorted({i.account_id for i in batch}):
                    await account_store.request_sync(conn, account_id, reason="push", now=now)
        except BaseException as exc:
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self.commits += 1
        for item in batch:
            if not item.done.done():
                item.done.set_result(None)
        self._wake()
