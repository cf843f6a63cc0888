"""A throwaway PostgreSQL server for tests and benchmarks.

``PostgresCluster`` runs the Debian-packaged server binaries against a fresh data directory in a
temp dir, listening only on 127.0.0.1 at a port chosen free at start, with durability switched off
(nothing in it has to survive the process). Nothing depends on a system service::

    with PostgresCluster() as cluster:
        url = await cluster.create_database("t1")  # postgresql+asyncpg://maildesk@127.0.0.1:…/t1
        ...

``python -m tests.support.postgres`` starts one, prints its admin URL and keeps it until SIGTERM or
SIGINT, which is handy for benchmarks and poking at a schema by hand.

Sessions and CI run as root, and ``initdb`` refuses to; the data directory is therefore given to
the ``postgres`` system user and the server binaries run through ``runuser``. As any other user
they run directly.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self
from urllib.parse import quote

# asyncpg ships no type information; the second code keeps this line valid if stubs or a mypy
# override appear later.
import asyncpg  # type: ignore[import-untyped, unused-ignore]

from tests.support.ports import free_port

__all__ = ["PostgresCluster", "find_bindir"]

SUPERUSER = "maildesk"
HOST = "127.0.0.1"
_DEBIAN_ROOT = Path("/usr/lib/postgresql")
_LOG_TAIL_LINES = 40
# A port picked free can be taken by someone else before the server binds it; retry a few times.
_PORT_ATTEMPTS = 3
_BIND_FAILURE = re.compile(r"could not (bind|create listen socket)|Address already in use")
_MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1; PostgreSQL silently truncates longer names.


def find_bindir() -> Path:
    """The directory holding ``initdb``/``pg_ctl``: the newest ``/usr/lib/postgresql/N/bin``.

    Falls back to an ``initdb`` on ``PATH`` for non-Debian layouts. Raises ``RuntimeError`` when
    no PostgreSQL server is installed.
    """
    candidates = []
    if _DEBIAN_ROOT.is_dir():
        for entry in _DEBIAN_ROOT.iterdir():
            if (entry / "bin" / "initdb").is_file():
                # Sort by the numeric major version so that 9.6 < 15 < 16.
                key = tuple(int(part) for part in re.findall(r"\d+", entry.name))
                candidates.append((key, entry / "bin"))
    if candidates:
        return max(candidates)[1]
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(initdb).resolve().parent
    raise RuntimeError(
        f"no PostgreSQL server found (looked for {_DEBIAN_ROOT}/*/bin/initdb and initdb on PATH); "
        "install it with: apt-get install -y postgresql"
    )


def _quote_ident(name: str) -> str:
    if not name or "\x00" in name:
        raise ValueError(f"invalid database name: {name!r}")
    if len(name.encode()) > _MAX_IDENTIFIER_BYTES:
        raise ValueError(f"database name longer than {_MAX_IDENTIFIER_BYTES} bytes: {name!r}")
    return '"' + name.replace('"', '""') + '"'


class PostgresCluster:
    """One throwaway PostgreSQL server: its own data dir, free loopback port and superuser.

    ``start()`` blocks until the server accepts connections (or raises ``RuntimeError`` with the
    tail of the server log); ``stop()`` kills it and deletes everything it wrote. Also usable as a
    context manager. Authentication is ``trust`` for the superuser ``maildesk``, so URLs carry no
    password.
    """

    def __init__(
        self,
        *,
        bindir: Path | None = None,
        startup_timeout: float = 30.0,
        settings: Mapping[str, str | int] | None = None,
    ) -> None:
        """Prepare (not start) a cluster.

        ``bindir`` defaults to ``find_bindir()``. ``settings`` are extra ``postgresql.conf``
        entries (e.g. ``{"log_statement": "all"}``) applied after, and so overriding, the
        defaults here.
        """
        self._bindir = bindir
        self._settings = dict(settings or {})
        self._startup_timeout = startup_timeout
        self._dir: Path | None = None
        self._port: int | None = None
        self._as_postgres = os.geteuid() == 0

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the data directory, start the server and wait until it accepts connections."""
        if self._dir is not None:
            raise RuntimeError("PostgresCluster already started")
        bindir = self._bindir or find_bindir()
        self._bindir = bindir
        self._dir = Path(tempfile.mkdtemp(prefix="maildesk-pg-"))
        try:
            if self._as_postgres:
                try:
                    owner = pwd.getpwnam("postgres")
                except KeyError:
                    raise RuntimeError(
                        "running as root, but there is no 'postgres' user to run initdb as "
                        "(apt-get install -y postgresql creates it)"
                    ) from None
                os.chown(self._dir, owner.pw_uid, owner.pw_gid)
            self._initdb()
            self._configure()
            self._start_server()
        except BaseException:
            # Also on KeyboardInterrupt: a half-started server must not outlive us.
            self._discard()
            raise

    def stop(self) -> None:
        """Stop the server immediately (no checkpoint: the data is thrown away) and remove it.

        Safe to call more than once and on a cluster that never started.
        """
        if self._dir is None:
            return
        self._discard()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the server listens on (127.0.0.1 only)."""
        if self._port is None or self._dir is None:
            raise RuntimeError("PostgresCluster is not running")
        return self._port

    @property
    def directory(self) -> Path:
        """The temp dir holding ``data/``, the server ``log`` and the unix socket."""
        if self._dir is None:
            raise RuntimeError("PostgresCluster is not running")
        return self._dir

    @property
    def admin_url(self) -> str:
        """libpq/asyncpg URL of the ``postgres`` maintenance database, as the superuser."""
        return self.dsn("postgres")

    def dsn(self, name: str) -> str:
        """libpq/asyncpg URL of database ``name`` (for ``asyncpg.connect``, ``psql``).

        The name is percent-encoded; both asyncpg and SQLAlchemy decode it.
        """
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{quote(name, safe='')}"

    def sqlalchemy_url(self, name: str) -> str:
        """SQLAlchemy async URL of database ``name`` (the asyncpg dialect)."""
        return f"postgresql+asyncpg://{SUPERUSER}@{HOST}:{self.port}/{quote(name, safe='')}"

    # -- databases -------------------------------------------------------------------------------

    async def create_database(self, name: str, template: str | None = None) -> str:
        """Create database ``name`` (a copy of ``template`` if given); return its SQLAlchemy URL.

        Copying a migrated template is much faster than migrating each test database. PostgreSQL
        refuses to copy a template while anyone is connected to it, so dispose engines on the
        template first.
        """
        statement = f"CREATE DATABASE {_quote_ident(name)}"
        if template is not None:
            statement += f" TEMPLATE {_quote_ident(template)}"
        await self._admin_execute(statement)
        return self.sqlalchemy_url(name)

    async def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting anyone still connected to it."""
        # FORCE, because a test that failed half-way may leave pooled connections behind.
        await self._admin_execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")

    async def _admin_execute(self, statement: str) -> None:
        conn = await asyncpg.connect(self.admin_url, timeout=10, command_timeout=60)
        try:
            await conn.execute(statement)
        finally:
            await conn.close(timeout=10)

    # -- internals -------------------------------------------------------------------------------

    @property
    def _data(self) -> Path:
        return self.directory / "data"

    @property
    def _log(self) -> Path:
        return self.directory / "log"

    def _tool(self, name: str) -> str:
        assert self._bindir is not None
        return str(self._bindir / name)

    def _run(self, args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a server binary as the data directory's owner; never raises on exit status."""
        command = ["runuser", "-u", "postgres", "--", *args] if self._as_postgres else args
        try:
            return subprocess.run(
                command,
                # The postgres user may not be able to enter the caller's cwd (e.g. /root).
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"{args[0]} did not finish within {timeout:.0f}s{self._log_tail()}"
            ) from exc

    def _initdb(self) -> None:
        result = self._run(
            [
                self._tool("initdb"),
                "-D",
                str(self._data),
                "-A",
                "trust",
                "-U",
                SUPERUSER,
                # Same encoding and byte-order collation wherever the tests run.
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
            )

    def _configure(self) -> None:
        # Appended, so the file keeps its owner; later settings win over initdb's defaults.
        socket_dir = str(self.directory).replace("'", "''")
        settings = f"""
# -- throwaway test server (tests/support/postgres.py) --
listen_addresses = '{HOST}'
unix_socket_directories = '{socket_dir}'
max_connections = 200
# Durability is pointless for data deleted at stop, and costs most of the time in tests.
fsync = off
synchronous_commit = off
full_page_writes = off
"""
        for name, value in self._settings.items():
            # Any setting may be written as a quoted string, whatever its type.
            quoted = str(value).replace("'", "''")
            settings += f"{name} = '{quoted}'\n"
        with (self._data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(settings)

    def _start_server(self) -> None:
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            self._port = free_port(HOST)
            result = self._run(
                [
                    self._tool("pg_ctl"),
                    "start",
                    "-D",
                    str(self._data),
                    "-l",
                    str(self._log),
                    "-o",
                    f"-p {self._port}",
                    "-w",
                    "-t",
                    str(int(self._startup_timeout)),
                ],
                timeout=self._startup_timeout + 30,
            )
            if result.returncode == 0:
                self._wait_until_ready()
                return
            log = self._read_log()
            if attempt < _PORT_ATTEMPTS and _BIND_FAILURE.search(log):
                # The postmaster exits by itself when it cannot bind; start over with a new log.
                self._log.unlink(missing_ok=True)
                continue
            raise RuntimeError(
                f"PostgreSQL did not start on {HOST}:{self._port} "
                f"(pg_ctl exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}{self._log_tail()}"
            )

    def _wait_until_ready(self) -> None:
        # pg_ctl -w already waited for the postmaster; also ask over TCP, the way clients connect.
        deadline = time.monotonic() + self._startup_timeout
        while True:
            try:
                ready = subprocess.run(
                    [
                        self._tool("pg_isready"),
                        "-q",
                        "-h",
                        HOST,
                        "-p",
                        str(self.port),
                        "-U",
                        SUPERUSER,
                        "-d",
                        "postgres",
                        "-t",
                        "2",
                    ],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=10,
                    check=False,
                )
                if ready.returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"PostgreSQL on {HOST}:{self.port} not accepting connections after "
                    f"{self._startup_timeout:.0f}s{self._log_tail()}"
                )
            time.sleep(0.1)

    def _read_log(self) -> str:
        try:
            return self._log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def _log_tail(self) -> str:
        lines = self._read_log().splitlines()[-_LOG_TAIL_LINES:]
        if not lines:
            return f"\n(server log {self._log} is empty or missing)"
        return f"\n--- last lines of {self._log} ---\n" + "\n".join(lines)

    def _discard(self) -> None:
        assert self._dir is not None
        try:
            if (self._data / "postmaster.pid").exists():
                # Errors are ignored: the server may already be gone, and the dir goes anyway.
                with contextlib.suppress(RuntimeError):
                    self._run(
                        [
                            self._tool("pg_ctl"),
                            "stop",
                            "-D",
                            str(self._data),
                            "-m",
                            "immediate",
                            "-w",
                            "-t",
                            "30",
                        ],
                        timeout=60,
                    )
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self._port = None


class _Stop(Exception):
    pass


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    # Ignore further signals so a second Ctrl-C cannot interrupt the cleanup.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Stop


def main() -> int:
    """Start a cluster, print its admin URL on stdout, keep it until SIGTERM/SIGINT."""
    # Installed before start() so a signal during startup still removes the temp dir.
    signal.signal(signal.SIGINT, _stop_on_signal)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    try:
        with PostgresCluster() as cluster:
            print(cluster.admin_url, flush=True)
            print(f"data in {cluster.directory}; SIGTERM or Ctrl-C stops it", file=sys.stderr)
            while True:
                signal.pause()
    except _Stop:
        return 0


if __name__ == "__main__":
    sys.exit(main())
