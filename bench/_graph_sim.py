"""The Microsoft simulator with Graph change notifications, as a child process of
``push_latency``.

``python -m bench._graph_sim --messages N --seed S`` (from the repo root) builds a
``MicrosoftState`` on the system clock, registers the benchmark's app, grants and seeds one
mailbox, serves ``create_microsoft_app(state, deliver_notifications=True)`` on a free 127.0.0.1
port (identity at its root, Graph under ``/v1.0``) and prints ONE JSON line::

    {"url": "http://127.0.0.1:PORT", "refresh_token": "…", "email": "…", "messages": N}

Graph has no per-mailbox notification rate limit to respect, so no manual clock is needed: a
change queues its notification synchronously inside ``add_message`` and the simulator's
deliverer POSTs it at once (its own ``httpx.AsyncClient``, on this process's event loop).

Besides the simulator's own routes (``/_sim/…``) it serves benchmark-only ones:

* ``POST /_bench/message``: add one Inbox message and answer ``{"id", "queued",
  "monotonic"}`` (``queued``: whether a notification was queued for it; ``monotonic``:
  ``CLOCK_MONOTONIC`` just before the change);
* ``GET /_bench/notifications?n=``: ``n`` change-notification bodies exactly as the deliverer
  POSTs them (one item each, for the live subscription, with its clientState and distinct
  message ids), for a load test;
* ``GET /_bench/deliveries``: the deliverer's log in brief (outcomes, attempts per batch, items).

It serves until stdin reaches EOF (the parent closed it or died) or SIGTERM/SIGINT, and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench._common import CLIENT_ID, CLIENT_SECRET, EMAIL
from bench._process import announce_and_wait
from maildesk.clock import SystemClock
from maildesk.sim.microsoft import create_microsoft_app
from maildesk.sim.microsoft_state import MicrosoftState
from maildesk.sim.server import serve_app


def build_state(messages: int, seed: int) -> tuple[MicrosoftState, str]:
    state = MicrosoftState(clock=SystemClock(), rng=random.Random(seed))
    state.register_app(CLIENT_ID, CLIENT_SECRET)
    refresh_token = state.grant(EMAIL, CLIENT_ID)
    state.seed_mailbox(EMAIL, messages, days=30)
    return state, refresh_token


def bench_routes(state: MicrosoftState) -> list[Route]:
    counter = iter(range(1, 10**9))

    async def message(request: Request) -> Response:
        n = next(counter)
        queued_before = len(state.notifier.log) + state.notifier.pending
        changed_at = time.clock_gettime(time.CLOCK_MONOTONIC)
        new_id = state.add_message(
            EMAIL, subject=f"Latency probe #{n}", sender="Probe <probe@example.org>", to=EMAIL,
            text=f"probe {n}\n", html=f"<p>probe <b>{n}</b></p>",
        )
        queued = len(state.notifier.log) + state.notifier.pending > queued_before
        # CLOCK_MONOTONIC is one clock for every process on Linux: a cross-check of where
        # inside the control request the change happened.
        return JSONResponse({"id": new_id, "queued": queued, "monotonic": changed_at})

    async def notifications(request: Request) -> Response:
        n = int(request.query_params.get("n", "64"))
        live = [s for s in state.subscriptions.by_id.values() if s.email == EMAIL]
        if len(live) != 1:
            return JSONResponse({"error": f"{len(live)} subscriptions"}, status_code=409)
        (sub,) = live
        items = (
            state.subscriptions.change_item(sub, "created", f"AAMkAGbench{i:08d}", f'W/"bench{i}"')
            for i in range(n)
        )
        out = [json.dumps({"value": [item]}, separators=(",", ":")) for item in items]
        return JSONResponse({"bodies": out})

    async def deliveries(request: Request) -> Response:
        log = [d for d in state.notifier.log if d.kind == "change"]
        return JSONResponse({
            "batches": len(log),
            "items": sum(len(d.items) for d in log),
            "outcomes": Counter(d.outcome for d in log),
            "attempts": Counter(str(len(d.attempts)) for d in log),
            "pending": state.notifier.pending,
        })

    return [
        Route("/_bench/message", message, methods=["POST"]),
        Route("/_bench/notifications", notifications, methods=["GET"]),
        Route("/_bench/deliveries", deliveries, methods=["GET"]),
    ]


async def serve(messages: int, seed: int) -> None:
    state, refresh_token = build_state(messages, seed)
    app = create_microsoft_app(state, deliver_notifications=True)
    app.router.routes.extend(bench_routes(state))
    async with serve_app(app, host="127.0.0.1") as url:
        hello = {"url": url, "refresh_token": refresh_token, "email": EMAIL,
                 "messages": len(state.snapshot(EMAIL)["messages"])}
        await announce_and_wait(hello)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.messages, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
