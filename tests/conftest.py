"""Shared fixtures.

Every test that takes ``db_url`` (directly or through ``harness``) runs twice: on SQLite and on
a real PostgreSQL started from the Debian package for the session. ``MAILDESK_TEST_DB=sqlite``
or ``=postgresql`` narrows a local run to one; CI runs both. If PostgreSQL cannot start the
tests fail — they never skip.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import shutil
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from maildesk.clock import ManualClock
from maildesk.config import Settings
from maildesk.store.database import Database
from maildesk.store.migrate import upgrade
from tests.support.harness import Harness
from tests.support.postgres import PostgresCluster

_BACKENDS = ["sqlite", "postgresql"]
_only = os.environ.get("MAILDESK_TEST_DB", "").strip()
if _only:
    if _only not in _BACKENDS:
        raise RuntimeError(f"MAILDESK_TEST_DB must be one of {_BACKENDS}, not {_only!r}")
    _BACKENDS = [_only]

_db_counter = itertools.count()
T = TypeVar("T")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _run_aside(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on its own loop in a thread (session fixtures may be
    set up from inside a test's running loop)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def _pg_template(pg_cluster: PostgresCluster) -> str:
    """A migrated database that every PostgreSQL test copies (much faster than migrating)."""

    async def make() -> str:
        url = await pg_cluster.create_database("maildesk_template")
        db = Database(url)
        try:
            await upgrade(db.engine)
        finally:
            await db.dispose()
        return "maildesk_template"

    return _run_aside(make())


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"

    async def make() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        try:
            await upgrade(db.engine)
        finally:
            await db.dispose()

    _run_aside(make())
    return path


@pytest.fixture(params=_BACKENDS)
async def db_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """URL of a fresh, migrated, empty database on the parametrized backend."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("_sqlite_template")
        path = tmp_path / "maildesk.db"
        await asyncio.to_thread(shutil.copyfile, template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    template_name: str = request.getfixturevalue("_pg_template")
    name = f"t{os.getpid()}_{next(_db_counter)}"
    url = await cluster.create_database(name, template=template_name)
    try:
        yield url
    finally:
        await cluster.drop_database(name)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def harness(db_url: str, clock: ManualClock, tmp_path: Path) -> AsyncIterator[Harness]:
    """MailDesk wired to the Google simulator in-process, on a manual clock."""
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path) as h:
        yield h


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, secret_key="test-key")


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)

