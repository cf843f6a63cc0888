"""The Google simulator as a child process of a benchmark, so the benchmark's RSS is MailDesk's.

``python -m bench._sim_process --messages N --seed S`` (from the repo root) builds a
``GoogleState``, registers the benchmark's OAuth client, grants one mailbox, seeds it with ``N``
messages, serves ``create_google_app`` on a free 127.0.0.1 port and prints ONE JSON line::

    {"url": "http://127.0.0.1:PORT", "refresh_token": "…", "email": "…", "messages": N,
     "inbox": K, "seed_seconds": 1.2}

It then serves until stdin reaches EOF (the parent closed it or died) or SIGTERM/SIGINT arrives,
and exits. It never listens on anything but loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import random
import sys
import time

from bench._common import CLIENT_ID, CLIENT_SECRET, EMAIL
from bench._process import announce_and_wait
from maildesk.clock import SystemClock
from maildesk.domain.accounts import GMAIL_SCOPE_FULL
from maildesk.sim.gmail_state import GoogleState
from maildesk.sim.google import create_google_app
from maildesk.sim.server import serve_app


def build_state(messages: int, seed: int, email: str = EMAIL) -> tuple[GoogleState, str, float]:
    """A seeded simulator world: (state, refresh token of ``email``, seconds spent seeding)."""
    state = GoogleState(clock=SystemClock(), rng=random.Random(seed))
    state.create_client(CLIENT_ID, CLIENT_SECRET)
    refresh_token = state.create_grant(email, (GMAIL_SCOPE_FULL,), client_id=CLIENT_ID)
    started = time.perf_counter()
    state.seed_mailbox(email, messages)
    return state, refresh_token, time.perf_counter() - started


async def serve(messages: int, seed: int, email: str) -> None:
    state, refresh_token, seed_seconds = build_state(messages, seed, email)
    mailbox = state.mailbox(email)
    inbox = sum(1 for m in mailbox.all_messages() if "INBOX" in m.label_ids)
    async with serve_app(create_google_app(state), host="127.0.0.1") as url:
        hello = {
            "url": url, "refresh_token": refresh_token, "email": email,
            "messages": mailbox.messages_total, "inbox": inbox,
            "seed_seconds": round(seed_seconds, 3),
        }
        await announce_and_wait(hello)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--email", default=EMAIL)
    parser.add_argument("--profile", default=None, help="write cProfile stats to this file")
    args = parser.parse_args(argv)
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    try:
        asyncio.run(serve(args.messages, args.seed, args.email))
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
