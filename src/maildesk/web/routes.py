"""The web UI as one ASGI app (mounted by ``create_app``): sign-in, the live inbox, account pages,
administration, the mailbox websocket and the static files.

Each route says who may use it through ``Gate`` (see ``web/auth.py``); the table below is the
whole surface, so a new route cannot forget its check without it showing here.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from maildesk.live.websocket import MailboxSocket
from maildesk.services import Services
from maildesk.web import render
from maildesk.web.access import SessionAccess
from maildesk.web.account_page import AccountPages
from maildesk.web.admin import AdminPages
from maildesk.web.auth import Gate, Sessions, SignInLimiter, session_middleware
from maildesk.web.compose import ComposePages
from maildesk.web.imap_setup import FORM_PATH as IMAP_FORM
from maildesk.web.imap_setup import ImapSetupPages
from maildesk.web.inbox import InboxPages
from maildesk.web.realtime import RealtimePages
from maildesk.web.reconnect import CALLBACK_PATH, ReconnectPages
from maildesk.web.signin import SignInPages

STATIC_DIR = Path(__file__).parent / "static"
_POST = ["POST"]


def web_routes(services: Services, sessions: Sessions, limiter: SignInLimiter
               ) -> list[BaseRoute]:
    access = SessionAccess(sessions, services.db)
    gate = Gate(sessions, render.denied)
    inbox = InboxPages(services, access)
    accounts = AccountPages(services, access)
    admin = AdminPages(services, sessions)
    signin = SignInPages(services, sessions, limiter)
    realtime = RealtimePages(services, access)
    reconnect = ReconnectPages(services)
    compose = ComposePages(services, access)
    imap = ImapSetupPages(services, access)
    socket = MailboxSocket(bus=services.bus, db=services.db,
                           visible_accounts=access.visible_accounts,
                           check_origin=sessions.same_origin)
    page, action = gate.page, gate.action
    mailbox = "/mailboxes/{account_id:int}"
    return [
        Route("/signin", signin.form, name="signin"),
        Route("/signin", action(signin.submit, public=True), methods=_POST),
        Route("/signout", action(signin.sign_out, public=True), methods=_POST, name="signout"),
        Route("/settings/password", page(signin.password_form), name="password"),
        Route("/settings/password", action(signin.change_password), methods=_POST),

        Route("/", page(inbox.index), name="mailboxes"),
        Route(mailbox, page(inbox.mailbox), name="mailbox"),
        Route(mailbox + "/messages/{message_id:int}", page(inbox.message), name="message"),
        Route(mailbox + "/compose", page(compose.form), name="compose"),
        Route(mailbox + "/compose", action(compose.submit), methods=_POST),
        Route(mailbox + "/outbox/{outbox_id:int}/resend", action(compose.resend),
              methods=_POST),
        Route(mailbox + "/account", page(accounts.page), name="account"),
        Route(mailbox + "/account/verify", action(accounts.verify), methods=_POST),
        Route(mailbox + "/account/test/incoming", action(imap.test_incoming), methods=_POST),
        Route(mailbox + "/account/test/outgoing", action(imap.test_outgoing), methods=_POST),
        Route(mailbox + "/account/password", action(imap.set_password, admin=True),
              methods=_POST),
        Route(mailbox + "/account/folders/{folder_id:int}/selected",
              action(accounts.folder_selected, admin=True), methods=_POST),
        Route(mailbox + "/account/folders/{folder_id:int}/backfill",
              action(accounts.folder_backfill, admin=True), methods=_POST),
        Route(mailbox + "/account/reconnect", action(reconnect.start, admin=True),
              methods=_POST),
        Route(CALLBACK_PATH, page(reconnect.callback, admin=True), name="oauth_callback"),
        Route(mailbox + "/visible", action(realtime.visible), methods=_POST),
        Route(mailbox + "/realtime", page(realtime.page, admin=True), name="realtime"),
        Route(mailbox + "/realtime/preflight", action(realtime.preflight, admin=True),
              methods=_POST),
        Route(mailbox + "/realtime/validate", action(realtime.validate, admin=True),
              methods=_POST),
        Route(mailbox + "/realtime/register", action(realtime.register, admin=True),
              methods=_POST),
        Route(mailbox + "/realtime/test", action(realtime.start_test, admin=True),
              methods=_POST),
        Route(mailbox + "/realtime/test/finish", action(realtime.finish_test, admin=True),
              methods=_POST),

        Route("/admin/users", page(admin.users, admin=True), name="admin_users"),
        Route("/admin/users", action(admin.create_user, admin=True), methods=_POST),
        Route("/admin/users/{user_id:int}", page(admin.user, admin=True), name="admin_user"),
        Route("/admin/users/{user_id:int}/mailboxes", action(admin.share, admin=True),
              methods=_POST),
        Route("/admin/users/{user_id:int}/password", action(admin.reset_password, admin=True),
              methods=_POST),
        Route("/admin/jobs", page(admin.jobs, admin=True), name="admin_jobs"),
        Route(IMAP_FORM, page(imap.form, admin=True), name="add_imap"),
        Route(IMAP_FORM, action(imap.submit, admin=True), methods=_POST),
        Route(IMAP_FORM + "/test", action(imap.test, admin=True), methods=_POST),

        WebSocketRoute("/ws" + mailbox, socket.handle, name="mailbox_socket"),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]


def web_app(services: Services, *, limiter: SignInLimiter | None = None) -> Starlette:
    """The UI with its session middleware (kept off the webhook and the API, which need none)."""
    sessions = Sessions(services.settings, services.db)
    limiter = limiter or SignInLimiter(services.clock)

    async def not_found(request: Request, exc: Exception) -> Response:
        return render.not_found(request)

    app = Starlette(routes=web_routes(services, sessions, limiter),
                    middleware=[session_middleware(services.settings)],
                    exception_handlers={404: not_found})
    app.state.sessions = sessions
    app.state.limiter = limiter
    return app
