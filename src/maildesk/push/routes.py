"""The public push endpoints (no session auth: they authenticate each request themselves)."""

from __future__ import annotations

from starlette.routing import Route

from maildesk.push.gmail_webhook import GmailWebhook
from maildesk.push.outlook import LIFECYCLE_PATH, NOTIFICATION_PATH
from maildesk.push.outlook_webhook import OutlookWebhook

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def push_routes(gmail: GmailWebhook, outlook: OutlookWebhook | None = None) -> list[Route]:
    # Every method reaches the handlers so that anything but POST gets an honest 405 (the
    # setup preflight relies on the GET answer).
    routes = [Route("/maildesk/push/gmail", gmail.__call__, methods=ALL_METHODS)]
    if outlook is not None:
        routes += [
            Route(NOTIFICATION_PATH, outlook.notifications, methods=ALL_METHODS),
            Route(LIFECYCLE_PATH, outlook.lifecycle, methods=ALL_METHODS),
        ]
    return routes
