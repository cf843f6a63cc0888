"""The Google simulator with Pub/Sub push delivery, as a child process of ``push_latency``.

``python -m bench._push_sim --messages N --seed S`` (from the repo root) builds a ``GoogleState``
on a ``ManualClock`` that starts ``--behind`` seconds behind real time, registers the benchmark's
OAuth client, grants and seeds one mailbox, serves ``create_google_app(state,
deliver_pushes=True)`` on a free 127.0.0.1 port and prints ONE JSON line::

    {"url": "http://127.0.0.1:PORT", "refresh_token": "…", "email": "…", "messages": N,
     "token_sign_ms": 1.2}

Why a manual clock: Gmail publishes at most one notification per mailbox per second, so
messages sent one at a time must be >= 1 s apart on the simulator's clock. Advancing a manual
clock 1.1 s per message keeps the benchmark short without tripping the rate limit. It starts
well behind real time so the push tokens it signs (``iat`` = its now, ``exp`` an hour later)
stay valid for MailDesk, which checks them against its own system clock (60 s leeway for
``iat`` in the future) for as long as the clock has been advanced less than ``--behind``.

Besides the simulator's own routes it serves two benchmark-only ones:

* ``POST /_bench/message`` ``{"advance": 1.1}``: advance the clock, add one INBOX message (its
  notification is published synchronously inside ``add_message``) and answer ``{"id",
  "historyId", "published", "rate_limited", "monotonic"}`` (``CLOCK_MONOTONIC`` just before);
* ``GET /_bench/pushes?n=&audience=&signer=``: ``n`` push requests exactly as the deliverer
  would send them (``{"token", "body"}``, distinct tokens and message ids), for a load test;
* ``GET /_bench/clock``: the simulator clock's offset from real time, and the deliverer's stats.

It serves until stdin reaches EOF (the parent closed it or died) or SIGTERM/SIGINT, and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench._common import CLIENT_ID, CLIENT_SECRET, EMAIL
from bench._process import announce_and_wait
from maildesk.clock import ManualClock
from maildesk.domain.accounts import GMAIL_SCOPE_FULL
from maildesk.sim.gmail_state import GoogleState
from maildesk.sim.google import create_google_app
from maildesk.sim.pubsub_gmail import push_body
from maildesk.sim.pubsub_types import PublishRecord
from maildesk.sim.server import serve_app

TOPIC = "projects/maildesk-bench/topics/gmail-push"


def build_state(messages: int, seed: int, behind: float) -> tuple[GoogleState, ManualClock, str]:
    clock = ManualClock(datetime.now(UTC) - timedelta(seconds=behind))
    state = GoogleState(clock=clock, rng=random.Random(seed))
    state.create_client(CLIENT_ID, CLIENT_SECRET)
    refresh_token = state.create_grant(EMAIL, (GMAIL_SCOPE_FULL,), client_id=CLIENT_ID)
    state.seed_mailbox(EMAIL, messages, days=30)
    return state, clock, refresh_token


def bench_routes(state: GoogleState, clock: ManualClock) -> list[Route]:
    counter = iter(range(1, 10**9))

    async def message(request: Request) -> Response:
        body = await request.json()
        advance = float(body.get("advance", 1.1))
        clock.advance(advance)
        n = next(counter)
        rate_limited = sum(state.pubsub.stats.rate_limited.values())
        published_before = state.pubsub.stats.published
        published_at = time.clock_gettime(time.CLOCK_MONOTONIC)
        new_id = state.add_message(
            EMAIL, subject=f"Latency probe #{n}", sender="Probe <probe@example.org>", to=EMAIL,
            text=f"probe {n}\n", html=f"<p>probe <b>{n}</b></p>",
        )
        history_id = state.mailbox(EMAIL).history_id
        return JSONResponse({
            "id": new_id,
            "historyId": history_id,
            "published": state.pubsub.stats.published > published_before,
            "rate_limited": sum(state.pubsub.stats.rate_limited.values()) - rate_limited,
            # CLOCK_MONOTONIC is one clock for every process on Linux: a cross-check of
            # where inside the control request the publish happened.
            "monotonic": published_at,
        })

    async def pushes(request: Request) -> Response:
        n = int(request.query_params.get("n", "64"))
        audience = request.query_params["audience"]
        signer = request.query_params["signer"]
        history_id = state.mailbox(EMAIL).history_id
        out = []
        for i in range(n):
            record = PublishRecord(
                message_id=str(9_000_000_000_000 + i), email=EMAIL, history_id=history_id,
                topic=TOPIC, published_at=clock.now(), subscriptions=("bench",),
            )
            out.append({
                # Distinct iat, so no two tokens are alike (MailDesk caches none anyway).
                "token": state.pubsub.keys.push_token(
                    audience=audience, email=signer, issued_at=clock.now().timestamp() - i),
                "body": push_body(record, "projects/maildesk-bench/subscriptions/load", 1)
                .decode(),
            })
        return JSONResponse({"pushes": out})

    async def clock_info(request: Request) -> Response:
        offset = (clock.now() - datetime.now(UTC)).total_seconds()
        return JSONResponse({"offset_s": round(offset, 3), "stats": state.pubsub.stats.to_json()})

    return [
        Route("/_bench/message", message, methods=["POST"]),
        Route("/_bench/pushes", pushes, methods=["GET"]),
        Route("/_bench/clock", clock_info, methods=["GET"]),
    ]


async def serve(messages: int, seed: int, behind: float) -> None:
    state, clock, refresh_token = build_state(messages, seed, behind)
    # What signing one push token costs the simulator (the deliverer signs one per attempt);
    # the first signature pays one-off setup, so time the ones after it.
    state.pubsub.keys.push_token(audience="https://example.invalid/push", email="x@example.com")
    started = time.perf_counter()
    for _ in range(10):
        state.pubsub.keys.push_token(audience="https://example.invalid/push",
                                     email="x@example.com")
    token_sign_ms = (time.perf_counter() - started) * 100
    app = create_google_app(state, deliver_pushes=True)
    app.router.routes.extend(bench_routes(state, clock))
    async with serve_app(app, host="127.0.0.1") as url:
        hello = {
            "url": url, "refresh_token": refresh_token, "email": EMAIL, "topic": TOPIC,
            "messages": state.mailbox(EMAIL).messages_total,
            "token_sign_ms": round(token_sign_ms, 3),
        }
        await announce_and_wait(hello)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--behind", type=float, default=1800.0,
                        help="seconds the simulator's clock starts behind real time")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.messages, args.seed, args.behind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
