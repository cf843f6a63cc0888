"""Serve an ASGI app over real loopback HTTP from a background thread with its own event loop.

For synchronous tests (the CLI's ``main()`` runs ``asyncio.run`` itself, so it cannot be called
from inside a running loop) and for subprocesses that must reach a simulator: the server keeps
answering while the test thread is blocked in ``main()`` or waiting for a child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from starlette.types import ASGIApp

from maildesk.sim.server import serve_app

T = TypeVar("T")
_TIMEOUT = 15.0


class ThreadedServer:
    """``url`` of the running server; ``call`` runs a function on the server's loop thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, url: str) -> None:
        self._loop = loop
        self.url = url

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` between two requests on the server thread, so the served state (which is
        not thread-safe) is never changed while a request handler is using it."""

        async def run() -> T:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(_TIMEOUT)


@contextlib.contextmanager
def serve_in_thread(app: ASGIApp) -> Iterator[ThreadedServer]:
    """Run ``app`` with ``serve_app`` on a loop in a daemon thread; stop it cleanly on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="serve_in_thread", daemon=True)
    thread.start()
    server = serve_app(app)
    try:
        url = asyncio.run_coroutine_threadsafe(server.__aenter__(), loop).result(_TIMEOUT)
        try:
            yield ThreadedServer(loop, url)
        finally:
            asyncio.run_coroutine_threadsafe(
                server.__aexit__(None, None, None), loop
            ).result(_TIMEOUT)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_TIMEOUT)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
