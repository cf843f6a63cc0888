"""Sign-in, sign-out and changing one's own password."""

from __future__ import annotations

import functools
import logging
import math

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from maildesk.errors import NotFound
from maildesk.passwords import MIN_LENGTH, hash_password, verify_password
from maildesk.services import Services
from maildesk.store import users as user_store
from maildesk.web import render
from maildesk.web.auth import Sessions, SignInLimiter, cached_user, flash, safe_next

log = logging.getLogger(__name__)

# Verified against when the address is unknown, so a wrong address costs as long as a wrong
# password and the timing says nothing about which addresses exist.
@functools.cache
def _dummy_hash() -> str:
    return hash_password("maildesk-no-such-user")


def _field(form: object, name: str) -> str:
    value = form.get(name) if hasattr(form, "get") else None
    return value if isinstance(value, str) else ""


class SignInPages:
    def __init__(self, services: Services, sessions: Sessions, limiter: SignInLimiter) -> None:
        self.services = services
        self.sessions = sessions
        self.limiter = limiter

    async def form(self, request: Request) -> Response:
        if await self.sessions.user(request) is not None:
            return RedirectResponse(safe_next(request.query_params.get("next")), 303)
        return self._page(request, next_url=safe_next(request.query_params.get("next")))

    def _page(self, request: Request, *, next_url: str, email: str = "", error: str = "",
              status_code: int = 200) -> Response:
        return render.page(request, "signin.html", {
            "next_url": next_url, "email": email, "error": error,
        }, status_code=status_code)

    async def submit(self, request: Request) -> Response:
        form = await request.form()
        email = _field(form, "email").strip().lower()
        password = _field(form, "password")
        next_url = safe_next(_field(form, "next"))
        wait = self.limiter.retry_after(email)
        if wait is not None:
            minutes = max(1, math.ceil(wait / 60))
            log.warning("sign-in refused: too many failed attempts for one address")
            return self._page(request, next_url=next_url, email=email, status_code=429,
                              error=f"Too many failed sign-ins for this address. Try again in "
                                    f"{minutes} minute{'' if minutes == 1 else 's'}.")
        try:
            async with self.services.db.read() as conn:
                user = await user_store.by_email(conn, email)
        except NotFound:
            user = None
        ok = verify_password(user.password_hash if user else _dummy_hash(), password)
        if user is None or not ok:
            self.limiter.failed(email)
            log.info("sign-in failed")
            return self._page(request, next_url=next_url, email=email, status_code=400,
                              error="Wrong email address or password.")
        self.limiter.succeeded(email)
        self.sessions.sign_in(request, user)
        log.info("user %s signed in", user.id)
        return RedirectResponse(next_url, status_code=303)

    async def sign_out(self, request: Request) -> Response:
        self.sessions.sign_out(request)
        flash(request, "info", "You are signed out.")
        return RedirectResponse("/signin", status_code=303)

    # ------------------------------------------------------------------ own password
    async def password_form(self, request: Request) -> Response:
        return render.page(request, "password.html", {"error": "", "min_length": MIN_LENGTH})

    async def change_password(self, request: Request) -> Response:
        user = cached_user(request)
        assert user is not None  # the gate let a signed-in user through
        form = await request.form()
        current, new = _field(form, "current_password"), _field(form, "new_password")
        error = ""
        if not verify_password(user.password_hash, current):
            error = "The current password is not right."
        elif len(new) < MIN_LENGTH:
            error = f"The new password must have at least {MIN_LENGTH} characters."
        elif new != _field(form, "confirm_password"):
            error = "The two new passwords differ."
        if error:
            return render.page(request, "password.html", {"error": error,
                                                          "min_length": MIN_LENGTH},
                               status_code=400)
        async with self.services.db.transaction() as conn:
            await user_store.set_password(conn, user.id, hash_password(new))
            fresh = await user_store.get(conn, user.id)
        assert fresh is not None
        self.sessions.refresh(request, fresh)
        flash(request, "success", "Password changed. Every other session of yours is signed out.")
        return RedirectResponse("/", status_code=303)
