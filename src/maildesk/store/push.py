"""Push subscriptions and push events."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Text,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    select,
    union,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.domain.accounts import ProviderKind
from maildesk.domain.push import LifecycleAction, PushState, PushSubscription, stronger_action
from maildesk.store import accounts as account_store
from maildesk.store.tables import accounts, push_events, push_subscriptions


@dataclass(frozen=True, slots=True)
class SubscriptionRow:
    sub: PushSubscription
    settings: dict[str, Any]
    client_state_enc: str | None


def _row(r: Any) -> SubscriptionRow:
    sub = PushSubscription(
        id=int(r.id), account_id=int(r.account_id), provider=ProviderKind(r.provider),
        resource=r.resource, subscription_id=r.subscription_id, expiration=r.expiration,
        state=PushState(r.state), failure_count=int(r.failure_count),
        last_error_kind=r.last_error_kind, last_error=r.last_error,
        last_notification_at=r.last_notification_at, last_renewal_at=r.last_renewal_at,
        created_at=r.created_at,
    )
    return SubscriptionRow(sub, json.loads(r.settings_json or "{}"), r.client_state_enc)


async def get(
    conn: AsyncConnection, account_id: int, provider: ProviderKind
) -> SubscriptionRow | None:
    r = (await conn.execute(select(push_subscriptions).where(
        push_subscriptions.c.account_id == account_id,
        push_subscriptions.c.provider == provider.value,
    ))).first()
    return None if r is None else _row(r)


async def for_account(conn: AsyncConnection, account_id: int) -> list[SubscriptionRow]:
    return await conn.run_sync(for_account_blocking, account_id)


def for_account_blocking(conn: Connection, account_id: int) -> list[SubscriptionRow]:
    """``for_account`` for ``Database.run_write``."""
    rows = conn.execute(
        select(push_subscriptions).where(push_subscriptions.c.account_id == account_id)
    )
    return [_row(r) for r in rows]


async def list_all(conn: AsyncConnection) -> list[SubscriptionRow]:
    rows = await conn.execute(select(push_subscriptions).order_by(push_subscriptions.c.id))
    return [_row(r) for r in rows]


async def upsert(
    conn: AsyncConnection,
    *,
    account_id: int,
    provider: ProviderKind,
    now: datetime,
    **values: Any,
) -> None:
    if "settings" in values:
        settings = values.pop("settings")
        values["settings_json"] = json.dumps(settings, sort_keys=True)
        # The indexed twin of a pending lifecycle action (see ``lifecycle_pending``).
        values["lifecycle_at"] = now if settings.get(LIFECYCLE_KEY) else None
    result = await conn.execute(update(push_subscriptions).where(
        push_subscriptions.c.account_id == account_id,
        push_subscriptions.c.provider == provider.value,
    ).values(updated_at=now, **values).returning(push_subscriptions.c.id))
    if result.first() is None:
        await conn.execute(insert(push_subscriptions).values(
            account_id=account_id, provider=provider.value, created_at=now, updated_at=now,
            **{"resource": "", "state": PushState.PENDING.value, "failure_count": 0,
               "settings_json": "{}", **values},
        ))


async def renewal_candidates(
    conn: AsyncConnection, *, provider: ProviderKind, expiring_before: datetime,
    renewed_before: datetime | None,
) -> list[SubscriptionRow]:
    """Subscriptions that may need renewal (the domain rule decides): expiring soon, old (unless
    ``renewed_before`` is None: no age rule), or failed.

    One indexed selection per reason — (state, expiration), (state, last_renewal_at) — merged,
    instead of one OR that the planners answer with a full scan: the tick grows with the due
    rows only (``bench/scheduler_tick.py``)."""
    live = push_subscriptions.c.state.in_([PushState.ACTIVE.value, PushState.RECOVERING.value])
    reasons = [
        push_subscriptions.c.state == PushState.ERROR.value,
        and_(live, push_subscriptions.c.expiration.is_(None)),
        and_(live, push_subscriptions.c.expiration <= expiring_before),
    ]
    if renewed_before is not None:
        reasons.append(and_(live, push_subscriptions.c.last_renewal_at <= renewed_before))
    return await _merged(conn, reasons, push_subscriptions.c.provider == provider.value)


async def silence_candidates(
    conn: AsyncConnection, *, heard_before: datetime
) -> list[SubscriptionRow]:
    """Active subscriptions not heard from since ``heard_before`` (index (state,
    last_notification_at), one selection per branch)."""
    active = push_subscriptions.c.state == PushState.ACTIVE.value
    return await _merged(conn, [
        and_(active, push_subscriptions.c.last_notification_at.is_(None)),
        and_(active, push_subscriptions.c.last_notification_at <= heard_before),
    ])


async def _merged(conn: AsyncConnection, reasons: Sequence[Any], *common: Any
                  ) -> list[SubscriptionRow]:
    """The rows matching any of ``reasons`` (each an indexable condition), each once, by id."""
    # One statement (one round trip): a UNION of the indexed selections.
    query = union(*(select(push_subscriptions).where(reason, *common) for reason in reasons))
    found = {int(r.id): _row(r) for r in await conn.execute(query)}
    return [found[i] for i in sorted(found)]


GmailConfigRow = tuple[int, str, str, dict[str, Any]]


async def gmail_verification_config(conn: AsyncConnection) -> list[GmailConfigRow]:
    """(account id, account email, state, settings) of every Gmail push configuration that is
    not stopped: the webhook accepts an audience/signer only if some mailbox configured it."""
    rows = await conn.execute(
        select(push_subscriptions.c.account_id, accounts.c.email, push_subscriptions.c.state,
               push_subscriptions.c.settings_json)
        .join(accounts, accounts.c.id == push_subscriptions.c.account_id)
        .where(push_subscriptions.c.provider == ProviderKind.GMAIL.value,
               push_subscriptions.c.state != PushState.STOPPED.value)
    )
    return [(int(a), str(e), str(s), json.loads(j or "{}")) for a, e, s, j in rows]


async def client_states(
    conn: AsyncConnection, provider: ProviderKind
) -> list[tuple[str, int, str]]:
    """(subscription id, account id, encrypted clientState) of every subscription of
    ``provider`` that is not stopped: what a webhook accepts notifications for."""
    rows = await conn.execute(
        select(push_subscriptions.c.subscription_id, push_subscriptions.c.account_id,
               push_subscriptions.c.client_state_enc)
        .where(push_subscriptions.c.provider == provider.value,
               push_subscriptions.c.state != PushState.STOPPED.value,
               push_subscriptions.c.subscription_id.is_not(None),
               push_subscriptions.c.client_state_enc.is_not(None))
    )
    return [(str(s), int(a), str(c)) for s, a, c in rows]


# The key under which a pending lifecycle action (domain.push.LifecycleAction) is kept in a
# subscription's settings until the push job performed it.
LIFECYCLE_KEY = "lifecycle"


async def lifecycle_pending(
    conn: AsyncConnection, provider: ProviderKind
) -> list[SubscriptionRow]:
    """Subscriptions with a lifecycle action waiting (reauthorize / recreate): an index lookup on
    ``lifecycle_at``, which ``upsert`` sets and clears with the settings key."""
    rows = await conn.execute(select(push_subscriptions).where(
        push_subscriptions.c.lifecycle_at.is_not(None),
        push_subscriptions.c.provider == provider.value,
        push_subscriptions.c.state != PushState.STOPPED.value,
    ).order_by(push_subscriptions.c.lifecycle_at))
    # ORDER BY lifecycle_at makes SQLite's planner walk that index (without statistics it
    # scans the table for a bare IS NOT NULL); the callers want id order.
    found = sorted((_row(x) for x in rows), key=lambda r: r.sub.id)
    return [r for r in found if r.settings.get(LIFECYCLE_KEY)]


async def mark_lifecycle(
    conn: AsyncConnection,
    *,
    account_id: int,
    provider: ProviderKind,
    subscription_id: str,
    action: LifecycleAction,
    now: datetime,
    state: PushState | None = None,
) -> bool:
    """Note a pending lifecycle action on the subscription ``subscription_id`` (if it is still
    the account's current one), merged with one already pending; ``state`` optionally changes
    the state with it (an ``error`` row stays ``error``: it is retried every run anyway)."""
    row = await get(conn, account_id, provider)
    if row is None or row.sub.subscription_id != subscription_id or (
        row.sub.state is PushState.STOPPED
    ):
        return False
    try:
        pending = LifecycleAction(row.settings.get(LIFECYCLE_KEY, ""))
    except ValueError:
        pending = None
    merged = stronger_action(pending, action)
    values: dict[str, Any] = {"settings": {**row.settings, LIFECYCLE_KEY: str(merged)}}
    if state is not None and row.sub.state is not PushState.ERROR:
        values["state"] = state.value
    await upsert(conn, account_id=account_id, provider=provider, now=now, **values)
    return True


async def add_events(conn: AsyncConnection, events: Sequence[dict[str, Any]]) -> None:
    await conn.run_sync(add_events_blocking, events)


def add_events_blocking(conn: Connection, events: Sequence[dict[str, Any]]) -> None:
    """``add_events`` for ``Database.run_write``."""
    if events:
        conn.execute(insert(push_events), list(events))


@dataclass(frozen=True, slots=True)
class PushEvent:
    id: int
    account_id: int | None
    provider: str
    kind: str
    detail: str
    at: datetime


async def events_since(
    conn: AsyncConnection, account_id: int, since: datetime
) -> list[PushEvent]:
    rows = await conn.execute(select(push_events).where(
        push_events.c.account_id == account_id, push_events.c.at >= since
    ).order_by(push_events.c.id))
    return [PushEvent(int(r.id), r.account_id, r.provider, r.kind, r.detail, r.at) for r in rows]


async def prune_events(conn: AsyncConnection, older_than: datetime) -> int:
    result = await conn.execute(delete(push_events).where(push_events.c.at < older_than))
    return int(result.rowcount)


# The webhook's group commit (``push/recorder.py``) records every batch with these: as one call
# on SQLite's writer thread (``Database.run_write``), or as one statement on PostgreSQL.

def record_notifications_blocking(
    conn: Connection, account_ids: Sequence[int], provider: ProviderKind, now: datetime
) -> None:
    """A verified notification arrived for these mailboxes: note it; a recovering subscription
    is active again."""
    if account_ids:
        conn.execute(record_notifications_statement(account_ids, provider, now))


def record_notifications_statement(
    account_ids: Sequence[int], provider: ProviderKind, now: datetime
) -> Any:
    """The UPDATE of ``record_notifications_blocking`` (``account_ids`` not empty), one
    statement to run alone or to embed in ``record_batch_statement``."""
    recovering = push_subscriptions.c.state == PushState.RECOVERING.value
    at = literal(now, push_subscriptions.c.updated_at.type)
    return update(push_subscriptions).where(
        push_subscriptions.c.account_id.in_(sorted(set(account_ids))),
        push_subscriptions.c.provider == provider.value,
    ).values(
        last_notification_at=now,
        state=case((recovering, PushState.ACTIVE.value), else_=push_subscriptions.c.state),
        updated_at=case((recovering, at), else_=push_subscriptions.c.updated_at),
    )


def record_batch_statement(
    events: Sequence[dict[str, Any]],
    by_provider: dict[ProviderKind, Sequence[int]],
    account_ids: Sequence[int],
    *,
    reason: str,
    now: datetime,
) -> Any:
    """PostgreSQL only: a batch of verified notifications as ONE statement — the events
    insert and the subscriptions' updates as data-modifying CTEs of the accounts' sync stamp
    (``accounts.request_syncs_statement``, whose rows ``accounts.needs_wake`` reads).
    One statement is atomic on its own, so on an autocommit connection it is one round trip.
    The parts write different tables, so the CTEs' shared snapshot changes nothing."""
    ctes = [_events_from_arrays(events).cte("recorded_events")] if events else []
    for n, (provider, ids) in enumerate(sorted(by_provider.items(), key=lambda kv: kv[0].value)):
        if ids:
            ctes.append(record_notifications_statement(ids, provider, now).cte(f"noted_{n}"))
    statement = account_store.request_syncs_statement(account_ids, reason=reason, now=now)
    return statement.add_cte(*ctes) if ctes else statement


# ``_events_from_arrays``' columns and the element type of each column's array.
_EVENT_ARRAYS = (("account_id", BigInteger()), ("provider", Text()), ("kind", Text()),
                 ("detail", Text()), ("at", DateTime(timezone=True)))


def _events_from_arrays(events: Sequence[dict[str, Any]]) -> Any:
    """PostgreSQL: INSERT the events from one array per column (``SELECT unnest(a), …``).

    A multi-row VALUES is a new statement shape for every batch size, so SQLAlchemy compiled
    it afresh for each batch (about 10 ms for a batch of 30 events: most of the webhook's
    cost). Five array parameters give one shape, compiled once and cached, whatever the size.
    """
    unnested = [
        func.unnest(bindparam(f"event_{name}", [e[name] for e in events],
                              type_=postgresql.ARRAY(element)))
        for name, element in _EVENT_ARRAYS
    ]
    return insert(push_events).from_select([name for name, _ in _EVENT_ARRAYS],
                                           select(*unnested))
