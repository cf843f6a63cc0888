"""What the Outlook sync engine and push registration need from one Microsoft Graph mailbox.

The Protocol is the port; :class:`maildesk.providers.graph.GraphClient` implements it over HTTP
and tests use in-memory fakes. Results are domain types or the small dataclasses below; every
failure is one of our exceptions (``errors.py``): notably ``CursorExpired`` for a dead delta
token (410 ``syncStateNotFound`` / ``resyncRequired``), ``RateLimited`` for 429 with Retry-After,
``OAuthInvalid`` / ``WrongTokenKind`` for unusable grants, ``MessageGone`` for a 404 object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from maildesk.domain.mail import RemoteBody, RemoteFolder, RemoteMessage


@dataclass(frozen=True, slots=True)
class GraphProfile:
    """``GET /me``: the mailbox address (``mail``, else ``userPrincipalName``) and name."""

    email: str
    display_name: str = ""


@dataclass(frozen=True, slots=True)
class DeltaPage:
    """One page of ``/me/mailFolders/{id}/messages/delta``.

    ``messages`` are the items present now (their ``folder_ids`` is ``{folder_id}``: an Outlook
    message lives in exactly one folder); ``removed`` are ids reported with ``@removed`` (deleted,
    or moved out of this folder). Exactly one of ``next_link`` / ``delta_link`` is set.
    """

    messages: list[RemoteMessage] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    next_link: str | None = None
    delta_link: str | None = None


@dataclass(frozen=True, slots=True)
class GraphSubscription:
    """A change-notification subscription as Graph returned it (the expiration Graph chose)."""

    id: str
    resource: str
    expiration: datetime
    change_type: str = ""
    notification_url: str = ""


class GraphApi(Protocol):
    async def profile(self) -> GraphProfile: ...

    async def folders(self) -> list[RemoteFolder]:
        """The whole folder tree (child folders included), flattened. ``remote_id`` is the Graph
        folder id; the well-known folders get their role (inbox, sentitems→sent, drafts,
        deleteditems→trash, junkemail→spam, archive)."""
        ...

    async def newest(self, folder_id: str, count: int) -> list[RemoteMessage]:
        """The ``count`` newest messages of a folder (``$orderby=receivedDateTime desc``): the
        first thing an initial sync commits so the inbox shows at once."""
        ...

    async def delta(self, folder_id: str, link: str | None, *, page_size: int) -> DeltaPage:
        """Start a folder's delta round (``link`` None) or continue it from a stored nextLink or
        deltaLink (used as given). Raises ``CursorExpired`` when Graph says the token is dead."""
        ...

    async def get_body(self, remote_id: str) -> RemoteBody: ...

    async def send_mime(self, message: bytes) -> None:
        """``POST /me/sendMail`` in MIME form (``Content-Type: text/plain``, the RFC 5322
        message base64-encoded): Graph sends it as is, recipients (Bcc included) from its
        headers, and files the copy in Sent Items with *our* Message-ID as its
        ``internetMessageId`` (the JSON form would assign a new one). 202 on success."""
        ...

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
        """``POST /subscriptions``; Graph validates both URLs before answering 201. A 409
        (a duplicate subscription) raises ``ProviderRejected`` with ``status == 409``."""
        ...

    async def list_subscriptions(self) -> list[GraphSubscription]: ...

    async def renew_subscription(self, subscription_id: str, expiration: datetime
                                 ) -> GraphSubscription:
        """``PATCH /subscriptions/{id}``; a subscription Graph no longer has → ``MessageGone``."""
        ...

    async def reauthorize_subscription(self, subscription_id: str) -> None: ...

    async def delete_subscription(self, subscription_id: str) -> None:
        """``DELETE /subscriptions/{id}``; already gone (404) counts as done."""
        ...
