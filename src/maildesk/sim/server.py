"""Serve any ASGI app over real HTTP on a free loopback port, inside the running event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import uvicorn
from starlette.types import ASGIApp

_START_TIMEOUT = 10.0


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its owner.

    ``uvicorn.Server.serve`` takes over SIGINT/SIGTERM while it runs; an embedded server must not,
    or Ctrl+C would stop only the simulator instead of the test run or demo that owns it.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        # Set once the server listens, or once it has stopped trying.
        self.settled = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.settled.set()

    async def run_on(self, sock: socket.socket) -> None:
        """Serve on ``sock`` until ``should_exit``."""
        try:
            await self.serve(sockets=[sock])
        except SystemExit as exc:
            # uvicorn exits the process when the app's startup fails; inside a task that would
            # escape the event loop, so turn it into an ordinary error.
            raise RuntimeError("uvicorn could not start the app") from exc
        finally:
            self.settled.set()


@contextlib.asynccontextmanager
async def serve_app(app: ASGIApp, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Run ``app`` with uvicorn on a free port of ``host``; yield its base URL.

    The port is bound here (port 0, read back) before uvicorn starts, so there is no race for it.
    On exit the server stops accepting, finishes in-flight requests (5 s at most) and the serving
    task is awaited, so nothing is left running.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # Name the protocol: asyncio switches Nagle off (TCP_NODELAY) only on connections whose
    # socket says IPPROTO_TCP, and accepted sockets inherit proto 0 from a bare SOCK_STREAM one.
    # With Nagle on, uvicorn's separate header and body writes meet the client's delayed ACK and
    # every request takes ~40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_config=None,  # keep the host process's logging setup untouched
            log_level="warning",
            access_log=False,
            lifespan="auto",
            timeout_graceful_shutdown=5,
        )
        server = _EmbeddedServer(config)
        task = asyncio.create_task(server.run_on(sock), name=f"serve_app:{port}")
        try:
            async with asyncio.timeout(_START_TIMEOUT):
                await server.settled.wait()
            if not server.started:
                raise RuntimeError("the server stopped before it started")
            url_host = f"[{host}]" if ":" in host else host
            yield f"http://{url_host}:{port}"
        finally:
            server.should_exit = True
            await task
    finally:
        sock.close()
