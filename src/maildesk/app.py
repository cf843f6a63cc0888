"""App assembly: the ASGI app, `maildesk serve` (web + workers in one process),
`maildesk worker` (a worker process without the web server) and `maildesk web` (the web server
without a worker; PostgreSQL only, beside worker processes).

Shutdown on SIGTERM/SIGINT is ours, not uvicorn's: the signal sets one stop event, the web
server stops accepting and finishes in-flight requests, the worker hands back its leases, and
only then does the process exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Generator

import uvicorn
from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from maildesk.api.v1 import api_routes
from maildesk.config import Settings
from maildesk.errors import ConfigError
from maildesk.push.routes import push_routes
from maildesk.services import Services, open_services
from maildesk.web.routes import web_app

log = logging.getLogger(__name__)

def create_app(services: Services) -> Starlette:
    """The ASGI app: health check, push webhooks, the REST API, and the web UI, which always
    requires sign-in (sessions, roles, CSRF: ``web/auth.py``)."""

    async def healthz(request: Request) -> Response:
        try:
            async with services.db.read() as conn:
                await conn.exec_driver_sql("SELECT 1")
        except Exception:
            log.exception("health check: database unreachable")
            return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        *push_routes(services.gmail_webhook, services.outlook_webhook),
        *api_routes(),
        Mount("", app=web_app(services)),  # last: it answers every other path
    ]
    app = Starlette(routes=routes)
    app.state.services = services
    return app


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (we stop it through ``should_exit``), telling
    ``listening`` once its socket accepts connections."""

    def __init__(self, config: uvicorn.Config, listening: asyncio.Event | None) -> None:
        super().__init__(config)
        self._listening = listening

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # not when it cannot bind (it exits instead)
            log.info("MailDesk listening on http://%s:%s", self.config.host, self.config.port)
            if self._listening is not None:
                self._listening.set()


async def serve_until(app: Starlette, services: Services, stop: asyncio.Event, *,
                      listening: asyncio.Event | None = None, worker: bool = True) -> None:
    """Run the web server and (unless ``worker`` is false) the worker until ``stop`` is set,
    then shut both down. ``listening`` is set once the server accepts connections (never, if
    it cannot bind)."""
    settings = services.settings
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            access_log=False, lifespan="off", timeout_graceful_shutdown=10)
    server = _Server(config, listening)

    async def stopper() -> None:
        await stop.wait()
        server.should_exit = True

    async with asyncio.TaskGroup() as group:
        if worker:
            group.create_task(services.worker.serve(stop))
        group.create_task(stopper())
        try:
            await server.serve()
        except SystemExit as exc:  # uvicorn exits when it cannot bind
            raise ConfigError(
                "MAILDESK_PORT", f"cannot listen on {settings.host}:{settings.port}"
            ) from exc
        finally:
            stop.set()


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Generator[None, None, None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def run_worker(settings: Settings) -> None:
    """`maildesk worker`: sync and scheduled jobs only, no web server. Several such processes
    (and `maildesk serve`) can share one PostgreSQL database: claims are leases."""
    async with open_services(settings) as services:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            log.info("MailDesk worker %s started", services.worker.owner)
            await services.worker.serve(stop)
        log.info("MailDesk worker %s stopped", services.worker.owner)


async def run_server(settings: Settings) -> None:
    async with open_services(settings) as services:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            await serve_until(create_app(services), services, stop)


async def run_web(settings: Settings) -> None:
    """`maildesk web`: the web server (UI, API, webhooks, websockets) without a worker, for
    running several web processes beside `maildesk worker` processes on one PostgreSQL
    database. Webhooks stamp sync requests and wake the workers over LISTEN/NOTIFY; the workers'
    changes reach this process's websockets the same way."""
    require_shared_database(settings, "maildesk web")
    async with open_services(settings) as services:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            log.info("MailDesk web process started (no worker: `maildesk worker` syncs)")
            await serve_until(create_app(services), services, stop, worker=False)


def require_shared_database(settings: Settings, command: str) -> None:
    """Refuse a SQLite store: it belongs to the one process that opened it, so a web process
    without a worker would never see mail synced (nor wake a worker)."""
    try:
        backend = make_url(settings.effective_database_url).get_backend_name()
    except Exception:  # a bad URL: open_services reports it, with its reason
        return
    if backend == "sqlite":
        raise ConfigError("MAILDESK_DATABASE_URL",
                          f"`{command}` needs a PostgreSQL database shared with `maildesk "
                          "worker` processes; a SQLite file belongs to one process: use "
                          "`maildesk serve`")
