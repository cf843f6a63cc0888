"""The database handle: engine creation for SQLite and PostgreSQL and the one transaction helper.

SQLite is the embedded default and has one writer at a time. Rather than letting concurrent
writers collide on ``database is locked``, write transactions inside one process queue on an
asyncio lock and start with ``BEGIN IMMEDIATE`` (so a transaction that reads and then writes
never fails on the upgrade). A SQLite store is for one MailDesk process; several processes
share a PostgreSQL store, where claims use ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, StaticPool, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from maildesk.errors import ConfigError, StoreError

T = TypeVar("T")


class Database:
    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 10) -> None:
        try:
            parsed = make_url(url)
        except Exception as exc:  # sqlalchemy raises ArgumentError and others for bad URLs
            raise ConfigError("MAILDESK_DATABASE_URL", f"not a database URL: {exc}") from exc
        self.url = url
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ConfigError("MAILDESK_DATABASE_URL", "only sqlite and postgresql are supported")
        kwargs: dict[str, Any] = {"echo": echo}
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                folder = Path(parsed.database).parent
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise ConfigError("MAILDESK_DATA_DIR",
                                      f"cannot use {folder} ({exc.strerror or exc})") from exc
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(
                pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                # asyncpg reuses prepared statements; after five runs PostgreSQL would switch
                # our `remote_id IN (…500 ids…)` lookups to a generic plan made while the table
                # looked empty, and scan the whole account. Custom plans keep them indexed.
                connect_args={"server_settings": {"plan_cache_mode": "force_custom_plan"}},
            )
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        # PostgreSQL: a small pool in autocommit mode for writes that are ONE statement
        # (``run_single``): the statement is its own transaction, so it costs one round trip
        # instead of BEGIN + statement + COMMIT, and its pre-ping is a bare ``;`` instead of
        # BEGIN + ``;`` + ROLLBACK (asyncpg's ping opens a transaction unless autocommit).
        self._single: AsyncEngine | None = None
        if self.dialect == "postgresql":
            self._single = create_async_engine(
                url, echo=echo, pool_size=2, max_overflow=pool_size, pool_pre_ping=True,
                isolation_level="AUTOCOMMIT", connect_args=kwargs["connect_args"],
            )
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        # SQLite: a synchronous engine with one connection, used on one thread, for short
        # write transactions run as a single function (``run_write``). Through aiosqlite every
        # statement costs several thread hand-offs (cursor, execute, fetch, close, BEGIN,
        # COMMIT, the pool's reset), each waking the event loop; a whole transaction on the
        # writer thread costs one.
        self._sync_engine: Engine | None = None
        self._writer: ThreadPoolExecutor | None = None
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine.sync_engine)
            if parsed.database and parsed.database != ":memory:":
                self._sync_engine = create_engine(
                    parsed.set(drivername="sqlite"), echo=echo, poolclass=StaticPool,
                    connect_args={"timeout": 30, "check_same_thread": False},
                )
                _configure_sqlite(self._sync_engine)
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="maildesk-sqlite-writer")

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: committed when the block ends, rolled back on any exception."""
        lock = self._write_lock or contextlib.nullcontext()
        async with lock:
            try:
                async with self.engine.begin() as conn:
                    yield conn
            except (OperationalError, DBAPIError) as exc:
                if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                    raise StoreError("the database connection was lost") from exc
                raise StoreError(f"database error: {type(exc.orig).__name__}") from exc

    async def run_write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one write transaction with a synchronous connection; its result.

        Same guarantees as ``transaction()`` (committed when ``fn`` returns, rolled back if it
        raises; SQLite writers queue on the same lock and begin IMMEDIATE), but on SQLite the
        whole transaction is one call on the writer thread instead of several thread hand-offs
        per statement. For small, hot transactions (the webhook's group commit, claims, a sync
        run's bookkeeping). ``fn`` must not block on anything but the database.
        """
        if self._sync_engine is None or self._writer is None:
            async with self.transaction() as conn:
                return await conn.run_sync(fn)
        engine = self._sync_engine

        def work() -> T:
            with engine.begin() as conn:
                return fn(conn)

        assert self._write_lock is not None
        async with self._write_lock:
            future = asyncio.get_running_loop().run_in_executor(self._writer, work)
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                # Keep the lock until the transaction has ended on its thread.
                while not future.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait({future})
                if not future.cancelled():
                    future.exception()  # retrieved: the caller is gone, the outcome is moot
                raise
            except (OperationalError, DBAPIError) as exc:
                raise StoreError(f"database error: {type(exc.orig).__name__}") from exc

    async def run_single(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn``, which executes exactly ONE statement, as its own transaction; its
        result. Durable when this returns, like ``run_write``.

        On PostgreSQL the statement runs on an autocommit connection: one round trip, with
        data-modifying CTEs to write several tables atomically. On SQLite this is
        ``run_write`` (the single statement inside an explicit transaction).
        """
        if self._single is None:
            return await self.run_write(fn)
        try:
            async with self._single.connect() as conn:
                return await conn.run_sync(fn)
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                raise StoreError("the database connection was lost") from exc
            raise StoreError(f"database error: {type(exc.orig).__name__}") from exc

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only snapshot (SQLite WAL readers never wait for the writer)."""
        async with self.engine.connect() as conn:
            await conn.execution_options(maildesk_read_only=True)
            yield conn

    @property
    def where(self) -> str:
        """The database's location for messages, without credentials."""
        parsed = make_url(self.url)
        if self.dialect == "sqlite":
            return str(parsed.database)
        return f"{parsed.host}:{parsed.port or 5432}/{parsed.database}"

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._single is not None:
            await self._single.dispose()
        writer, self._writer = self._writer, None
        if writer is not None and self._sync_engine is not None:
            await asyncio.get_running_loop().run_in_executor(writer, self._sync_engine.dispose)
            writer.shutdown(wait=True)


def _configure_sqlite(sync_engine: Engine) -> None:

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (pysqlite's implicit transactions get in the way).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Readers take a plain deferred snapshot; writers take the write lock up front.
        read_only = conn.get_execution_options().get("maildesk_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
