"""``PgRelay``: the live bus and worker wake-ups across processes, over PostgreSQL
LISTEN/NOTIFY.

One dedicated asyncpg connection per process (not one of SQLAlchemy's pooled connections: a
LISTEN must stay on one session for as long as the process runs) listens on ``maildesk_live``
and ``maildesk_wake`` and sends ``SELECT pg_notify(channel, payload)``; the payloads are
``live/relay_wire.py``'s. Notifications are scoped to the database, so processes on other
databases of the same server never see each other's.

- *Sending never blocks.* ``publish`` and ``wake`` only queue; one task drains the queue over
  the connection. Wake-ups coalesce per topic (any number of ``wake()`` calls while a NOTIFY is
  in flight make one more). The queue is bounded: what does not fit, and what was being sent
  when the connection broke, is not lost silently but becomes a reload signal for its accounts.
- *No echo.* Every payload names its process (``origin``); a process ignores its own, which its
  bus already delivered.
- *Connection loss* (server restart, ``pg_terminate_backend``, a dead network): noticed at once
  by asyncpg's termination callback, or by a ``SELECT 1`` after ``ping_interval`` of quiet; the
  relay reconnects with jittered exponential backoff, logging the loss and the recovery once
  each (the server's address, never credentials). After reconnecting it tells every local
  subscriber to reload and wakes the local worker: notifications sent meanwhile are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

# asyncpg ships no type information.
import asyncpg  # type: ignore[import-untyped, unused-ignore]

from maildesk.domain.events import MailEvent
from maildesk.live.relay import WAKE_PUSH, WAKE_SYNC, Inbox, new_origin
from maildesk.live.relay_wire import (
    MAX_PAYLOAD,
    Packet,
    decode_live,
    decode_wake,
    encode_events,
    encode_wake,
    reload_packet,
)

log = logging.getLogger(__name__)

LIVE_CHANNEL = "maildesk_live"
WAKE_CHANNEL = "maildesk_wake"
APPLICATION_NAME = "maildesk-relay"
# Beyond this many accounts owed a reload, reload everything (one short payload).
_LOST_ACCOUNTS_MAX = 500
_CONNECTION_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class _Lost(Exception):
    """The connection closed under us."""


class PgRelay:
    """``connect_options`` are asyncpg.connect's keyword arguments (they hold the password:
    never logged); ``where`` names the server in log lines."""

    def __init__(
        self,
        connect_options: dict[str, Any],
        *,
        where: str,
        origin: str | None = None,
        queue_limit: int = 1000,
        payload_limit: int = MAX_PAYLOAD,
        connect_timeout: float = 10.0,
        command_timeout: float = 5.0,
        ping_interval: float = 30.0,
        backoff_start: float = 0.5,
        backoff_max: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self._options = {**connect_options, "server_settings": {
            **connect_options.get("server_settings", {}), "application_name": APPLICATION_NAME}}
        self.where = where  # for log lines: host:port/database, no credentials
        self.origin = origin or new_origin()
        self._queue_limit = queue_limit
        self._limit = payload_limit
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._ping_interval = ping_interval
        self._backoff_start = backoff_start
        self._backoff_max = backoff_max
        self._rng = rng or random.Random()
        self._outgoing: deque[Packet] = deque()
        self._wake_topics: set[str] = set()
        self._lost_accounts: set[int] = set()
        self._lost_all = False
        self._work = asyncio.Event()  # something to send, or the connection closed
        self._drained = asyncio.Event()  # nothing left to send on a live connection
        self._settled = asyncio.Event()  # the first connection attempt has ended
        self._inbox: Inbox | None = None
        self._conn: Any = None
        self._down = False
        self.connects = 0  # successful connections so far (tests, diagnostics)

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    @property
    def backend_pid(self) -> int | None:
        """The server process of the relay's connection, while there is one."""
        return int(self._conn.get_server_pid()) if self.connected else None

    # ------------------------------------------------------------------------------ sending
    def publish(self, events: Sequence[MailEvent]) -> None:
        for packet in encode_events(self.origin, events, limit=self._limit):
            if len(self._outgoing) < self._queue_limit:
                self._outgoing.append(packet)
            else:
                self._owe_reload(packet.account_ids)
        self._nudge()

    def wake(self, topic: str = WAKE_SYNC) -> None:
        self._wake_topics.add(topic)
        self._nudge()

    def _nudge(self) -> None:
        self._drained.clear()
        self._work.set()

    def _owe_reload(self, account_ids: frozenset[int]) -> None:
        # A packet without accounts is a reload of everything.
        if not account_ids:
            self._lost_all = True
        self._lost_accounts |= account_ids
        if len(self._lost_accounts) > _LOST_ACCOUNTS_MAX:
            self._lost_all = True
        if self._lost_all:
            self._lost_accounts.clear()

    def _pending(self) -> bool:
        return bool(self._outgoing or self._wake_topics or self._lost_accounts
                    or self._lost_all)

    async def _send_pending(self, conn: Any) -> None:
        """Send everything queued: owed reloads first (they cover older events), then the
        wake-ups (tiny, and latency is their point), then events in order. A packet whose
        send failed is owed as a reload; wake-ups stay pending."""
        if self._lost_all or self._lost_accounts:
            lost = None if self._lost_all else frozenset(self._lost_accounts)
            self._lost_all, self._lost_accounts = False, set()
            packet = reload_packet(self.origin, lost, limit=self._limit)
            await self._send(conn, LIVE_CHANNEL, packet)
        if self._wake_topics:
            topics, self._wake_topics = self._wake_topics, set()
            try:
                await self._notify(conn, WAKE_CHANNEL, encode_wake(self.origin, topics))
            except BaseException:
                self._wake_topics |= topics
                raise
        while self._outgoing:
            await self._send(conn, LIVE_CHANNEL, self._outgoing.popleft())

    async def _send(self, conn: Any, channel: str, packet: Packet) -> None:
        try:
            await self._notify(conn, channel, packet.payload)
        except BaseException:
            self._owe_reload(packet.account_ids)
            raise

    async def _notify(self, conn: Any, channel: str, payload: str) -> None:
        await conn.execute("SELECT pg_notify($1, $2)", channel, payload,
                           timeout=self._command_timeout)

    # ---------------------------------------------------------------------------- lifecycle
    @contextlib.asynccontextmanager
    async def running(self, inbox: Inbox) -> AsyncIterator[None]:
        """Connect and listen until the block ends; queued notifications are flushed (for at
        most ``command_timeout``) before the connection closes. The block starts once the
        first connection attempt ended, so a process that starts serving is listening."""
        self._inbox = inbox
        task = asyncio.create_task(self._run(), name="maildesk-live-relay")
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._connect_timeout + self._command_timeout):
                    await self._settled.wait()
            yield
        finally:
            if self.connected and not self._drained.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._command_timeout):
                        await self._drained.wait()
            self._inbox = None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        while True:
            if attempt:
                await asyncio.sleep(self._delay(attempt))
            attempt += 1
            try:
                conn = await self._connect()
            except Exception as exc:
                self._lost(exc)
                self._settled.set()
                continue
            started = loop.time()
            try:
                self._conn = conn
                self.connects += 1
                self._recovered()
                self._settled.set()
                await self._pump(conn)
            except Exception as exc:
                self._lost(exc)
            finally:
                self._conn = None
                await self._close(conn)
            if loop.time() - started >= self._ping_interval:
                attempt = 1  # it had been up a while: the first retry comes soon again

    def _delay(self, attempt: int) -> float:
        ceiling = min(self._backoff_max, self._backoff_start * 2.0 ** (attempt - 1))
        return ceiling * self._rng.uniform(0.5, 1.0)

    async def _connect(self) -> Any:
        conn = await asyncpg.connect(**self._options, timeout=self._connect_timeout,
                                     command_timeout=self._command_timeout,
                                     statement_cache_size=0)
        try:
            conn.add_termination_listener(self._on_terminated)
            await conn.add_listener(LIVE_CHANNEL, self._on_live)
            await conn.add_listener(WAKE_CHANNEL, self._on_wake)
        except BaseException:
            await self._close(conn)
            raise
        return conn

    async def _close(self, conn: Any) -> None:
        if conn.is_closed():
            return
        try:
            await conn.close(timeout=self._command_timeout)
        except Exception:
            conn.terminate()

    async def _pump(self, conn: Any) -> None:
        while True:
            self._work.clear()
            if conn.is_closed():
                raise _Lost("the connection was closed")
            await self._send_pending(conn)
            if self._pending():
                continue
            self._drained.set()
            try:
                async with asyncio.timeout(self._ping_interval):
                    await self._work.wait()
            except TimeoutError:
                await conn.execute("SELECT 1", timeout=self._command_timeout)

    def _lost(self, exc: Exception) -> None:
        if not isinstance(exc, (*_CONNECTION_ERRORS, _Lost)):
            log.error("live relay failed; reconnecting", exc_info=exc)
        if self._down:
            log.debug("live relay: still no connection to %s (%s)", self.where,
                      type(exc).__name__)
            return
        self._down = True
        log.warning("live relay: lost its connection to %s (%s); events from other "
                    "processes wait until it is back", self.where, type(exc).__name__)

    def _recovered(self) -> None:
        if not self._down:
            return
        self._down = False
        log.info("live relay: connected to %s again", self.where)
        # Notifications sent while we were away are gone: subscribers reload from the store,
        # and the worker looks for mailboxes stamped meanwhile.
        inbox = self._inbox
        if inbox is not None:
            inbox.reload(None)
            inbox.wake(frozenset({WAKE_SYNC, WAKE_PUSH}))

    # ---------------------------------------------------------------------------- receiving
    def _on_terminated(self, _conn: Any) -> None:
        self._work.set()  # the pump notices the closed connection and reconnects

    def _on_live(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        inbox = self._inbox
        if inbox is None:
            return
        try:
            received = decode_live(payload)
        except ValueError as exc:
            log.warning("live relay: ignored a malformed notification (%s)", exc)
            return
        if received.origin == self.origin:
            return
        if received.reload is not None:
            inbox.reload(received.reload.account_ids)
        elif received.events:
            inbox.events(received.events)

    def _on_wake(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        inbox = self._inbox
        if inbox is None:
            return
        try:
            origin, topics = decode_wake(payload)
        except ValueError as exc:
            log.warning("live relay: ignored a malformed wake-up (%s)", exc)
            return
        if origin != self.origin:
            inbox.wake(topics)
