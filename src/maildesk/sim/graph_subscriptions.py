"""Graph change-notification subscriptions: creation with the validation handshake, renewal,
deletion, reauthorization, matching mailbox changes, and lifecycle events.

Creation validates the notification URL and then the lifecycle URL by POSTing
``{url}?validationToken=<url-encoded token>`` (``text/plain``, empty body) through the outbound
client and needs, within ``validation_timeout`` (10 s), 200 + ``text/plain`` + the decoded
token as the body. A failure refuses the subscription (``SubscriptionRefused``).
"""

from __future__ import annotations

import itertools
import random
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx

from maildesk.clock import Clock
from maildesk.errors import NotFound
from maildesk.sim.graph_mailbox import OutlookMailbox
from maildesk.sim.graph_notifier import Notifier
from maildesk.sim.graph_objects import GraphMessage
from maildesk.sim.graph_wire import parse_time, subscription_time

MIN_MINUTES = 45
DEFAULT_MAX_MINUTES = 10_080
MAX_CLIENT_STATE = 128
CHANGE_TYPES = ("created", "updated", "deleted")
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")
VALIDATION_FAILED = (
    "Subscription validation request failed. Notification endpoint must respond with 200 OK to "
    "validation request."
)
_RESOURCE = re.compile(
    r"^/?(?:me|users/(?P<user>[^/]+))"
    r"(?:/mailfolders(?:\('(?P<quoted>[^']+)'\)|/(?P<plain>[^/]+)))?/messages/?$",
    re.IGNORECASE,
)


class SubscriptionRefused(Exception):
    """Graph refuses the request: answer ``status`` with error ``code`` and ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True, slots=True)
class Validation:
    """One validation request the simulator made, and whether it passed."""

    url: str
    token: str
    at: datetime
    status: int | None
    ok: bool
    problem: str | None


@dataclass(slots=True)
class Subscription:
    """A subscription of one app on one mailbox (``folder_id`` None: every folder)."""

    id: str
    email: str
    user_id: str
    application_id: str
    resource: str
    change_types: tuple[str, ...]
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expiration: datetime
    tls_version: str
    folder_id: str | None
    reauthorized_at: datetime | None = None
    notified: int = field(default=0)

    def to_json(self) -> dict[str, Any]:
        """Graph's ``subscription`` resource."""
        return {
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.application_id,
            "changeType": ",".join(self.change_types),
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "notificationQueryOptions": None,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": subscription_time(self.expiration),
            "creatorId": self.user_id,
            "includeResourceData": None,
            "latestSupportedTlsVersion": self.tls_version,
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationUrlAppId": None,
        }


class Subscriptions:
    """Every subscription of the simulator, and their notifications through ``notifier``."""

    def __init__(
        self,
        clock: Clock,
        rng: random.Random,
        notifier: Notifier,
        tenant_id: str,
        mailbox: Callable[[str], OutlookMailbox],
    ) -> None:
        self.clock = clock
        self.rng = rng
        self.notifier = notifier
        self.tenant_id = tenant_id
        self._mailbox = mailbox
        self.max_minutes = DEFAULT_MAX_MINUTES
        self.conflict_on_duplicate = False
        self.validation_timeout = 10.0
        self.by_id: dict[str, Subscription] = {}
        self.validations: list[Validation] = []
        self._notification_ids = itertools.count(1)

    # -- lifetime rules --------------------------------------------------------------------

    def expiration_for(self, wanted: datetime) -> datetime:
        """The expiration Graph grants for ``wanted``: raised to 45 minutes ahead; beyond the
        maximum → ``SubscriptionRefused``."""
        now = self.clock.now()
        if wanted <= now:
            raise SubscriptionRefused(
                400, "InvalidRequest", "Subscription expiration must be in the future."
            )
        if wanted > now + timedelta(minutes=self.max_minutes):
            raise SubscriptionRefused(
                400,
                "InvalidRequest",
                f"Subscription expiration can only be {self.max_minutes} minutes in the future.",
            )
        return max(wanted, now + timedelta(minutes=MIN_MINUTES))

    def live(self, subscription_id: str, application_id: str | None = None) -> Subscription:
        """A subscription that has not expired (of ``application_id``), or ``NotFound``."""
        found = self.by_id.get(subscription_id)
        if found is not None and found.expiration <= self.clock.now():
            del self.by_id[subscription_id]  # Graph forgets expired subscriptions
            found = None
        if found is None or application_id not in (None, found.application_id):
            raise NotFound(f"The object '{subscription_id}' does not exist.")
        return found

    def of_app(self, application_id: str) -> list[Subscription]:
        """The live subscriptions of an app."""
        now = self.clock.now()
        return [
            s
            for s in self.by_id.values()
            if s.application_id == application_id and s.expiration > now
        ]

    # -- create ----------------------------------------------------------------------------

    async def create(
        self,
        outbound: httpx.AsyncClient | None,
        *,
        mailbox: OutlookMailbox,
        application_id: str,
        body: dict[str, Any],
    ) -> Subscription:
        """Check ``body`` (the POST /subscriptions JSON), validate both URLs, store."""
        resource = _string(body, "resource")
        change_types = tuple(t.strip() for t in _string(body, "changeType").split(",") if t.strip())
        if not change_types or any(t not in CHANGE_TYPES for t in change_types):
            raise SubscriptionRefused(
                400, "InvalidRequest", f"changeType must be a comma list of {CHANGE_TYPES}."
            )
        folder_id = self._folder_of(resource, mailbox)
        notification_url = _string(body, "notificationUrl")
        lifecycle_url = body.get("lifecycleNotificationUrl")
        for url in (notification_url, lifecycle_url):
            if url is not None and (not isinstance(url, str) or not _is_http(url)):
                raise SubscriptionRefused(
                    400, "InvalidRequest", f"The notification URL must be https: {url!r}"
                )
        client_state = body.get("clientState")
        if client_state is not None and (
            not isinstance(client_state, str) or len(client_state) > MAX_CLIENT_STATE
        ):
            raise SubscriptionRefused(
                400,
                "InvalidRequest",
                f"clientState must be a string of at most {MAX_CLIENT_STATE} characters.",
            )
        expiration = self.expiration_for(_time(body))
        if self.conflict_on_duplicate and any(
            s.resource.lower() == resource.lower()
            and s.change_types == change_types
            and s.notification_url == notification_url
            and s.application_id == application_id
            for s in self.of_app(application_id)
        ):
            raise SubscriptionRefused(409, "Conflict", "A subscription already exists.")
        for url in (notification_url, lifecycle_url):
            if isinstance(url, str):
                await self.validate(outbound, url)
        subscription = Subscription(
            id=str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            email=mailbox.email,
            user_id=mailbox.user_id,
            application_id=application_id,
            resource=resource,
            change_types=change_types,
            notification_url=notification_url,
            lifecycle_url=lifecycle_url if isinstance(lifecycle_url, str) else None,
            client_state=client_state,
            expiration=expiration,
            tls_version=str(body.get("latestSupportedTlsVersion") or "v1_2"),
            folder_id=folder_id,
        )
        self.by_id[subscription.id] = subscription
        return subscription

    def _folder_of(self, resource: str, mailbox: OutlookMailbox) -> str | None:
        match = _RESOURCE.match(resource)
        if match is None:
            raise SubscriptionRefused(
                400, "ExtensionError", f"Resource '{resource}' is not supported for this operation."
            )
        user = match.group("user")
        if user is not None and user.lower() not in (mailbox.user_id, mailbox.email.lower()):
            raise SubscriptionRefused(403, "ExtensionError", "Access is denied to the resource.")
        ref = match.group("quoted") or match.group("plain")
        if ref is None:
            return None
        try:
            return mailbox.folder(ref).id
        except NotFound as exc:
            raise SubscriptionRefused(404, "ResourceNotFound", exc.message) from None

    async def validate(self, outbound: httpx.AsyncClient | None, url: str) -> None:
        """The validation handshake against ``url``; ``SubscriptionRefused`` if it fails."""
        token = (
            "Validation: Testing client application reachability for subscription Request-Id: "
            + str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        )
        separator = "&" if "?" in url else "?"
        target = f"{url}{separator}validationToken={quote(token, safe='')}"
        status: int | None = None
        problem: str | None = None
        if outbound is None:
            problem = "the simulator has no outbound HTTP client"
        else:
            try:
                response = await outbound.post(
                    target,
                    content=b"",
                    timeout=self.validation_timeout,
                    headers={"Content-Type": "text/plain; charset=utf-8"},
                )
                status = response.status_code
                media = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if status != 200:
                    problem = f"answered {status}"
                elif media != "text/plain":
                    problem = f"answered Content-Type {media or 'none'}, not text/plain"
                elif response.text != token:
                    problem = "answered a body that is not the decoded validation token"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
        self.validations.append(
            Validation(url, token, self.clock.now(), status, problem is None, problem)
        )
        if problem is not None:
            raise SubscriptionRefused(400, "ValidationError", VALIDATION_FAILED)

    # -- renew, delete, reauthorize, lifecycle ---------------------------------------------

    def renew(self, subscription: Subscription, wanted: datetime) -> Subscription:
        """``PATCH``: a new expiration under the same rules as creation."""
        subscription.expiration = self.expiration_for(wanted)
        return subscription

    def delete(self, subscription_id: str) -> None:
        """Remove a subscription (``NotFound`` if unknown)."""
        if self.by_id.pop(subscription_id, None) is None:
            raise NotFound(f"The object '{subscription_id}' does not exist.")

    def reauthorize(self, subscription: Subscription) -> None:
        """``POST /subscriptions/{id}/reauthorize``."""
        subscription.reauthorized_at = self.clock.now()

    def lifecycle(self, subscription_id: str, event: str) -> None:
        """Send lifecycle ``event`` to the subscription's lifecycle URL (``subscriptionRemoved``
        also deletes it). ``NotFound`` if unknown; ``ValueError`` for an unknown event or a
        subscription without a lifecycle URL."""
        if event not in LIFECYCLE_EVENTS:
            raise ValueError(f"lifecycle event must be one of {LIFECYCLE_EVENTS}")
        subscription = self.live(subscription_id)
        if subscription.lifecycle_url is None:
            raise ValueError("the subscription has no lifecycleNotificationUrl")
        item = {
            "subscriptionId": subscription.id,
            "subscriptionExpirationDateTime": subscription_time(subscription.expiration),
            "tenantId": self.tenant_id,
            "clientState": subscription.client_state,
            "lifecycleEvent": event,
        }
        self.notifier.enqueue(subscription.lifecycle_url, "lifecycle", item)
        if event == "subscriptionRemoved":
            del self.by_id[subscription.id]

    # -- change notifications --------------------------------------------------------------

    def on_change(
        self, mailbox: OutlookMailbox, kind: str, message: GraphMessage, left: str | None
    ) -> None:
        """Mailbox listener: queue a notification for every live subscription that wants it."""
        now = self.clock.now()
        for subscription in list(self.by_id.values()):
            if subscription.email != mailbox.email or subscription.expiration <= now:
                continue
            change = _change_for(subscription.folder_id, kind, message.folder_id, left)
            if change is None or change not in subscription.change_types:
                continue
            item = self.change_item(subscription, change, message.id, message.etag)
            if self.notifier.enqueue(subscription.notification_url, "change", item):
                subscription.notified += 1

    def change_item(
        self, subscription: Subscription, change: str, message_id: str, etag: str
    ) -> dict[str, Any]:
        """One change-notification item of ``subscription`` about a message, as Graph
        writes it (``id``: the notification's own, distinct for every item)."""
        path = f"Users/{subscription.user_id}/Messages/{message_id}"
        return {
            "id": f"simNotification{next(self._notification_ids):010d}",
            "subscriptionId": subscription.id,
            "subscriptionExpirationDateTime": subscription_time(subscription.expiration),
            "changeType": change,
            "resource": path,
            "resourceData": {
                "@odata.type": "#Microsoft.Graph.Message",
                "@odata.id": path,
                "@odata.etag": etag,
                "id": message_id,
            },
            "clientState": subscription.client_state,
            "tenantId": self.tenant_id,
        }


def _change_for(folder_id: str | None, kind: str, now_in: str, left: str | None) -> str | None:
    if folder_id is None:  # the whole mailbox: a move is an update of the message
        return "updated" if kind == "moved" else kind
    if kind == "moved":
        if now_in == folder_id:
            return "created"
        return "deleted" if left == folder_id else None
    if kind == "deleted":
        return "deleted" if left == folder_id else None
    return kind if now_in == folder_id else None


def _string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise SubscriptionRefused(400, "InvalidRequest", f"{name} is required.")
    return value


def _time(body: dict[str, Any]) -> datetime:
    try:
        return parse_time(_string(body, "expirationDateTime"))
    except ValueError:
        raise SubscriptionRefused(
            400, "InvalidRequest", "expirationDateTime is not a valid date and time."
        ) from None


def _is_http(url: str) -> bool:
    return url.startswith(("https://", "http://"))
