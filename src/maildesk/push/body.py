"""Reading a webhook request body with a hard size limit (both push webhooks accept ≤64 KB)."""

from __future__ import annotations

from starlette.requests import Request

from maildesk.errors import WebhookRejected

MAX_BODY = 64 * 1024


async def read_limited(request: Request, limit: int = MAX_BODY) -> bytes:
    """The body, or ``WebhookRejected(413)`` as soon as it is known to exceed ``limit``: on the
    declared ``Content-Length`` before reading anything, else while streaming (chunked bodies),
    so an oversized request is never read whole."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_big = int(declared) > limit
        except ValueError as exc:
            raise WebhookRejected(400, "bad Content-Length") from exc
        if too_big:
            raise WebhookRejected(413, "declared body over the limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise WebhookRejected(413, "body over the limit")
        chunks.append(chunk)
    return b"".join(chunks)
