"""Body prefetch: after new mail is committed, warm the body cache so messages open at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from maildesk.domain.mail import RemoteBody
from maildesk.errors import MessageGone
from maildesk.store import bodies
from maildesk.sync.context import SyncContext
from maildesk.sync.sanitize import sanitize_html

log = logging.getLogger(__name__)

BodyFetcher = Callable[[str], Awaitable[RemoteBody]]


async def prefetch_bodies(
    fetch: BodyFetcher,
    ctx: SyncContext,
    message_ids: Sequence[int],
    *,
    limit: int,
    concurrency: int = 4,
) -> int:
    """Fetch, sanitize and cache the bodies of the newest ``limit`` of ``message_ids`` that have
    none yet. Returns how many were stored. A message deleted meanwhile is skipped."""
    if limit <= 0 or not message_ids:
        return 0
    async with ctx.db.read() as conn:
        todo = await bodies.missing(conn, ctx.account_id, list(message_ids), limit)
    gate = asyncio.Semaphore(concurrency)
    stored = 0

    async def one(message_id: int, remote_id: str) -> None:
        nonlocal stored
        async with gate:
            try:
                body = await fetch(remote_id)
            except MessageGone:
                return
        html = sanitize_html(body.html)
        async with ctx.write() as conn:
            if await bodies.put(conn, message_id, html=html, text=body.text, now=ctx.clock.now()):
                stored += 1

    async with asyncio.TaskGroup() as group:
        for message_id, remote_id in todo:
            group.create_task(one(message_id, remote_id))
    return stored
