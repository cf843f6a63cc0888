"""**Reconnect Gmail / Outlook** (administrators): the OAuth authorization-code flow with
``state`` and PKCE (S256) against the configured provider.

1. ``POST …/account/reconnect`` — preflight: the provider's app credentials must be configured
   (the refusal names exactly the missing ``MAILDESK_*`` settings). Then a random ``state`` and
   PKCE verifier are made; the verifier stays on the server (in this process, for 10 minutes),
   the session carries only the ``state``, which binds the flow to this browser. 303 to the
   provider's sign-in.
2. ``GET /oauth/callback?code&state`` — the ``state`` must be the session's and still pending
   (single use); the code is redeemed with the verifier at ``MAILDESK_BASE_URL/oauth/callback``
   (the redirect URI registered with the app), and ``mailboxes.reconnect_gmail_grant`` /
   ``reconnect_outlook`` store the new refresh token; sync resumes and a failed push
   registration is retried at once.

Pending flows live in memory: exact for ``maildesk serve`` (one process); with several web
processes behind a balancer the callback must reach the process that started the flow.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from maildesk import mailboxes
from maildesk.domain.accounts import GMAIL_SCOPE_FULL, ProviderKind
from maildesk.errors import MailDeskError, NotFound, OAuthNotConfigured
from maildesk.providers.microsoft_oauth import new_pkce_verifier, pkce_challenge
from maildesk.services import Services
from maildesk.store import accounts as account_store
from maildesk.store.accounts import AccountRow
from maildesk.web import render
from maildesk.web.auth import cached_user, flash
from maildesk.web.wording import provider_names

log = logging.getLogger(__name__)

CALLBACK_PATH = "/oauth/callback"
FLOW_LIFETIME = timedelta(minutes=10)
_MAX_PENDING = 1000
_SESSION_KEY = "oauth_state"


@dataclass(frozen=True, slots=True)
class _Flow:
    account_id: int
    provider: ProviderKind
    user_id: int
    verifier: str
    expires_at: datetime


class ReconnectPages:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._pending: OrderedDict[str, _Flow] = OrderedDict()

    @property
    def redirect_uri(self) -> str:
        return self.services.settings.base_url.rstrip("/") + CALLBACK_PATH

    async def start(self, request: Request) -> Response:
        account_id = int(request.path_params["account_id"])
        try:
            async with self.services.db.read() as conn:
                account = await account_store.get(conn, account_id)
        except NotFound:
            return render.not_found(request, "There is no such mailbox.")
        back = RedirectResponse(f"/mailboxes/{account_id}/account#token", status_code=303)
        product, org = provider_names(account.provider.value)
        state = secrets.token_urlsafe(32)
        verifier = new_pkce_verifier()
        try:
            url = self._authorize_url(account, state, pkce_challenge(verifier))
        except OAuthNotConfigured as exc:
            flash(request, "error", f"Reconnect cannot start: the {org} OAuth app is not "
                  f"configured on this server. Missing: {', '.join(exc.fields)}.")
            return back
        except MailDeskError as exc:
            flash(request, "error", f"Reconnect cannot start: {exc.message}.")
            return back
        user = cached_user(request)
        now = self.services.clock.now()
        self._prune(now)
        self._pending[state] = _Flow(account.id, account.provider, user.id if user else 0,
                                     verifier, now + FLOW_LIFETIME)
        while len(self._pending) > _MAX_PENDING:
            self._pending.popitem(last=False)
        request.session[_SESSION_KEY] = state
        log.info("account %s: %s reconnect started", account.id, product)
        return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})

    def _authorize_url(self, account: AccountRow, state: str, challenge: str) -> str:
        connectors = self.services.connectors
        if account.provider is ProviderKind.GMAIL:
            return connectors.google_oauth.authorize_url(
                self.services.settings.google_authorize_url, state=state,
                code_challenge=challenge, redirect_uri=self.redirect_uri,
                scopes=(GMAIL_SCOPE_FULL,), login_hint=account.email)
        if account.provider is ProviderKind.OUTLOOK:
            oauth = connectors.microsoft_oauth(account.tenant)
            oauth.check_configured()
            return oauth.authorize_url(state, challenge, self.redirect_uri,
                                       login_hint=account.email)
        raise MailDeskError(f"{account.provider} mailboxes are not connected over OAuth")

    def _prune(self, now: datetime) -> None:
        for key in [k for k, f in self._pending.items() if f.expires_at <= now]:
            del self._pending[key]

    async def callback(self, request: Request) -> Response:
        state = request.query_params.get("state", "")
        expected = request.session.pop(_SESSION_KEY, None)
        self._prune(self.services.clock.now())
        flow = self._pending.get(state)
        user = cached_user(request)
        if (not isinstance(expected, str) or not state or flow is None
                or not hmac.compare_digest(state.encode(), expected.encode())
                or user is None or flow.user_id != user.id):
            return render.denied(request, 400, "This sign-in answer does not belong to a "
                                 "reconnect started here (or it expired). Start the reconnect "
                                 "again from the mailbox's account page.")
        del self._pending[state]
        back = RedirectResponse(f"/mailboxes/{flow.account_id}/account#token", status_code=303)
        product, org = provider_names(flow.provider.value)
        error = request.query_params.get("error")
        code = request.query_params.get("code", "")
        if error or not code:
            flash(request, "warning", f"The {org} sign-in did not complete "
                  f"({error or 'no code returned'}); the mailbox was not changed.")
            return back
        connectors = self.services.connectors
        try:
            if flow.provider is ProviderKind.GMAIL:
                grant = await connectors.google_oauth.exchange_code(code, self.redirect_uri,
                                                                    flow.verifier)
                await mailboxes.reconnect_gmail_grant(self.services, flow.account_id, grant)
            else:
                async with self.services.db.read() as conn:
                    account = await account_store.get(conn, flow.account_id)
                oauth = connectors.microsoft_oauth(account.tenant)
                grant = await oauth.exchange_code(code, self.redirect_uri, flow.verifier)
                await mailboxes.reconnect_outlook(self.services, flow.account_id, grant)
        except MailDeskError as exc:
            flash(request, "error", f"Reconnect failed: {exc.message}")
            return back
        log.info("account %s: %s reconnected", flow.account_id, product)
        flash(request, "success", f"{product} reconnected: a new token is stored, sync resumes "
              "now, and realtime push resumes with it.")
        return back
