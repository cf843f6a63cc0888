"""Accounts: creation, lookup, state, sync requests, and the lease that lets one worker sync one
mailbox at a time."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Update,
    and_,
    delete,
    func,
    insert,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.domain.accounts import AccountState, ProviderKind
from maildesk.errors import InputError, LeaseLost, NotFound
from maildesk.store.tables import accounts, folders, message_folders, messages


@dataclass(frozen=True, slots=True)
class AccountRow:
    id: int
    provider: ProviderKind
    email: str
    display_name: str
    state: AccountState
    last_error_kind: str | None
    last_error: str | None
    last_error_at: datetime | None
    refresh_token_enc: str | None
    password_enc: str | None
    scopes: frozenset[str]
    token_kind: str | None
    settings: dict[str, Any]
    sync_requested_at: datetime | None
    sync_reason: str | None
    sync_request_seq: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    next_poll_at: datetime
    retry_at: datetime | None
    failure_count: int
    last_sync_at: datetime | None
    initial_sync_done: bool
    backfill_done: bool
    backfill_fetched: int
    created_at: datetime

    @property
    def tenant(self) -> str | None:
        """The Microsoft tenant the mailbox's grant belongs to (None: the configured default)."""
        tenant = self.settings.get("tenant")
        return tenant if isinstance(tenant, str) and tenant else None


def _row(r: Any) -> AccountRow:
    return AccountRow(
        id=r.id,
        provider=ProviderKind(r.provider),
        email=r.email,
        display_name=r.display_name,
        state=AccountState(r.state),
        last_error_kind=r.last_error_kind,
        last_error=r.last_error,
        last_error_at=r.last_error_at,
        refresh_token_enc=r.refresh_token_enc,
        password_enc=r.password_enc,
        scopes=frozenset(r.scopes.split()),
        token_kind=r.token_kind,
        settings=json.loads(r.settings_json or "{}"),
        sync_requested_at=r.sync_requested_at,
        sync_reason=r.sync_reason,
        sync_request_seq=r.sync_request_seq,
        lease_owner=r.lease_owner,
        lease_expires_at=r.lease_expires_at,
        next_poll_at=r.next_poll_at,
        retry_at=r.retry_at,
        failure_count=r.failure_count,
        last_sync_at=r.last_sync_at,
        initial_sync_done=r.initial_sync_done,
        backfill_done=r.backfill_done,
        backfill_fetched=r.backfill_fetched,
        created_at=r.created_at,
    )


async def create(
    conn: AsyncConnection,
    *,
    provider: ProviderKind,
    email: str,
    now: datetime,
    refresh_token_enc: str | None = None,
    password_enc: str | None = None,
    scopes: frozenset[str] = frozenset(),
    token_kind: str | None = None,
    settings: dict[str, Any] | None = None,
) -> int:
    existing = await conn.scalar(
        select(accounts.c.id).where(accounts.c.provider == provider, accounts.c.email == email)
    )
    if existing is not None:
        raise InputError(f"a {provider} account for {email} already exists (id {existing})")
    result = await conn.execute(
        insert(accounts)
        .values(
            provider=provider.value,
            email=email,
            display_name="",
            state=AccountState.NEW.value,
            refresh_token_enc=refresh_token_enc,
            password_enc=password_enc,
            scopes=" ".join(sorted(scopes)),
            token_kind=token_kind,
            settings_json=json.dumps(settings or {}),
            next_poll_at=now,
            sync_requested_at=now,
            sync_reason="initial",
            sync_request_seq=1,
            sync_done_seq=0,
            failure_count=0,
            initial_sync_done=False,
            backfill_done=False,
            backfill_fetched=0,
            created_at=now,
        )
        .returning(accounts.c.id)
    )
    return int(result.scalar_one())


async def get(conn: AsyncConnection, account_id: int) -> AccountRow:
    return await conn.run_sync(get_blocking, account_id)


def get_blocking(conn: Connection, account_id: int) -> AccountRow:
    """``get`` for ``Database.run_write``."""
    r = conn.execute(select(accounts).where(accounts.c.id == account_id)).first()
    if r is None:
        raise NotFound(f"no account with id {account_id}")
    return _row(r)


async def find(conn: AsyncConnection, ref: str) -> AccountRow:
    """Look an account up by id or email address (what every ACCOUNT argument accepts)."""
    ref = ref.strip()
    if ref.isdigit():
        return await get(conn, int(ref))
    rows = (await conn.execute(select(accounts).where(accounts.c.email == ref.lower()))).all()
    if not rows:
        raise NotFound(f"no account with id or email {ref!r}")
    if len(rows) > 1:
        raise InputError(f"{ref} names several accounts; use the account id")
    return _row(rows[0])


async def list_all(conn: AsyncConnection) -> list[AccountRow]:
    rows = (await conn.execute(select(accounts).order_by(accounts.c.id))).all()
    return [_row(r) for r in rows]


async def counts(conn: AsyncConnection) -> dict[int, tuple[int, int]]:
    """account id -> (message count, folder count)."""
    msg_rows = await conn.execute(
        select(messages.c.account_id, func.count()).group_by(messages.c.account_id)
    )
    msg: dict[int, int] = {int(a): int(n) for a, n in msg_rows}
    fol_rows = await conn.execute(
        select(folders.c.account_id, func.count()).group_by(folders.c.account_id)
    )
    fol: dict[int, int] = {int(a): int(n) for a, n in fol_rows}
    ids = set(msg) | set(fol)
    return {i: (msg.get(i, 0), fol.get(i, 0)) for i in ids}


async def remove(conn: AsyncConnection, account_id: int) -> None:
    """Delete the account and all its local data (links first: SQLite cascades need FK on)."""
    msg_ids = select(messages.c.id).where(messages.c.account_id == account_id)
    await conn.execute(delete(message_folders).where(message_folders.c.message_id.in_(msg_ids)))
    await conn.execute(delete(accounts).where(accounts.c.id == account_id))


async def set_credentials(
    conn: AsyncConnection,
    account_id: int,
    *,
    refresh_token_enc: str,
    scopes: frozenset[str] | None,
    now: datetime,
) -> None:
    """A new token (reconnect): clear the auth error and sync at once."""
    values: dict[str, Any] = {
        "refresh_token_enc": refresh_token_enc,
        "retry_at": None,
        "failure_count": 0,
    }
    if scopes is not None:
        values["scopes"] = " ".join(sorted(scopes))
    await conn.execute(update(accounts).where(accounts.c.id == account_id).values(**values))
    await request_sync(conn, account_id, reason="reconnect", now=now)


async def store_refresh_token(conn: AsyncConnection, account_id: int, token_enc: str) -> None:
    """Persist a refresh token the provider rotated during a refresh."""
    await conn.execute(
        update(accounts).where(accounts.c.id == account_id).values(refresh_token_enc=token_enc)
    )


async def request_sync(
    conn: AsyncConnection, account_id: int, *, reason: str, now: datetime
) -> None:
    """Stamp the account for a sync. Cheap and idempotent: N requests make one pending sync."""
    await conn.execute(request_syncs_statement([account_id], reason=reason, now=now))


def request_syncs_blocking(
    conn: Connection, account_ids: Sequence[int], *, reason: str, now: datetime
) -> list[int]:
    """``request_sync`` for several accounts in one statement (one request each), for
    ``Database.run_write``.

    Returns the ids a worker wake-up is useful for (``needs_wake``). A leased account is
    being synced right now; its run ends keeping the (newer) request and its worker claims the
    follow-up itself, so N requests still make exactly one follow-up.
    """
    if not account_ids:
        return []
    result = conn.execute(request_syncs_statement(account_ids, reason=reason, now=now))
    return needs_wake(result.all(), now)


def request_syncs_statement(
    account_ids: Sequence[int], *, reason: str, now: datetime
) -> Update:
    """The statement of ``request_syncs_blocking`` (``account_ids`` not empty), to run alone or
    with data-modifying CTEs (PostgreSQL); it returns ``(id, lease_expires_at,
    sync_followup_at)`` rows, which ``needs_wake`` reads."""
    return (
        update(accounts)
        .where(accounts.c.id.in_(sorted(set(account_ids))))
        .values(
            sync_request_seq=accounts.c.sync_request_seq + 1,
            sync_requested_at=func.coalesce(accounts.c.sync_requested_at, now),
            sync_reason=func.coalesce(accounts.c.sync_reason, reason),
            sync_last_requested_at=now,
        )
        .returning(accounts.c.id, accounts.c.lease_expires_at, accounts.c.sync_followup_at)
    )


def needs_wake(rows: Iterable[Any], now: datetime) -> list[int]:
    """The ids, of ``request_syncs_statement``'s rows, a worker should be woken for (sorted):
    no live lease, and no follow-up settling. A settling follow-up (``sync_followup_at`` set
    when a run ended with a request pending) is claimed on the timer of the worker that ran
    it (``next_followup_blocking``), or at any worker's next tick: waking for each request of
    a burst would only make the workers look again and find it not due yet."""
    return sorted(int(r.id) for r in rows
                  if (r.lease_expires_at is None or r.lease_expires_at < now)
                  and r.sync_followup_at is None)


@dataclass(frozen=True, slots=True)
class Claim:
    account_id: int
    request_seq: int
    reason: str
    # The account row as the claim left it, when the claim read it (``claim_due``): the run
    # uses it instead of reading the row again.
    account: AccountRow | None = field(default=None, compare=False, repr=False)


def _lease_free(now: datetime) -> Any:
    return or_(accounts.c.lease_expires_at.is_(None), accounts.c.lease_expires_at < now)


def _claimable(now: datetime) -> Any:
    return and_(
        _lease_free(now),
        or_(accounts.c.retry_at.is_(None), accounts.c.retry_at <= now),
    )


async def claim_due(
    conn: AsyncConnection,
    *,
    owner: str,
    now: datetime,
    lease: timedelta,
    limit: int,
    skip_locked: bool,
) -> list[Claim]:
    """Claim up to ``limit`` due accounts for ``owner`` (see ``claim_due_blocking``)."""
    return await conn.run_sync(lambda sync_conn: claim_due_blocking(
        sync_conn, owner=owner, now=now, lease=lease, limit=limit, skip_locked=skip_locked))


@dataclass(frozen=True, slots=True)
class FollowupSettle:
    """How a follow-up sync waits for requests to pause (``MAILDESK_SYNC_FOLLOWUP_QUIET`` and
    ``..._MAX_WAIT``). A burst of notifications that outlasts one run would otherwise cost a
    run per run time (each run's end claims the next at once); settling makes it a few runs,
    while a lone request, with no run just before it, is still claimed at once."""

    quiet: timedelta = timedelta(0)
    max_wait: timedelta = timedelta(0)

    @property
    def enabled(self) -> bool:
        return self.quiet > timedelta(0)

    def settling(self, now: datetime) -> Any:
        """SQL: the row's follow-up is still waiting at ``now``.

        A stamp a little after ``now`` is normal: a request committed by another connection
        between our reading the clock and our statement. One further ahead than ``max_wait``
        means the clock went back, and counts as stale, never as a reason to wait (so a jump
        back holds a follow-up at most about twice ``max_wait``)."""
        followup, last = accounts.c.sync_followup_at, accounts.c.sync_last_requested_at
        ahead = now + self.max_wait
        return and_(
            followup.is_not(None), last.is_not(None),
            followup <= ahead, followup > now - self.max_wait,
            last <= ahead, last > now - self.quiet,
        )

    def ready_at(self, followup: datetime, last: datetime) -> datetime:
        """When a waiting follow-up becomes due, if no request comes meanwhile."""
        return min(last + self.quiet, followup + self.max_wait)


NO_SETTLE = FollowupSettle()


def claim_due_blocking(
    conn: Connection,
    *,
    owner: str,
    now: datetime,
    lease: timedelta,
    limit: int,
    skip_locked: bool,
    settle: FollowupSettle = NO_SETTLE,
) -> list[Claim]:
    """Claim up to ``limit`` due accounts for ``owner``.

    Due = a pending sync request (unless it is a follow-up still settling, see
    ``FollowupSettle``), or the poll time has come. Requested accounts go first. Each
    selection uses its own index, so the cost grows with the due rows, not with all accounts.
    The claimed rows come back with the claim (``Claim.account``).
    """
    claims: list[Claim] = []
    requested: Any = accounts.c.sync_requested_at.is_not(None)
    if settle.enabled:
        requested = and_(requested, not_(settle.settling(now)))
    selections = (
        (requested, accounts.c.sync_requested_at),
        (accounts.c.next_poll_at <= now, accounts.c.next_poll_at),
    )
    for due, order in selections:
        if len(claims) >= limit:
            break
        pick = select(accounts.c.id).where(due, _claimable(now))
        if claims:
            pick = pick.where(accounts.c.id.not_in([c.account_id for c in claims]))
        pick = pick.order_by(order).limit(limit - len(claims))
        if skip_locked:
            pick = pick.with_for_update(skip_locked=True)
        ids = [int(i) for i in conn.execute(pick).scalars().all()]
        if not ids:
            continue
        result = conn.execute(
            update(accounts)
            .where(accounts.c.id.in_(ids), _claimable(now))
            .values(lease_owner=owner, lease_expires_at=now + lease)
            .returning(*accounts.c)
        )
        for r in sorted(result.all(), key=lambda r: ids.index(int(r.id))):
            claims.append(Claim(int(r.id), int(r.sync_request_seq), r.sync_reason or "poll",
                                _row(r)))
    return claims


def next_followup_blocking(
    conn: Connection, *, now: datetime, settle: FollowupSettle, limit: int = 100
) -> datetime | None:
    """The earliest moment a settling follow-up becomes due (if no request comes meanwhile),
    for the worker's timer; None when none is settling. Reads only requested rows (their
    index), which are few: they are the due ones."""
    if not settle.enabled:
        return None
    rows = conn.execute(
        select(accounts.c.sync_followup_at, accounts.c.sync_last_requested_at)
        .where(accounts.c.sync_requested_at.is_not(None), settle.settling(now), _claimable(now))
        .limit(limit)
    ).all()
    return min((settle.ready_at(r.sync_followup_at, r.sync_last_requested_at) for r in rows),
               default=None)


async def claim_one(
    conn: AsyncConnection, account_id: int, *, owner: str, now: datetime, lease: timedelta
) -> Claim | None:
    """Claim a specific account (``maildesk account sync``), if no live lease holds it."""
    result = await conn.execute(
        update(accounts)
        .where(accounts.c.id == account_id, _lease_free(now))
        .values(lease_owner=owner, lease_expires_at=now + lease)
        .returning(accounts.c.sync_request_seq, accounts.c.sync_reason)
    )
    r = result.first()
    return Claim(account_id, int(r.sync_request_seq), r.sync_reason or "manual") if r else None


async def extend_lease(
    conn: AsyncConnection, account_id: int, *, owner: str, now: datetime, lease: timedelta
) -> None:
    """Extend our lease inside a write transaction; raise LeaseLost if another worker has it.

    Every write of a sync goes through this first, so a worker whose lease expired can never
    commit over the work of the worker that took over.
    """
    result = await conn.execute(
        update(accounts)
        .where(accounts.c.id == account_id, accounts.c.lease_owner == owner)
        .values(lease_expires_at=now + lease)
        .returning(accounts.c.id)
    )
    if result.first() is None:
        raise LeaseLost(f"lease on account {account_id} was taken over")


async def release(
    conn: AsyncConnection,
    claim: Claim,
    *,
    owner: str,
    now: datetime,
    values: dict[str, Any],
    clear_request: bool,
) -> None:
    """Drop the lease and record the outcome (see ``release_blocking``)."""
    await conn.run_sync(lambda sync_conn: release_blocking(
        sync_conn, claim, owner=owner, now=now, values=values, clear_request=clear_request))


def release_blocking(
    conn: Connection,
    claim: Claim,
    *,
    owner: str,
    now: datetime,
    values: dict[str, Any],
    clear_request: bool,
) -> None:
    """Drop the lease and record the outcome. The request stamp is cleared only when the sync
    succeeded and no new request arrived while it ran. Then a follow-up sync is still due, and
    ``sync_followup_at`` = ``now`` marks it as one that settles first (``FollowupSettle``). A
    run that failed or left work (``clear_request`` false) marks nothing: its retry and
    backoff rules apply as they are, and a reconnect is not held back."""
    conn.execute(
        update(accounts)
        .where(accounts.c.id == claim.account_id, accounts.c.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None,
                sync_followup_at=now if clear_request else None, **values)
    )
    if clear_request:
        conn.execute(
            update(accounts)
            .where(
                accounts.c.id == claim.account_id,
                accounts.c.sync_request_seq == claim.request_seq,
            )
            .values(sync_requested_at=None, sync_reason=None, sync_done_seq=claim.request_seq,
                    sync_followup_at=None)
        )


async def update_fields(conn: AsyncConnection, account_id: int, **values: Any) -> None:
    await conn.run_sync(lambda sync_conn: update_fields_blocking(sync_conn, account_id, **values))


def update_fields_blocking(conn: Connection, account_id: int, **values: Any) -> None:
    conn.execute(update(accounts).where(accounts.c.id == account_id).values(**values))
