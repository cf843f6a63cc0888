"""The web UI's routes, mounted by ``create_app`` only when it is given an access policy."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from maildesk.live.websocket import MailboxSocket
from maildesk.services import Services
from maildesk.web.access import AccessPolicy
from maildesk.web.inbox import InboxPages

STATIC_DIR = Path(__file__).parent / "static"


def web_routes(services: Services, access: AccessPolicy) -> list[BaseRoute]:
    pages = InboxPages(services, access)
    socket = MailboxSocket(bus=services.bus, db=services.db,
                           visible_accounts=access.visible_accounts)
    return [
        Route("/", pages.index, name="mailboxes"),
        Route("/mailboxes/{account_id:int}", pages.mailbox, name="mailbox"),
        Route("/mailboxes/{account_id:int}/messages/{message_id:int}", pages.message,
              name="message"),
        WebSocketRoute("/ws/mailboxes/{account_id:int}", socket.handle, name="mailbox_socket"),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
