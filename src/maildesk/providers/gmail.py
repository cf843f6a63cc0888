"""Gmail API client: one mailbox's calls, answered in domain types or our exception tree.

The sync engine depends on the :class:`GmailApi` Protocol; :class:`GmailClient` implements it
over :class:`ProviderHttp` (retries, throttling, token refresh) and the pure parsers in
:mod:`maildesk.providers.gmail_wire`. Metadata is fetched through Google's batch endpoint, whose
sub-requests fail one by one: those are retried here with the same backoff policy.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote, urlencode, urlsplit

import httpx

from maildesk.domain.mail import RemoteBody, RemoteFolder, RemoteMessage
from maildesk.errors import (
    CursorExpired,
    MessageGone,
    OAuthInvalid,
    ProtocolViolation,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    ScopeMissing,
)
from maildesk.providers.gmail_wire import (
    BatchPart,
    HistoryPage,
    HistoryRecord,
    ListPage,
    Profile,
    WatchResult,
    decode_batch,
    encode_batch,
    json_object,
    parse_error,
    parse_history_page,
    parse_labels,
    parse_list_page,
    parse_message_body,
    parse_message_metadata,
    parse_profile,
    parse_sent,
    parse_watch,
)
from maildesk.providers.http import (
    ProviderHttp,
    TokenSource,
    is_rate_limited,
    is_transient,
    json_body,
    parse_retry_after,
)

__all__ = [
    "METADATA_HEADERS",
    "GmailApi",
    "GmailClient",
    "HistoryPage",
    "HistoryRecord",
    "ListPage",
    "Profile",
    "WatchResult",
    "gmail_error",
]

METADATA_HEADERS = ("Subject", "From", "To", "Message-ID", "Date")
SCOPE_REASONS = frozenset({"insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"})


class GmailApi(Protocol):
    """What the sync engine and push registration need from one Gmail mailbox."""

    async def profile(self) -> Profile:
        """Address, current history id and message count."""
        ...

    async def labels(self) -> list[RemoteFolder]:
        """Every label, with folder roles for the system ones."""
        ...

    async def list_message_ids(
        self,
        label_ids: list[str] | None = None,
        page_token: str | None = None,
        max_results: int = 500,
        include_spam_trash: bool = False,
    ) -> ListPage:
        """One page of message ids, newest first."""
        ...

    async def get_metadata(self, ids: list[str]) -> dict[str, RemoteMessage | None]:
        """Metadata per id (duplicates collapse); None when the message no longer exists."""
        ...

    async def get_body(self, message_id: str) -> RemoteBody:
        """The text and HTML body; MessageGone when it no longer exists."""
        ...

    async def history(self, start_history_id: int, page_token: str | None = None) -> HistoryPage:
        """One page of changes after ``start_history_id``; CursorExpired when it is too old."""
        ...

    async def send(self, raw_rfc5322: bytes, thread_id: str | None = None) -> tuple[str, str]:
        """Send a complete RFC 5322 message (Gmail takes the recipients, Bcc included, from its
        headers and keeps the copy under SENT); ``thread_id`` files a reply in the original's
        thread. Returns (message id, thread id)."""
        ...

    async def watch(
        self, topic: str, label_ids: list[str], behavior: str = "include"
    ) -> WatchResult:
        """Start (or renew) push to a Pub/Sub topic; returns (history id, expiration)."""
        ...

    async def stop(self) -> None:
        """Stop push for this mailbox."""
        ...


def gmail_error(
    status: int,
    body: bytes,
    *,
    what: str,
    not_found: type[ProviderError] = MessageGone,
    retry_after: float | None = None,
) -> ProviderError:
    """The exception for a non-success Gmail answer (also used for batch sub-responses).

    The message names the call, status and Google's reasons, never the body or a token.
    """
    try:
        info = parse_error(json_object(body, "error body"))
        detail = " ".join(filter(None, [info.status, *info.reasons]))
    except ProtocolViolation:
        info, detail = None, ""
    reasons = frozenset(info.reasons) if info is not None else frozenset()
    described = f"{what}: Gmail answered {status}" + (f" ({detail})" if detail else "")
    if status == 401:
        return OAuthInvalid(described)
    if is_rate_limited(status, body):  # the rule ProviderHttp retries by
        return RateLimited(described, retry_after=retry_after)
    if status == 403 and reasons & SCOPE_REASONS:
        return ScopeMissing(described + ": the grant lacks a Gmail scope; reconnect the mailbox")
    if status == 404:
        return not_found(described)
    if status == 408 or status >= 500:
        return ProviderUnavailable(described, retry_after=retry_after)
    if 400 <= status < 500:
        return ProviderRejected(described, status=status)
    return ProtocolViolation(described + ": unexpected status")


class GmailClient:
    """The Gmail API for one mailbox.

    ``api_base`` is the bare base (``https://gmail.googleapis.com`` or a simulator's address);
    ``token`` supplies the mailbox's access tokens. ``batch_size`` sub-requests go in one batch
    (Google allows 100 and advises 50). Methods are documented on :class:`GmailApi`; all of
    them raise only our exception tree: OAuthInvalid, ScopeMissing, RateLimited,
    ProviderUnavailable, MessageGone (CursorExpired for ``history``), ProviderRejected and
    ProtocolViolation, as mapped by :func:`gmail_error` and :class:`ProviderHttp`.
    """

    def __init__(
        self,
        http: ProviderHttp,
        *,
        api_base: str,
        token: TokenSource,
        user_id: str = "me",
        batch_size: int = 50,
    ) -> None:
        if not 1 <= batch_size <= 100:
            raise ValueError("batch_size must be between 1 and 100")
        base = api_base.rstrip("/")
        self._http = http
        self._token = token
        self._batch_size = batch_size
        # Batch sub-requests name the full path of the equivalent direct call.
        self._user_path = f"{urlsplit(base).path}/gmail/v1/users/{quote(user_id, safe='')}"
        self._user_url = f"{base}/gmail/v1/users/{quote(user_id, safe='')}"
        self._batch_url = f"{base}/batch/gmail/v1"

    async def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        not_found: type[ProviderError] = MessageGone,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        idempotent: bool = True,
    ) -> httpx.Response:
        response = await self._http.request(
            method,
            self._user_url + path,
            params=params,
            json=json,
            auth=self._token,
            idempotent=idempotent,
        )
        if not response.is_success:
            retry_after = parse_retry_after(
                response.headers.get("retry-after"), self._http.clock.now()
            )
            raise gmail_error(response.status_code, response.content, what=what,
                              not_found=not_found, retry_after=retry_after)
        return response

    async def profile(self) -> Profile:
        return parse_profile(json_body(await self._call("GET", "/profile", what="profile")))

    async def labels(self) -> list[RemoteFolder]:
        return parse_labels(json_body(await self._call("GET", "/labels", what="labels.list")))

    async def list_message_ids(
        self,
        label_ids: list[str] | None = None,
        page_token: str | None = None,
        max_results: int = 500,
        include_spam_trash: bool = False,
    ) -> ListPage:
        params: dict[str, Any] = {
            "maxResults": max_results,
            "includeSpamTrash": "true" if include_spam_trash else "false",
        }
        if label_ids:
            params["labelIds"] = list(label_ids)
        if page_token:
            params["pageToken"] = page_token
        response = await self._call("GET", "/messages", what="messages.list", params=params)
        return parse_list_page(json_body(response))

    async def get_body(self, message_id: str) -> RemoteBody:
        response = await self._call(
            "GET",
            f"/messages/{quote(message_id, safe='')}",
            what=f"messages.get {message_id}",
            params={"format": "full"},
        )
        return parse_message_body(json_body(response))

    async def history(self, start_history_id: int, page_token: str | None = None) -> HistoryPage:
        params: dict[str, Any] = {"startHistoryId": str(start_history_id), "maxResults": 500}
        if page_token:
            params["pageToken"] = page_token
        response = await self._call(
            "GET", "/history", what="history.list", not_found=CursorExpired, params=params
        )
        return parse_history_page(json_body(response))

    async def send(self, raw_rfc5322: bytes, thread_id: str | None = None) -> tuple[str, str]:
        raw = base64.urlsafe_b64encode(raw_rfc5322).decode("ascii")
        body = {"raw": raw}
        if thread_id:
            body["threadId"] = thread_id
        # Not idempotent: a retried send after an unclear failure could deliver twice.
        response = await self._call(
            "POST", "/messages/send", what="messages.send", json=body, idempotent=False
        )
        return parse_sent(json_body(response))

    async def watch(
        self, topic: str, label_ids: list[str], behavior: str = "include"
    ) -> WatchResult:
        if behavior.lower() not in {"include", "exclude"}:
            raise ValueError("behavior must be 'include' or 'exclude'")
        body: dict[str, Any] = {"topicName": topic}
        if label_ids:
            body["labelIds"] = list(label_ids)
            body["labelFilterBehavior"] = behavior.lower()
        response = await self._call("POST", "/watch", what="watch", json=body)
        return parse_watch(json_body(response))

    async def stop(self) -> None:
        await self._call("POST", "/stop", what="stop")

    async def get_metadata(self, ids: list[str]) -> dict[str, RemoteMessage | None]:
        found: dict[str, RemoteMessage | None] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), self._batch_size):
            found.update(await self._metadata_batch(unique[start : start + self._batch_size]))
        return found

    def _metadata_path(self, message_id: str) -> str:
        query = urlencode(
            [("format", "metadata"), *(("metadataHeaders", name) for name in METADATA_HEADERS)]
        )
        return f"{self._user_path}/messages/{quote(message_id, safe='')}?{query}"

    async def _metadata_batch(self, ids: list[str]) -> dict[str, RemoteMessage | None]:
        """Fetch up to ``batch_size`` messages, retrying the sub-requests that failed softly."""
        found: dict[str, RemoteMessage | None] = {}
        pending = ids
        failures = 0
        refreshed = False
        while pending:
            parts = await self._send_batch([("GET", self._metadata_path(i)) for i in pending])
            retry: list[str] = []
            unauthorized = transient = throttled = False
            retry_after: float | None = None
            for message_id, part in zip(pending, parts, strict=True):
                what = f"messages.get {message_id}"
                if part.status == 200:
                    message = parse_message_metadata(json_object(part.body, what))
                    if message.remote_id != message_id:
                        raise ProtocolViolation(f"{what}: the batch answered for another id")
                    found[message_id] = message
                elif part.status == 404:
                    found[message_id] = None
                elif part.status == 401:
                    unauthorized = True
                    retry.append(message_id)
                elif is_transient(part.status, part.body):
                    retry.append(message_id)
                    transient = True
                    throttled = throttled or is_rate_limited(part.status, part.body)
                    wait = parse_retry_after(part.headers.get("retry-after"),
                                             self._http.clock.now())
                    if wait is not None:
                        retry_after = max(wait, retry_after or 0.0)
                else:
                    raise gmail_error(part.status, part.body, what=what)
            pending = retry
            if unauthorized:
                if refreshed:
                    raise OAuthInvalid("messages.get (batch): Gmail rejected a refreshed token")
                refreshed = True
                await self._token(force_refresh=True)
            if transient:  # a lone 401 needs a new token, not a pause
                failures += 1
                await self._http.retry_pause(
                    failures,
                    retry_after=retry_after,
                    rate_limited=throttled,
                    what=f"messages.get (batch): {len(pending)} sub-requests failed",
                )
        return found

    async def _send_batch(self, requests: list[tuple[str, str]]) -> list[BatchPart]:
        content, content_type = encode_batch(requests, f"batch_{uuid.uuid4().hex}")
        response = await self._http.request(
            "POST",
            self._batch_url,
            content=content,
            headers={"Content-Type": content_type},
            auth=self._token,
        )
        if not response.is_success:
            raise gmail_error(response.status_code, response.content, what="batch")
        return decode_batch(
            response.headers.get("content-type", ""), response.content, expected=len(requests)
        )
