"""Gmail and Outlook push: latency from the simulator's change to our store, live bus and a
websocket client, at simulated provider round trips; webhook throughput against a bare
endpoint; and how a burst of notifications for one mailbox coalesces into sync runs.

Outlook (``--provider outlook|both``; the ``outlook`` section of each run) is measured the same
way against the Microsoft simulator (``bench._graph_sim``, Graph change notifications delivered
over real HTTP) and ``/maildesk/push/outlook``, with its own store and MailDesk instance; see
bench/README.md. What follows describes Gmail.

Targets (issue: realtime push, and measurement): with 0 ms simulated provider latency,
p50 <= 50 ms and p99 <= 200 ms from the simulator's publish to the message committed, to its
event on the live bus and to a signed-in websocket client (push to visible); verified
notifications per second through ``/maildesk/push/gmail`` at least 50 % of what a bare Starlette
endpoint answers in the same run; a burst of 1,000 notifications for one mailbox -> at most 3
sync runs. At 100 ms simulated provider round trip (``--rtt-ms``) the floor is the provider round
trips a push sync needs before its commit, and what we add above it is reported.

What runs where (one run per database; ``--db both`` runs each in a fresh child process):

- the Google simulator in a child process (``bench._push_sim``), with Pub/Sub push delivery over
  real HTTP (``create_google_app(state, deliver_pushes=True)``) and a manual clock that the
  benchmark advances 1.1 s per message, so Gmail's one-notification-per-second rate limit never
  drops a notification (see that module for why tokens stay valid). A child process, so the
  simulator's work (token signing, its HTTP client and server) does not run on MailDesk's event
  loop and core: on one loop every simulator step would add straight to MailDesk's latency.
- MailDesk in this process exactly as ``maildesk serve`` runs it: ``open_services`` and
  ``serve_until(create_app(services), services, stop)`` (uvicorn on a free 127.0.0.1 port, the
  worker running), SQLite in a temp dir or a throwaway PostgreSQL
  (``tests.support.postgres.PostgresCluster``). A Gmail account is connected, synced and push is
  enabled through ``services.push.enable``, as the demo does.
- the load client of the throughput part in another child process (``bench._http_load``).

Latency: messages are added one at a time through the simulator's ``/_bench/message`` route; the
next one is sent only after the previous sync has finished (lease released). Every time is
``time.perf_counter()`` in this process:

- publish: just before the control request that adds the message is sent. The notification is
  published synchronously inside ``add_message``, so the true publish lies within that request
  (``trigger_rtt_ms``): latencies are over-stated by at most that much, never under-stated;
- ack: when MailDesk's webhook has written its 202 (an ASGI probe around the app, matched to the
  message by the notification's historyId);
- committed: when the transaction that stored the message returned from COMMIT (a thin wrapper
  around ``services.db.transaction``); bus: when ``LiveBus.publish`` was called with its
  ``added`` event, right after (``commit_to_bus_us``: the two coincide within microseconds);
  subscriber: when a bus subscriber task got the event (one event-loop hop later);
  websocket: when a websocket client in its own process (``bench._ws_client``, signed in
  through ``POST /signin`` as an administrator, with the session cookie and this site's Origin)
  read the message's ``added`` frame from ``/ws/mailboxes/{id}``; it stamps CLOCK_MONOTONIC,
  which is what perf_counter() reads on Linux;
- the provider floor: with 0 ms simulated latency a push sync needs two provider round trips
  (history.list, then the metadata batch); a bare round trip (``GmailClient.profile()``) is
  measured after every message, and ``overhead_above_floor_ms`` = p50 - 2 x its p50.
  ``breakdown_p50_ms`` splits the path into stages from the same probes plus request/response
  hooks on MailDesk's provider HTTP client;
- ``--rtt-ms 0,100``: the latency part runs once per value, the simulator child delaying every
  API and token request by it (``state.set_latency`` through ``POST /_sim/faults``); the run's
  ``latency`` is the first value's, the others are under ``latency_with_rtt_ms``.

Throughput: a bare Starlette app (one POST route that reads the body and answers 202) served by
uvicorn in this process with the same uvicorn settings as ``serve_until``, against
``/maildesk/push/gmail`` with valid notifications (tokens signed by the simulator's keys for the
configured audience and signer, for the connected mailbox: every request is verified, recorded
and stamps the mailbox for a sync). Both get identical requests from the same client (``--rounds``
alternating rounds, median reported). The worker keeps running meanwhile, syncing the stamped
mailbox back to back, as it would in production; its syncs during the load are counted. The
server-CPU cost per request is reported too: it does not depend on whether the client was the
bottleneck.

Burst (``--burst 1000``): once the mailbox is quiet, that many distinct valid notifications for
it are posted by the same load client as fast as it can; from the first one until the mailbox
is idle and no sync has started for a second, the sync runs started (runner calls, cross-checked
with its ``job_runs`` rows) and the provider requests sent are counted.

Prints ONE JSON document on stdout; diagnostics go to stderr. Exit status 1 when the run fails.

Usage (from the repo root)::

    .venv/bin/python bench/push_latency.py [--db sqlite|postgresql|both] [--messages 200]
        [--provider gmail|outlook|both] [--rtt-ms 0,100] [--requests 5000] [--concurrency 32]
        [--rounds 3] [--burst 1000] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import functools
import html
import json
import logging
import operator
import os
import platform
import pstats
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # Run as a script: make ``bench`` and ``tests`` importable.
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from sqlalchemy import func, select  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route  # noqa: E402
from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

from bench._common import CLIENT_ID, CLIENT_SECRET  # noqa: E402
from bench._http_load import percentiles  # noqa: E402
from bench._process import (  # noqa: E402
    BenchFailure,
    Store,
    bench_database,
    child_env,
    own_cpu_s,
    request_kind,
    run_per_database,
    tree_cpu_s,
)
from maildesk import mailboxes  # noqa: E402
from maildesk.app import create_app, serve_until  # noqa: E402
from maildesk.config import Settings  # noqa: E402
from maildesk.domain.accounts import ProviderKind  # noqa: E402
from maildesk.domain.events import ChangeKind, MailEvent  # noqa: E402
from maildesk.passwords import hash_password  # noqa: E402
from maildesk.providers.http import default_client  # noqa: E402
from maildesk.push.gmail_webhook import GmailWebhook  # noqa: E402
from maildesk.push.manager import gmail_push_settings  # noqa: E402
from maildesk.push.outlook_webhook import OutlookWebhook  # noqa: E402
from maildesk.services import Services, open_services  # noqa: E402
from maildesk.store import accounts as account_store  # noqa: E402
from maildesk.store import users as user_store  # noqa: E402
from maildesk.store.accounts import Claim  # noqa: E402
from maildesk.store.tables import job_runs  # noqa: E402
from maildesk.sync.runner import SyncResult  # noqa: E402
from maildesk.web.auth import SESSION_COOKIE  # noqa: E402

TARGET_P50_MS = 50.0
TARGET_P99_MS = 200.0
TARGET_RATIO = 0.5
TARGET_BURST_RUNS = 3
BURST_QUIET_S = 1.0  # no sync start for this long after the burst = settled
PUSH_PATH = "/maildesk/push/gmail"
OUTLOOK_PUSH_PATH = "/maildesk/push/outlook"
PROJECT = "maildesk-bench"
SIGNER = f"gmail-push@{PROJECT}.iam.gserviceaccount.com"
USER_AGENT = "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)"
SPACING_S = 1.1  # simulator-clock seconds between messages (Gmail: <= 1 notification/s)
SIM_START_TIMEOUT = 60.0
STEP_TIMEOUT = 15.0  # one message: publish → delivered → synced → idle
SETUP_TIMEOUT = 60.0

log = logging.getLogger("bench.push_latency")


# ------------------------------------------------------------------------------ small helpers
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ms(seconds: float) -> float:
    return seconds * 1000.0


def _history_id_of(body: bytes) -> int | None:
    """The historyId in a Pub/Sub push body (None if it is not one)."""
    try:
        data = json.loads(base64.b64decode(json.loads(body)["message"]["data"]))
        return int(data["historyId"])
    except (ValueError, KeyError, TypeError):
        return None


def _graph_message_id_of(body: bytes) -> str | None:
    """The message id of the first item of a Graph change notification (None if none)."""
    try:
        return str(json.loads(body)["value"][0]["resourceData"]["id"])
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def graph_request_kind(request: httpx.Request) -> str:
    """A Graph/identity request's kind: token, delta, me, mailFolders, messages…"""
    path = request.url.path
    if path.endswith("/oauth2/v2.0/token"):
        return "token"
    if path.endswith("/delta"):
        return "delta"
    parts = path.split("/v1.0/", 1)[-1].split("/")  # me/mailFolders/… → mailFolders
    return parts[1] if len(parts) > 1 else parts[0]


# ------------------------------------------------------------------------------ probes
@dataclass(slots=True)
class ProviderCall:
    kind: str
    sent: float
    answered: float


@dataclass(slots=True)
class Probe:
    """perf_counter() stamps taken inside MailDesk while the latency part runs."""

    enabled: bool = True
    path: str = PUSH_PATH  # the webhook whose answers are stamped
    # what matches a push request to its message: Gmail's historyId, Graph's message id
    key_of: Callable[[bytes], object] = _history_id_of
    classify: Callable[[httpx.Request], str] = request_kind
    # key → (request arrived, 202 written, status)
    acks: dict[object, tuple[float, float, int]] = field(default_factory=dict)
    committed: dict[str, float] = field(default_factory=dict)  # remote id → COMMIT returned
    bus: dict[str, float] = field(default_factory=dict)  # remote id → LiveBus.publish called
    received: dict[str, float] = field(default_factory=dict)  # remote id → subscriber got it
    sync_started: list[float] = field(default_factory=list)
    provider: list[ProviderCall] = field(default_factory=list)
    # local message id → when the websocket client read its ``added`` frame (CLOCK_MONOTONIC
    # in the client's process: the same clock as perf_counter() here)
    ws: dict[int, float] = field(default_factory=dict)
    message_of: dict[str, int] = field(default_factory=dict)  # remote id → local message id
    # Counted whether or not ``enabled``: every provider request and every sync run started.
    requests: Counter[str] = field(default_factory=Counter)
    sync_starts: list[float] = field(default_factory=list)
    last_commit: float = 0.0
    syncs: int = 0
    _sent: dict[int, float] = field(default_factory=dict)

    def acked(self, body: bytes, status: int, arrived: float, answered: float) -> None:
        key = self.key_of(body)
        if key is not None and key not in self.acks:
            self.acks[key] = (arrived, answered, status)

    async def on_request(self, request: httpx.Request) -> None:
        self._sent[id(request)] = time.perf_counter()
        self.requests[self.classify(request)] += 1

    async def on_response(self, response: httpx.Response) -> None:
        answered = time.perf_counter()
        sent = self._sent.pop(id(response.request), None)
        if sent is not None and self.enabled:
            self.provider.append(ProviderCall(self.classify(response.request), sent, answered))


class AckProbe:
    """ASGI middleware: stamps when a push request arrives and when its answer has been written
    (the ack), matched to the message by the notification's historyId, and
    passes everything else (and everything once ``probe.enabled`` is off) straight through.
    The bare endpoint of the throughput part gets the same middleware, switched off."""

    def __init__(self, app: ASGIApp, probe: Probe) -> None:
        self.app = app
        self.probe = probe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        probe = self.probe
        if not probe.enabled or scope["type"] != "http" or scope["path"] != probe.path:
            await self.app(scope, receive, send)
            return
        arrived = time.perf_counter()
        chunks: list[bytes] = []
        status = 0

        async def receive_body() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        async def send_answer(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                probe.acked(b"".join(chunks), status, arrived, time.perf_counter())

        await self.app(scope, receive_body, send_answer)


def instrument(services: Services, probe: Probe) -> None:
    """Stamp commits, bus publishes and sync starts. Each wrapper adds a few microseconds."""
    transaction = services.db.transaction

    @contextlib.asynccontextmanager
    async def timed_transaction() -> AsyncIterator[Any]:
        async with transaction() as conn:
            yield conn
        # Nothing awaits between here and the caller's next statement, so a ``committed()``
        # call right after its ``async with`` sees this stamp and no other transaction's.
        probe.last_commit = time.perf_counter()

    publish = services.bus.publish

    def timed_publish(events: Sequence[MailEvent]) -> None:
        now = time.perf_counter()
        if probe.enabled:
            for event in events:
                if event.kind is ChangeKind.ADDED:
                    probe.committed.setdefault(event.remote_id, probe.last_commit)
                    probe.bus.setdefault(event.remote_id, now)
                    probe.message_of.setdefault(event.remote_id, event.message_id)
        publish(events)

    run = services.runner.run

    async def timed_run(claim: Claim) -> SyncResult:
        probe.syncs += 1
        probe.sync_starts.append(time.perf_counter())
        if probe.enabled:
            probe.sync_started.append(time.perf_counter())
        return await run(claim)

    services.db.transaction = timed_transaction  # type: ignore[method-assign]
    services.bus.publish = timed_publish  # type: ignore[method-assign]
    services.runner.run = timed_run  # type: ignore[method-assign]


# ------------------------------------------------------------------------------ processes
@dataclass(frozen=True, slots=True)
class SimInfo:
    url: str
    refresh_token: str
    email: str
    topic: str
    messages: int
    token_sign_ms: float
    pid: int


@contextlib.asynccontextmanager
async def _simulator_child(module: str, *options: str) -> AsyncIterator[tuple[dict[str, Any], int]]:
    """Start ``python -m module options…``; yield its hello line (JSON) and its pid; always
    stop it (EOF on stdin, then SIGTERM, then SIGKILL)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *options,
        cwd=ROOT, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(SIM_START_TIMEOUT):
                line = await proc.stdout.readline()
        except TimeoutError:
            raise BenchFailure(f"{module} did not start in time") from None
        if not line:
            raise BenchFailure(f"{module} exited with status {await proc.wait()}")
        yield json.loads(line), proc.pid
    finally:
        await _stop(proc)


@contextlib.asynccontextmanager
async def push_simulator(seed: int, behind: float) -> AsyncIterator[SimInfo]:
    """The Google simulator child, ``bench._push_sim``."""
    async with _simulator_child(
        "bench._push_sim", "--seed", str(seed), "--behind", str(behind)
    ) as (hello, pid):
        yield SimInfo(hello["url"], hello["refresh_token"], hello["email"], hello["topic"],
                      int(hello["messages"]), float(hello["token_sign_ms"]), pid)


@dataclass(frozen=True, slots=True)
class GraphSimInfo:
    url: str
    refresh_token: str
    email: str
    messages: int
    pid: int


@contextlib.asynccontextmanager
async def graph_simulator(seed: int) -> AsyncIterator[GraphSimInfo]:
    """The Microsoft simulator child, ``bench._graph_sim``."""
    async with _simulator_child("bench._graph_sim", "--seed", str(seed)) as (hello, pid):
        yield GraphSimInfo(hello["url"], hello["refresh_token"], hello["email"],
                           int(hello["messages"]), pid)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    for signal_it in (None, proc.terminate, proc.kill):
        if signal_it is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                signal_it()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
            return
        except TimeoutError:
            continue


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling, like ``maildesk.app``'s server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


@contextlib.asynccontextmanager
async def serve_bare(probe: Probe, path: str = PUSH_PATH) -> AsyncIterator[str]:
    """The baseline: one POST route that reads the body and answers 202, served by uvicorn with
    the settings ``serve_until`` uses, in this process. Yields its URL."""

    async def endpoint(request: Request) -> Response:
        await request.body()
        return Response(status_code=202)

    app = Starlette(routes=[Route(path, endpoint, methods=["POST"])])
    app.add_middleware(AckProbe, probe=probe)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                            access_log=False, lifespan="off", timeout_graceful_shutdown=10)
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    raise BenchFailure("the bare endpoint did not start")
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}{path}"
    finally:
        server.should_exit = True
        await task


async def run_load(spec: dict[str, Any], limit_s: float) -> dict[str, Any]:
    """Run ``bench._http_load`` with ``spec``; its JSON result."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench._http_load", cwd=ROOT, env=child_env(),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(limit_s):
            out, _ = await proc.communicate(json.dumps(spec).encode())
    except TimeoutError:
        raise BenchFailure("the load client did not finish in time") from None
    finally:
        await _stop(proc)
    if proc.returncode != 0 or not out:
        raise BenchFailure(f"the load client failed (exit status {proc.returncode})")
    result: dict[str, Any] = json.loads(out)
    return result


# ------------------------------------------------------------------------------ the latency part
@dataclass(slots=True)
class Sample:
    remote_id: str
    key: object  # what the ack is matched by (Gmail: the historyId; Graph: the message id)
    published: float  # the control request was sent
    trigger_done: float  # its answer came back (the publish happened in between)
    publish_offset: float  # when, after ``published``, the simulator published (cross-check)
    rtt: float = 0.0  # a bare provider round trip measured after this message


async def _until(
    predicate: Callable[[], Awaitable[bool] | bool], limit_s: float, what: str,
    interval: float = 0.0005,
) -> None:
    try:
        async with asyncio.timeout(limit_s):
            while True:
                result = predicate()
                if not isinstance(result, bool):
                    result = await result
                if result:
                    return
                await asyncio.sleep(interval)
    except TimeoutError:
        raise BenchFailure(f"timed out waiting for {what}") from None


async def _idle(services: Services, account_id: int) -> bool:
    async with services.db.read() as conn:
        account = await account_store.get(conn, account_id)
    return account.lease_owner is None and account.sync_requested_at is None


async def _watch_bus(services: Services, account_id: int, probe: Probe) -> None:
    with services.bus.subscribe(frozenset({account_id}), maxsize=100_000) as sub:
        while True:
            event = await sub.get()
            now = time.perf_counter()
            if event is not None and event.kind is ChangeKind.ADDED and probe.enabled:
                probe.received.setdefault(event.remote_id, now)


async def send_message(control: httpx.AsyncClient, sim: SimInfo) -> Sample:
    monotonic = time.clock_gettime(time.CLOCK_MONOTONIC)
    published = time.perf_counter()
    response = await control.post(f"{sim.url}/_bench/message", json={"advance": SPACING_S})
    done = time.perf_counter()
    response.raise_for_status()
    body = response.json()
    if not body["published"] or body["rate_limited"]:
        raise BenchFailure(f"the simulator did not publish a notification: {body}")
    return Sample(body["id"], int(body["historyId"]), published, done,
                  float(body["monotonic"]) - monotonic)


async def send_graph_message(control: httpx.AsyncClient, sim_url: str) -> Sample:
    """Add one Inbox message in the Microsoft simulator (it queues the change notification
    synchronously, and its deliverer POSTs it at once)."""
    monotonic = time.clock_gettime(time.CLOCK_MONOTONIC)
    published = time.perf_counter()
    response = await control.post(f"{sim_url}/_bench/message")
    done = time.perf_counter()
    response.raise_for_status()
    body = response.json()
    if not body["queued"]:
        raise BenchFailure(f"the simulator queued no notification: {body}")
    return Sample(body["id"], body["id"], published, done, float(body["monotonic"]) - monotonic)


async def measure_latency(
    services: Services, send: Callable[[], Awaitable[Sample]],
    round_trip: Callable[[], Awaitable[object]], account_id: int,
    probe: Probe, args: argparse.Namespace, profile_name: str,
) -> list[Sample]:
    """``send`` makes one change at the provider; ``round_trip`` is one bare provider call.
    A bus subscriber stamps the events meanwhile; with ``--profile`` the part is profiled into
    ``{profile_name}.pstats``."""
    watcher = asyncio.create_task(_watch_bus(services, account_id, probe))
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    try:
        return await _latency_samples(services, send, round_trip, account_id, probe,
                                      args.messages, args.warmup, args.gap)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile / f"{profile_name}.pstats")
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _latency_samples(
    services: Services, send: Callable[[], Awaitable[Sample]],
    round_trip: Callable[[], Awaitable[object]], account_id: int,
    probe: Probe, count: int, warmup: int, gap: float,
) -> list[Sample]:
    samples: list[Sample] = []
    for n in range(warmup + count):
        sample = await send()
        await _until(functools.partial(operator.contains, probe.acks, sample.key),
                     STEP_TIMEOUT, f"the ack of message {n}")
        await _until(functools.partial(operator.contains, probe.received, sample.remote_id),
                     STEP_TIMEOUT, f"message {n} on the live bus")
        await _until(functools.partial(_on_page, probe, sample.remote_id),
                     STEP_TIMEOUT, f"message {n} on the websocket")
        await _until(lambda: _idle(services, account_id), STEP_TIMEOUT,
                     f"the sync of message {n} to finish", interval=0.002)
        started = time.perf_counter()
        await round_trip()
        sample.rtt = time.perf_counter() - started
        if n >= warmup:
            samples.append(sample)
        await asyncio.sleep(gap)
    return samples


def _on_page(probe: Probe, remote_id: str) -> bool:
    return probe.message_of.get(remote_id, -1) in probe.ws


def _first_after(times: Sequence[float], after: float) -> float | None:
    return next((t for t in times if t >= after), None)


GMAIL_STAGES = ("sync_start_to_history_sent", "history_rtt", "history_answer_to_batch_sent",
                "batch_rtt", "batch_answer_to_commit")
# Graph: one delta call per selected folder, one after the other, then the commit.
GRAPH_STAGES = ("sync_start_to_first_call", "provider_calls_before_commit",
                "provider_time_before_commit", "last_answer_to_commit")


def latency_report(samples: list[Sample], probe: Probe, *, graph: bool = False) -> dict[str, Any]:
    """``graph``: the Outlook breakdown (Graph calls before the commit, however many) instead
    of Gmail's history.list + batch; the floor is then that many bare round trips."""
    to_ack, to_commit, to_bus, to_subscriber, to_ws = [], [], [], [], []
    commit_to_bus_us = []
    stages: dict[str, list[float]] = {k: [] for k in (
        "publish_to_webhook_request", "webhook_request_to_ack", "ack_to_sync_start",
        *(GRAPH_STAGES if graph else GMAIL_STAGES), "commit_to_bus", "bus_to_subscriber",
        "bus_to_websocket")}
    acks_not_202 = 0
    starts = sorted(probe.sync_started)
    for s in samples:
        arrived, ack, status = probe.acks[s.key]
        acks_not_202 += status != 202
        committed, bus = probe.committed[s.remote_id], probe.bus[s.remote_id]
        received = probe.received[s.remote_id]
        on_page = probe.ws[probe.message_of[s.remote_id]]
        to_ws.append(ms(on_page - s.published))
        stages["bus_to_websocket"].append(ms(on_page - bus))
        to_ack.append(ms(ack - s.published))
        to_commit.append(ms(committed - s.published))
        to_bus.append(ms(bus - s.published))
        to_subscriber.append(ms(received - s.published))
        commit_to_bus_us.append((bus - committed) * 1e6)
        start = _first_after(starts, ack)
        history = next((c for c in probe.provider if c.kind == "history"
                        and start is not None and c.sent >= start), None)
        batch = next((c for c in probe.provider if c.kind == "batch"
                      and history is not None and c.sent >= history.answered), None)
        stages["publish_to_webhook_request"].append(ms(arrived - s.published))
        stages["webhook_request_to_ack"].append(ms(ack - arrived))
        stages["commit_to_bus"].append(ms(bus - committed))
        stages["bus_to_subscriber"].append(ms(received - bus))
        if graph:
            calls = [c for c in probe.provider if start is not None and c.sent >= start
                     and c.answered <= committed]
            if start is None or not calls:
                continue
            stages["ack_to_sync_start"].append(ms(start - ack))
            stages["sync_start_to_first_call"].append(ms(calls[0].sent - start))
            stages["provider_calls_before_commit"].append(len(calls))
            stages["provider_time_before_commit"].append(
                ms(sum(c.answered - c.sent for c in calls)))
            stages["last_answer_to_commit"].append(ms(committed - calls[-1].answered))
            continue
        if start is None or history is None or batch is None or batch.answered > committed:
            continue
        stages["ack_to_sync_start"].append(ms(start - ack))
        stages["sync_start_to_history_sent"].append(ms(history.sent - start))
        stages["history_rtt"].append(ms(history.answered - history.sent))
        stages["history_answer_to_batch_sent"].append(ms(batch.sent - history.answered))
        stages["batch_rtt"].append(ms(batch.answered - batch.sent))
        stages["batch_answer_to_commit"].append(ms(committed - batch.answered))
    rtt = [ms(s.rtt) for s in samples]
    rtt_p50 = statistics.median(rtt)
    calls_key = "provider_calls_before_commit" if graph else "batch_rtt"
    trips = statistics.median(stages[calls_key]) if graph and stages[calls_key] else 2
    committed_pct = percentiles(to_commit)
    bus_pct = percentiles(to_bus)
    ws_pct = percentiles(to_ws)
    return {
        "messages": len(samples),
        "acks_not_202": acks_not_202,
        "publish_to_ack_ms": percentiles(to_ack),
        "publish_to_committed_ms": committed_pct,
        "publish_to_bus_ms": bus_pct,
        "publish_to_subscriber_ms": percentiles(to_subscriber),
        "publish_to_websocket_ms": ws_pct,
        "commit_to_bus_us": {"p50": round(statistics.median(commit_to_bus_us), 1),
                             "max": round(max(commit_to_bus_us), 1)},
        "trigger_rtt_ms": percentiles([ms(s.trigger_done - s.published) for s in samples]),
        "publish_after_trigger_ms": percentiles([ms(s.publish_offset) for s in samples]),
        "provider_rtt_ms": percentiles(rtt),
        "floor_round_trips": trips,
        "floor_ms": round(trips * rtt_p50, 3),
        "overhead_above_floor_ms": round(committed_pct["p50"] - trips * rtt_p50, 3),
        "websocket_overhead_above_floor_ms": round(ws_pct["p50"] - trips * rtt_p50, 3),
        "breakdown_p50_ms": {k: round(statistics.median(v), 3) if v else None
                             for k, v in stages.items()},
        "breakdown_samples": len(stages[calls_key]),
    }


# ------------------------------------------------------------------------------ throughput part
async def gmail_load_requests(
    control: httpx.AsyncClient, sim: SimInfo, push_url: str, n: int
) -> list[dict[str, Any]]:
    """``n`` valid Pub/Sub pushes (token + body, distinct message ids) for the connected
    mailbox, signed by the simulator's keys for our audience and signer."""
    answer = await control.get(f"{sim.url}/_bench/pushes",
                               params={"n": n, "audience": push_url, "signer": SIGNER},
                               timeout=120)
    answer.raise_for_status()
    return [{"headers": {"Authorization": f"Bearer {p['token']}",
                         "Content-Type": "application/json", "User-Agent": USER_AGENT},
             "body": p["body"]} for p in answer.json()["pushes"]]


async def graph_load_requests(
    control: httpx.AsyncClient, sim_url: str, n: int
) -> list[dict[str, Any]]:
    """``n`` Graph change notifications for the live subscription (its id and clientState,
    distinct message ids), as the simulator's deliverer POSTs them."""
    answer = await control.get(f"{sim_url}/_bench/notifications", params={"n": n})
    answer.raise_for_status()
    return [{"headers": {"Content-Type": "application/json; charset=utf-8"}, "body": body}
            for body in answer.json()["bodies"]]


async def measure_throughput(
    services: Services, requests: list[dict[str, Any]], push_url: str, sim_pid: int,
    probe: Probe, store: Store, args: argparse.Namespace, *, graph: bool = False,
) -> dict[str, Any]:
    probe.enabled = False
    results: dict[str, list[dict[str, Any]]] = {"bare": [], "maildesk": []}
    profiles: list[cProfile.Profile] = []
    limit = max(30.0, args.requests / 100)
    async with serve_bare(Probe(enabled=False), probe.path) as bare_url:
        for _ in range(args.rounds):
            for name, url in (("bare", bare_url), ("maildesk", push_url)):
                spec = {"url": url, "requests": requests, "concurrency": args.concurrency,
                        "total": args.requests, "warmup": min(500, args.requests),
                        "max_seconds": limit, "client": args.client}
                webhook: GmailWebhook | OutlookWebhook = (
                    services.outlook_webhook if graph else services.gmail_webhook)
                recorder = webhook._recorder
                thread_before = time.thread_time()
                before = (own_cpu_s(), tree_cpu_s(sim_pid), tree_cpu_s(store.pg_pid),
                          Counter(webhook.stats.answers), _refused(webhook),
                          recorder.commits, probe.syncs)
                profiler = cProfile.Profile() if args.profile and name == "maildesk" else None
                if profiler is not None:
                    profiler.enable()
                try:
                    result = await run_load(spec, 3 * limit + 30)
                finally:
                    if profiler is not None:
                        profiler.disable()
                        profiles.append(profiler)
                cpu = own_cpu_s() - before[0]
                # The event loop's thread alone (aiosqlite's thread runs beside it): near 1.0
                # means the loop is the bottleneck, well below means something waits.
                loop_cpu = time.thread_time() - thread_before
                # The warm-up's requests are in the counters and the CPU time too: scale.
                sent = result["completed"] + spec["warmup"]
                share = result["completed"] / sent if sent else 0.0
                result["server_cpu_us_per_request"] = round(cpu * 1e6 / sent, 1) if sent else None
                result["loop_cpu_us_per_request"] = (
                    round(loop_cpu * 1e6 / sent, 1) if sent else None)
                result["loop_cpu_util"] = round(loop_cpu * share / result["seconds"], 2) if (
                    result["seconds"]) else None
                result["simulator_cpu_s"] = round(tree_cpu_s(sim_pid) - before[1], 2)
                if store.pg_pid is not None:
                    result["postgres_cpu_s"] = round(tree_cpu_s(store.pg_pid) - before[2], 2)
                if name == "maildesk":
                    answers = Counter(webhook.stats.answers) - before[3]
                    result["webhook_answers"] = {str(k): v for k, v in sorted(answers.items())}
                    result["unverified_or_unknown"] = _refused(webhook) - before[4]
                    commits = recorder.commits - before[5]
                    result["recorder_commits"] = commits
                    result["notifications_per_commit"] = (
                        round(answers[202] / commits, 1) if commits else None)
                    result["worker_syncs_during_load"] = round((probe.syncs - before[6]) * share)
                results[name].append(result)
    if profiles:
        stats = pstats.Stats(profiles[0])
        for extra in profiles[1:]:
            stats.add(extra)
        name = "outlook_webhook" if graph else "webhook"
        stats.dump_stats(args.profile / f"{name}_{store.kind}.pstats")
    return summarize_throughput(results)


def _refused(webhook: GmailWebhook | OutlookWebhook) -> int:
    """Requests (Gmail) or items (Graph) that did not verify or named no mailbox of ours."""
    if isinstance(webhook, OutlookWebhook):
        return sum(webhook.stats.dropped.values())
    return webhook.stats.unknown_mailbox


def summarize_throughput(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def median(name: str, key: str) -> float:
        return round(float(statistics.median(r[key] for r in results[name])), 1)

    def median_p99(name: str) -> float:
        return round(float(statistics.median(r["latency_ms"]["p99"] for r in results[name])), 3)

    for name, runs in results.items():
        for r in runs:
            if r["errors"] or r["timed_out"] or set(r["statuses"]) != {"202"}:
                raise BenchFailure(f"{name}: not every request was answered 202: {r}")
    bare_rps, ours_rps = median("bare", "requests_per_s"), median("maildesk", "requests_per_s")
    bare_cpu = median("bare", "server_cpu_us_per_request")
    ours_cpu = median("maildesk", "server_cpu_us_per_request")
    return {
        "bare_requests_per_s": bare_rps,
        "maildesk_requests_per_s": ours_rps,
        "ratio": round(ours_rps / bare_rps, 3),
        "bare_p99_ms": median_p99("bare"),
        "maildesk_p99_202_ms": median_p99("maildesk"),
        # The slowest single answer of any round: one stuck request shows here, not in a p99.
        "bare_max_ms": max(r["latency_ms"]["max"] for r in results["bare"]),
        "maildesk_max_202_ms": max(r["latency_ms"]["max"] for r in results["maildesk"]),
        "server_cpu_us_per_request": {"bare": bare_cpu, "maildesk": ours_cpu},
        "cpu_cost_ratio": round(ours_cpu / bare_cpu, 2),
        "client_cpu_util": {"bare": median("bare", "client_cpu_util"),
                            "maildesk": median("maildesk", "client_cpu_util")},
        "rounds": results,
    }


# ------------------------------------------------------------------------------ burst part
async def measure_burst(
    services: Services, requests: list[dict[str, Any]], push_url: str, account_id: int,
    probe: Probe, args: argparse.Namespace,
) -> dict[str, Any]:
    """Coalescing: ``len(requests)`` distinct valid notifications for the ONE mailbox, posted
    as fast as the load client can (``--concurrency`` in flight), once the mailbox is quiet.
    Counted from the first request until the mailbox is idle again and stays so for
    ``BURST_QUIET_S``: sync runs started (runner calls, and the ``job_runs`` rows written for
    the mailbox) and provider requests."""
    probe.enabled = False
    await _until_quiet(services, account_id, probe, "quiet before the burst")
    runs_before, requests_before = probe.syncs, Counter(probe.requests)
    jobs_before = await _job_rows(services, account_id)
    started = time.perf_counter()
    spec = {"url": push_url, "requests": requests, "concurrency": args.concurrency,
            "total": len(requests), "warmup": 0, "max_seconds": 120.0, "client": args.client}
    result = await run_load(spec, 180)
    ended = time.perf_counter()
    runs_by_end = probe.syncs - runs_before
    await _until_quiet(services, account_id, probe, "the mailbox to settle after the burst")
    settled = time.perf_counter() - BURST_QUIET_S
    calls = Counter(probe.requests) - requests_before
    runs = probe.syncs - runs_before
    accepted = int(result["statuses"].get("202", 0))
    if accepted != len(requests) or result["errors"] or result["timed_out"]:
        raise BenchFailure(f"burst: not every notification was accepted: {result['statuses']}, "
                           f"{result['errors']} errors")
    return {
        "notifications": len(requests),
        "accepted_202": accepted,
        "burst_seconds": round(ended - started, 3),
        "load_client_seconds": result["seconds"],
        "notifications_per_s": result["requests_per_s"],
        "p99_202_ms": result["latency_ms"]["p99"],
        "sync_runs": runs,
        "sync_runs_started_during_burst": runs_by_end,
        "sync_runs_after_burst": runs - runs_by_end,
        "job_runs_rows": await _job_rows(services, account_id) - jobs_before,
        "provider_requests": sum(calls.values()),
        "provider_requests_by_kind": dict(sorted(calls.items())),
        "burst_end_to_idle_s": round(max(0.0, settled - ended), 3),
        "target_sync_runs": TARGET_BURST_RUNS,
    }


async def _until_quiet(services: Services, account_id: int, probe: Probe, what: str) -> None:
    """Until the mailbox is idle (no lease, no request) and no sync starts for BURST_QUIET_S."""
    async with asyncio.timeout(SETUP_TIMEOUT * 2):
        while True:
            await _until(lambda: _idle(services, account_id), SETUP_TIMEOUT, what,
                         interval=0.01)
            runs = probe.syncs
            await asyncio.sleep(BURST_QUIET_S)
            if probe.syncs == runs and await _idle(services, account_id):
                return


async def _job_rows(services: Services, account_id: int) -> int:
    """The mailbox's rows in ``job_runs`` (one per finished sync run; pruning keeps the newest
    200 per job and runs only as a daily job, not inside a benchmark's minute)."""
    async with services.db.read() as conn:
        count = await conn.scalar(select(func.count()).select_from(job_runs)
                                  .where(job_runs.c.account_id == account_id))
    return int(count or 0)


# ------------------------------------------------------------------------------ the live page
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
VIEWER = "viewer@bench.example"


async def signed_in_headers(services: Services, base: str) -> dict[str, str]:
    """Create an administrator (sees every mailbox) and sign in through ``POST /signin`` with
    the form's CSRF token, as a browser does; the headers a page of this site then sends with
    its websocket handshake: the session cookie and this site's Origin."""
    password = secrets.token_urlsafe(16)
    async with services.db.transaction() as conn:
        await user_store.create(conn, email=VIEWER, password_hash=hash_password(password),
                                is_admin=True, now=services.clock.now())
    async with httpx.AsyncClient(base_url=base, timeout=10.0) as browser:
        form = await browser.get("/signin")
        token = _CSRF.search(form.text)
        if token is None:
            raise BenchFailure("the sign-in page carries no CSRF token")
        answer = await browser.post("/signin", data={
            "csrf_token": html.unescape(token.group(1)), "email": VIEWER,
            "password": password, "next": "/"})
        cookie = browser.cookies.get(SESSION_COOKIE)
    if answer.status_code != 303 or not cookie:
        raise BenchFailure(f"signing in failed ({answer.status_code})")
    return {"Cookie": f"{SESSION_COOKIE}={cookie}", "Origin": base}


@contextlib.asynccontextmanager
async def live_page(md: Running, account_id: int, probe: Probe) -> AsyncIterator[None]:
    """A signed-in websocket client (``bench._ws_client``, its own process) on the mailbox's
    live endpoint; while the block runs, every ``added`` frame it reads is stamped into
    ``probe.ws``."""
    headers = await signed_in_headers(md.services, md.base)
    url = md.base.replace("http://", "ws://", 1) + f"/ws/mailboxes/{account_id}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench._ws_client", cwd=ROOT, env=child_env(),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    reader: asyncio.Task[None] | None = None
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(json.dumps({"url": url, "headers": headers}).encode() + b"\n")
        await proc.stdin.drain()
        try:
            async with asyncio.timeout(SIM_START_TIMEOUT):
                hello = await proc.stdout.readline()
        except TimeoutError:
            raise BenchFailure("the websocket client did not connect in time") from None
        if not hello or "hello" not in json.loads(hello):
            raise BenchFailure(f"the websocket client did not connect ({await proc.wait()})")
        reader = asyncio.create_task(_read_frames(proc.stdout, probe))
        yield
    finally:
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await _stop(proc)


async def _read_frames(stdout: asyncio.StreamReader, probe: Probe) -> None:
    async for line in stdout:
        frame = json.loads(line)
        if "id" in frame and probe.enabled:
            probe.ws.setdefault(int(frame["id"]), float(frame["t"]))


# ------------------------------------------------------------------------------ one run
def bench_settings(data_dir: Path, db_url: str, port: int, *, sim_url: str) -> Settings:
    return Settings(
        data_dir=data_dir, database_url=db_url, secret_key="bench-secret-key",
        host="127.0.0.1", port=port, base_url=f"http://127.0.0.1:{port}",
        allow_loopback_webhooks=True,
        google_client_id=CLIENT_ID, google_client_secret=CLIENT_SECRET,
        google_token_url=f"{sim_url}/token", google_revoke_url=f"{sim_url}/revoke",
        google_authorize_url=f"{sim_url}/o/oauth2/v2/auth",
        google_certs_url=f"{sim_url}/oauth2/v1/certs", gmail_api_url=sim_url,
    )


def outlook_settings(data_dir: Path, db_url: str, port: int, *, sim_url: str) -> Settings:
    """The Microsoft simulator's base is the identity authority; Graph is under /v1.0."""
    return Settings(
        data_dir=data_dir, database_url=db_url, secret_key="bench-secret-key",
        host="127.0.0.1", port=port, base_url=f"http://127.0.0.1:{port}",
        allow_loopback_webhooks=True,
        microsoft_client_id=CLIENT_ID, microsoft_client_secret=CLIENT_SECRET,
        microsoft_authority_url=sim_url, graph_api_url=f"{sim_url}/v1.0",
    )


async def _wait_synced(services: Services, account_id: int) -> None:
    async def synced() -> bool:
        async with services.db.read() as conn:
            account = await account_store.get(conn, account_id)
        return account.backfill_done and await _idle(services, account_id)

    await _until(synced, SETUP_TIMEOUT, "the initial sync", interval=0.05)


async def _set_up_gmail_push(
    services: Services, sim: SimInfo, control: httpx.AsyncClient, push_url: str
) -> int:
    """Connect the mailbox, let the worker sync it, then enable push (as the demo does)."""
    account_id = await mailboxes.add_gmail(services, email=sim.email,
                                           refresh_token=sim.refresh_token)
    await _wait_synced(services, account_id)
    # The subscription only now: the deliverer must not find the webhook unreachable (on the
    # simulator's manual clock a redelivery backoff would jump its clock forward).
    answer = await control.post(f"{sim.url}/_sim/pubsub/subscriptions", json={
        "topic": sim.topic, "endpoint": push_url, "audience": push_url,
        "service_account": SIGNER})
    answer.raise_for_status()
    await services.push.enable(account_id, ProviderKind.GMAIL, gmail_push_settings(
        project=PROJECT, topic=sim.topic, audience=push_url, signers=[SIGNER]))
    await _until(lambda: _idle(services, account_id), SETUP_TIMEOUT, "the watch's first sync",
                 interval=0.01)
    return account_id


async def _set_up_outlook_push(services: Services, sim: GraphSimInfo) -> int:
    """Connect the mailbox, let the worker sync it, then enable push (as the demo does)."""
    account_id = await mailboxes.add_outlook(services, email=sim.email,
                                             refresh_token=sim.refresh_token)
    await _wait_synced(services, account_id)
    # Registration runs Graph's validation handshake against our webhook.
    await services.push.enable(account_id, ProviderKind.OUTLOOK, {})
    await _until(lambda: _idle(services, account_id), SETUP_TIMEOUT,
                 "the subscription's first sync", interval=0.01)
    return account_id


async def _check_deliveries(control: httpx.AsyncClient, sim: SimInfo) -> dict[str, Any]:
    log_answer = await control.get(f"{sim.url}/_sim/pubsub/log")
    log_answer.raise_for_status()
    records = log_answer.json()["records"]
    attempts = Counter(len(r["attempts"]) for r in records)
    outcomes = Counter(r["outcome"] for r in records)
    clock = (await control.get(f"{sim.url}/_bench/clock")).json()
    if set(outcomes) != {"acked"} or set(attempts) != {1}:
        raise BenchFailure(f"not every push was acked at the first attempt: {outcomes} "
                           f"{attempts}")
    return {"published": len(records), "acked_first_attempt": attempts[1],
            "rate_limited": clock["stats"]["rate_limited"],
            "sim_clock_offset_s": clock["offset_s"]}


async def _check_graph_deliveries(control: httpx.AsyncClient, sim_url: str) -> dict[str, Any]:
    answer = await control.get(f"{sim_url}/_bench/deliveries")
    answer.raise_for_status()
    log_ = answer.json()
    if set(log_["outcomes"]) != {"acked"} or set(log_["attempts"]) != {"1"} or log_["pending"]:
        raise BenchFailure(f"not every Graph notification was acked at the first attempt: {log_}")
    return {"published": log_["items"], "delivered_batches": log_["batches"],
            "acked_first_attempt": log_["attempts"]["1"]}


def _meets(latency: dict[str, Any], throughput: dict[str, Any] | None,
           burst: dict[str, Any] | None) -> dict[str, bool]:
    """The targets are about 0 ms simulated provider latency (``latency``)."""
    met = {
        "committed_p50_le_50_ms": latency["publish_to_committed_ms"]["p50"] <= TARGET_P50_MS,
        "committed_p99_le_200_ms": latency["publish_to_committed_ms"]["p99"] <= TARGET_P99_MS,
        "bus_p50_le_50_ms": latency["publish_to_bus_ms"]["p50"] <= TARGET_P50_MS,
        "bus_p99_le_200_ms": latency["publish_to_bus_ms"]["p99"] <= TARGET_P99_MS,
        "websocket_p50_le_50_ms": latency["publish_to_websocket_ms"]["p50"] <= TARGET_P50_MS,
        "websocket_p99_le_200_ms": latency["publish_to_websocket_ms"]["p99"] <= TARGET_P99_MS,
    }
    if throughput is not None:
        met["webhook_ratio_ge_0_5"] = throughput["ratio"] >= TARGET_RATIO
    if burst is not None:
        met[f"burst_sync_runs_le_{TARGET_BURST_RUNS}"] = burst["sync_runs"] <= TARGET_BURST_RUNS
    return met


async def measure(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """One database: Gmail then Outlook, each with its own simulator, store and MailDesk."""
    run: dict[str, Any] = {"db": kind}
    if args.provider in ("gmail", "both"):
        run.update(await measure_gmail(kind, args))
    if args.provider in ("outlook", "both"):
        run["outlook"] = await measure_outlook(kind, args)
    return run


@dataclass(frozen=True, slots=True)
class Running:
    """MailDesk served as ``maildesk serve`` runs it, instrumented by ``probe``."""

    services: Services
    push_url: str  # the webhook the probe stamps
    store: Store
    control: httpx.AsyncClient  # for the simulator's control routes and our /healthz
    base: str  # http://127.0.0.1:PORT


@contextlib.asynccontextmanager
async def running_maildesk(
    kind: str, name: str, probe: Probe,
    settings_for: Callable[[Path, str, int], Settings],
) -> AsyncIterator[Running]:
    """A store (``name``: the PostgreSQL database), a data dir and MailDesk on a free port
    (``settings_for(data_dir, database_url, port)``) with the worker running, until healthy;
    stopped on the way out."""
    async with (
        bench_database(kind, name) as store,
        httpx.AsyncClient(timeout=10.0) as control,
    ):
        with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
            port = free_port()
            settings = settings_for(Path(tmp), store.url, port)
            hooks = {"request": [probe.on_request], "response": [probe.on_response]}
            async with (
                default_client(event_hooks=hooks) as http,
                open_services(settings, http_client=http) as services,
            ):
                instrument(services, probe)
                app = create_app(services)
                app.add_middleware(AckProbe, probe=probe)
                stop = asyncio.Event()
                server = asyncio.create_task(serve_until(app, services, stop))
                try:
                    await _until(lambda: _healthy(control, port, server), 10, "MailDesk",
                                 interval=0.02)
                    base = f"http://127.0.0.1:{port}"
                    yield Running(services, f"{base}{probe.path}", store, control, base)
                finally:
                    stop.set()
                    async with asyncio.timeout(30):
                        await server


async def measure_outlook(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    probe = Probe(path=OUTLOOK_PUSH_PATH, key_of=_graph_message_id_of, classify=graph_request_kind)
    async with (
        graph_simulator(args.seed) as sim,
        running_maildesk(kind, "maildesk_outlook_push_bench", probe,
                         functools.partial(outlook_settings, sim_url=sim.url)) as md,
    ):
        services = md.services
        account_id = await _set_up_outlook_push(services, sim)
        latencies = await measure_latencies(
            md, sim.url, functools.partial(send_graph_message, md.control, sim.url),
            services.connectors.graph(account_id).profile, account_id, probe, args,
            f"outlook_latency_{kind}", graph=True)
        latency = latencies.pop(args.rtt_ms[0])
        latency.update(await _check_graph_deliveries(md.control, sim.url))
        throughput = burst = None
        if args.requests:
            requests = await graph_load_requests(md.control, sim.url, 64)
            throughput = await measure_throughput(
                services, requests, md.push_url, sim.pid, probe, md.store, args, graph=True)
        if args.burst:
            requests = await graph_load_requests(md.control, sim.url, args.burst)
            burst = await measure_burst(services, requests, md.push_url, account_id, probe,
                                        args)
    return _provider_result(latency, latencies, throughput, burst)


async def measure_gmail(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    sent = (args.messages + args.warmup) * len(args.rtt_ms)
    behind = max(1800.0, sent * SPACING_S + 600)
    probe = Probe()
    async with (
        push_simulator(args.seed, behind) as sim,
        running_maildesk(kind, "maildesk_push_bench", probe,
                         functools.partial(bench_settings, sim_url=sim.url)) as md,
    ):
        services = md.services
        account_id = await _set_up_gmail_push(services, sim, md.control, md.push_url)
        latencies = await measure_latencies(
            md, sim.url, functools.partial(send_message, md.control, sim),
            services.connectors.gmail(account_id).profile, account_id, probe, args,
            f"latency_{kind}")
        latency = latencies.pop(args.rtt_ms[0])
        latency.update(await _check_deliveries(md.control, sim))
        latency["token_sign_ms_in_simulator"] = sim.token_sign_ms
        throughput = burst = None
        if args.requests:
            requests = await gmail_load_requests(md.control, sim, md.push_url, 64)
            throughput = await measure_throughput(
                services, requests, md.push_url, sim.pid, probe, md.store, args)
        if args.burst:
            requests = await gmail_load_requests(md.control, sim, md.push_url, args.burst)
            burst = await measure_burst(services, requests, md.push_url, account_id, probe,
                                        args)
    return _provider_result(latency, latencies, throughput, burst)


def _provider_result(
    latency: dict[str, Any], other_rtts: dict[int, dict[str, Any]],
    throughput: dict[str, Any] | None, burst: dict[str, Any] | None,
) -> dict[str, Any]:
    """``latency``: at the first ``--rtt-ms`` (0: what the targets are about); the others under
    ``latency_with_rtt_ms`` by their simulated round trip."""
    result: dict[str, Any] = {"latency": latency}
    if other_rtts:
        result["latency_with_rtt_ms"] = {str(rtt): r for rtt, r in other_rtts.items()}
    if throughput is not None:
        result["webhook_throughput"] = throughput
    if burst is not None:
        result["burst"] = burst
    result["meets_target"] = _meets(latency, throughput, burst)
    return result


async def measure_latencies(
    md: Running, sim_url: str, send: Callable[[], Awaitable[Sample]],
    round_trip: Callable[[], Awaitable[object]], account_id: int, probe: Probe,
    args: argparse.Namespace, profile_name: str, *, graph: bool = False,
) -> dict[int, dict[str, Any]]:
    """The latency part once per ``--rtt-ms`` value (the simulator delays every API request by
    it), with a signed-in websocket client on the mailbox; the simulator is left at 0 ms."""
    reports: dict[int, dict[str, Any]] = {}
    async with live_page(md, account_id, probe):
        for rtt in args.rtt_ms:
            await set_provider_rtt(md.control, sim_url, rtt)
            samples = await measure_latency(
                md.services, send, round_trip, account_id, probe, args,
                profile_name + (f"_rtt{rtt}" if rtt else ""))
            report = latency_report(samples, probe, graph=graph)
            reports[rtt] = {"simulated_rtt_ms": rtt, **report}
            print(f"[{md.store.kind}] {'outlook' if graph else 'gmail'} rtt {rtt} ms: "
                  f"publish → websocket p50 {report['publish_to_websocket_ms']['p50']} ms, "
                  f"floor {report['floor_ms']} ms", file=sys.stderr)
    await set_provider_rtt(md.control, sim_url, 0)
    return reports


async def set_provider_rtt(control: httpx.AsyncClient, sim_url: str, rtt_ms: int) -> None:
    """``state.set_latency(rtt_ms)`` in the simulator child, through its ``/_sim/faults``: every
    API and token request then waits that long before it is answered."""
    answer = await control.post(f"{sim_url}/_sim/faults", json={"latency_ms": rtt_ms})
    answer.raise_for_status()
    if answer.json()["latency_ms"] != rtt_ms:
        raise BenchFailure(f"the simulator did not take latency {rtt_ms} ms: {answer.text}")


async def _healthy(control: httpx.AsyncClient, port: int, server: asyncio.Task[None]) -> bool:
    if server.done():
        server.result()  # raises what stopped it
        raise BenchFailure("MailDesk stopped before it served")
    try:
        answer = await control.get(f"http://127.0.0.1:{port}/healthz")
    except httpx.TransportError:
        return False
    return answer.status_code == 200


# ------------------------------------------------------------------------------ entry point
def _document(args: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "benchmark": "push_latency",
        "targets": {"publish_to_committed_bus_websocket_p50_ms": TARGET_P50_MS,
                    "publish_to_committed_bus_websocket_p99_ms": TARGET_P99_MS,
                    "webhook_ratio_vs_bare": TARGET_RATIO,
                    "burst_sync_runs": TARGET_BURST_RUNS},
        "settings": {"messages": args.messages, "warmup_messages": args.warmup,
                     "simulated_provider_rtt_ms": args.rtt_ms, "burst": args.burst,
                     "sim_clock_spacing_s": SPACING_S,
                     "gap_s": args.gap, "requests": args.requests,
                     "concurrency": args.concurrency, "rounds": args.rounds,
                     "load_client": args.client, "seed": args.seed,
                     "providers": args.provider},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_at_start": args.loadavg,
                    "loadavg_at_end": _loadavg()},
        "notes": [
            "publish = just before the control request that adds the message; the real publish "
            "is within trigger_rtt_ms after it, so latencies are upper bounds "
            "(publish_after_trigger_ms: where it was, by CLOCK_MONOTONIC in both processes)",
            "committed = COMMIT returned; bus = LiveBus.publish called right after it "
            "(commit_to_bus_us); subscriber = a bus subscriber task woke with the event",
            "floor = 2 x provider_rtt_ms p50 (Gmail: history.list + metadata batch; Outlook: "
            "floor_round_trips Graph calls); latency = at the first simulated RTT, "
            "latency_with_rtt_ms = the others",
            "websocket = a signed-in websocket client (own process) read the message's added "
            "frame on /ws/mailboxes/{id}: push-to-visible",
            "burst = distinct valid notifications for one mailbox as fast as possible; sync_runs "
            "= runner calls from the first request until idle and quiet",
            "throughput: the worker keeps syncing the stamped mailbox during the load "
            "(worker_syncs_during_load); ratio = maildesk / bare requests per second",
        ],
        "runs": runs,
    }


def _loadavg() -> list[float]:
    """1/5/15-minute load averages: other work on the machine skews every number here."""
    return [round(x, 2) for x in os.getloadavg()]


def _child_command(kind: str, args: argparse.Namespace) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--db", kind,
               "--messages", str(args.messages), "--warmup", str(args.warmup),
               "--requests", str(args.requests), "--concurrency", str(args.concurrency),
               "--rounds", str(args.rounds), "--gap", str(args.gap),
               "--client", args.client, "--seed", str(args.seed), "--provider", args.provider,
               "--rtt-ms", ",".join(map(str, args.rtt_ms)), "--burst", str(args.burst)]
    if args.profile is not None:
        command += ["--profile", str(args.profile)]
    return command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--provider", choices=["gmail", "outlook", "both"], default="both",
                        help="Gmail (the run's top-level fields), Outlook (its \"outlook\" "
                        "section) or both")
    parser.add_argument("--messages", type=int, default=200,
                        help="messages measured one at a time (after --warmup unmeasured ones)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--gap", type=float, default=0.05,
                        help="real seconds of quiet after each message's sync finished")
    parser.add_argument("--rtt-ms", default="0,100",
                        help="simulated provider round trips (ms, comma-separated): the latency "
                        "part runs once per value; the first is the run's \"latency\"")
    parser.add_argument("--burst", type=int, default=1000,
                        help="notifications of the coalescing burst for one mailbox (0: skip)")
    parser.add_argument("--requests", type=int, default=5000,
                        help="measured requests per endpoint and round (after 500 warm-up; "
                        "0: skip the throughput part)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating bare/MailDesk rounds; medians are reported")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="load client: raw asyncio streams (cheap) or httpx (costs more CPU "
                        "per request than the bare endpoint; see bench/_http_load.py)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", type=Path, default=None,
                        help="write cProfile stats of MailDesk (latency part, and the webhook "
                        "under load) to this folder")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--messages, --concurrency and --rounds must be positive")
    if args.requests < 0 or args.burst < 0:
        parser.error("--requests and --burst cannot be negative")
    try:
        args.rtt_ms = [int(v) for v in args.rtt_ms.split(",") if v.strip()]
    except ValueError:
        parser.error("--rtt-ms takes whole milliseconds, comma-separated")
    if not args.rtt_ms or min(args.rtt_ms) < 0 or len(set(args.rtt_ms)) != len(args.rtt_ms):
        parser.error("--rtt-ms needs distinct values >= 0")
    if args.profile is not None:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    args.loadavg = _loadavg()
    try:
        if args.db == "both":
            budget = (120 + (args.messages + args.warmup) * sum(1.0 + r / 250 for r in args.rtt_ms)
                      + args.rounds * (args.requests / 100 + 60) + args.burst / 10)
            budget *= 2 if args.provider == "both" else 1
            runs = run_per_database(lambda kind: _child_command(kind, args), timeout=budget)
        else:
            runs = [asyncio.run(measure(args.db, args))]
    except BenchFailure as exc:
        print(f"push_latency: FAILED: {exc}", file=sys.stderr)
        return 1
    json.dump(_document(args, runs), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
