"""The mailbox account page: connection state and typed last error in plain words, the neutral
token badge and **Verify token now**, realtime state, and the folders (selected-for-sync toggle,
counts, backfill progress, "Trigger backfill").

Who may do what (enforced here and by the gate, not only by what the page shows):
* every user who can see the mailbox sees the page and may **Verify token now** — the check only
  asks the provider for a fresh access token (and keeps a rotated refresh token); it changes no
  setting, reveals no secret, and is what a user should click when the inbox looks stuck;
* only administrators change folders (selected for sync, trigger backfill).
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from maildesk import mailboxes
from maildesk.push.status import push_status
from maildesk.services import Services
from maildesk.store import mail as mail_store
from maildesk.store import users as user_store
from maildesk.store import views as view_store
from maildesk.store.accounts import AccountRow
from maildesk.web import render
from maildesk.web.access import AccessPolicy, visible_account
from maildesk.web.auth import cached_user, flash
from maildesk.web.folders import folder_label, sidebar
from maildesk.web.token_check import TokenVerifier
from maildesk.web.wording import (
    STATE_SENTENCES,
    error_sentence,
    provider_names,
    realtime_text,
)


@dataclass(frozen=True, slots=True)
class FolderLine:
    id: int
    label: str
    role: str
    total: int
    unread: int
    selected: bool
    backfill: str  # idle, running, done
    backfill_fetched: int


class AccountPages:
    def __init__(self, services: Services, access: AccessPolicy) -> None:
        self.services = services
        self.access = access
        self.verifier = TokenVerifier(services)

    async def _account(self, request: Request) -> AccountRow | None:
        return await visible_account(self.access, self.services.db, request)

    def _back(self, account_id: int, anchor: str = "") -> Response:
        return RedirectResponse(f"/mailboxes/{account_id}/account{anchor}", status_code=303)

    async def page(self, request: Request) -> Response:
        account = await self._account(request)
        if account is None:
            return render.not_found(request, "There is no such mailbox.")
        async with self.services.db.read() as conn:
            mailbox = await view_store.get_mailbox(conn, account.id)
            counted = await view_store.list_folders(conn, account.id)
            stored = {f.id: f for f in await mail_store.list_folders(conn, account.id)}
            shared_with = await user_store.users_of_account(conn, account.id)
        statuses = await push_status(self.services.db, frozenset({account.id}))
        status = next((s for s in statuses if s.provider == account.provider.value), None)
        lines = []
        for f in sidebar(counted):
            row = stored.get(f.id)
            if row is None:
                continue
            backfill = ("done" if row.backfill_done else
                        "running" if row.backfill_requested else "idle")
            lines.append(FolderLine(f.id, f.label, f.role, f.total, f.unread, row.selected,
                                    backfill, row.backfill_fetched))
        product, org = provider_names(account.provider.value)
        user = cached_user(request)
        origins: tuple[str, ...] = ()
        if user and user.is_admin:
            # Reconnect's form ends at the provider's sign-in page.
            settings = self.services.settings
            target = (settings.google_authorize_url if account.provider.value == "gmail"
                      else settings.microsoft_authority_url)
            found = render.origin_of(target)
            origins = (found,) if found else ()
        return render.page(request, "account.html", {
            "account": account,
            "mailbox": mailbox,
            "folders": sidebar(counted),
            "current_folder_id": None,
            "folder_lines": lines,
            "product": product,
            "org": org,
            "state_sentence": STATE_SENTENCES.get(account.state.value, ""),
            "error_sentence": (error_sentence(account.last_error_kind, account.provider.value)
                               if account.last_error else ""),
            "realtime": realtime_text(status, account.provider.value,
                                      self.services.settings.poll_interval / 60),
            "token_stored": bool(account.refresh_token_enc),
            "shared_with": shared_with,
            "is_admin": bool(user and user.is_admin),
            "now": self.services.clock.now(),
            "folder_label": folder_label,
        }, form_origins=origins)

    async def verify(self, request: Request) -> Response:
        account = await self._account(request)
        if account is None:
            return render.not_found(request, "There is no such mailbox.")
        outcome = await self.verifier.verify(account)
        flash(request, outcome.level, outcome.message)
        return self._back(account.id, "#token")

    async def folder_selected(self, request: Request) -> Response:
        account = await self._account(request)
        if account is None:
            return render.not_found(request, "There is no such mailbox.")
        form = await request.form()
        selected = form.get("selected") == "1"
        folder_id = int(request.path_params["folder_id"])
        async with self.services.db.transaction() as conn:
            found = await mail_store.set_folder_selected(conn, account.id, folder_id, selected)
        if not found:
            return render.not_found(request, "There is no such folder in this mailbox.")
        flash(request, "success", "Folder " + ("selected for sync." if selected
                                               else "no longer selected for sync."))
        return self._back(account.id, f"#folder-{folder_id}")

    async def folder_backfill(self, request: Request) -> Response:
        account = await self._account(request)
        if account is None:
            return render.not_found(request, "There is no such mailbox.")
        folder_id = int(request.path_params["folder_id"])
        async with self.services.db.transaction() as conn:
            mine = {f.id: f for f in await mail_store.list_folders(conn, account.id)}
            if folder_id not in mine:
                return render.not_found(request, "There is no such folder in this mailbox.")
            await mail_store.request_folder_backfill(conn, folder_id)
        await mailboxes.request_sync(self.services, account.id, reason="backfill")
        flash(request, "success", f"Backfill of “{mine[folder_id].name}” requested: older mail "
              "of this folder is fetched in the background, a few pages per run.")
        return self._back(account.id, f"#folder-{folder_id}")
