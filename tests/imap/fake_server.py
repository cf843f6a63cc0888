"""A scripted IMAP peer on a loopback port, for what a real Dovecot will not do on request:
XOAUTH2, garbage, silence, injected bytes. Each test writes the server's side as a coroutine::

    async def script(peer: Peer) -> None:
        await peer.send(b"* OK [CAPABILITY IMAP4rev1] hi\\r\\n")
        tag = await peer.expect(rb"LOGIN .*")
        await peer.send(tag + b" OK done\\r\\n")

    async with FakeImap(script) as fake:
        ... ImapServer(fake.host, fake.port, Security.NONE) ...

A failed expectation in the script fails the test when the ``async with`` ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

from maildesk.providers.imap_connection import ImapServer, Security

GREETING = b"* OK [CAPABILITY IMAP4rev1 SASL-IR ENABLE IDLE AUTH=PLAIN AUTH=XOAUTH2] fake ready\r\n"


class Peer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received: list[bytes] = []

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self, within: float = 5.0) -> bytes:
        async with asyncio.timeout(within):
            data = await self.reader.readuntil(b"\r\n")
        self.received.append(data)
        return data

    async def read(self, count: int) -> bytes:
        async with asyncio.timeout(5):
            data = await self.reader.readexactly(count)
        self.received.append(data)
        return data

    async def expect(self, pattern: bytes) -> bytes:
        """Read one command line; assert it matches ``TAG pattern``; return the tag."""
        line = await self.line()
        match = re.fullmatch(rb"(\S+) " + pattern + rb"\r\n", line, re.DOTALL)
        assert match is not None, f"expected {pattern!r}, got {line!r}"
        return match.group(1)

    async def login(self, capabilities: bytes = b"IMAP4rev1 IDLE") -> None:
        """Greet and accept any LOGIN."""
        await self.send(GREETING)
        tag = await self.expect(rb"LOGIN .*")
        await self.send(tag + b" OK [CAPABILITY " + capabilities + b"] Logged in\r\n")

    async def until_closed(self) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            async with asyncio.timeout(10):
                while await self.reader.read(4096):
                    pass


Script = Callable[[Peer], Awaitable[None]]


class FakeImap:
    def __init__(self, script: Script) -> None:
        self._script = script
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[object]] = []
        self.peers: list[Peer] = []
        self.host = "127.0.0.1"
        self.port = 0

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        results = []
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=5)
            for task in pending:
                task.cancel()
            results = await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        if exc is None:
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    def settings(
        self,
        *,
        connect_timeout: float = 3.0,
        command_timeout: float = 1.0,
        idle_keepalive: float = 240.0,
    ) -> ImapServer:
        return ImapServer(
            self.host,
            self.port,
            Security.NONE,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
            idle_keepalive=idle_keepalive,
        )

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.append(task)
        peer = Peer(reader, writer)
        self.peers.append(peer)
        try:
            await self._script(peer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
