"""Registration, renewal, stop and silence detection of push subscriptions.

One lifecycle for every provider (the state machine is in ``domain/push.py``); what differs per
provider is only how a subscription is created, renewed and stopped, which ``ProviderPush``
adapters supply (``GmailPush`` here, ``OutlookPush`` in ``push/outlook.py``). The push job
(``run_job``) performs pending lifecycle actions (Graph's reauthorize / recreate requests, noted
by the webhook and never performed inside a request), renews what is due and runs the silence
detector, for every provider in one pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from maildesk.clock import Clock
from maildesk.config import Settings
from maildesk.domain.accounts import ProviderKind
from maildesk.domain.push import (
    PushState,
    check_gmail_ready,
    renewal_due,
    renewal_window,
    silent,
)
from maildesk.errors import ConfigError, InputError, MailDeskError, NotReady
from maildesk.providers.gmail import GmailApi
from maildesk.secretbox import SecretBox
from maildesk.store import accounts as account_store
from maildesk.store import push as push_store
from maildesk.store.accounts import AccountRow
from maildesk.store.database import Database
from maildesk.store.push import SubscriptionRow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Registration:
    """What a provider answered to a registration or renewal.

    ``client_state_enc``: a new (encrypted) shared secret to store, or None to keep the stored
    one. ``resync``: the subscription was recreated (changes may have been missed meanwhile), so
    the mailbox is stamped for a sync once the registration is stored.
    """

    resource: str
    subscription_id: str
    expiration: datetime
    settings: dict[str, Any]
    client_state_enc: str | None = None
    resync: bool = False


class ProviderPush(Protocol):
    provider: ProviderKind

    async def check_ready(self, account: AccountRow) -> None:
        """The readiness guard: raises NotReady with the reason, or a typed provider error
        from a real check that the stored grant works."""
        ...

    async def register(
        self, account: AccountRow, settings: dict[str, Any], previous: SubscriptionRow | None
    ) -> Registration:
        """Register anew; ``previous`` is the row being replaced, if any."""
        ...

    async def renew(self, account: AccountRow, row: SubscriptionRow) -> Registration: ...

    async def stop(self, account: AccountRow, row: SubscriptionRow) -> None: ...


class GmailPush:
    """``gmail_for(account_id)`` gives that mailbox's Gmail client (``connectors.gmail``)."""

    provider = ProviderKind.GMAIL

    def __init__(self, gmail_for: Callable[[int], GmailApi]) -> None:
        self._gmail_for = gmail_for

    async def check_ready(self, account: AccountRow) -> None:
        check_gmail_ready(provider=account.provider,
                          has_refresh_token=bool(account.refresh_token_enc),
                          scopes=account.scopes)

    async def register(
        self, account: AccountRow, settings: dict[str, Any],
        previous: SubscriptionRow | None = None,
    ) -> Registration:
        topic = settings["topic"]
        result = await self._gmail_for(account.id).watch(topic, ["INBOX"], "include")
        return Registration(topic, str(result.history_id), result.expiration, settings)

    async def renew(self, account: AccountRow, row: SubscriptionRow) -> Registration:
        return await self.register(account, row.settings, row)

    async def stop(self, account: AccountRow, row: SubscriptionRow) -> None:
        await self._gmail_for(account.id).stop()


def gmail_push_settings(*, project: str, topic: str, audience: str, signers: list[str]) -> dict[
        str, Any]:
    """Validate and normalise what an administrator gives for Gmail push (non-secret ids)."""
    project, topic, audience = project.strip(), topic.strip(), audience.strip()
    if not project:
        raise InputError("the Google Cloud project id is required")
    if "/" not in topic:
        topic = f"projects/{project}/topics/{topic}"
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != "topics" or not parts[3]:
        raise InputError("the topic must be projects/PROJECT/topics/NAME")
    if parts[1] != project:
        raise InputError(f"the topic belongs to project {parts[1]}, not {project}")
    if not audience:
        raise InputError("the OIDC audience is required (the push subscription's audience)")
    clean = sorted({s.strip().lower() for s in signers if s.strip()})
    if not clean or any("@" not in s for s in clean):
        raise InputError("at least one signer service-account email is required")
    return {"project": project, "topic": topic, "audience": audience, "signers": clean}


class PushManager:
    def __init__(
        self,
        *,
        db: Database,
        clock: Clock,
        settings: Settings,
        adapters: list[ProviderPush],
        wake: Callable[[], None],
        on_config_change: Callable[[], None] = lambda: None,
        secrets: SecretBox | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
        self.adapters = {a.provider: a for a in adapters}
        self._wake = wake
        self._on_config_change = on_config_change
        self._secrets = secrets
        # The job's parts must not overlap in one process (a webhook-triggered lifecycle run
        # beside the periodic run would register the same subscription twice).
        self._job_lock = asyncio.Lock()

    def _adapter(self, provider: ProviderKind) -> ProviderPush:
        adapter = self.adapters.get(provider)
        if adapter is None:
            raise NotReady(f"push is not available for {provider} mailboxes")
        return adapter

    async def enable(
        self, account_id: int, provider: ProviderKind, settings: dict[str, Any]
    ) -> SubscriptionRow:
        """Readiness guard, then register; the subscription row records the outcome."""
        async with self.db.read() as conn:
            account = await account_store.get(conn, account_id)
            previous = await push_store.get(conn, account_id, provider)
        adapter = self._adapter(provider)
        await adapter.check_ready(account)
        await self._save(account_id, provider, state=PushState.PENDING, settings=settings)
        try:
            registration = await adapter.register(account, settings, previous)
        except MailDeskError as exc:
            await self._failed(account_id, provider, exc)
            raise
        return await self._registered(account, provider, registration)

    async def disable(self, account_id: int, provider: ProviderKind) -> None:
        async with self.db.read() as conn:
            account = await account_store.get(conn, account_id)
            row = await push_store.get(conn, account_id, provider)
        if row is None:
            raise InputError(f"account {account_id} has no {provider} push subscription")
        try:
            await self._adapter(provider).stop(account, row)
        except MailDeskError as exc:
            # Stopping locally must work even when the provider can't be told (revoked token):
            # an unstopped Gmail watch simply expires within 7 days.
            log.warning("account %s: could not stop %s push at the provider: %s",
                        account_id, provider, exc.kind)
        # The shared secret of a stopped subscription is of no further use: forget it.
        await self._save(account_id, provider, state=PushState.STOPPED, client_state_enc=None)

    async def renew_account(self, account_id: int, provider: ProviderKind) -> SubscriptionRow:
        async with self.db.read() as conn:
            account = await account_store.get(conn, account_id)
            row = await push_store.get(conn, account_id, provider)
        if row is None or row.sub.state is PushState.STOPPED:
            raise InputError(f"account {account_id} has no active {provider} push")
        # Outside the try: a provider without an adapter (IMAP IDLE rows) is refused without
        # recording a failure on a row its own watcher keeps.
        adapter = self._adapter(provider)
        try:
            await adapter.check_ready(account)
            registration = await adapter.renew(account, row)
        except MailDeskError as exc:
            await self._failed(account_id, provider, exc)
            raise
        return await self._registered(account, provider, registration)

    async def client_state(
        self, account_id: int, provider: ProviderKind = ProviderKind.OUTLOOK
    ) -> str | None:
        """The plaintext shared secret (Graph ``clientState``) of an account's subscription,
        None if it has none (no subscription, Gmail, stopped).

        For administrators only — the CLI/API check that; push status never includes it.
        """
        async with self.db.read() as conn:
            row = await push_store.get(conn, account_id, provider)
        if row is None or row.client_state_enc is None:
            return None
        if self._secrets is None:
            raise ConfigError("MAILDESK_SECRET_KEY", "the push manager has no secret box")
        return self._secrets.decrypt(row.client_state_enc)

    async def run_lifecycle(self) -> str:
        """Perform the lifecycle actions webhooks noted (Graph's ``reauthorizationRequired``:
        reauthorize and renew; ``subscriptionRemoved``: register anew and resync). A failure is
        recorded like a failed renewal (``error``, counted) and retried on every run."""
        async with self._job_lock:
            async with self.db.read() as conn:
                rows = []
                for provider in self.adapters:
                    rows += await push_store.lifecycle_pending(conn, provider)
            done = failed = 0
            for row in rows:
                try:
                    await self.renew_account(row.sub.account_id, row.sub.provider)
                    done += 1
                except MailDeskError:
                    failed += 1
            return f"lifecycle {done} done, {failed} failed"

    async def renew_due(self) -> str:
        """The renewal job: renew what expires within a day, is ~6 days old (Gmail), or
        failed."""
        async with self._job_lock:
            return await self._renew_due()

    async def _renew_due(self) -> str:
        now = self.clock.now()
        renewed = failed = 0
        rows = []
        async with self.db.read() as conn:
            for provider in self.adapters:
                within, max_age = renewal_window(provider)
                rows += await push_store.renewal_candidates(
                    conn, provider=provider, expiring_before=now + within,
                    renewed_before=None if max_age is None else now - max_age,
                )
        for row in rows:
            within, max_age = renewal_window(row.sub.provider)
            if not renewal_due(row.sub, now, within=within, max_age=max_age):
                continue
            try:
                await self.renew_account(row.sub.account_id, row.sub.provider)
                renewed += 1
            except MailDeskError:
                failed += 1  # recorded on the row; tried again next run
        return f"renewed {renewed}, failed {failed}"

    async def detect_silence(self) -> str:
        """Active subscriptions that heard nothing for the threshold → recovering + catch-up."""
        async with self._job_lock:
            return await self._detect_silence()

    async def _detect_silence(self) -> str:
        now = self.clock.now()
        threshold = timedelta(seconds=self.settings.push_silence_threshold)
        async with self.db.read() as conn:
            rows = await push_store.silence_candidates(conn, heard_before=now - threshold)
        # Only subscriptions a provider delivers to can fall silent: an IMAP IDLE row (kept by
        # sync/imap_idle.py) may legitimately hear nothing for days, and its liveness is proven
        # by the IDLE keepalive instead.
        quiet = [r for r in rows
                 if r.sub.provider in self.adapters and silent(r.sub, now, threshold)]
        if quiet:
            async with self.db.transaction() as conn:
                for row in quiet:
                    await push_store.upsert(conn, account_id=row.sub.account_id,
                                            provider=row.sub.provider, now=now,
                                            state=PushState.RECOVERING.value)
                    await account_store.request_sync(conn, row.sub.account_id,
                                                     reason="silence", now=now)
                    await account_store.update_fields(conn, row.sub.account_id,
                                                      next_poll_at=now)
                    await push_store.add_events(conn, [{
                        "account_id": row.sub.account_id, "provider": row.sub.provider.value,
                        "kind": "silence", "detail": "no notification within the threshold",
                        "at": now}])
            self._wake()
        return f"{len(quiet)} silent subscriptions sent to catch-up"

    async def run_job(self) -> str:
        """The periodic push job: pending lifecycle actions, renewal, the silence detector."""
        lifecycle = await self.run_lifecycle()
        return f"{await self.renew_due()}; {await self.detect_silence()}; {lifecycle}"

    # -------------------------------------------------------------------------------------
    async def _registered(
        self, account: AccountRow, provider: ProviderKind, registration: Registration
    ) -> SubscriptionRow:
        now = self.clock.now()
        values: dict[str, Any] = {}
        if registration.client_state_enc is not None:
            values["client_state_enc"] = registration.client_state_enc
        async with self.db.transaction() as conn:
            await push_store.upsert(
                conn, account_id=account.id, provider=provider, now=now,
                resource=registration.resource, subscription_id=registration.subscription_id,
                expiration=registration.expiration, state=PushState.ACTIVE.value,
                failure_count=0, last_error=None, last_error_kind=None, last_renewal_at=now,
                settings=registration.settings, **values,
            )
            if registration.resync:
                # Recreated: whatever changed while there was no subscription is fetched now.
                await account_store.request_sync(conn, account.id, reason="push_resync",
                                                 now=now)
                await push_store.add_events(conn, [{
                    "account_id": account.id, "provider": provider.value, "kind": "resync",
                    "detail": "subscription recreated", "at": now}])
            row = await push_store.get(conn, account.id, provider)
        assert row is not None
        self._on_config_change()
        if registration.resync:
            self._wake()
        return row

    async def _failed(self, account_id: int, provider: ProviderKind, exc: MailDeskError) -> None:
        now = self.clock.now()
        async with self.db.transaction() as conn:
            row = await push_store.get(conn, account_id, provider)
            failures = (row.sub.failure_count if row else 0) + 1
            await push_store.upsert(conn, account_id=account_id, provider=provider, now=now,
                                    state=PushState.ERROR.value, failure_count=failures,
                                    last_error_kind=exc.kind, last_error=exc.message)
            await push_store.add_events(conn, [{
                "account_id": account_id, "provider": provider.value, "kind": "error",
                "detail": f"{exc.kind}: {exc.message}", "at": now}])
        log.warning("account %s: %s push registration failed (%s)", account_id, provider,
                    exc.kind)
        self._on_config_change()

    async def _save(self, account_id: int, provider: ProviderKind, **values: Any) -> None:
        if isinstance(values.get("state"), PushState):
            values["state"] = values["state"].value
        async with self.db.transaction() as conn:
            await push_store.upsert(conn, account_id=account_id, provider=provider,
                                    now=self.clock.now(), **values)
        self._on_config_change()

