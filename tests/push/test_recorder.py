"""Group commit of verified notifications: durable before the answer, never starved."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from maildesk.domain.accounts import ProviderKind
from maildesk.push.recorder import NotificationRecorder
from maildesk.store import accounts as account_store
from maildesk.store.tables import push_events
from tests.support.harness import Harness


async def test_a_request_is_answered_after_its_own_commit_despite_a_stream_of_arrivals(
    harness: Harness,
) -> None:
    h = harness
    account_id = await h.add_gmail("rec@example.com")
    recorder = NotificationRecorder(h.services.db, h.clock, lambda: None)
    flush = recorder._flush
    arrivals: list[asyncio.Task[None]] = []
    done_after: dict[str, int] = {}

    async def flush_with_new_arrivals(batch: list) -> None:  # type: ignore[type-arg]
        # Every commit sees another notification arrive while it is in flight.
        if len(arrivals) < 20:
            arrivals.append(asyncio.create_task(
                recorder.notified(account_id, ProviderKind.GMAIL, f"n{len(arrivals)}")))
        await flush(batch)

    recorder._flush = flush_with_new_arrivals  # type: ignore[method-assign]

    async def first() -> None:
        await recorder.notified(account_id, ProviderKind.GMAIL, "first")
        done_after["first"] = recorder.commits

    await first()
    assert done_after["first"] == 1, "the first request waited for later arrivals' commits"
    for _ in range(40):  # each commit adds the next arrival, up to 20
        await asyncio.gather(*arrivals)
        if len(arrivals) == 20 and all(t.done() for t in arrivals):
            break
    assert len(arrivals) == 20
    assert recorder.commits <= 21
    async with h.services.db.read() as conn:
        events = await conn.scalar(select(func.count()).select_from(push_events).where(
            push_events.c.account_id == account_id))
        account = await account_store.get(conn, account_id)
    assert events == 2 * 21, "every notification durably recorded (delivered + verified)"
    assert account.sync_request_seq >= 1 + recorder.commits, "each commit stamped a sync"
