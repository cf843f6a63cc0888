"""Push status for operators (CLI, API, UI)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from maildesk.store import accounts as account_store
from maildesk.store import push as push_store
from maildesk.store.database import Database


@dataclass(frozen=True, slots=True)
class PushStatus:
    account_id: int
    email: str
    provider: str
    state: str
    resource: str
    subscription_id: str | None
    expiration: datetime | None
    last_notification_at: datetime | None
    last_renewal_at: datetime | None
    failure_count: int
    last_error: str | None
    settings: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "account_id": self.account_id, "email": self.email, "provider": self.provider,
            "state": self.state, "resource": self.resource,
            "subscription_id": self.subscription_id, "expiration": iso(self.expiration),
            "last_notification_at": iso(self.last_notification_at),
            "last_renewal_at": iso(self.last_renewal_at), "failure_count": self.failure_count,
            "last_error": self.last_error, "settings": self.settings,
        }


async def push_status(db: Database, account_ids: frozenset[int] | None = None) -> list[PushStatus]:
    async with db.read() as conn:
        rows = await push_store.list_all(conn)
        emails = {a.id: a.email for a in await account_store.list_all(conn)}
    out = []
    for row in rows:
        sub = row.sub
        if account_ids is not None and sub.account_id not in account_ids:
            continue
        error = f"{sub.last_error_kind}: {sub.last_error}" if sub.last_error else None
        out.append(PushStatus(
            sub.account_id, emails.get(sub.account_id, "?"), sub.provider.value, sub.state.value,
            sub.resource, sub.subscription_id, sub.expiration, sub.last_notification_at,
            sub.last_renewal_at, sub.failure_count, error, row.settings,
        ))
    return out
