"""A websocket client of MailDesk's live mailbox endpoint, as a child process of ``push_latency``:
what a signed-in browser tab showing the inbox is, minus the rendering.

``python -m bench._ws_client`` reads ONE JSON line on stdin::

    {"url": "ws://127.0.0.1:PORT/ws/mailboxes/ID", "headers": {"Cookie": "…", "Origin": "…"}}

(on stdin, not the command line: the session cookie is a credential), connects with the
``websockets`` client, prints ``{"hello": change_id}`` once the server's hello arrived, then one
line per ``added`` message::

    {"id": <message id>, "t": <CLOCK_MONOTONIC when the frame was read>}

``CLOCK_MONOTONIC`` is one clock for every process on Linux and is what ``time.perf_counter()``
reads there, so the parent compares these stamps with its own directly. It runs in its own
process so that reading and parsing frames costs MailDesk's event loop nothing, as with a real
browser. It stops when stdin reaches EOF (or SIGTERM/SIGINT), or exits 1 if the socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

import websockets

from bench._process import wait_for_eof_or_signal


def _emit(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def _read_frames(config: dict[str, Any]) -> None:
    async with websockets.connect(config["url"], additional_headers=config["headers"],
                                  max_size=None, open_timeout=10) as ws:
        async for frame in ws:
            now = time.clock_gettime(time.CLOCK_MONOTONIC)
            event = json.loads(frame)
            if event.get("kind") == "added":
                _emit({"id": event["message_id"], "t": now})
            elif event.get("kind") == "hello":
                _emit({"hello": event["change_id"]})


async def main() -> int:
    config = json.loads(await asyncio.to_thread(sys.stdin.readline))
    frames = asyncio.create_task(_read_frames(config))
    stop = asyncio.create_task(wait_for_eof_or_signal())
    try:
        await asyncio.wait({frames, stop}, return_when=asyncio.FIRST_COMPLETED)
        socket_ended = frames.done()
    finally:
        for task in (frames, stop):
            task.cancel()
        outcomes = await asyncio.gather(frames, stop, return_exceptions=True)
    if socket_ended:
        # The socket ended before we were told to stop: the parent is still waiting for frames.
        print(f"_ws_client: the websocket ended: {outcomes[0]!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main()))
