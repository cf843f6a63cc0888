"""What a sync run needs from its surroundings: lease-guarded writes and post-commit publishing."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.clock import Clock
from maildesk.domain.events import ChangeKind, MailEvent
from maildesk.live.bus import LiveBus
from maildesk.store import accounts as account_store
from maildesk.store.database import Database


@dataclass(slots=True)
class SyncStats:
    added: int = 0
    updated: int = 0
    removed: int = 0
    fetched: int = 0
    provider_calls: int = 0
    new_message_ids: list[int] = field(default_factory=list)

    def count(self, events: Sequence[MailEvent]) -> None:
        for e in events:
            if e.kind is ChangeKind.ADDED:
                self.added += 1
                self.new_message_ids.append(e.message_id)
            elif e.kind is ChangeKind.UPDATED:
                self.updated += 1
            else:
                self.removed += 1

    def summary(self) -> str:
        return f"added={self.added} updated={self.updated} removed={self.removed}"


@dataclass(slots=True)
class SyncContext:
    """One claimed account: every write extends the lease first (or fails with LeaseLost), and
    events reach the live bus only after their transaction committed."""

    db: Database
    clock: Clock
    bus: LiveBus
    account_id: int
    owner: str
    lease: timedelta
    stats: SyncStats = field(default_factory=SyncStats)
    # Set when the run stopped with work left (backfill pages): the request stays pending, so
    # the mailbox is claimed again on the next tick, after others had their turn.
    more_work: bool = False

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        async with self.db.transaction() as conn:
            await account_store.extend_lease(
                conn, self.account_id, owner=self.owner, now=self.clock.now(), lease=self.lease
            )
            yield conn

    def committed(self, events: Sequence[MailEvent]) -> None:
        """Call after the transaction that produced ``events`` committed."""
        if events:
            self.stats.count(events)
            self.bus.publish(events)
