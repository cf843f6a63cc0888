"""Sign-in sessions, CSRF tokens, roles and the sign-in rate limit of the web UI.

**Sessions** are Starlette's ``SessionMiddleware``: a signed (itsdangerous HMAC), HttpOnly,
``SameSite=Lax`` cookie (``Secure`` when the base URL is https), keyed by HKDF from the newest
``MAILDESK_SECRET_KEY`` entry — so rotating the key signs everybody out. The cookie holds the
user id, an HMAC fingerprint of the user's password hash and the CSRF token; nothing secret (the
fingerprint is keyed, so the cookie carries no material for guessing the password). Every request
re-reads the user and compares the fingerprint: a changed password (a new argon2 hash with a new
salt) ends every session signed in with the old one, and a deleted user is signed out.

**CSRF**: a synchronizer token per session (``csrf``), rendered into every form (and a
``<meta>`` for scripts) and checked server-side on every state-changing request, in constant
time; a request without a session has no token and is refused. A cross-origin ``Origin`` header
is refused as well. The websocket checks ``Origin`` (``same_origin``).

**Roles**: administrators see and manage everything; users see the mailboxes shared with them.
Every route is wrapped by :class:`Gate`: ``page`` (GET, signed in; otherwise a redirect to the
sign-in page), ``action`` (POST, signed in, CSRF checked) — both with ``admin=True`` for
administrator-only routes, which answer 403 to everyone else. The wrappers mark the endpoint
(``maildesk_access``) so a test can enumerate the admin surface.

**Sign-in rate limit**: :class:`SignInLimiter`, per address (case-folded), in memory — per
process, which is exact for ``maildesk serve`` (one process) and per-process when several web
processes share a database.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import RedirectResponse, Response

from maildesk.clock import Clock
from maildesk.config import Settings
from maildesk.store import users as user_store
from maildesk.store.database import Database
from maildesk.store.users import UserRow

SESSION_COOKIE = "maildesk_session"
SESSION_MAX_AGE = 14 * 24 * 3600
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_USER_KEY = "maildesk.user"
_UNSET = object()

Endpoint = Callable[[Request], Awaitable[Response]]
Access = Literal["public", "user", "admin"]


def _derive(settings: Settings, info: bytes) -> bytes:
    keys = settings.secret_keys
    if not keys:
        raise ValueError("the settings carry no secret key (call Settings.with_secret_key())")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
        keys[0].encode()
    )


def session_middleware(settings: Settings) -> Middleware:
    key = base64.urlsafe_b64encode(_derive(settings, b"maildesk web session v1")).decode()
    return Middleware(
        SessionMiddleware, secret_key=key, session_cookie=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE, same_site="lax",
        https_only=settings.base_url.lower().startswith("https://"),
    )


class Sessions:
    """Reads and writes the signed-in user of a request's session."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self._key = _derive(settings, b"maildesk password fingerprint v1")
        self._db = db
        self._base_origin = _origin(settings.base_url)

    def fingerprint(self, user: UserRow) -> str:
        return hmac.new(self._key, user.password_hash.encode(), hashlib.sha256).hexdigest()[:32]

    async def user(self, conn: HTTPConnection) -> UserRow | None:
        """The signed-in user, or None; cached for the rest of the request."""
        cached = conn.scope.get(_USER_KEY, _UNSET)
        if cached is not _UNSET:
            return cached  # type: ignore[no-any-return]
        found: UserRow | None = None
        session = conn.session
        uid, mark = session.get("uid"), session.get("pwf")
        if isinstance(uid, int) and isinstance(mark, str):
            async with self._db.read() as db:
                found = await user_store.get(db, uid)
            if found is None or not hmac.compare_digest(self.fingerprint(found), mark):
                found = None
                session.pop("uid", None)
                session.pop("pwf", None)
        conn.scope[_USER_KEY] = found
        return found

    def sign_in(self, request: Request, user: UserRow) -> None:
        """A fresh session (new CSRF token: a token seen before sign-in is worth nothing)."""
        request.session.clear()
        request.session.update(uid=user.id, pwf=self.fingerprint(user),
                               csrf=secrets.token_urlsafe(32))
        request.scope[_USER_KEY] = user

    def refresh(self, request: Request, user: UserRow) -> None:
        """After the user's own password change: keep this session, with the new fingerprint."""
        request.session["pwf"] = self.fingerprint(user)
        request.scope[_USER_KEY] = user

    def sign_out(self, request: Request) -> None:
        request.session.clear()
        request.scope[_USER_KEY] = None

    def same_origin(self, conn: HTTPConnection) -> bool:
        """True when the ``Origin`` header names this server (its Host, or the base URL)."""
        origin = conn.headers.get("origin")
        if not origin:
            return False
        host = conn.headers.get("host", "")
        scheme = "https" if conn.url.scheme in ("https", "wss") else "http"
        return origin.lower() in {f"{scheme}://{host}".lower(), self._base_origin}


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def cached_user(conn: HTTPConnection) -> UserRow | None:
    """The user a gate already resolved for this request (templates use it)."""
    found = conn.scope.get(_USER_KEY)
    return found if isinstance(found, UserRow) else None


def csrf_token(conn: HTTPConnection) -> str:
    """This session's CSRF token (created on first use)."""
    token = conn.session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        conn.session["csrf"] = token
    return token


async def csrf_ok(request: Request, sessions: Sessions) -> bool:
    expected = request.session.get("csrf")
    if not isinstance(expected, str) or len(expected) < 32:
        return False
    origin = request.headers.get("origin")
    if origin and origin != "null" and not sessions.same_origin(request):
        return False
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            value = (await request.form()).get(CSRF_FIELD)
            given = value if isinstance(value, str) else None
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def flash(request: Request, level: str, text: str) -> None:
    """A message shown once on the next page (kept in the signed session; never a secret)."""
    messages = request.session.get("flash")
    queue = messages if isinstance(messages, list) else []
    queue.append([level, text])
    request.session["flash"] = queue[-5:]


def take_flashes(conn: HTTPConnection) -> list[tuple[str, str]]:
    if "session" not in conn.scope or "flash" not in conn.session:
        return []
    found = conn.session.pop("flash")
    if not isinstance(found, list):
        return []
    return [(str(m[0]), str(m[1])) for m in found if isinstance(m, list) and len(m) == 2]


def safe_next(value: str | None) -> str:
    """Only a local path may be a redirect target after sign-in (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    if any(c in value for c in "\r\n\\"):
        return "/"
    return value


Denied = Callable[[Request, int, str], Response]


class Gate:
    """Wraps endpoints with the sign-in, role and CSRF checks (see the module docstring)."""

    def __init__(self, sessions: Sessions, denied: Denied) -> None:
        self.sessions = sessions
        self._denied = denied

    def page(self, handler: Endpoint, *, admin: bool = False) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            user = await self.sessions.user(request)
            if user is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(
                    "/signin?" + urlencode({"next": target}), status_code=303,
                    headers={"Cache-Control": "no-store"},
                )
            if admin and not user.is_admin:
                return self._denied(request, 403, "This page is for administrators only.")
            return await handler(request)

        return _mark(endpoint, handler, "admin" if admin else "user")

    def action(self, handler: Endpoint, *, admin: bool = False, public: bool = False
               ) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            if not await csrf_ok(request, self.sessions):
                return self._denied(request, 403, "This form has expired or did not come from "
                                    "MailDesk. Reload the page and try again.")
            if not public:
                user = await self.sessions.user(request)
                if user is None:
                    return self._denied(request, 403, "Sign in first.")
                if admin and not user.is_admin:
                    return self._denied(request, 403,
                                        "Only administrators may do this.")
            return await handler(request)

        access: Access = "public" if public else ("admin" if admin else "user")
        return _mark(endpoint, handler, access)


def _mark(endpoint: Endpoint, handler: Endpoint, access: Access) -> Endpoint:
    endpoint.__name__ = getattr(handler, "__name__", "endpoint")
    endpoint.__doc__ = handler.__doc__
    endpoint.maildesk_access = access  # type: ignore[attr-defined]
    return endpoint


class SignInLimiter:
    """At most ``attempts`` failed sign-ins per address within ``window``; then the address is
    refused (even with the right password) until the oldest failure leaves the window.

    Unknown addresses are counted like known ones, so the answer says nothing about which
    addresses exist. Memory is bounded: at most ``max_addresses`` are tracked (oldest dropped).
    """

    def __init__(self, clock: Clock, *, attempts: int = 5, window: float = 900.0,
                 max_addresses: int = 10_000) -> None:
        self._clock = clock
        self.attempts = attempts
        self.window = timedelta(seconds=window)
        self._max = max_addresses
        self._failures: OrderedDict[str, list[datetime]] = OrderedDict()

    @staticmethod
    def _key(email: str) -> str:
        return email.strip().casefold()

    def _recent(self, key: str) -> list[datetime]:
        cutoff = self._clock.now() - self.window
        found = [t for t in self._failures.get(key, []) if t > cutoff]
        if found:
            self._failures[key] = found
        else:
            self._failures.pop(key, None)
        return found

    def retry_after(self, email: str) -> float | None:
        """Seconds until the address may try again, or None when it may try now."""
        recent = self._recent(self._key(email))
        if len(recent) < self.attempts:
            return None
        return max(1.0, (recent[0] + self.window - self._clock.now()).total_seconds())

    def failed(self, email: str) -> None:
        key = self._key(email)
        recent = self._recent(key)
        recent.append(self._clock.now())
        self._failures[key] = recent
        self._failures.move_to_end(key)
        while len(self._failures) > self._max:
            self._failures.popitem(last=False)

    def succeeded(self, email: str) -> None:
        self._failures.pop(self._key(email), None)


def template_context(conn: HTTPConnection) -> dict[str, Any]:
    """What every page template may use: the user, the CSRF token, the one-time messages."""
    has_session = "session" in conn.scope
    return {
        "current_user": cached_user(conn),
        "csrf_token": csrf_token(conn) if has_session else "",
        "flashes": take_flashes(conn) if has_session else [],
    }
