"""Administrator pages: users (create, share mailboxes, reset a password) and scheduled jobs.

Every route here is mounted through ``Gate.page(..., admin=True)`` / ``Gate.action(...,
admin=True)``: a signed-in user who is not an administrator gets 403, whatever the navigation
shows.
"""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from maildesk.errors import InputError
from maildesk.passwords import MIN_LENGTH, hash_password
from maildesk.services import Services
from maildesk.store import accounts as account_store
from maildesk.store import jobs as job_store
from maildesk.store import users as user_store
from maildesk.store import views as view_store
from maildesk.web import render
from maildesk.web.auth import Sessions, cached_user, flash
from maildesk.web.wording import sentence


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


class AdminPages:
    def __init__(self, services: Services, sessions: Sessions) -> None:
        self.services = services
        self.sessions = sessions

    # ------------------------------------------------------------------ users
    async def users(self, request: Request) -> Response:
        return await self._users_page(request)

    async def _users_page(self, request: Request, *, error: str = "", email: str = "",
                          status_code: int = 200) -> Response:
        async with self.services.db.read() as conn:
            found = await user_store.list_all(conn)
            shared = {u.id: len(await user_store.shared_accounts(conn, u.id)) for u in found}
        return render.page(request, "admin_users.html", {
            "users": found, "shared": shared, "error": error, "email": email,
            "min_length": MIN_LENGTH,
        }, status_code=status_code)

    async def create_user(self, request: Request) -> Response:
        form = await request.form()
        email = _text(form, "email").strip().lower()
        password = _text(form, "password")
        is_admin = _text(form, "role") == "admin"
        error = ""
        if "@" not in email or len(email) > 320:
            error = "Enter the new user's email address."
        elif len(password) < MIN_LENGTH:
            error = f"The password must have at least {MIN_LENGTH} characters."
        if not error:
            try:
                async with self.services.db.transaction() as conn:
                    user_id = await user_store.create(
                        conn, email=email, password_hash=hash_password(password),
                        is_admin=is_admin, now=self.services.clock.now())
            except InputError as exc:
                error = sentence(exc.message)
        if error:
            return await self._users_page(request, error=error, email=email, status_code=400)
        flash(request, "success", f"Created {'administrator' if is_admin else 'user'} {email}."
              + ("" if is_admin else " Choose the mailboxes to share with them below."))
        return RedirectResponse(f"/admin/users/{user_id}", status_code=303)

    async def user(self, request: Request) -> Response:
        user_id = int(request.path_params["user_id"])
        async with self.services.db.read() as conn:
            found = await user_store.get(conn, user_id)
            if found is None:
                return render.not_found(request, "There is no such user.")
            shared = await user_store.shared_accounts(conn, user_id)
            mailboxes = await view_store.list_mailboxes(conn, None)
        return render.page(request, "admin_user.html", {
            "user": found, "shared": shared, "mailboxes": mailboxes, "min_length": MIN_LENGTH,
        })

    async def share(self, request: Request) -> Response:
        user_id = int(request.path_params["user_id"])
        form = await request.form()
        wanted = frozenset(int(v) for v in form.getlist("account") if isinstance(v, str)
                           and v.isdigit())
        async with self.services.db.transaction() as conn:
            found = await user_store.get(conn, user_id)
            if found is None:
                return render.not_found(request, "There is no such user.")
            await user_store.set_shared_accounts(conn, user_id, wanted)
            count = len(await user_store.shared_accounts(conn, user_id))
        note = " (administrators see every mailbox anyway)" if found.is_admin else ""
        flash(request, "success", f"{found.email} now has {count} shared "
              f"mailbox{'' if count == 1 else 'es'}{note}.")
        return RedirectResponse(f"/admin/users/{user_id}", status_code=303)

    async def reset_password(self, request: Request) -> Response:
        user_id = int(request.path_params["user_id"])
        form = await request.form()
        password = _text(form, "password")
        if len(password) < MIN_LENGTH:
            flash(request, "error", f"The password must have at least {MIN_LENGTH} characters.")
            return RedirectResponse(f"/admin/users/{user_id}", status_code=303)
        async with self.services.db.transaction() as conn:
            if await user_store.get(conn, user_id) is None:
                return render.not_found(request, "There is no such user.")
            await user_store.set_password(conn, user_id, hash_password(password))
            fresh = await user_store.get(conn, user_id)
        me = cached_user(request)
        if fresh is not None and me is not None and me.id == user_id:
            self.sessions.refresh(request, fresh)
        flash(request, "success", "Password set. Every session of that user signed in with the "
              "old password has ended.")
        return RedirectResponse(f"/admin/users/{user_id}", status_code=303)

    # ------------------------------------------------------------------ jobs
    async def jobs(self, request: Request) -> Response:
        async with self.services.db.read() as conn:
            runs = await job_store.latest(conn)
            emails = {a.id: a.email for a in await account_store.list_all(conn)}
        return render.page(request, "admin_jobs.html", {
            "runs": runs, "emails": emails, "now": self.services.clock.now(),
        })
