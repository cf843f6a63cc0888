"""`POST {base}/maildesk/push/outlook` (change notifications) and
`POST {base}/maildesk/push/outlook/lifecycle` (lifecycle notifications) from Microsoft Graph.

Answers, in the order they are checked (outlook-realtime-push-setup.txt, PROVIDERS.md):
- 405 for any method but POST;
- the validation handshake, on both URLs: ``?validationToken=…`` → at once, before anything
  else is read, 200 ``text/plain`` with the URL-decoded token (400 when it is empty or longer
  than ``MAX_VALIDATION_TOKEN``);
- 413 for a body over 64 KB, without reading it all;
- 400 when the body is not JSON of the shape ``{"value": [object, …]}``;
- 202 otherwise, fast, after the verified items are durably recorded. Graph is never asked to
  redeliver a batch it cannot improve: items that fail verification are dropped, not refused.

An item counts only if its ``subscriptionId`` is one of ours and its ``clientState`` matches
ours (constant-time comparison). Others are dropped and counted (``stats.dropped``) and, at most
every few seconds per mailbox and reason, put on the mailbox's timeline; one POST may carry
items of several subscriptions, each judged alone.

A verified change goes to the ``NotificationRecorder`` (timeline checkpoints 1 and 2,
``delivered`` and ``verified``, exactly as for Gmail; last notification; the sync stamp): the
sync runs in a worker, never in the request. A verified lifecycle notification is recorded and
its action noted on the subscription row; the push job performs it (``PushManager.
run_lifecycle``, woken through ``wake_push``): ``reauthorizationRequired`` → reauthorize and
renew, ``subscriptionRemoved`` → register anew and resync, ``missed`` → resync. Removed and
missed also stamp the mailbox at once, so polling catches up before any resubscription.

Neither the clientState, nor tokens, nor the body is ever logged.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from maildesk.clock import Clock
from maildesk.domain.accounts import ProviderKind
from maildesk.domain.push import LIFECYCLE_EVENTS, LifecycleAction, PushState
from maildesk.errors import ConfigError, WebhookRejected
from maildesk.push.body import read_limited
from maildesk.push.recorder import NotificationRecorder
from maildesk.secretbox import SecretBox
from maildesk.store import accounts as account_store
from maildesk.store import push as push_store
from maildesk.store.database import Database

log = logging.getLogger(__name__)

MAX_VALIDATION_TOKEN = 1024  # Graph's tokens are ~100 characters
CONFIG_TTL = timedelta(seconds=5)
# An unknown subscription id reloads the cache at most this often: a subscription registered
# by another process is recognised within a second, and forged ids cannot hammer the database.
MISS_RELOAD_AFTER = timedelta(seconds=1)
REJECTION_LOG_EVERY = timedelta(seconds=10)

UNKNOWN_SUBSCRIPTION = "unknown subscription"
CLIENT_STATE_MISMATCH = "clientState mismatch"
UNKNOWN_LIFECYCLE_EVENT = "unknown lifecycle event"

_SYNC_REASON = {"missed": "push_missed", "subscriptionRemoved": "push_removed"}


@dataclass(frozen=True, slots=True)
class GraphNotification:
    """One item of a Graph notification POST (change or lifecycle), as far as we use it."""

    subscription_id: str
    client_state: str | None
    change_type: str = ""
    lifecycle_event: str = ""


def parse_notifications(body: bytes) -> list[GraphNotification]:
    """``{"value": [item, …]}`` → items; ``WebhookRejected(400)`` for anything else. Item
    fields of the wrong type are treated as missing (the item then fails verification)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise WebhookRejected(400, "body is not JSON") from exc
    if not isinstance(data, dict) or not isinstance(data.get("value"), list):
        raise WebhookRejected(400, "not a Graph notification batch")
    items = []
    for raw in data["value"]:
        if not isinstance(raw, dict):
            raise WebhookRejected(400, "a notification item is not an object")
        state = raw.get("clientState")
        items.append(GraphNotification(
            _text(raw, "subscriptionId"), state if isinstance(state, str) else None,
            _text(raw, "changeType"), _text(raw, "lifecycleEvent"),
        ))
    return items


def _text(item: dict[str, object], name: str) -> str:
    value = item.get(name)
    return value if isinstance(value, str) else ""


@dataclass(slots=True)
class _Subscriptions:
    by_id: dict[str, tuple[int, str]]  # subscription id -> (account id, clientState)
    loaded_at: datetime


@dataclass(slots=True)
class OutlookWebhookStats:
    answers: Counter[int] = field(default_factory=Counter)
    accepted: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    lifecycle: Counter[str] = field(default_factory=Counter)


class OutlookWebhook:
    """``wake`` wakes the sync worker (a mailbox was stamped); ``wake_push`` asks for the push
    job to run soon (a lifecycle action is pending)."""

    def __init__(
        self,
        *,
        db: Database,
        clock: Clock,
        secrets: SecretBox,
        recorder: NotificationRecorder,
        wake: Callable[[], None],
        wake_push: Callable[[], None],
    ) -> None:
        self._db = db
        self._clock = clock
        self._secrets = secrets
        self._recorder = recorder
        self._wake = wake
        self._wake_push = wake_push
        self._subs: _Subscriptions | None = None
        self._plain: dict[str, str] = {}  # encrypted clientState -> clientState
        self._lock = asyncio.Lock()
        self._last_rejection_logged: dict[tuple[int | None, str], datetime] = {}
        self.stats = OutlookWebhookStats()

    def invalidate(self) -> None:
        """Forget the cached subscriptions (after a registration change in this process)."""
        self._subs = None

    async def notifications(self, request: Request) -> Response:
        return await self._answer(request, lifecycle=False)

    async def lifecycle(self, request: Request) -> Response:
        return await self._answer(request, lifecycle=True)

    # -------------------------------------------------------------------------------------
    async def _answer(self, request: Request, *, lifecycle: bool) -> Response:
        try:
            if request.method != "POST":
                raise WebhookRejected(405, "method not allowed")
            if "validationToken" in request.query_params:
                response = self._handshake(request.query_params["validationToken"])
                self.stats.answers[200] += 1
                return response
            body = await read_limited(request)
            items = parse_notifications(body)
            if lifecycle:
                await self._lifecycle(items)
            else:
                await self._changes(items)
        except WebhookRejected as exc:
            self.stats.answers[exc.status] += 1
            log.info("outlook push rejected: %s", exc.reason)
            headers = {"Allow": "POST"} if exc.status == 405 else None
            return JSONResponse({"error": _PUBLIC_REASON.get(exc.status, "rejected")},
                                status_code=exc.status, headers=headers)
        self.stats.answers[202] += 1
        return Response(status_code=202)

    def _handshake(self, token: str) -> Response:
        # Starlette has already URL-decoded the query string. The token is echoed as plain text
        # (never sniffed as HTML) and never logged.
        if not token or len(token) > MAX_VALIDATION_TOKEN:
            raise WebhookRejected(400, "validation token empty or too long")
        log.info("outlook push: validation handshake answered")
        return PlainTextResponse(token, status_code=200,
                                 headers={"X-Content-Type-Options": "nosniff"})

    async def _changes(self, items: list[GraphNotification]) -> None:
        verified = await self._verify(items)
        changes: dict[int, Counter[str]] = {}
        for account_id, item in verified:
            changes.setdefault(account_id, Counter())[item.change_type or "change"] += 1
        if not changes:
            return
        self.stats.accepted += len(verified)
        details = {
            account_id: ", ".join(f"{kind} x{n}" for kind, n in sorted(kinds.items()))
            for account_id, kinds in changes.items()
        }
        if len(details) == 1:
            [(account_id, detail)] = details.items()
            await self._recorder.notified(account_id, ProviderKind.OUTLOOK, detail)
            return
        # Several mailboxes in one POST: recorded concurrently, so the recorder's group commit
        # makes them one or two transactions instead of one each.
        try:
            async with asyncio.TaskGroup() as group:
                for account_id, detail in details.items():
                    group.create_task(
                        self._recorder.notified(account_id, ProviderKind.OUTLOOK, detail))
        except BaseExceptionGroup as eg:
            raise eg.exceptions[0] from None

    async def _lifecycle(self, items: list[GraphNotification]) -> None:
        verified = await self._verify(items)
        known = []
        unknown: list[tuple[int | None, str]] = []
        for account_id, item in verified:
            if item.lifecycle_event in LIFECYCLE_EVENTS:
                known.append((account_id, item))
            else:
                unknown.append((account_id, UNKNOWN_LIFECYCLE_EVENT))
        await self._note_drops(unknown)
        if not known:
            return
        now = self._clock.now()
        stamped = marked = False
        async with self._db.transaction() as conn:
            events = []
            for account_id, item in known:
                event = item.lifecycle_event
                self.stats.lifecycle[event] += 1
                events.append({"account_id": account_id, "provider": ProviderKind.OUTLOOK.value,
                               "kind": "lifecycle", "detail": event, "at": now})
                action = LIFECYCLE_EVENTS[event]
                if action is not None:
                    # Removed: push is not delivering until the new subscription exists, so
                    # the mailbox is polled at the normal interval meanwhile.
                    state = PushState.RECOVERING if action is LifecycleAction.RECREATE else None
                    marked |= await push_store.mark_lifecycle(
                        conn, account_id=account_id, provider=ProviderKind.OUTLOOK,
                        subscription_id=item.subscription_id, action=action, now=now,
                        state=state,
                    )
                if event in _SYNC_REASON:
                    await account_store.request_sync(conn, account_id,
                                                     reason=_SYNC_REASON[event], now=now)
                    stamped = True
            await push_store.add_events(conn, events)
        log.info("outlook push: %d lifecycle notification(s) recorded", len(known))
        if stamped:
            self._wake()
        if marked:
            self._wake_push()

    async def _verify(
        self, items: list[GraphNotification]
    ) -> list[tuple[int, GraphNotification]]:
        """The items that are ours and carry our clientState; the rest are dropped, counted."""
        if not items:
            return []
        subs = await self._load({item.subscription_id for item in items})
        verified: list[tuple[int, GraphNotification]] = []
        drops: list[tuple[int | None, str]] = []
        for item in items:
            entry = subs.by_id.get(item.subscription_id)
            if entry is None:
                drops.append((None, UNKNOWN_SUBSCRIPTION))
                continue
            account_id, expected = entry
            given = item.client_state
            if given is None or not hmac.compare_digest(expected.encode(), given.encode()):
                drops.append((account_id, CLIENT_STATE_MISMATCH))
                continue
            verified.append((account_id, item))
        await self._note_drops(drops)
        return verified

    async def _load(self, wanted: set[str]) -> _Subscriptions:
        def fresh(subs: _Subscriptions | None, now: datetime) -> bool:
            if subs is None or now - subs.loaded_at >= CONFIG_TTL:
                return False
            return wanted <= subs.by_id.keys() or now - subs.loaded_at < MISS_RELOAD_AFTER

        now = self._clock.now()
        subs = self._subs
        if subs is not None and fresh(subs, now):
            return subs
        async with self._lock:
            # Single flight: under load one request reloads, the others use its result.
            subs = self._subs
            if subs is not None and fresh(subs, now):
                return subs
            return await self._reload(now)

    async def _reload(self, now: datetime) -> _Subscriptions:
        async with self._db.read() as conn:
            rows = await push_store.client_states(conn, ProviderKind.OUTLOOK)
        by_id: dict[str, tuple[int, str]] = {}
        plain: dict[str, str] = {}
        for subscription_id, account_id, encrypted in rows:
            state = self._plain.get(encrypted)
            if state is None:
                try:
                    state = self._secrets.decrypt(encrypted)
                except ConfigError:
                    log.warning("account %s: the stored Graph clientState cannot be decrypted "
                                "with the configured keys; its notifications are dropped",
                                account_id)
                    continue
            plain[encrypted] = state
            by_id[subscription_id] = (account_id, state)
        self._plain = plain  # only what is still in use stays in memory
        self._subs = _Subscriptions(by_id, now)
        return self._subs

    async def _note_drops(self, drops: list[tuple[int | None, str]]) -> None:
        """Count dropped items, and put them on the mailbox's timeline (checkpoint 1 seen, 2
        failed) at most every few seconds per mailbox and reason: forged requests must not cost
        a write each. Drops for no known mailbox are recorded without one."""
        if not drops:
            return
        counts = Counter(drops)
        for (_, reason), n in counts.items():
            self.stats.dropped[reason] += n
        log.info("outlook push: dropped %d item(s): %s", len(drops),
                 ", ".join(sorted({reason for _, reason in drops})))
        now = self._clock.now()
        events = []
        for key in counts:
            last = self._last_rejection_logged.get(key)
            if last is not None and now - last < REJECTION_LOG_EVERY:
                continue
            self._last_rejection_logged[key] = now
            account_id, reason = key
            if account_id is not None:
                events.append({"account_id": account_id, "provider": ProviderKind.OUTLOOK.value,
                               "kind": "delivered", "detail": "unverified", "at": now})
            events.append({"account_id": account_id, "provider": ProviderKind.OUTLOOK.value,
                           "kind": "rejected", "detail": reason, "at": now})
        if events:
            async with self._db.transaction() as conn:
                await push_store.add_events(conn, events)


_PUBLIC_REASON = {
    400: "not a Microsoft Graph notification",
    405: "method not allowed",
    413: "body too large",
}
