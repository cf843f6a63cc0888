"""Outlook / Microsoft 365 push: Microsoft Graph change-notification subscriptions.

The ``ProviderPush`` adapter for ``PushManager`` (which owns the one lifecycle shared with
Gmail). What is Outlook-specific:

- *Readiness*: an Outlook mailbox with a stored refresh token of the Graph kind (an IMAP-only
  token cannot call Graph), a public ``https://`` ``MAILDESK_BASE_URL`` (``domain.push``), and
  a usable token, proven by a real ``GET /me`` (which refreshes it).
- *Register*: a fresh ``clientState`` every time (``secrets.token_urlsafe``, 43 characters,
  Graph allows 128), stored encrypted; ``POST /subscriptions`` on ``/me/messages`` for
  ``created,updated,deleted`` with both webhook URLs. Graph validates both URLs before it
  answers (the webhook answers the handshake). The expiration stored is the one Graph returns.
  A 409 (a duplicate left behind) → delete our subscriptions on the same resource and URL, then
  create once more.
- *Renew*: ``PATCH`` the expiration to now + ``MAILDESK_OUTLOOK_SUBSCRIPTION_LIFETIME``. A
  subscription Graph no longer has (404 → ``MessageGone``), one already expired, or one whose
  webhook URL no longer matches ``MAILDESK_BASE_URL`` is recreated (new ``clientState``) and
  the mailbox resynced. Pending lifecycle actions ride on renewal: ``reauthorize`` first calls
  ``POST /subscriptions/{id}/reauthorize``; ``recreate`` registers anew.
- *Stop*: ``DELETE /subscriptions/{id}``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from maildesk.clock import Clock
from maildesk.config import Settings
from maildesk.domain.accounts import ProviderKind
from maildesk.domain.push import LifecycleAction, PushState, check_outlook_ready
from maildesk.errors import MessageGone, ProviderRejected, TransientError
from maildesk.providers.graph_types import GraphApi, GraphSubscription
from maildesk.push.manager import Registration
from maildesk.secretbox import SecretBox
from maildesk.store.accounts import AccountRow
from maildesk.store.push import LIFECYCLE_KEY, SubscriptionRow

log = logging.getLogger(__name__)

RESOURCE = "/me/messages"
CHANGE_TYPE = "created,updated,deleted"
NOTIFICATION_PATH = "/maildesk/push/outlook"
LIFECYCLE_PATH = "/maildesk/push/outlook/lifecycle"
CLIENT_STATE_BYTES = 32  # token_urlsafe(32) is 43 characters; Graph accepts up to 128


def webhook_urls(base_url: str) -> tuple[str, str]:
    """(notification URL, lifecycle notification URL) under ``MAILDESK_BASE_URL``."""
    base = base_url.rstrip("/")
    return f"{base}{NOTIFICATION_PATH}", f"{base}{LIFECYCLE_PATH}"


def new_client_state() -> str:
    state = secrets.token_urlsafe(CLIENT_STATE_BYTES)
    assert len(state) <= 128
    return state


def _same_resource(a: str, b: str) -> bool:
    # Graph echoes the resource as given, or without the leading slash, in any case.
    return a.strip("/").lower() == b.strip("/").lower()


class OutlookPush:
    """``graph_for(account)`` gives that mailbox's Graph client (it takes the account row, not
    the id, because the client depends on the tenant kept in the account's settings:
    ``lambda a: connectors.graph(a.id, a.tenant)``); ``secrets`` encrypts the
    ``clientState`` at rest."""

    provider = ProviderKind.OUTLOOK

    def __init__(
        self,
        *,
        graph_for: Callable[[AccountRow], GraphApi],
        secrets: SecretBox,
        settings: Settings,
        clock: Clock,
    ) -> None:
        self._graph_for = graph_for
        self._secrets = secrets
        self._settings = settings
        self._clock = clock

    @property
    def notification_url(self) -> str:
        return webhook_urls(self._settings.base_url)[0]

    async def check_ready(self, account: AccountRow) -> None:
        check_outlook_ready(
            provider=account.provider, has_refresh_token=bool(account.refresh_token_enc),
            token_kind=account.token_kind, base_url=self._settings.base_url,
            allow_loopback=self._settings.allow_loopback_webhooks,
        )
        # A usable token: a real call, which refreshes the grant (typed errors propagate:
        # OAuthInvalid, WrongTokenKind, ScopeMissing, ProviderUnavailable ...).
        await self._graph_for(account).profile()

    async def register(
        self, account: AccountRow, settings: dict[str, Any],
        previous: SubscriptionRow | None = None,
    ) -> Registration:
        graph = self._graph_for(account)
        if previous is not None and previous.sub.subscription_id and (
            previous.sub.state is not PushState.STOPPED
        ):
            await self._forget(graph, previous.sub.subscription_id)
        return await self._create(graph, resync=False)

    async def renew(self, account: AccountRow, row: SubscriptionRow) -> Registration:
        graph = self._graph_for(account)
        now = self._clock.now()
        action = row.settings.get(LIFECYCLE_KEY)
        subscription_id = row.sub.subscription_id
        if (
            action == LifecycleAction.RECREATE
            or not subscription_id
            or row.sub.expiration is None
            or row.sub.expiration <= now
            or row.settings.get("notification_url") != self.notification_url
        ):
            if subscription_id:
                await self._forget(graph, subscription_id)
            return await self._create(graph, resync=True)
        try:
            if action == LifecycleAction.REAUTHORIZE:
                await graph.reauthorize_subscription(subscription_id)
            renewed = await graph.renew_subscription(subscription_id, now + self._lifetime)
        except MessageGone:
            log.info("account %s: the Graph subscription is gone; creating a new one",
                     account.id)
            return await self._create(graph, resync=True)
        return Registration(RESOURCE, renewed.id, renewed.expiration, self._registered_settings())

    async def stop(self, account: AccountRow, row: SubscriptionRow) -> None:
        if row.sub.subscription_id:
            await self._graph_for(account).delete_subscription(row.sub.subscription_id)

    # -------------------------------------------------------------------------------------
    @property
    def _lifetime(self) -> timedelta:
        return timedelta(seconds=self._settings.outlook_subscription_lifetime)

    def _registered_settings(self) -> dict[str, Any]:
        # Non-secret: shown in push status. The pending lifecycle action is dropped with it.
        notification_url, lifecycle_url = webhook_urls(self._settings.base_url)
        return {"notification_url": notification_url, "lifecycle_url": lifecycle_url,
                "change_type": CHANGE_TYPE}

    async def _create(self, graph: GraphApi, *, resync: bool) -> Registration:
        client_state = new_client_state()
        try:
            created = await self._create_once(graph, client_state)
        except ProviderRejected as exc:
            if exc.status != 409:
                raise
            # A duplicate of ours is left at Graph (e.g. a registration whose answer we never
            # stored): remove every subscription of ours on this resource and URL, then retry.
            for sub in await graph.list_subscriptions():
                if _same_resource(sub.resource, RESOURCE) and (
                    sub.notification_url == self.notification_url
                ):
                    await graph.delete_subscription(sub.id)
            created = await self._create_once(graph, client_state)
        return Registration(
            RESOURCE, created.id, created.expiration, self._registered_settings(),
            client_state_enc=self._secrets.encrypt(client_state), resync=resync,
        )

    async def _create_once(self, graph: GraphApi, client_state: str) -> GraphSubscription:
        notification_url, lifecycle_url = webhook_urls(self._settings.base_url)
        return await graph.create_subscription(
            resource=RESOURCE, change_type=CHANGE_TYPE, notification_url=notification_url,
            lifecycle_url=lifecycle_url, expiration=self._clock.now() + self._lifetime,
            client_state=client_state,
        )

    async def _forget(self, graph: GraphApi, subscription_id: str) -> None:
        """Delete a subscription being replaced, best effort: one we cannot delete expires by
        itself, and its notifications are dropped as not ours once the row names the new one.
        Auth errors propagate (creating the new one would fail the same way)."""
        with contextlib.suppress(MessageGone, ProviderRejected, TransientError):
            await graph.delete_subscription(subscription_id)
