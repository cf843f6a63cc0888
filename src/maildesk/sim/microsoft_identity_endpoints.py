"""The identity platform's HTTP endpoints: ``/{tenant}/oauth2/v2.0/token`` and ``/authorize``.

The token endpoint takes ``refresh_token`` and ``authorization_code`` (PKCE S256) grants; the
authorize endpoint consents at once for the ``login_hint`` user and redirects with the code.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Collection
from urllib.parse import parse_qsl, urlencode

from maildesk.errors import InputError
from maildesk.sim.graph_wire import IDENTITY_JSON, aad_error
from maildesk.sim.microsoft_identity import IdentityRegistry
from maildesk.sim.microsoft_identity_types import (
    ACCESS_TOKEN_SECONDS,
    AadFailure,
    MicrosoftApp,
    MsAccessToken,
)
from maildesk.sim.wire import SimRequest, SimResponse

_NO_STORE = {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}
TENANTS = frozenset({"common", "organizations", "consumers"})


class IdentityEndpoints:
    """Token and authorize endpoints over one ``IdentityRegistry``; ``mailboxes()`` lists the
    simulator's users (an authorize without ``login_hint`` picks the only one)."""

    def __init__(self, registry: IdentityRegistry, mailboxes: Callable[[], Collection[str]]):
        self.registry = registry
        self.mailboxes = mailboxes

    def _tenant_ok(self, request: SimRequest) -> bool:
        tenant = request.path.strip("/").split("/", 1)[0]
        return tenant in TENANTS or tenant == self.registry.tenant_id or "." in tenant

    async def token(self, request: SimRequest) -> SimResponse:
        """``POST /{tenant}/oauth2/v2.0/token``."""
        now = self.registry.clock.now()
        if not self._tenant_ok(request):
            return aad_error(400, "invalid_request", 90002, "Tenant not found.", now=now)
        if not request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        ):
            return aad_error(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'.",
                now=now,
            )
        form = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
        try:
            app = self.registry.check_client(
                form.get("client_id", ""), form.get("client_secret", "")
            )
            grant_type = form.get("grant_type", "")
            if grant_type == "refresh_token":
                if not form.get("refresh_token"):
                    raise _missing("refresh_token")
                access, refresh = self.registry.refresh(
                    app, form["refresh_token"], form.get("scope", "")
                )
            elif grant_type == "authorization_code":
                if not form.get("code") or not form.get("redirect_uri"):
                    raise _missing("code")
                access, refresh = self.registry.exchange_code(
                    app,
                    form["code"],
                    form["redirect_uri"],
                    form.get("code_verifier"),
                    form.get("scope", ""),
                )
            elif not grant_type:
                raise _missing("grant_type")
            else:
                raise AadFailure(
                    status=400,
                    error="unsupported_grant_type",
                    code=70003,
                    description=f"The app requested an unsupported grant type '{grant_type}'.",
                )
        except AadFailure as exc:
            return aad_error(exc.status, exc.error, exc.code, exc.description, now=now)
        return SimResponse(
            payload=self._payload(access, refresh),
            headers=dict(_NO_STORE),
            media_type=IDENTITY_JSON,
        )

    def _payload(self, access: MsAccessToken, refresh: str) -> dict[str, object]:
        return {
            "token_type": "Bearer",
            "scope": self.registry.response_scope(access),
            "expires_in": ACCESS_TOKEN_SECONDS,
            "ext_expires_in": ACCESS_TOKEN_SECONDS,
            "access_token": access.token,
            "refresh_token": refresh,
        }

    async def authorize(self, request: SimRequest) -> SimResponse:
        """``GET /{tenant}/oauth2/v2.0/authorize``: consent at once, 302 back with the code."""
        query = dict(request.query)
        app = self.registry.apps.get(query.get("client_id", ""))
        if app is None:
            return _page("AADSTS700016: Application was not found in the directory.")
        redirect_uri = query.get("redirect_uri", "")
        if not redirect_uri or (app.redirect_uris and redirect_uri not in app.redirect_uris):
            return _page("AADSTS50011: The redirect URI specified in the request does not match.")
        extra = {"state": query["state"]} if "state" in query else {}
        if query.get("response_type") != "code":
            return _redirect(
                redirect_uri,
                {
                    "error": "unsupported_response_type",
                    "error_description": "AADSTS70005: response_type 'token' is not enabled.",
                    **extra,
                },
            )
        scopes = query.get("scope", "").split()
        method = query.get("code_challenge_method")
        if not scopes or (query.get("code_challenge") and method != "S256"):
            return _redirect(
                redirect_uri,
                {
                    "error": "invalid_request",
                    "error_description": "AADSTS9002325: Proof Key for Code Exchange is required "
                    "(S256) and scope must not be empty.",
                    **extra,
                },
            )
        email = query.get("login_hint") or _only(self.mailboxes())
        if email is None or email not in self.mailboxes():
            return _page("AADSTS50034: The user account does not exist in this directory.")
        if email in self.registry.consent_denied:
            return _redirect(
                redirect_uri,
                {
                    "error": "access_denied",
                    "error_description": "AADSTS65004: User declined to consent to access the app.",
                    **extra,
                },
            )
        return self._issue_code(app, redirect_uri, email, scopes, query, extra)

    def _issue_code(
        self,
        app: MicrosoftApp,
        redirect_uri: str,
        email: str,
        scopes: list[str],
        query: dict[str, str],
        extra: dict[str, str],
    ) -> SimResponse:
        try:
            code = self.registry.create_code(
                app,
                redirect_uri=redirect_uri,
                email=email,
                scopes=scopes,
                code_challenge=query.get("code_challenge"),
                code_challenge_method=query.get("code_challenge_method"),
            )
        except InputError as exc:
            return _redirect(
                redirect_uri,
                {"error": "invalid_request", **extra, "error_description": exc.message},
            )
        return _redirect(redirect_uri, {"code": code.code, **extra, "session_state": "sim"})


def _missing(name: str) -> AadFailure:
    return AadFailure(
        status=400,
        error="invalid_request",
        code=900144,
        description=f"The request body must contain the following parameter: '{name}'.",
    )


def _only(emails: Collection[str]) -> str | None:
    return next(iter(emails)) if len(emails) == 1 else None


def _redirect(redirect_uri: str, params: dict[str, str]) -> SimResponse:
    separator = "&" if "?" in redirect_uri else "?"
    return SimResponse(
        status=302, content=b"", headers={"Location": redirect_uri + separator + urlencode(params)}
    )


def _page(message: str) -> SimResponse:
    # Microsoft shows the person an error page instead of redirecting to an unverified URI.
    body = f"<!doctype html><title>Sign in</title><h1>Sign in</h1><p>{html.escape(message)}</p>"
    return SimResponse(status=400, content=body.encode(), media_type="text/html; charset=utf-8")
