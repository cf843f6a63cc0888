"""The public push endpoints (no session auth: they authenticate each request themselves)."""

from __future__ import annotations

from starlette.routing import Route

from maildesk.push.gmail_webhook import GmailWebhook

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def push_routes(gmail: GmailWebhook) -> list[Route]:
    # Every method reaches the handler so that anything but POST gets an honest 405 (the
    # setup preflight relies on the GET answer).
    return [Route("/maildesk/push/gmail", gmail.__call__, methods=ALL_METHODS)]
