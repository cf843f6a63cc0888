"""Rendering for the server-side UI: the Jinja2 environment, display filters, the security
headers every page carries, and the sandboxed document a mail body is shown in.

Mail HTML is hostile by default. It is sanitized when cached (``sync/sanitize.py``) and, as a
second wall, shown only inside ``<iframe sandbox srcdoc=…>`` without ``allow-scripts`` or
``allow-same-origin``. A ``srcdoc`` frame inherits its parent's Content-Security-Policy, so the
page policy below is also the body's policy: no script, no remote images, fonts or styles
(``img-src 'self' data: cid:``) — tracking pixels stay dark until a later "load images" consent.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import getaddresses
from html import escape
from typing import Any
from urllib.parse import urlsplit

import jinja2
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from maildesk.store.bodies import CachedBody
from maildesk.web.auth import template_context

# style-src-attr: mail formatting lives in style attributes (which cannot run script); whole
# style sheets are still limited to our own.
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "style-src-attr 'unsafe-inline'",
    "img-src 'self' data: cid:",
    "font-src 'self'",
    "connect-src 'self'",
    "media-src 'none'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

# The sandbox grants nothing but opening links in a new tab (the body's <base target=_blank>):
# no scripts, no same-origin access, no forms, no top navigation.
FRAME_SANDBOX = "allow-popups allow-popups-to-escape-sandbox"

_FRAME_BODY_STYLE = (
    "margin:0;padding:20px 28px;font:15px/1.55 system-ui,-apple-system,'Segoe UI',Roboto,"
    "'Helvetica Neue',Arial,sans-serif;color:#1f2328;background:#fff;word-wrap:break-word;"
    "overflow-wrap:anywhere"
)
_TEXT_STYLE = "white-space:pre-wrap;font:inherit;margin:0"
_REMOTE_IMAGE = re.compile(r"<img\b[^>]*\bsrc\s*=\s*[\"']?\s*(?:https?:)?//", re.IGNORECASE)

STATE_LABELS = {
    "new": "New", "syncing": "Syncing", "ok": "OK", "degraded": "Retrying",
    "reauth_required": "Reconnect needed", "error": "Error",
}

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def frame_document(body: CachedBody) -> str:
    """The whole document shown in the sandboxed frame (goes into ``srcdoc``, escaped there)."""
    if body.html.strip():
        content = body.html
    else:
        content = f'<pre style="{_TEXT_STYLE}">{escape(body.text)}</pre>'
    return (
        '<!doctype html><html><head><meta charset="utf-8">'
        '<meta name="referrer" content="no-referrer"><base target="_blank">'
        f'</head><body style="{_FRAME_BODY_STYLE}">{content}</body></html>'
    )


def has_remote_images(body: CachedBody) -> bool:
    return bool(_REMOTE_IMAGE.search(body.html))


def short_date(value: datetime, now: datetime) -> str:
    """Mail-list style: the time today, the day this year, else the full date (UTC; the
    browser re-renders it in local time)."""
    value, now = value.astimezone(UTC), now.astimezone(UTC)
    if value.date() == now.date():
        return f"{value:%H:%M}"
    if value.year == now.year:
        return f"{_MONTHS[value.month - 1]} {value.day}"
    return f"{_MONTHS[value.month - 1]} {value.day}, {value.year}"


def long_date(value: datetime) -> str:
    value = value.astimezone(UTC)
    return f"{value:%a}, {value.day} {_MONTHS[value.month - 1]} {value.year} {value:%H:%M} UTC"


def addresses(header: str) -> list[str]:
    """A To/Cc header as a list of "Name <addr>" / "addr" strings for display."""
    found = []
    for name, addr in getaddresses([header]):
        if addr or name:
            found.append(f"{name} <{addr}>" if name and addr else (addr or name))
    return found


def file_size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n / 1024 / 1024:.1f} MB"


def duration(ms: int | None) -> str:
    """A job's duration for people: "340 ms", "2.4 s", "3 min 5 s"."""
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    minutes, seconds = divmod(round(ms / 1000), 60)
    return f"{minutes} min {seconds} s"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("maildesk.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(short_date=short_date, long_date=long_date, addresses=addresses,
                       file_size=file_size, duration=duration)
    env.globals.update(frame_sandbox=FRAME_SANDBOX, state_labels=STATE_LABELS)
    return env


templates = Jinja2Templates(env=_environment())


def page(
    request: Request, name: str, context: dict[str, Any], *, status_code: int = 200,
    form_origins: tuple[str, ...] = (),
) -> Response:
    """A rendered page with the security headers, the signed-in user, the CSRF token and the
    one-time messages (``auth.template_context``).

    ``form_origins``: origins a form of this page may end up at besides our own (CSP
    ``form-action`` also governs the redirects after a submit: Reconnect redirects to the
    provider's sign-in)."""
    headers = SECURITY_HEADERS
    if form_origins:
        policy = CONTENT_SECURITY_POLICY.replace(
            "form-action 'self'", " ".join(("form-action 'self'", *form_origins)))
        headers = {**SECURITY_HEADERS, "Content-Security-Policy": policy}
    return templates.TemplateResponse(request, name, {**template_context(request), **context},
                                      status_code=status_code, headers=headers)


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(
            c in parts.netloc for c in " ;,'\""):
        return None
    return f"{parts.scheme}://{parts.netloc}"


def not_found(request: Request, what: str = "This page does not exist.") -> Response:
    return page(request, "not_found.html", {"message": what}, status_code=404)


def denied(request: Request, status_code: int, message: str) -> Response:
    """A refusal (403, 429, ...) as a page in the app's look."""
    titles = {403: "Not allowed", 429: "Too many attempts"}
    return page(request, "error.html", {"title": titles.get(status_code, "Refused"),
                                        "message": message}, status_code=status_code)
