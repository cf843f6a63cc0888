"""Push subscriptions and push events."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.domain.accounts import ProviderKind
from maildesk.domain.push import PushState, PushSubscription
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
    rows = await conn.execute(
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
        values["settings_json"] = json.dumps(values.pop("settings"), sort_keys=True)
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
    renewed_before: datetime,
) -> list[SubscriptionRow]:
    """Subscriptions that may need renewal (the domain rule decides): expiring soon, old, or
    failed. Indexed on (state, expiration), so the tick grows with due rows only."""
    rows = await conn.execute(select(push_subscriptions).where(
        push_subscriptions.c.provider == provider.value,
        or_(
            push_subscriptions.c.state == PushState.ERROR.value,
            and_(
                push_subscriptions.c.state.in_(
                    [PushState.ACTIVE.value, PushState.RECOVERING.value]
                ),
                or_(
                    push_subscriptions.c.expiration.is_(None),
                    push_subscriptions.c.expiration <= expiring_before,
                    push_subscriptions.c.last_renewal_at <= renewed_before,
                ),
            ),
        ),
    ))
    return [_row(r) for r in rows]


async def silence_candidates(
    conn: AsyncConnection, *, heard_before: datetime
) -> list[SubscriptionRow]:
    rows = await conn.execute(select(push_subscriptions).where(
        push_subscriptions.c.state == PushState.ACTIVE.value,
        or_(
            push_subscriptions.c.last_notification_at.is_(None),
            push_subscriptions.c.last_notification_at <= heard_before,
        ),
    ))
    return [_row(r) for r in rows]


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


async def record_notifications(
    conn: AsyncConnection, account_ids: Sequence[int], provider: ProviderKind, now: datetime
) -> None:
    """A verified notification arrived: note it; a recovering subscription is active again."""
    if not account_ids:
        return
    where = and_(push_subscriptions.c.account_id.in_(list(account_ids)),
                 push_subscriptions.c.provider == provider.value)
    await conn.execute(update(push_subscriptions).where(where).values(last_notification_at=now))
    await conn.execute(update(push_subscriptions).where(
        where, push_subscriptions.c.state == PushState.RECOVERING.value
    ).values(state=PushState.ACTIVE.value, updated_at=now))


async def add_events(conn: AsyncConnection, events: Sequence[dict[str, Any]]) -> None:
    if events:
        await conn.execute(insert(push_events), list(events))


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
