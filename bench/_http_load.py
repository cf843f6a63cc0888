"""A small HTTP load generator, run as a child process so it never shares the server's event
loop: ``python -m bench._http_load`` reads ONE JSON spec on stdin::

    {"url": "http://127.0.0.1:PORT/path", "requests": [{"headers": {...}, "body": "..."}],
     "concurrency": 32, "total": 5000, "warmup": 500, "max_seconds": 30, "client": "raw"}

and POSTs ``requests`` round-robin over ``concurrency`` keep-alive connections, one request in
flight on each: ``warmup`` requests first (unmeasured), then ``total`` measured ones, stopping
early after ``max_seconds``. It prints ONE JSON line: completed requests, answers by status,
transport errors, seconds, requests/s, latency percentiles (ms, of every measured request
whatever its answer) and its own CPU use, to tell whether the client was the limit.

Two clients:

* ``httpx``: ``httpx.AsyncClient`` pools of ``PER_CLIENT`` connections each. httpx costs about
  1 ms of CPU per request here (3 ms with all 32 connections in one pool), several times what a
  bare Starlette endpoint costs the server, so on a small machine it measures itself;
* ``raw`` (default): plain asyncio streams writing the same bytes httpx would (request line,
  Host, the given headers, Content-Length, body) and reading the status line, headers and a
  Content-Length or chunked body. About 20x cheaper per request, so the servers are the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

PER_CLIENT = 4
Send = Callable[[int], Awaitable[int]]  # request index → status


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max of ``values`` (nearest rank), in the values' unit, rounded to 0.001."""
    if not values:
        return {}
    ordered = sorted(values)

    def rank(p: float) -> float:
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
        return round(ordered[index], 3)

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": round(ordered[-1], 3),
            "n": len(ordered)}


async def _phase(
    senders: list[Send], count: int, limit_s: float
) -> tuple[list[float], Counter[int], int, bool]:
    """Run ``count`` requests, one in flight per sender; latencies (ms), statuses, errors."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors = 0
    issued = 0

    async def worker(send: Send) -> None:
        nonlocal issued, errors
        while issued < count:
            index = issued
            issued += 1
            started = time.perf_counter()
            try:
                status = await send(index)
            except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                continue
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[status] += 1

    timed_out = False
    try:
        async with asyncio.timeout(limit_s), asyncio.TaskGroup() as group:
            for send in senders:
                group.create_task(worker(send))
    except TimeoutError:
        timed_out = True
    return latencies, statuses, errors, timed_out


async def _httpx_senders(spec: dict[str, Any], stack: contextlib.AsyncExitStack) -> list[Send]:
    url = spec["url"]
    requests = [(r["headers"], r["body"].encode()) for r in spec["requests"]]
    limits = httpx.Limits(max_connections=PER_CLIENT, max_keepalive_connections=PER_CLIENT)
    senders: list[Send] = []
    client: httpx.AsyncClient | None = None
    for n in range(int(spec["concurrency"])):
        if n % PER_CLIENT == 0:
            client = await stack.enter_async_context(
                httpx.AsyncClient(limits=limits, timeout=10.0))
        assert client is not None

        async def send(index: int, client: httpx.AsyncClient = client) -> int:
            headers, body = requests[index % len(requests)]
            response = await client.post(url, content=body, headers=headers)
            return response.status_code

        senders.append(send)
    return senders


class _RawConnection:
    def __init__(self, host: str, port: int, wire: list[bytes]) -> None:
        self.host, self.port, self.wire = host, port, wire
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.connects: list[float] = []  # seconds each (re)connect took

    async def send(self, index: int) -> int:
        if self.writer is None or self.reader is None:
            started = time.perf_counter()
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.connects.append(time.perf_counter() - started)
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.writer.write(self.wire[index % len(self.wire)])
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "content-length" in headers:
                await self.reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    await self.reader.readexactly(size + 2)
                    if size == 0:
                        break
            if headers.get("connection", "").lower() == "close":
                self.close()
            return status
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _raw_senders(spec: dict[str, Any], stack: contextlib.ExitStack) -> list[Send]:
    url = urlsplit(spec["url"])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    path = url.path + (f"?{url.query}" if url.query else "")
    wire = []
    for request in spec["requests"]:
        body = request["body"].encode()
        lines = [f"POST {path} HTTP/1.1", f"Host: {url.netloc}", "Accept: */*",
                 "Accept-Encoding: gzip, deflate", "Connection: keep-alive",
                 *(f"{k}: {v}" for k, v in request["headers"].items()),
                 f"Content-Length: {len(body)}"]
        wire.append(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    connections = [_RawConnection(host, port, wire) for _ in range(int(spec["concurrency"]))]
    for connection in connections:
        stack.callback(connection.close)
    _RAW.extend(connections)
    return [c.send for c in connections]


_RAW: list[_RawConnection] = []


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    limit_s = float(spec.get("max_seconds", 30))
    client = spec.get("client", "raw")
    async with contextlib.AsyncExitStack() as stack:
        if client == "httpx":
            senders = await _httpx_senders(spec, stack)
        elif client == "raw":
            senders = _raw_senders(spec, stack.enter_context(contextlib.ExitStack()))
        else:
            raise ValueError(f"unknown client {client!r}")
        await _phase(senders, int(spec.get("warmup", 0)), limit_s)
        connects_before = sum(len(c.connects) for c in _RAW)
        cpu_before = time.process_time()
        started = time.perf_counter()
        latencies, statuses, errors, timed_out = await _phase(
            senders, int(spec["total"]), limit_s
        )
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
    completed = sum(statuses.values())
    connects = [t for c in _RAW for t in c.connects]
    return {
        "client": client,
        "completed": completed,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": errors,
        "timed_out": timed_out,
        "seconds": round(seconds, 3),
        "requests_per_s": round(completed / seconds, 1) if seconds > 0 else 0.0,
        "latency_ms": percentiles(latencies),
        "client_cpu_s": round(cpu, 3),
        "client_cpu_util": round(cpu / seconds, 2) if seconds > 0 else 0.0,
        # raw client only: connections opened while measuring (keep-alive should need none),
        # and the slowest connect of the whole run (a SYN retry takes a second or more)
        "reconnects": len(connects) - connects_before if _RAW else None,
        "slowest_connect_ms": round(max(connects) * 1000, 3) if connects else None,
    }


def main() -> int:
    spec = json.loads(sys.stdin.read())
    result = asyncio.run(run(spec))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
