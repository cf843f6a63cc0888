"""The realtime assistants (Gmail, Outlook) and the realtime test timeline.

**Gmail** (one screen, four steps): the Google Cloud settings (project id, topic, audience,
signer); *preflight* — a real GET of ``MAILDESK_BASE_URL/maildesk/push/gmail``, which must
answer 405 (the route is POST-only), proving the address reaches this server; *validation* —
the settings are checked and normalised, the audience re-aligned to the push URL when empty or
different, and saved with the signer (an active watch's webhook accepts the new values at
once); *Register* — ``PushManager.enable``.

**Outlook**: no inputs. The mailbox, the read-only webhook URL, the readiness check with its
reason (``OutlookPush.check_ready``, a real Graph call); *Register Subscription* only when
ready; then the subscription id and expiration.

**Realtime test** (both): *Start test* records a marker; the six checkpoints are read by
``push/timeline.py``; *Re-check* reloads, *Finish* closes the test. Checkpoint 6 comes from the
browser: ``inbox.js`` reports a live-arrived row it rendered (``visible``), any user who can see
the mailbox may report it, and it is recorded only while a test runs.

Everything here but ``visible`` is for administrators (the gate enforces it).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from maildesk.domain.accounts import ProviderKind
from maildesk.domain.push import PushState
from maildesk.errors import InputError, MailDeskError, NotReady
from maildesk.push import timeline
from maildesk.push.manager import gmail_push_settings
from maildesk.push.outlook import webhook_urls
from maildesk.push.status import push_status
from maildesk.services import Services
from maildesk.store import push as push_store
from maildesk.store.accounts import AccountRow
from maildesk.web import render
from maildesk.web.access import AccessPolicy, may_see, visible_account
from maildesk.web.auth import flash
from maildesk.web.wording import error_sentence, provider_names, realtime_text, sentence

log = logging.getLogger(__name__)

GMAIL_PUSH_PATH = "/maildesk/push/gmail"
PREFLIGHT_TIMEOUT = 5.0
_SPLIT = re.compile(r"[\s,;]+")

Probe = Callable[[str], Awaitable[int]]


async def http_probe(url: str) -> int:
    """The status a GET of ``url`` answers (no redirects followed; short timeouts)."""
    async with httpx.AsyncClient(timeout=PREFLIGHT_TIMEOUT, follow_redirects=False) as client:
        return (await client.get(url)).status_code


def gmail_push_url(base_url: str) -> str:
    return base_url.rstrip("/") + GMAIL_PUSH_PATH


def align_audience(given: str, push_url: str) -> tuple[str, str]:
    """(audience to save, a note for the administrator or "")."""
    given = given.strip()
    if not given:
        return push_url, f"The audience was empty: set to the push URL {push_url}."
    if given != push_url:
        return push_url, (f"The audience was re-aligned from {given} to the push URL "
                          f"{push_url}; set the same audience on the Pub/Sub push subscription.")
    return given, ""


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


class RealtimePages:
    def __init__(self, services: Services, access: AccessPolicy,
                 probe: Probe = http_probe) -> None:
        self.services = services
        self.access = access
        self.probe = probe

    async def _account(self, request: Request) -> AccountRow | None:
        return await visible_account(self.access, self.services.db, request)

    @staticmethod
    def _back(account_id: int, anchor: str = "") -> Response:
        return RedirectResponse(f"/mailboxes/{account_id}/realtime{anchor}", status_code=303)

    # ------------------------------------------------------------------ the page
    async def page(self, request: Request, *, form: dict[str, str] | None = None,
                   error: str = "", status_code: int = 200) -> Response:
        account = await self._account(request)
        if account is None or account.provider not in (ProviderKind.GMAIL, ProviderKind.OUTLOOK):
            return render.not_found(request, "There is no such mailbox with realtime push.")
        provider = account.provider
        async with self.services.db.read() as conn:
            row = await push_store.get(conn, account.id, provider)
            run = await timeline.current_test(conn, account.id)
            seen = await timeline.observe(conn, run) if run else None
        statuses = await push_status(self.services.db, frozenset({account.id}))
        status = next((s for s in statuses if s.provider == provider.value), None)
        now = self.services.clock.now()
        product, org = provider_names(provider.value)
        settings = self.services.settings
        context: dict[str, Any] = {
            "account": account, "product": product, "org": org,
            "realtime": realtime_text(status, provider.value, settings.poll_interval / 60),
            "row": row,
            "active": row is not None and row.sub.state in (PushState.ACTIVE,
                                                            PushState.RECOVERING),
            "test": (timeline.evaluate(provider.value, run.started_at, seen, now,
                                       finished_at=run.finished_at)
                     if run is not None and seen is not None else None),
            "error": error,
        }
        if provider is ProviderKind.GMAIL:
            push_url = gmail_push_url(settings.base_url)
            saved = dict(row.settings) if row is not None else {}
            context.update(
                push_url=push_url,
                form=form or {
                    "project": str(saved.get("project", "")),
                    "topic": str(saved.get("topic", "")),
                    "audience": str(saved.get("audience") or push_url),
                    "signer": " ".join(saved.get("signers", [])),
                },
                saved=bool(saved.get("topic")),
            )
            return render.page(request, "realtime_gmail.html", context,
                               status_code=status_code)
        ready, reason = await self._outlook_ready(account)
        context.update(webhook_url=webhook_urls(settings.base_url)[0], ready=ready,
                       reason=reason)
        return render.page(request, "realtime_outlook.html", context, status_code=status_code)

    async def _outlook_ready(self, account: AccountRow) -> tuple[bool, str]:
        adapter = self.services.push.adapters.get(ProviderKind.OUTLOOK)
        if adapter is None:
            return False, "Outlook push is not available on this server."
        try:
            await adapter.check_ready(account)
        except NotReady as exc:
            return False, sentence(exc.message)
        except MailDeskError as exc:
            return False, f"{error_sentence(exc.kind, 'outlook')} ({exc.message})"
        return True, ""

    # ------------------------------------------------------------------ Gmail steps
    async def preflight(self, request: Request) -> Response:
        account = await self._account(request)
        if account is None:
            return render.not_found(request, "There is no such mailbox.")
        url = gmail_push_url(self.services.settings.base_url)
        try:
            answer = await self.probe(url)
        except httpx.HTTPError as exc:
            flash(request, "error", f"Preflight failed: {url} could not be reached "
                  f"({type(exc).__name__}). Pub/Sub cannot deliver there either: check "
                  "MAILDESK_BASE_URL, DNS and any firewall or reverse proxy in front of "
                  "MailDesk.")
            return self._back(account.id, "#preflight")
        if answer == 405:
            flash(request, "success", f"Preflight passed: {url} answered HTTP 405 to a GET, "
                  "as the POST-only push route should — Pub/Sub can reach this server there.")
        else:
            flash(request, "warning", f"Preflight failed: {url} answered HTTP {answer} to a "
                  "GET instead of 405, so it is not MailDesk's push route. Check "
                  "MAILDESK_BASE_URL and the reverse proxy's routing.")
        return self._back(account.id, "#preflight")

    async def validate(self, request: Request) -> Response:
        account = await self._account(request)
        if account is None or account.provider is not ProviderKind.GMAIL:
            return render.not_found(request, "There is no such Gmail mailbox.")
        form = await request.form()
        given = {k: _text(form, k).strip() for k in ("project", "topic", "audience", "signer")}
        push_url = gmail_push_url(self.services.settings.base_url)
        audience, note = align_audience(given["audience"], push_url)
        try:
            settings = gmail_push_settings(project=given["project"], topic=given["topic"],
                                           audience=audience,
                                           signers=_SPLIT.split(given["signer"]))
        except InputError as exc:
            return await self.page(request, form={**given, "audience": audience},
                                   error=sentence(exc.message),
                                   status_code=400)
        async with self.services.db.transaction() as conn:
            row = await push_store.get(conn, account.id, ProviderKind.GMAIL)
            kept = {k: v for k, v in (row.settings if row else {}).items()
                    if k == push_store.LIFECYCLE_KEY}
            values: dict[str, Any] = {"settings": {**kept, **settings}}
            if row is None or row.sub.state is PushState.STOPPED:
                values["state"] = PushState.PENDING.value
            await push_store.upsert(conn, account_id=account.id, provider=ProviderKind.GMAIL,
                                    now=self.services.clock.now(), **values)
        # The webhook caches the accepted audiences/signers: the new ones count at once.
        self.services.gmail_webhook.invalidate()
        signers = ", ".join(settings["signers"])
        flash(request, "success", f"Settings valid and saved: topic {settings['topic']}, "
              f"audience {settings['audience']}, signer {signers}." + (f" {note}" if note
                                                                       else ""))
        return self._back(account.id, "#settings")

    async def register(self, request: Request) -> Response:
        account = await self._account(request)
        if account is None or account.provider not in (ProviderKind.GMAIL, ProviderKind.OUTLOOK):
            return render.not_found(request, "There is no such mailbox with realtime push.")
        provider = account.provider
        async with self.services.db.read() as conn:
            row = await push_store.get(conn, account.id, provider)
        settings: dict[str, Any] = {}
        if provider is ProviderKind.GMAIL:
            settings = {k: v for k, v in (row.settings if row else {}).items()
                        if k in ("project", "topic", "audience", "signers")}
            if "topic" not in settings:
                flash(request, "error", "Validate the Google Cloud settings first.")
                return self._back(account.id, "#settings")
        thing = "watch" if provider is ProviderKind.GMAIL else "subscription"
        try:
            registered = await self.services.push.enable(account.id, provider, settings)
        except NotReady as exc:
            flash(request, "error", f"The {thing} was not registered: {exc.message}.")
            return self._back(account.id, "#register")
        except MailDeskError as exc:
            flash(request, "error", f"The {thing} was not registered. "
                  f"{error_sentence(exc.kind, provider.value)} ({exc.message})")
            return self._back(account.id, "#register")
        expires = render.long_date(registered.sub.expiration) if registered.sub.expiration else "?"
        flash(request, "success", f"{thing.capitalize()} registered: "
              f"{registered.sub.subscription_id}, expires {expires}. Now run the realtime test.")
        return self._back(account.id, "#register")

    # ------------------------------------------------------------------ the test
    async def start_test(self, request: Request) -> Response:
        account = await self._account(request)
        if account is None:
            return render.not_found(request, "There is no such mailbox.")
        async with self.services.db.transaction() as conn:
            await timeline.start_test(conn, account.id, account.provider.value,
                                      self.services.clock.now())
        flash(request, "success", f"Realtime test started. Send a test email to {account.email} "
              "from a safe sender, keep the mailbox's inbox open in another tab, wait a few "
              "seconds, and click Re-check.")
        return self._back(account.id, "#test")

    async def finish_test(self, request: Request) -> Response:
        account = await self._account(request)
        if account is None:
            return render.not_found(request, "There is no such mailbox.")
        async with self.services.db.transaction() as conn:
            run = await timeline.current_test(conn, account.id)
            if run is not None and run.finished_at is None:
                seen = await timeline.observe(conn, run)
                now = self.services.clock.now()
                result = timeline.evaluate(run.provider, run.started_at, seen, now)
                await timeline.finish_test(conn, run, now)
                flash(request, "success" if result.complete else "warning",
                      f"Realtime test finished: {result.observed} of 6 checkpoints observed.")
        return self._back(account.id, "#test")

    async def visible(self, request: Request) -> Response:
        """Checkpoint 6, reported by ``inbox.js``: 204 whether or not it was recorded."""
        account_id = int(request.path_params["account_id"])
        if not may_see(await self.access.visible_accounts(request), account_id):
            return Response(status_code=404)
        form = await request.form()
        raw = _text(form, "message_id")
        if not raw.isdigit():
            return Response(status_code=400)
        async with self.services.db.read() as conn:
            run = await timeline.current_test(conn, account_id)
        if run is None or run.finished_at is not None:
            return Response(status_code=204)  # no test running: nothing to write
        async with self.services.db.transaction() as conn:
            await timeline.record_visible(conn, account_id, int(raw), self.services.clock.now())
        return Response(status_code=204)
