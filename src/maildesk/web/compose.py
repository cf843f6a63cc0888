"""Compose, reply and forward in the UI, and "Try sending again" for a message that failed.

The sending itself is ``send/service.py``; this is the surface around it:

* the form (To, Cc, Bcc, Subject, text), prefilled by ``service.prepare`` for Reply, Reply all
  and Forward (``?mode=reply&message=ID``);
* after Send, an honest report as a one-time message on the page the message is on now: sent
  (the Sent folder, where MailDesk's own entry shows until the provider's copy replaces it),
  will retry (with the reason and when), or failed (the kept Draft, with the reason and
  **Try sending again**). A refused form is shown again with everything typed into it;
* access: one sends only from a mailbox one may see (shared with one, or any for an
  administrator); any other is answered like a missing mailbox (404), as every mailbox page is.
  CSRF is checked by the gate on every POST.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from maildesk import sending
from maildesk.domain.compose import ComposeMode, Draft
from maildesk.domain.mail import FolderRole
from maildesk.errors import InputError, MailDeskError, NotFound
from maildesk.send import service
from maildesk.send.service import SendOutcome
from maildesk.services import Services
from maildesk.store import views as view_store
from maildesk.store.views import MailboxView
from maildesk.web import render
from maildesk.web.access import AccessPolicy, visible_mailbox
from maildesk.web.auth import cached_user, flash
from maildesk.web.folders import sidebar

HEADINGS = {
    ComposeMode.NEW: "New message", ComposeMode.REPLY: "Reply",
    ComposeMode.REPLY_ALL: "Reply all", ComposeMode.FORWARD: "Forward",
}
_FIELDS = ("to", "cc", "bcc", "subject", "text")


def split_addresses(value: str) -> tuple[str, ...]:
    """A To/Cc/Bcc field as typed: addresses separated by commas, semicolons or lines; a comma
    inside a quoted name (``"Doe, Jane" <jane@example.org>``) or ``<…>`` does not split.

    Nothing is dropped or corrected here: the sending core checks each address and names the
    field of one it refuses."""
    parts: list[str] = []
    current: list[str] = []
    quoted = angle = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "<" and not quoted:
            angle = True
        elif ch == ">" and not quoted:
            angle = False
        elif ch in ",;\r\n" and not quoted and not angle:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return tuple(p.strip() for p in parts if p.strip())


def _short(text: str, limit: int = 300) -> str:
    """Flashes live in the session cookie: keep them well under its size limit."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mode(value: str | None) -> ComposeMode | None:
    try:
        return ComposeMode(value or ComposeMode.NEW.value)
    except ValueError:
        return None


def _message_id(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


class ComposePages:
    def __init__(self, services: Services, access: AccessPolicy) -> None:
        self.services = services
        self.access = access

    async def _mailbox(self, request: Request) -> MailboxView | None:
        return await visible_mailbox(self.access, self.services.db, request)

    async def _page(self, request: Request, mailbox: MailboxView, fields: dict[str, str],
                    mode: ComposeMode, source: int | None, *, error: str | None = None,
                    status_code: int = 200) -> Response:
        async with self.services.db.read() as conn:
            folders = await view_store.list_folders(conn, mailbox.id)
        return render.page(request, "compose.html", {
            "mailbox": mailbox,
            "folders": sidebar(folders),
            "current_folder_id": None,
            "heading": HEADINGS[mode],
            "mode": mode.value,
            "source": source,
            "fields": fields,
            "error": error,
        }, status_code=status_code)

    async def form(self, request: Request) -> Response:
        """The form: empty, or prefilled for a reply or forward of ``?message=ID``."""
        mailbox = await self._mailbox(request)
        if mailbox is None:
            return render.not_found(request, "There is no such mailbox.")
        mode = _mode(request.query_params.get("mode"))
        source = _message_id(request.query_params.get("message"))
        if mode is None or (mode is not ComposeMode.NEW and source is None):
            return render.not_found(request, "There is no such message to answer.")
        if mode is ComposeMode.NEW:
            draft = Draft(to=())
        else:
            try:
                draft = await service.prepare(self.services, account_id=mailbox.id, mode=mode,
                                              source_message_id=source)
            except NotFound:
                return render.not_found(request, "This message does not exist (any more).")
        fields = {"to": ", ".join(draft.to), "cc": ", ".join(draft.cc),
                  "bcc": ", ".join(draft.bcc), "subject": draft.subject, "text": draft.text}
        return await self._page(request, mailbox, fields, mode,
                                source if mode is not ComposeMode.NEW else None)

    async def submit(self, request: Request) -> Response:
        """Send; then report on the page the message is on now (or show the form again)."""
        mailbox = await self._mailbox(request)
        if mailbox is None:
            return render.not_found(request, "There is no such mailbox.")
        form = await request.form()
        fields = {name: str(form.get(name) or "") for name in _FIELDS}
        fields["text"] = fields["text"].replace("\r\n", "\n")  # browsers send CRLF lines
        mode = _mode(str(form.get("mode") or ""))
        source = _message_id(str(form.get("source") or ""))
        if mode is None or (mode is not ComposeMode.NEW and source is None):
            return render.not_found(request, "There is no such message to answer.")
        draft = Draft(
            to=split_addresses(fields["to"]), cc=split_addresses(fields["cc"]),
            bcc=split_addresses(fields["bcc"]), subject=fields["subject"].strip(),
            text=fields["text"], mode=mode,
            source_message_id=source if mode is not ComposeMode.NEW else None,
        )
        user = cached_user(request)
        try:
            outcome = await service.send(self.services, account_id=mailbox.id, draft=draft,
                                         user_id=user.id if user else None)
        except MailDeskError as exc:
            # Nothing was queued: the form comes back with everything in it and the reason.
            status = 404 if isinstance(exc, NotFound) else 400 if isinstance(
                exc, InputError) else 503
            return await self._page(request, mailbox, fields, mode, draft.source_message_id,
                                    error=str(exc), status_code=status)
        return await self._report(request, mailbox.id, outcome, draft.subject)

    async def resend(self, request: Request) -> Response:
        """"Try sending again" on a message that failed (the same message, same Message-ID)."""
        mailbox = await self._mailbox(request)
        if mailbox is None:
            return render.not_found(request, "There is no such mailbox.")
        outbox_id = int(request.path_params["outbox_id"])
        try:
            item = await service.outbox_item(self.services, outbox_id)
        except NotFound:
            item = None
        if item is None or item.account_id != mailbox.id:
            return render.not_found(request, "There is no such message to send.")
        try:
            outcome = await service.resend(self.services, outbox_id=outbox_id)
        except MailDeskError as exc:
            # Refused before any attempt (e.g. it was sent meanwhile, or is being sent now).
            text = _short(str(exc))
            flash(request, "warning", text[:1].upper() + text[1:].rstrip(".") + ".")
            back = (f"/mailboxes/{mailbox.id}/messages/{item.local_message_id}"
                    if item.local_message_id else f"/mailboxes/{mailbox.id}")
            return RedirectResponse(back, status_code=303)
        return await self._report(request, mailbox.id, outcome, item.subject)

    async def _report(self, request: Request, account_id: int, outcome: SendOutcome,
                      subject: str) -> Response:
        title = f"“{_short(subject, 80)}”" if subject else "The message"
        reason = _short(outcome.error or "no reason given")
        async with self.services.db.read() as conn:
            folders = await view_store.list_folders(conn, account_id)
        sent_folder = next((f for f in folders if f.role is FolderRole.SENT), None)
        in_sent = f"/mailboxes/{account_id}" + (f"?folder={sent_folder.id}" if sent_folder
                                                 else "")
        if outcome.state == sending.SENT:
            flash(request, "success", f"{title} was sent. It is in Sent now; the provider's "
                  "own copy takes its place after the next sync.")
            return RedirectResponse(in_sent, status_code=303)
        if outcome.state == sending.RETRYING:
            again = sending.when(await sending.next_attempt(self.services, outcome))
            flash(request, "warning", f"{title} is not sent yet: {reason}. MailDesk "
                  f"keeps it and tries again automatically (next attempt {again}).")
            return RedirectResponse(in_sent, status_code=303)
        flash(request, "error", f"{title} was not sent: {reason}. It is kept in Drafts "
              "— nothing is lost. Fix the problem, then use “Try sending again”.")
        if outcome.local_message_id is not None:
            return RedirectResponse(
                f"/mailboxes/{account_id}/messages/{outcome.local_message_id}", status_code=303)
        return RedirectResponse(f"/mailboxes/{account_id}", status_code=303)
