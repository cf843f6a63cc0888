"""``PgRelay`` on a real PostgreSQL: two relays on one database stand for two processes.

PostgreSQL delivers the notifications of one session in the order they committed, so a "fence"
(one more event sent after the ones under test) proves that nothing else is still on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
from sqlalchemy.engine import make_url

from maildesk.domain.events import ChangeKind, MailEvent
from maildesk.live.pg_relay import PgRelay
from maildesk.live.relay import WAKE_PUSH, WAKE_SYNC, Inbox

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)

WAIT = 10.0


def _event(account: int, n: int, folders: tuple[int, ...] = (1,)) -> MailEvent:
    return MailEvent(account, ChangeKind.ADDED, n, f"remote-{n:08d}-" + "y" * 30, folders, n)


class Received:
    """An inbox that records what a relay handed over."""

    def __init__(self) -> None:
        self.events: list[MailEvent] = []
        self.reloads: list[frozenset[int] | None] = []
        self.wakes: list[frozenset[str]] = []
        self._changed = asyncio.Event()

    def inbox(self) -> Inbox:
        return Inbox(events=self._on_events, reload=self._on_reload, wake=self._on_wake)

    def _on_events(self, events: Any) -> None:
        self.events += events
        self._changed.set()

    def _on_reload(self, account_ids: frozenset[int] | None) -> None:
        self.reloads.append(account_ids)
        self._changed.set()

    def _on_wake(self, topics: frozenset[str]) -> None:
        self.wakes.append(topics)
        self._changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not done():
                self._changed.clear()
                await self._changed.wait()

    async def until_event(self, event: MailEvent) -> None:
        await self.until(lambda: event in self.events)


def _options(db_url: str) -> dict[str, Any]:
    dsn = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    return {"dsn": dsn}


@contextlib.asynccontextmanager
async def _running(db_url: str, **kwargs: Any) -> AsyncIterator[tuple[PgRelay, Received]]:
    relay = PgRelay(_options(db_url), where="test", backoff_start=0.05, **kwargs)
    received = Received()
    async with relay.running(received.inbox()):
        assert relay.connected
        yield relay, received


FENCE = MailEvent(999, ChangeKind.REMOVED, 0, "fence", (), 0)


async def test_events_reach_the_other_process_once_and_never_echo(db_url: str) -> None:
    async with _running(db_url) as (a, at_a), _running(db_url) as (b, at_b):
        sent = [_event(1, n) for n in range(5)]
        a.publish(sent[:2])
        a.publish(sent[2:])
        a.publish([FENCE])
        await at_b.until_event(FENCE)
        assert at_b.events == [*sent, FENCE]
        # B answers only after it saw A's notifications commit: A's own would precede it.
        b.publish([_event(2, 77)])
        await at_a.until_event(_event(2, 77))
        assert at_a.events == [_event(2, 77)], "A never hears its own events"
        assert at_a.reloads == at_b.reloads == []


async def test_a_batch_larger_than_a_notification_arrives_whole(db_url: str) -> None:
    batch = [_event(1, n, folders=tuple(range(20))) for n in range(400)]
    assert sum(len(repr(e)) for e in batch) > 5 * 8000
    async with _running(db_url) as (a, _), _running(db_url) as (_, at_b):
        a.publish(batch)
        a.publish([FENCE])
        await at_b.until_event(FENCE)
        assert at_b.events == [*batch, FENCE]
        assert at_b.reloads == []


async def test_an_oversize_event_arrives_as_a_reload_of_its_account(db_url: str) -> None:
    huge = _event(7, 1, folders=tuple(range(1_000_000, 1_002_000)))
    async with _running(db_url) as (a, _), _running(db_url) as (_, at_b):
        a.publish([_event(6, 2), huge, _event(6, 3)])
        await at_b.until(lambda: bool(at_b.reloads))
        assert at_b.reloads == [frozenset({7})]
        assert at_b.events == [_event(6, 2), _event(6, 3)]


async def test_wake_ups_coalesce_and_reach_the_other_process(db_url: str) -> None:
    async with _running(db_url) as (a, at_a), _running(db_url) as (_, at_b):
        for _ in range(100):
            a.wake()
        a.wake(WAKE_PUSH)
        a.publish([FENCE])  # sent after the wake-ups, so they arrived before it
        await at_b.until_event(FENCE)
        assert 1 <= len(at_b.wakes) <= 2, at_b.wakes
        assert frozenset().union(*at_b.wakes) == {WAKE_SYNC, WAKE_PUSH}
        assert at_a.wakes == []


async def test_an_outgoing_overflow_is_sent_as_a_reload_not_lost(db_url: str) -> None:
    async with _running(db_url, queue_limit=2) as (a, _), _running(db_url) as (_, at_b):
        # All in one go: the sender gets no turn in between, so three batches do not fit.
        for account in range(1, 6):
            a.publish([_event(account, account)])
        a.publish([FENCE])
        await at_b.until(lambda: len(at_b.events) == 2)
        assert at_b.reloads == [frozenset({3, 4, 5, 999})], "owed reloads go first"
        a.publish([_event(6, 6)])  # the queue has room again
        await at_b.until_event(_event(6, 6))
        assert at_b.events == [_event(1, 1), _event(2, 2), _event(6, 6)]
        assert at_b.reloads == [frozenset({3, 4, 5, 999})]


async def test_queued_notifications_are_flushed_when_the_relay_closes(db_url: str) -> None:
    async with _running(db_url) as (_, at_b):
        async with _running(db_url) as (a, _):
            a.publish([_event(1, 1)])
            a.wake()
        await at_b.until(lambda: bool(at_b.events) and bool(at_b.wakes))
        assert at_b.events == [_event(1, 1)]


async def test_a_lost_connection_is_restored_and_receivers_reload_and_wake(
    db_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="maildesk.live.pg_relay")
    async with _running(db_url) as (a, _), _running(db_url) as (b, at_b):
        pid = b.backend_pid
        assert pid is not None
        admin = await asyncpg.connect(_options(db_url)["dsn"], timeout=10)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid, timeout=10)
        finally:
            await admin.close(timeout=10)
        await at_b.until(lambda: bool(at_b.reloads) and bool(at_b.wakes))
        assert at_b.reloads == [None], "every local subscriber reloads after the gap"
        assert at_b.wakes == [frozenset({WAKE_SYNC, WAKE_PUSH})]
        assert b.connects == 2
        assert b.backend_pid not in (None, pid)
        a.publish([_event(1, 5)])
        await at_b.until_event(_event(1, 5))
    lines = [r for r in caplog.records if r.name == "maildesk.live.pg_relay"]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.INFO]
    assert "lost its connection to test" in lines[0].getMessage()
    assert "connected to test again" in lines[1].getMessage()
