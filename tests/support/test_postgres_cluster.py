"""The throwaway PostgreSQL server that database tests and benchmarks stand on."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

# Relative, so this works whether pytest names the package ``support`` or ``tests.support``.
from .postgres import PostgresCluster

REPO_ROOT = Path(__file__).resolve().parents[2]


async def _select_one(dsn: str) -> object:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


async def test_cluster_lifecycle() -> None:
    with PostgresCluster() as cluster:
        directory = cluster.directory
        assert cluster.admin_url == f"postgresql://maildesk@127.0.0.1:{cluster.port}/postgres"

        url = await cluster.create_database("lifecycle")
        assert url == f"postgresql+asyncpg://maildesk@127.0.0.1:{cluster.port}/lifecycle"
        assert await _select_one(cluster.dsn("lifecycle")) == 1

        # The returned URL is what application code gets: check SQLAlchemy accepts it as is.
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE marker (id int)"))
                await conn.execute(text("INSERT INTO marker VALUES (7)"))
        finally:
            await engine.dispose()

        clone_url = await cluster.create_database("clone", template="lifecycle")
        engine = create_async_engine(clone_url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                assert await conn.scalar(text("SELECT id FROM marker")) == 7
        finally:
            await engine.dispose()

        # Dropping must succeed even with a connection still open (a test that died midway).
        lingering = await asyncpg.connect(cluster.dsn("clone"), timeout=10)
        try:
            await cluster.drop_database("clone")
        finally:
            await lingering.close()
        await cluster.drop_database("lifecycle")
        await cluster.drop_database("never-created")

        conn = await asyncpg.connect(cluster.admin_url, timeout=10)
        try:
            names = {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
        finally:
            await conn.close()
        assert not names & {"lifecycle", "clone"}

    assert not await asyncio.to_thread(directory.exists)
    cluster.stop()  # idempotent


async def test_odd_database_names_round_trip() -> None:
    with PostgresCluster() as cluster:
        name = 'we"ird name/%'
        url = await cluster.create_database(name)
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                assert await conn.scalar(text("SELECT current_database()")) == name
        finally:
            await engine.dispose()
        with pytest.raises(ValueError, match="longer than 63 bytes"):
            await cluster.create_database("x" * 64)


def test_failed_start_raises_with_server_log() -> None:
    cluster = PostgresCluster(settings={"shared_buffers": "not-a-size"})
    with pytest.raises(RuntimeError, match="did not start") as excinfo:
        cluster.start()
    message = str(excinfo.value)
    # The server's own complaint is in the message, so CI logs explain the failure.
    assert "shared_buffers" in message
    log = re.search(r"last lines of (\S+) ---", message)
    assert log is not None, message
    assert not Path(log[1]).parent.exists()


async def test_cli_serves_until_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.postgres",
        cwd=REPO_ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
        admin_url = line.decode().strip()
        assert admin_url.startswith("postgresql://maildesk@127.0.0.1:")
        assert await _select_one(admin_url) == 1
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode()
    data_dir = re.search(r"data in (\S+);", stderr.decode())
    assert data_dir is not None, stderr.decode()
    assert not await asyncio.to_thread(Path(data_dir[1]).exists)
