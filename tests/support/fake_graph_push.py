"""An in-memory Microsoft Graph for push tests: ``/me`` and the subscription endpoints.

Behaves like Graph where push registration depends on it: an expiration beyond ``max_lifetime``
is shortened (the caller must store what comes back), a duplicate subscription (same resource
and notification URL) answers 409 when ``conflict_on_duplicate``, an unknown id answers 404
(``MessageGone``) on renew/reauthorize, delete of an unknown id is a no-op. With ``validator``
set, creation first performs the validation handshake on both URLs, like Graph does, and fails
with a 400 ``ProviderRejected`` if either answer is wrong. ``fail`` queues errors per method.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import httpx
from starlette.applications import Starlette

from maildesk.clock import Clock
from maildesk.domain.accounts import ProviderKind, TokenKind
from maildesk.domain.mail import RemoteBody, RemoteFolder, RemoteMessage
from maildesk.errors import MailDeskError, MessageGone, ProviderRejected
from maildesk.providers.graph_types import DeltaPage, GraphApi, GraphProfile, GraphSubscription
from maildesk.push.manager import GmailPush, PushManager
from maildesk.push.outlook import OutlookPush
from maildesk.push.outlook_webhook import OutlookWebhook
from maildesk.push.recorder import NotificationRecorder
from maildesk.push.routes import push_routes
from maildesk.store import accounts as account_store
from maildesk.store.accounts import AccountRow
from tests.support.harness import Harness

_IDS = itertools.count(1)


def _resource(resource: str) -> str:
    return resource.strip("/").lower()


@dataclass(slots=True)
class FakeSubscription:
    sub: GraphSubscription
    lifecycle_url: str
    client_state: str
    reauthorized: int = 0


@dataclass(slots=True)
class FakeGraphPush:
    clock: Clock
    email: str = "user@contoso.example"
    max_lifetime: timedelta = timedelta(minutes=4230)
    conflict_on_duplicate: bool = True
    validator: Callable[[str], Awaitable[bool]] | None = None
    subscriptions: dict[str, FakeSubscription] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    fail: dict[str, list[MailDeskError]] = field(default_factory=dict)

    def _maybe_fail(self, method: str) -> None:
        self.calls.append(method)
        queue = self.fail.get(method)
        if queue:
            raise queue.pop(0)

    def _expiry(self, asked: datetime) -> datetime:
        now = self.clock.now()
        return max(now + timedelta(minutes=45), min(asked, now + self.max_lifetime))

    # --- GraphApi ---------------------------------------------------------------------------
    async def profile(self) -> GraphProfile:
        self._maybe_fail("profile")
        return GraphProfile(self.email, "User")

    async def create_subscription(
        self, *, resource: str, change_type: str, notification_url: str, lifecycle_url: str,
        expiration: datetime, client_state: str,
    ) -> GraphSubscription:
        self._maybe_fail("create_subscription")
        assert len(client_state) <= 128
        if self.conflict_on_duplicate and any(
            _resource(s.sub.resource) == _resource(resource)
            and s.sub.notification_url == notification_url
            for s in self.subscriptions.values()
        ):
            raise ProviderRejected("Conflict: a subscription already exists", status=409)
        if self.validator is not None:
            for url in (notification_url, lifecycle_url):
                if not await self.validator(url):
                    raise ProviderRejected("ValidationError: Subscription validation request "
                                           "failed.", status=400)
        sid = f"sub-{next(_IDS)}"  # unique across fakes, like Graph's GUIDs
        sub = GraphSubscription(sid, resource, self._expiry(expiration), change_type,
                                notification_url)
        self.subscriptions[sid] = FakeSubscription(sub, lifecycle_url, client_state)
        return sub

    async def list_subscriptions(self) -> list[GraphSubscription]:
        self._maybe_fail("list_subscriptions")
        return [s.sub for s in self.subscriptions.values()]

    async def renew_subscription(self, subscription_id: str, expiration: datetime
                                 ) -> GraphSubscription:
        self._maybe_fail("renew_subscription")
        found = self.subscriptions.get(subscription_id)
        if found is None or found.sub.expiration <= self.clock.now():
            raise MessageGone(f"subscription {subscription_id} not found")
        found.sub = replace(found.sub, expiration=self._expiry(expiration))
        return found.sub

    async def reauthorize_subscription(self, subscription_id: str) -> None:
        self._maybe_fail("reauthorize_subscription")
        found = self.subscriptions.get(subscription_id)
        if found is None:
            raise MessageGone(f"subscription {subscription_id} not found")
        found.reauthorized += 1

    async def delete_subscription(self, subscription_id: str) -> None:
        self._maybe_fail("delete_subscription")
        self.subscriptions.pop(subscription_id, None)

    # --- not used by push --------------------------------------------------------------------
    async def folders(self) -> list[RemoteFolder]:
        raise NotImplementedError

    async def newest(self, folder_id: str, count: int) -> list[RemoteMessage]:
        raise NotImplementedError

    async def delta(self, folder_id: str, link: str | None, *, page_size: int) -> DeltaPage:
        raise NotImplementedError

    async def get_body(self, remote_id: str) -> RemoteBody:
        raise NotImplementedError

    async def send_mime(self, message: bytes) -> None:
        raise NotImplementedError

    # --- test helpers ------------------------------------------------------------------------
    def only(self) -> FakeSubscription:
        assert len(self.subscriptions) == 1, self.subscriptions
        return next(iter(self.subscriptions.values()))

    def drop(self, subscription_id: str) -> None:
        """Graph removed the subscription on its own."""
        del self.subscriptions[subscription_id]


# --- a rig: the Outlook push pieces wired on a Harness, as services.py will wire them ----------

BASE = "https://maildesk.example.com"


@dataclass(slots=True)
class OutlookRig:
    h: Harness
    push: PushManager
    webhook: OutlookWebhook
    client: httpx.AsyncClient
    graphs: dict[int, FakeGraphPush]
    wakes: Counter[str]
    handshakes: list[str]

    async def add_outlook(self, email: str, *, token_kind: str | None = TokenKind.GRAPH,
                          refresh_token: bool = True) -> int:
        secrets = self.h.services.secrets
        async with self.h.services.db.transaction() as conn:
            return await account_store.create(
                conn, provider=ProviderKind.OUTLOOK, email=email, now=self.h.clock.now(),
                refresh_token_enc=secrets.encrypt(f"refresh-{email}") if refresh_token else None,
                token_kind=token_kind,
            )

    def graph(self, account_id: int) -> FakeGraphPush:
        return self.graphs[account_id]


@contextlib.asynccontextmanager
async def outlook_rig(
    h: Harness, *, base_url: str = BASE, allow_loopback: bool = False, validate: bool = True,
) -> AsyncIterator[OutlookRig]:
    settings = h.services.settings.replace(base_url=base_url,
                                           allow_loopback_webhooks=allow_loopback)
    services = h.services
    wakes: Counter[str] = Counter()
    graphs: dict[int, FakeGraphPush] = {}
    handshakes: list[str] = []
    recorder = NotificationRecorder(services.db, h.clock, lambda: wakes.update(["sync"]))
    webhook = OutlookWebhook(
        db=services.db, clock=h.clock, secrets=services.secrets, recorder=recorder,
        wake=lambda: wakes.update(["sync"]), wake_push=lambda: wakes.update(["push"]),
    )
    app = Starlette(routes=push_routes(services.gmail_webhook, webhook))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url=base_url) as client:

        async def validator(url: str) -> bool:
            # What Graph does before it answers a create: POST ?validationToken=<encoded>.
            token = f"Validation: Testing client application reachability {len(handshakes)}"
            answer = await client.post(url, params={"validationToken": token},
                                       headers={"Content-Type": "text/plain; charset=utf-8"})
            handshakes.append(url)
            return (answer.status_code == 200 and answer.text == token
                    and answer.headers["content-type"].startswith("text/plain"))

        def graph_for(account: AccountRow) -> GraphApi:
            if account.id not in graphs:
                graphs[account.id] = FakeGraphPush(
                    h.clock, email=account.email, validator=validator if validate else None)
            return graphs[account.id]

        push = PushManager(
            db=services.db, clock=h.clock, settings=settings,
            adapters=[GmailPush(services.connectors.gmail),
                      OutlookPush(graph_for=graph_for, secrets=services.secrets,
                                  settings=settings, clock=h.clock)],
            wake=lambda: wakes.update(["sync"]), on_config_change=webhook.invalidate,
            secrets=services.secrets,
        )
        yield OutlookRig(h, push, webhook, client, graphs, wakes, handshakes)
