"""IMAP mailboxes in the web UI: the **Add IMAP mailbox** form (administrators) with its
**Test incoming server** / **Test outgoing server** buttons, and on an IMAP mailbox's account
page the same two tests with the stored sign-in plus **Update password** (administrators).

A test shows the stage it reached and one precise reason ("DNS: … does not resolve", "TLS: …
not trusted", "AUTH: the server refused the password", "CAPABILITY: …"), like the CLI and the
API (all three use ``maildesk.imap_mailboxes``). The form's tests work without script (the page
is rendered again with the results; the password is never written back into the page, so it
must be typed again); with script (``static/imap_setup.js``) they run in place and the typed
password stays in its field.

Who may do what: adding and the pre-add tests are for administrators (they make this server
connect anywhere); testing a stored mailbox is for everyone who sees it (like Verify token now:
it uses the stored sign-in, changes nothing and reveals no secret); a new password is for
administrators.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from maildesk import imap_mailboxes
from maildesk.errors import InputError, MailDeskError
from maildesk.imap_mailboxes import CheckReport
from maildesk.services import Services
from maildesk.web import render
from maildesk.web.access import AccessPolicy, visible_account
from maildesk.web.auth import flash
from maildesk.web.wording import sentence

FORM_PATH = "/admin/mailboxes/imap"
# Form fields kept when the page is shown again (never the password or the token).
_KEPT = ("email", "host", "port", "security", "username", "sign_in", "tenant", "smtp_host",
         "smtp_port", "smtp_security", "smtp_username", "sent_copy", "idle_folders")


def _fields(form: FormData) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name in (*_KEPT, "password", "refresh_token"):
        value = form.get(name)
        found[name] = value if isinstance(value, str) else ""
    return found


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _level(report: CheckReport) -> str:
    return "success" if report.ok else "error"


class ImapSetupPages:
    def __init__(self, services: Services, access: AccessPolicy) -> None:
        self.services = services
        self.access = access

    # -- adding ----------------------------------------------------------------------------------

    def _form(self, request: Request, values: dict[str, Any], *, error: str = "",
              checks: list[CheckReport] | tuple[CheckReport, ...] = (),
              status_code: int = 200) -> Response:
        kept = {name: values.get(name, "") for name in _KEPT}
        typed_secret = bool(values.get("password") or values.get("refresh_token"))
        return render.page(request, "imap_setup.html", {
            "values": kept, "error": error, "checks": list(checks),
            "retype": typed_secret and (bool(checks) or bool(error)),
            "describe": imap_mailboxes.describe,
        }, status_code=status_code)

    async def form(self, request: Request) -> Response:
        return self._form(request, {"security": "ssl", "smtp_security": "", "sign_in":
                                    "password", "sent_copy": "auto", "idle_folders": "INBOX"})

    async def test(self, request: Request) -> Response:
        """Test the typed settings (nothing is stored)."""
        form = await request.form()
        values = _fields(form)
        which = form.get("test")
        wanted = which if which in (imap_mailboxes.INCOMING, imap_mailboxes.OUTGOING) else ""
        try:
            if not wanted:
                raise InputError("choose which server to test")
            setup = imap_mailboxes.setup_from_fields(values)
            if wanted == imap_mailboxes.OUTGOING and setup.servers.smtp is None:
                raise InputError("SMTP host: enter the outgoing server to test it")
            checks = await imap_mailboxes.check_setup(
                self.services, setup, incoming=wanted == imap_mailboxes.INCOMING,
                outgoing=wanted == imap_mailboxes.OUTGOING)
        except InputError as exc:
            if _wants_json(request):
                return JSONResponse({"error": sentence(exc.message)}, status_code=400,
                                    headers=render.SECURITY_HEADERS)
            return self._form(request, values, error=sentence(exc.message), status_code=400)
        if _wants_json(request):
            return JSONResponse({"checks": [self._check_json(c) for c in checks]},
                                headers=render.SECURITY_HEADERS)
        return self._form(request, values, checks=checks)

    @staticmethod
    def _check_json(report: CheckReport) -> dict[str, Any]:
        return {**report.to_json(), "title": report.title,
                "line": imap_mailboxes.describe(report.check)}

    async def submit(self, request: Request) -> Response:
        """Add the mailbox: verified first unless "store without testing" is ticked."""
        form = await request.form()
        values = _fields(form)
        verify = form.get("skip_verify") != "1"
        try:
            setup = imap_mailboxes.setup_from_fields(values)
            outcome = await imap_mailboxes.add_imap(self.services, setup, verify=verify)
        except MailDeskError as exc:  # bad input, or a refresh token that cannot be used
            return self._form(request, values, error=sentence(exc.message), status_code=400)
        if outcome.account_id is None:
            failed = outcome.failed
            assert failed is not None
            return self._form(request, values, status_code=400, checks=outcome.checks,
                              error=f"Not added: the {failed.title.lower()} test failed. Fix "
                              "the setting, or tick “store without testing”.")
        note = " It was stored without testing the servers." if not verify else ""
        flash(request, "success", f"Added {setup.email}.{note} The first sync starts now: "
              "the newest mail first, older mail follows in the background.")
        return RedirectResponse(f"/mailboxes/{outcome.account_id}/account", status_code=303)

    # -- a stored mailbox ------------------------------------------------------------------------

    def _back(self, account_id: int) -> Response:
        # No anchor: the result is a message at the top of the page, which must be in view.
        return RedirectResponse(f"/mailboxes/{account_id}/account", status_code=303)

    async def _stored_test(self, request: Request, which: str) -> Response:
        account = await visible_account(self.access, self.services.db, request)
        if account is None:
            return render.not_found(request, "There is no such mailbox.")
        try:
            if which == imap_mailboxes.INCOMING:
                report = await imap_mailboxes.test_incoming(self.services, account)
            else:
                report = await imap_mailboxes.test_outgoing(self.services, account)
        except InputError as exc:
            flash(request, "warning", sentence(exc.message))
            return self._back(account.id)
        flash(request, _level(report), report.sentence())
        return self._back(account.id)

    async def test_incoming(self, request: Request) -> Response:
        return await self._stored_test(request, imap_mailboxes.INCOMING)

    async def test_outgoing(self, request: Request) -> Response:
        return await self._stored_test(request, imap_mailboxes.OUTGOING)

    async def set_password(self, request: Request) -> Response:
        account = await visible_account(self.access, self.services.db, request)
        if account is None:
            return render.not_found(request, "There is no such mailbox.")
        form = await request.form()
        password = form.get("password")
        verify = form.get("skip_verify") != "1"
        try:
            outcome = await imap_mailboxes.set_password(
                self.services, account.id, password if isinstance(password, str) else "",
                verify=verify)
        except InputError as exc:
            flash(request, "error", sentence(exc.message))
            return self._back(account.id)
        if not outcome.stored:
            assert outcome.check is not None
            flash(request, "error", "The new password was not stored: "
                  + outcome.check.sentence())
            return self._back(account.id)
        flash(request, "success", "New password stored. The mailbox syncs again now; realtime "
              "(IDLE) reconnects with it.")
        return self._back(account.id)
