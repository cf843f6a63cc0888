"""`POST {base}/maildesk/push/gmail`: the Pub/Sub push endpoint for Gmail notifications.

Answers, in the order they are checked (gmail-realtime-lifecycle.txt):
- 405 for any method but POST (the setup preflight GETs it to prove reachability);
- 413 for a body over 64 KB, without reading it all;
- 401 without ``Authorization: Bearer``;
- 503 when no audience or signer allow-list is configured for any mailbox;
- 403 when the OIDC token fails any check (signature, issuer, times, audience, signer);
- 400 when an authentic request does not carry a Gmail notification;
- 202 otherwise, fast, after the notification is durably recorded; the sync runs in a worker.

A notification for an address no mailbox here has push configured for gets 202 as well: it is
authentic, redelivery could never succeed (it usually is a mailbox removed from MailDesk whose
watch has not expired yet), so acknowledging is right; it is counted in ``stats``.
Neither the token nor the body is ever logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from maildesk.clock import Clock
from maildesk.domain.accounts import ProviderKind
from maildesk.errors import WebhookRejected
from maildesk.providers.pubsub_wire import parse_gmail_push, peek_email
from maildesk.push.body import read_limited
from maildesk.push.oidc import KeySource, bearer_token, verify_push_token
from maildesk.push.recorder import NotificationRecorder
from maildesk.store import push as push_store
from maildesk.store.database import Database

log = logging.getLogger(__name__)

CONFIG_TTL = timedelta(seconds=5)
REJECTION_LOG_EVERY = timedelta(seconds=10)


@dataclass(slots=True)
class _Config:
    audiences: frozenset[str]
    signers: frozenset[str]
    # email -> (account id, the audiences and signers that mailbox configured)
    mailboxes: dict[str, tuple[int, frozenset[str], frozenset[str]]]
    loaded_at: datetime


@dataclass(slots=True)
class WebhookStats:
    answers: Counter[int] = field(default_factory=Counter)
    unknown_mailbox: int = 0


class GmailWebhook:
    def __init__(
        self, *, db: Database, clock: Clock, keys: KeySource, recorder: NotificationRecorder
    ) -> None:
        self._db = db
        self._clock = clock
        self._keys = keys
        self._recorder = recorder
        self._config: _Config | None = None
        self._config_lock = asyncio.Lock()
        self._last_rejection_logged: dict[tuple[int, str], datetime] = {}
        self.stats = WebhookStats()

    def invalidate(self) -> None:
        """Forget the cached push configuration (after enable/disable in this process)."""
        self._config = None

    async def __call__(self, request: Request) -> Response:
        try:
            status = await self._handle(request)
        except WebhookRejected as exc:
            status = exc.status
            log.info("gmail push rejected: %s", exc.reason)
        self.stats.answers[status] += 1
        if status == 202:
            return Response(status_code=202)
        headers = {"Allow": "POST"} if status == 405 else None
        return JSONResponse({"error": _PUBLIC_REASON.get(status, "rejected")},
                            status_code=status, headers=headers)

    async def _handle(self, request: Request) -> int:
        if request.method != "POST":
            return 405
        body = await read_limited(request)
        token = bearer_token(request.headers.get("authorization"))
        config = await self._load_config()
        if not config.audiences or not config.signers:
            raise WebhookRejected(503, "no Gmail push audience/signer is configured")
        try:
            identity = await verify_push_token(
                token, self._keys, audiences=config.audiences, signers=config.signers,
                now=self._clock.now().timestamp(),
            )
        except WebhookRejected as exc:
            await self._note_rejection(config, body, exc.reason)
            raise
        notification = parse_gmail_push(body)
        mailbox = config.mailboxes.get(notification.email)
        if mailbox is None or identity.audience not in mailbox[1] or (
            identity.email not in mailbox[2]
        ):
            self.stats.unknown_mailbox += 1
            return 202
        await self._recorder.notified(
            mailbox[0], ProviderKind.GMAIL, f"historyId {notification.history_id}"
        )
        return 202

    async def _load_config(self) -> _Config:
        now = self._clock.now()
        if self._config is not None and now - self._config.loaded_at < CONFIG_TTL:
            return self._config
        async with self._config_lock:
            # Single flight: when the cache expires under load, one request reloads and the
            # others use its result instead of all reading the database at once.
            if self._config is not None and now - self._config.loaded_at < CONFIG_TTL:
                return self._config
            return await self._reload(now)

    async def _reload(self, now: datetime) -> _Config:
        async with self._db.read() as conn:
            rows = await push_store.gmail_verification_config(conn)
        audiences: set[str] = set()
        signers: set[str] = set()
        mailboxes: dict[str, tuple[int, frozenset[str], frozenset[str]]] = {}
        for account_id, email, _state, settings in rows:
            auds = frozenset(filter(None, [settings.get("audience", "")]))
            sigs = frozenset(settings.get("signers", []))
            audiences |= auds
            signers |= sigs
            mailboxes[email.lower()] = (account_id, auds, sigs)
        self._config = _Config(frozenset(audiences), frozenset(signers), mailboxes, now)
        return self._config

    async def _note_rejection(self, config: _Config, body: bytes, reason: str) -> None:
        """Put a rejected delivery on the mailbox's timeline (checkpoint 1 seen, 2 failed), at
        most every few seconds per mailbox and reason: forged requests must not cost writes."""
        email = peek_email(body)
        mailbox = config.mailboxes.get(email) if email else None
        if mailbox is None:
            return
        now = self._clock.now()
        key = (mailbox[0], reason)
        last = self._last_rejection_logged.get(key)
        if last is not None and now - last < REJECTION_LOG_EVERY:
            return
        self._last_rejection_logged[key] = now
        async with self._db.transaction() as conn:
            await push_store.add_events(conn, [
                {"account_id": mailbox[0], "provider": "gmail", "kind": kind,
                 "detail": detail, "at": now}
                for kind, detail in (("delivered", "unverified"), ("rejected", reason))
            ])


_PUBLIC_REASON = {
    400: "not a Gmail push notification",
    401: "authorization required",
    403: "forbidden",
    405: "method not allowed",
    413: "body too large",
    503: "push verification is not configured",
}

