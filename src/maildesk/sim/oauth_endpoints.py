"""Google's OAuth 2.0 endpoints: authorize (auto-consent), token, revoke.

Handlers take and return ``SimRequest``/``SimResponse`` so fault rules apply to them as well.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
from urllib.parse import parse_qsl, urlencode

from maildesk.errors import InputError, NotFound
from maildesk.sim.gmail_state import GoogleState
from maildesk.sim.oauth_state import ACCESS_TOKEN_SECONDS, OAuthClient, OAuthError
from maildesk.sim.wire import SimRequest, SimResponse, oauth_error

_NO_STORE = {
    "Cache-Control": "no-cache, no-store, max-age=0, must-revalidate",
    "Pragma": "no-cache",
}


class OAuthEndpoints:
    """The three OAuth endpoints over one ``GoogleState``."""

    def __init__(self, state: GoogleState) -> None:
        self.state = state

    async def token(self, request: SimRequest) -> SimResponse:
        """``POST /token``: ``refresh_token`` and ``authorization_code`` grants."""
        form = _form(request)
        try:
            client = self._client(request, form)
            grant_type = form.get("grant_type")
            if grant_type == "refresh_token":
                refresh_token = form.get("refresh_token")
                if not refresh_token:
                    raise OAuthError(
                        400, "invalid_request", "Missing required parameter: refresh_token"
                    )
                access = self.state.oauth.refresh(client, refresh_token)
                payload = _token_payload(access.token, access.scopes)
            elif grant_type == "authorization_code":
                code, redirect_uri = form.get("code"), form.get("redirect_uri")
                if not code or not redirect_uri:
                    raise OAuthError(400, "invalid_request", "Missing required parameter: code")
                grant, access = self.state.oauth.exchange_code(
                    client, code, redirect_uri, form.get("code_verifier")
                )
                payload = _token_payload(access.token, grant.scopes)
                payload["refresh_token"] = grant.refresh_token
            elif not grant_type:
                raise OAuthError(400, "invalid_request", "Missing required parameter: grant_type")
            else:
                raise OAuthError(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        except OAuthError as exc:
            return oauth_error(exc.status, exc.error, exc.description)
        return SimResponse(payload=payload, headers=dict(_NO_STORE))

    def _client(self, request: SimRequest, form: dict[str, str]) -> OAuthClient:
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":  # RFC 6749 §2.3.1: client credentials via HTTP Basic
            try:
                decoded = base64.b64decode(encoded, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise OAuthError(401, "invalid_client", "Malformed Basic credentials.") from None
            client_id, _, client_secret = decoded.partition(":")
        if not client_id:
            raise OAuthError(401, "invalid_client", "The OAuth client was not found.")
        return self.state.oauth.check_client(client_id, client_secret)

    async def authorize(self, request: SimRequest) -> SimResponse:
        """``GET /o/oauth2/v2/auth``: the user consents at once; 302 back with code and state."""
        query = dict(request.query)
        client = self.state.oauth.clients.get(query.get("client_id", ""))
        if client is None:
            return _error_page(401, "invalid_client", "The OAuth client was not found.")
        redirect_uri = query.get("redirect_uri", "")
        if not redirect_uri or (client.redirect_uris and redirect_uri not in client.redirect_uris):
            return _error_page(400, "redirect_uri_mismatch", "The redirect URI is not registered.")
        extra = {"state": query["state"]} if "state" in query else {}
        if query.get("response_type") != "code":
            return _redirect(redirect_uri, {"error": "unsupported_response_type", **extra})
        scopes = query.get("scope", "").split()
        if not scopes:
            return _error_page(400, "invalid_request", "Missing required parameter: scope")
        email = query.get("login_hint") or self._only_user()
        if email is None:
            return _error_page(400, "invalid_request", "No login_hint and no single account.")
        consent = self.state.oauth.consent.get(email, tuple(scopes))
        if consent is None:
            return _redirect(redirect_uri, {"error": "access_denied", **extra})
        self.state.ensure_mailbox(email)
        try:
            code = self.state.oauth.create_code(
                client,
                redirect_uri=redirect_uri,
                email=email,
                scopes=[s for s in scopes if s in consent],
                code_challenge=query.get("code_challenge"),
                code_challenge_method=query.get("code_challenge_method"),
            )
        except InputError as exc:
            return _error_page(400, "invalid_request", exc.message)
        granted = " ".join(s for s in scopes if s in consent)
        return _redirect(redirect_uri, {**extra, "code": code.code, "scope": granted})

    def _only_user(self) -> str | None:
        emails = list(self.state.mailboxes)
        return emails[0] if len(emails) == 1 else None

    async def revoke(self, request: SimRequest) -> SimResponse:
        """``POST /revoke?token=…``: revoke the grant of a refresh or access token."""
        token = dict(request.query).get("token") or _form(request).get("token")
        if not token:
            return oauth_error(400, "invalid_request", "Missing required parameter: token")
        try:
            self.state.oauth.revoke(token)
        except NotFound:
            return oauth_error(400, "invalid_token", "Token expired or revoked")
        return SimResponse(payload={})


def _token_payload(access_token: str, scopes: tuple[str, ...]) -> dict[str, object]:
    return {
        "access_token": access_token,
        "expires_in": ACCESS_TOKEN_SECONDS,
        "scope": " ".join(scopes),
        "token_type": "Bearer",
    }


def _form(request: SimRequest) -> dict[str, str]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        try:
            data = json.loads(request.body or b"{}")
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    return dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))


def _redirect(redirect_uri: str, params: dict[str, str]) -> SimResponse:
    separator = "&" if "?" in redirect_uri else "?"
    location = redirect_uri + separator + urlencode(params)
    return SimResponse(status=302, content=b"", headers={"Location": location})


def _error_page(code: int, error: str, description: str) -> SimResponse:
    # Google shows the person an HTML page (status 400) instead of redirecting.
    page = (
        "<!doctype html><title>Error</title><h1>Access blocked: Authorization Error</h1>"
        f"<p>{html.escape(description)}</p><p>Error {code}: {html.escape(error)}</p>"
    )
    return SimResponse(status=400, content=page.encode(), media_type="text/html; charset=utf-8")
