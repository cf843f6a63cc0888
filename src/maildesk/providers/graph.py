"""Microsoft Graph client: one mailbox's calls, answered in domain types or our exception tree.

:class:`GraphClient` implements :class:`~maildesk.providers.graph_types.GraphApi` over
:class:`ProviderHttp` (timeouts, retries, ``Retry-After``, refresh-once on 401) and the pure
parsers of :mod:`maildesk.providers.graph_wire`. Every request asks for immutable ids
(``Prefer: IdType="ImmutableId"``) so a message keeps its id when it moves between folders.

Links Graph hands back (``@odata.nextLink`` / ``@odata.deltaLink``) are followed as given, but
only when they point under ``api_base``: the request carries the mailbox's access token, and a
link to another host would hand it over (``ProtocolViolation``).
"""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from maildesk.domain.mail import FolderRole, RemoteBody, RemoteFolder, RemoteMessage
from maildesk.errors import (
    CursorExpired,
    MessageGone,
    ProtocolViolation,
    ProviderError,
    ProviderRejected,
)
from maildesk.providers.graph_types import DeltaPage, GraphApi, GraphProfile, GraphSubscription
from maildesk.providers.graph_wire import (
    MESSAGE_SELECT,
    WELL_KNOWN_FOLDERS,
    FolderEntry,
    format_graph_datetime,
    graph_error,
    parse_body,
    parse_delta_page,
    parse_folder,
    parse_folder_page,
    parse_messages,
    parse_profile,
    parse_subscription,
    parse_subscription_page,
    unauthorized_error,
)
from maildesk.providers.http import ProviderHttp, TokenSource, json_body, parse_retry_after

__all__ = ["GraphApi", "GraphClient"]

IMMUTABLE_IDS = 'IdType="ImmutableId"'
HTML_BODIES = 'outlook.body-content-type="html"'
_FOLDER_PAGE = 100
_MAX_TOP = 1000  # Graph's largest $top for messages
_MAX_PAGES = 10_000  # a link loop in a misbehaving server must not spin forever
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _query(params: Mapping[str, Any]) -> str:
    # Graph's documentation writes OData options with a literal "$"; keep it readable.
    return urlencode({k: str(v) for k, v in params.items()}, safe="$,", quote_via=quote)


class GraphClient:
    """Microsoft Graph for one mailbox (``/me``).

    ``api_base`` is the versioned base (``https://graph.microsoft.com/v1.0`` or a simulator's
    ``…/v1.0``); ``token`` supplies the mailbox's access tokens (an ``AccessTokenCache`` source
    over :class:`~maildesk.providers.microsoft_oauth.MicrosoftOAuth`). The methods are documented
    on :class:`GraphApi`; all raise only our exception tree: OAuthInvalid / WrongTokenKind (a 401
    a refreshed token did not cure), ScopeMissing (403 access denied), RateLimited,
    ProviderUnavailable, MessageGone (404), CursorExpired (dead delta state), ProviderRejected
    (other 4xx, with ``status``) and ProtocolViolation (unreadable answers, foreign links).
    """

    def __init__(self, http: ProviderHttp, *, api_base: str, token: TokenSource) -> None:
        self._http = http
        self._token = token
        self._base = api_base.rstrip("/")
        base = httpx.URL(self._base)
        if base.scheme not in _DEFAULT_PORTS or not base.host:
            raise ValueError("api_base must be an absolute http(s) URL")
        self._origin = (base.scheme, base.host.lower(), self._port(base))
        self._base_path = base.path.rstrip("/") + "/"

    # --- plumbing -------------------------------------------------------------------------------

    @staticmethod
    def _port(url: httpx.URL) -> int:
        return url.port if url.port is not None else _DEFAULT_PORTS.get(url.scheme, -1)

    def _check_link(self, link: str, what: str) -> str:
        """``link`` if it lies under ``api_base`` (same scheme, host, port; path below the
        base's, after dot segments are resolved), else ProtocolViolation. Never logs it: the
        query holds Graph's sync state."""
        try:
            url = httpx.URL(link)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise ProtocolViolation(f"{what}: Graph sent an unreadable link") from exc
        if (
            (url.scheme, (url.host or "").lower(), self._port(url)) != self._origin
            or url.userinfo
            or not (url.path + "/").startswith(self._base_path)
        ):
            raise ProtocolViolation(
                f"{what}: Graph sent a link outside the configured Graph base "
                f"({url.scheme}://{url.host}); refusing to send the token there"
            )
        return link

    async def _call(
        self,
        method: str,
        url: str,
        *,
        what: str,
        json: Any = None,
        prefer: Iterable[str] = (),
        not_found: type[ProviderError] = MessageGone,
        gone: type[ProviderError] = CursorExpired,
        idempotent: bool = True,
    ) -> httpx.Response:
        response = await self._http.request(
            method,
            url,
            json=json,
            headers={"Prefer": ", ".join((IMMUTABLE_IDS, *prefer))},
            auth=self._token,
            idempotent=idempotent,
            auth_failure=lambda answer: unauthorized_error(answer.content, what=what),
        )
        if not response.is_success:
            retry_after = parse_retry_after(
                response.headers.get("retry-after"), self._http.clock.now()
            )
            raise graph_error(response.status_code, response.content, what=what,
                              not_found=not_found, gone=gone, retry_after=retry_after)
        return response

    def _url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        return f"{self._base}{path}" + (f"?{_query(params)}" if params else "")

    @staticmethod
    def _segment(value: str) -> str:
        return quote(value, safe="")

    # --- mailbox --------------------------------------------------------------------------------

    async def profile(self) -> GraphProfile:
        return parse_profile(json_body(await self._call("GET", self._url("/me"), what="me")))

    async def folders(self) -> list[RemoteFolder]:
        found: dict[str, FolderEntry] = {}
        # (url, path prefix of the folders listed there); childFolders are walked breadth
        # first, every page of every level, so deep trees and big levels are complete.
        queue: deque[tuple[str, str]] = deque(
            [(self._url("/me/mailFolders",
                        {"$top": _FOLDER_PAGE, "includeHiddenFolders": "false"}), "")]
        )
        pages = 0
        while queue:
            url, prefix = queue.popleft()
            pages += 1
            if pages > _MAX_PAGES:
                raise ProtocolViolation("mailFolders: the folder tree never ends")
            page = parse_folder_page(
                json_body(await self._call("GET", url, what="mailFolders.list")),
                path_prefix=prefix,
            )
            if page.next_link is not None:
                queue.appendleft(
                    (self._check_link(page.next_link, "mailFolders.list"), prefix)
                )
            for entry in page.entries:
                folder_id = entry.folder.remote_id
                if entry.hidden or folder_id in found:
                    continue
                found[folder_id] = entry
                if entry.child_count > 0:
                    queue.append((
                        self._url(f"/me/mailFolders/{self._segment(folder_id)}/childFolders",
                                  {"$top": _FOLDER_PAGE}),
                        f"{entry.folder.name}/",
                    ))
        roles = await self._well_known(found)
        return [
            RemoteFolder(e.folder.remote_id, e.folder.name, role=role, system=True)
            if (role := roles.get(e.folder.remote_id)) is not None
            else e.folder
            for e in found.values()
        ]

    async def _well_known(self, found: dict[str, FolderEntry]) -> dict[str, FolderRole]:
        """Role per folder id, from ``/me/mailFolders/{wellKnownName}``; a well-known folder
        missing from the listing is added to ``found``."""
        roles: dict[str, FolderRole] = {}
        for name, role in WELL_KNOWN_FOLDERS.items():
            try:
                response = await self._call(
                    "GET", self._url(f"/me/mailFolders/{name}"), what=f"mailFolders/{name}"
                )
            except MessageGone:
                continue  # this mailbox has no such folder (e.g. no archive)
            entry = parse_folder(json_body(response))
            folder_id = entry.folder.remote_id
            roles.setdefault(folder_id, role)
            if folder_id not in found and not entry.hidden:
                found[folder_id] = entry
        return roles

    async def newest(self, folder_id: str, count: int) -> list[RemoteMessage]:
        if not 1 <= count <= _MAX_TOP:
            raise ValueError(f"count must be between 1 and {_MAX_TOP}")
        url = self._url(
            f"/me/mailFolders/{self._segment(folder_id)}/messages",
            {"$orderby": "receivedDateTime desc", "$top": count, "$select": MESSAGE_SELECT},
        )
        response = await self._call("GET", url, what="messages.list")
        return parse_messages(json_body(response), folder_id=folder_id)

    async def delta(self, folder_id: str, link: str | None, *, page_size: int) -> DeltaPage:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if link is None:
            url = self._url(
                f"/me/mailFolders/{self._segment(folder_id)}/messages/delta",
                {"$select": MESSAGE_SELECT},
            )
        else:
            url = self._check_link(link, "messages.delta")
        response = await self._call(
            "GET", url, what="messages.delta", prefer=(f"odata.maxpagesize={page_size}",)
        )
        page = parse_delta_page(json_body(response), folder_id=folder_id)
        # Refuse a foreign link now, before the engine stores it as the folder's cursor.
        for returned in (page.next_link, page.delta_link):
            if returned is not None:
                self._check_link(returned, "messages.delta")
        return page

    async def get_body(self, remote_id: str) -> RemoteBody:
        url = self._url(f"/me/messages/{self._segment(remote_id)}", {"$select": "body"})
        response = await self._call(
            "GET", url, what="messages.get", prefer=(HTML_BODIES,), gone=MessageGone
        )
        return parse_body(json_body(response))

    async def send_mime(self, message: bytes) -> None:
        # Not retried once it may have been processed: a second POST could send twice.
        response = await self._http.request(
            "POST",
            self._url("/me/sendMail"),
            content=base64.b64encode(message),
            headers={"Content-Type": "text/plain"},
            auth=self._token,
            idempotent=False,
            auth_failure=lambda answer: unauthorized_error(answer.content, what="sendMail"),
        )
        if not response.is_success:
            retry_after = parse_retry_after(
                response.headers.get("retry-after"), self._http.clock.now()
            )
            raise graph_error(response.status_code, response.content, what="sendMail",
                              not_found=ProviderRejected, gone=ProviderRejected,
                              retry_after=retry_after)

    # --- subscriptions --------------------------------------------------------------------------

    async def create_subscription(
        self,
        *,
        resource: str,
        change_type: str,
        notification_url: str,
        lifecycle_url: str,
        expiration: datetime,
        client_state: str,
    ) -> GraphSubscription:
        body = {
            "changeType": change_type,
            "notificationUrl": notification_url,
            "lifecycleNotificationUrl": lifecycle_url,
            "resource": resource,
            "expirationDateTime": format_graph_datetime(expiration),
            "clientState": client_state,
            "latestSupportedTlsVersion": "v1_2",
        }
        # Not retried after a possibly processed attempt: a second POST could leave a duplicate
        # subscription behind (or answer 409); the push manager decides what to do next.
        response = await self._call(
            "POST", self._url("/subscriptions"), what="subscriptions.create", json=body,
            idempotent=False,
        )
        return parse_subscription(json_body(response))

    async def list_subscriptions(self) -> list[GraphSubscription]:
        subscriptions: list[GraphSubscription] = []
        url: str | None = self._url("/subscriptions")
        pages = 0
        while url is not None:
            pages += 1
            if pages > _MAX_PAGES:
                raise ProtocolViolation("subscriptions.list: the listing never ends")
            response = await self._call("GET", url, what="subscriptions.list")
            page, next_link = parse_subscription_page(json_body(response))
            subscriptions.extend(page)
            url = None if next_link is None else self._check_link(next_link, "subscriptions")
        return subscriptions

    async def renew_subscription(
        self, subscription_id: str, expiration: datetime
    ) -> GraphSubscription:
        response = await self._call(
            "PATCH",
            self._url(f"/subscriptions/{self._segment(subscription_id)}"),
            what="subscriptions.renew",
            json={"expirationDateTime": format_graph_datetime(expiration)},
        )
        return parse_subscription(json_body(response))

    async def reauthorize_subscription(self, subscription_id: str) -> None:
        await self._call(
            "POST",
            self._url(f"/subscriptions/{self._segment(subscription_id)}/reauthorize"),
            what="subscriptions.reauthorize",
        )

    async def delete_subscription(self, subscription_id: str) -> None:
        try:
            await self._call(
                "DELETE",
                self._url(f"/subscriptions/{self._segment(subscription_id)}"),
                what="subscriptions.delete",
            )
        except MessageGone:
            return  # already gone: the goal holds
