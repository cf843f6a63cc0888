"""One sync run of one claimed account, and what its outcome does to the account's state.

Outcomes are typed (DESIGN §4.3): an auth failure asks for a reconnect, a transient failure
backs off (honouring the provider's Retry-After), a protocol problem is an error that is still
retried slowly, and a lost lease means another worker has the account — we write nothing more.
In every case what was committed stays committed and nothing is lost: the next run starts from
the last committed cursor.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from maildesk.clock import Clock
from maildesk.config import Settings
from maildesk.domain.accounts import AccountState
from maildesk.domain.backoff import Backoff
from maildesk.domain.push import PushState, state_after_catch_up
from maildesk.errors import AuthError, LeaseLost, MailDeskError, TransientError
from maildesk.live.bus import LiveBus
from maildesk.store import accounts as account_store
from maildesk.store import jobs
from maildesk.store import push as push_store
from maildesk.store.accounts import AccountRow, Claim
from maildesk.store.database import Database
from maildesk.store.push import SubscriptionRow
from maildesk.sync.connectors import Connectors
from maildesk.sync.context import SyncContext

log = logging.getLogger(__name__)

# An account that needs a reconnect is still tried now and then (the token might be fixed
# elsewhere), but not at the polling rate.
REAUTH_RETRY = timedelta(minutes=30)
ERROR_BACKOFF = Backoff(base=30.0, cap=1800.0)
TRANSIENT_BACKOFF = Backoff(base=5.0, cap=600.0)


@dataclass(frozen=True, slots=True)
class SyncResult:
    account_id: int
    status: str  # ok | reauth_required | degraded | error | lease_lost
    error_kind: str | None
    error: str | None
    summary: str


class SyncRunner:
    def __init__(
        self,
        *,
        db: Database,
        clock: Clock,
        bus: LiveBus,
        settings: Settings,
        connectors: Connectors,
        owner: str,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.bus = bus
        self.settings = settings
        self.connectors = connectors
        self.owner = owner
        self.lease = timedelta(seconds=settings.lease_seconds)
        self._rng = rng or random.Random()

    async def run(self, claim: Claim) -> SyncResult:
        started = self.clock.now()

        def begin(conn: Connection) -> tuple[AccountRow, list[SubscriptionRow]]:
            account = claim.account or account_store.get_blocking(conn, claim.account_id)
            if account.state in (AccountState.NEW,):
                account_store.update_fields_blocking(
                    conn, account.id, state=AccountState.SYNCING.value
                )
            pushes = [p for p in push_store.for_account_blocking(conn, account.id)
                      if p.sub.state is not PushState.STOPPED]
            # Checkpoint 3 of the realtime timeline: a sync ran for this mailbox.
            push_store.add_events_blocking(conn, [{
                "account_id": account.id, "provider": p.sub.provider.value,
                "kind": "sync_started", "detail": claim.reason, "at": started,
            } for p in pushes])
            return account, pushes

        # One short transaction (one call on SQLite's writer thread) to start, one to end: a
        # push-triggered run that finds nothing new costs little besides its provider call.
        account, pushes = await self.db.run_write(begin)
        ctx = SyncContext(self.db, self.clock, self.bus, claim.account_id, self.owner, self.lease)
        values: dict[str, Any]
        try:
            engine = self.connectors.engine(account, ctx)
            try:
                await engine.run()
                await engine.prefetch(ctx.stats.new_message_ids, self.settings.prefetch_bodies)
            finally:
                # An IMAP engine holds a session (and a connection slot): always log it out.
                await engine.aclose()
        except LeaseLost:
            log.warning("account %s: lease lost mid-sync; another worker continues", account.id)
            result = SyncResult(account.id, "lease_lost", LeaseLost.kind, None, ctx.stats.summary())
            await self.db.run_write(lambda conn: self._record(conn, claim, started, result))
            return result
        except MailDeskError as exc:
            result, values = self._failure(account.failure_count, exc, ctx)
        except Exception as exc:  # a bug: record it, keep the worker alive, retry slowly
            log.exception("account %s: unexpected error during sync", account.id)
            err = MailDeskError(f"internal error: {type(exc).__name__}")
            result, values = self._failure(account.failure_count, err, ctx)
        else:
            now = self.clock.now()
            push_healthy = await self._settle_push(pushes, ctx)
            interval = (self.settings.safety_poll_interval if push_healthy
                        else self.settings.poll_interval)
            values = {
                "state": AccountState.OK.value, "last_error_kind": None, "last_error": None,
                "last_error_at": None, "failure_count": 0, "retry_at": None,
                "last_sync_at": now, "next_poll_at": now + timedelta(seconds=interval),
            }
            result = SyncResult(account.id, "ok", None, None, ctx.stats.summary())

        def end(conn: Connection) -> None:
            account_store.release_blocking(
                conn, claim, owner=self.owner, now=self.clock.now(), values=values,
                clear_request=result.status == "ok" and not ctx.more_work,
            )
            self._record(conn, claim, started, result)

        await self.db.run_write(end)
        return result

    async def _settle_push(self, pushes: list[SubscriptionRow], ctx: SyncContext) -> bool:
        """After a successful sync: a recovering subscription whose catch-up found nothing missed
        is active again. Returns whether push is healthy (then only the safety sweep polls)."""
        missed = ctx.stats.added + ctx.stats.updated + ctx.stats.removed
        healthy = False
        for row in pushes:
            state = state_after_catch_up(row.sub, missed)
            if state is not row.sub.state:
                async with self.db.transaction() as conn:
                    await push_store.upsert(conn, account_id=row.sub.account_id,
                                            provider=row.sub.provider, now=self.clock.now(),
                                            state=state.value)
            healthy = healthy or state is PushState.ACTIVE
        return healthy

    def _failure(
        self, failures: int, exc: MailDeskError, ctx: SyncContext
    ) -> tuple[SyncResult, dict[str, Any]]:
        now = self.clock.now()
        attempt = failures + 1
        if isinstance(exc, AuthError):
            state, retry_at = AccountState.REAUTH_REQUIRED, now + REAUTH_RETRY
        elif isinstance(exc, TransientError):
            delay = TRANSIENT_BACKOFF.delay(attempt, self._rng, exc.retry_after)
            state, retry_at = AccountState.DEGRADED, now + timedelta(seconds=delay)
        else:
            delay = ERROR_BACKOFF.delay(attempt, self._rng)
            state, retry_at = AccountState.ERROR, now + timedelta(seconds=delay)
        log.warning("account %s: sync failed (%s): %s", ctx.account_id, exc.kind, exc.message)
        values = {
            "state": state.value, "last_error_kind": exc.kind, "last_error": exc.message,
            "last_error_at": now, "failure_count": attempt, "retry_at": retry_at,
        }
        return SyncResult(ctx.account_id, state.value, exc.kind, exc.message,
                          ctx.stats.summary()), values

    def _record(self, conn: Connection, claim: Claim, started: datetime,
                result: SyncResult) -> None:
        """The run's entry in job_runs, written once when it ended."""
        jobs.record_blocking(
            conn, "sync", account_id=claim.account_id, started_at=started,
            now=self.clock.now(), status="ok" if result.status == "ok" else "failed",
            error=None if result.error is None else f"{result.error_kind}: {result.error}",
            detail=result.summary,
        )
