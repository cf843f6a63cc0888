"""The push-subscription lifecycle, shared by every provider: states, and the pure rules for
renewal, silence and readiness.

States::

    pending ──register ok──► active ──no notification for the silence threshold──► recovering
       ▲                       ▲  ▲                                                   │
       │                       │  └──── a notification, or a catch-up sync that ──────┘
       │                       │        found nothing missed
       │                 renew ok
       │                       │
       └── register ──── error (register/renew failed: counted, retried every run)
                         stopped (an administrator turned push off: nothing runs)

While a subscription is not ``active`` its mailbox is polled at the normal interval; while it is
``active`` only a slow safety sweep polls. Push can only make mail earlier, never later.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from maildesk.domain.accounts import GMAIL_SCOPE_FULL, GMAIL_SCOPE_MODIFY, ProviderKind
from maildesk.errors import NotReady


class PushState(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    RECOVERING = "recovering"
    ERROR = "error"
    STOPPED = "stopped"


# Gmail: a watch lives 7 days; renew when less than a day is left or when it is 6 days old.
GMAIL_RENEW_WITHIN = timedelta(hours=24)
GMAIL_RENEW_AFTER = timedelta(days=6)


@dataclass(frozen=True, slots=True)
class PushSubscription:
    id: int
    account_id: int
    provider: ProviderKind
    resource: str
    subscription_id: str | None
    expiration: datetime | None
    state: PushState
    failure_count: int
    last_error_kind: str | None
    last_error: str | None
    last_notification_at: datetime | None
    last_renewal_at: datetime | None
    created_at: datetime

    @property
    def healthy(self) -> bool:
        return self.state is PushState.ACTIVE


def renewal_due(
    sub: PushSubscription,
    now: datetime,
    *,
    within: timedelta = GMAIL_RENEW_WITHIN,
    max_age: timedelta = GMAIL_RENEW_AFTER,
) -> bool:
    """Renew when the expiration falls within ``within``, when the registration is older than
    ``max_age``, or when the last attempt failed (failures are retried on every run)."""
    if sub.state in (PushState.STOPPED, PushState.PENDING):
        return False
    if sub.state is PushState.ERROR or sub.expiration is None:
        return True
    if sub.expiration - now <= within:
        return True
    renewed = sub.last_renewal_at or sub.created_at
    return now - renewed >= max_age


def silent(sub: PushSubscription, now: datetime, threshold: timedelta) -> bool:
    """An active subscription that has heard nothing for ``threshold``."""
    if sub.state is not PushState.ACTIVE:
        return False
    heard = max(t for t in (sub.last_notification_at, sub.last_renewal_at, sub.created_at) if t)
    return now - heard >= threshold


def state_after_catch_up(sub: PushSubscription, missed_changes: int) -> PushState:
    """After a sync of a recovering subscription's mailbox.

    If the catch-up found nothing the push should have told us about, the mailbox was just
    quiet: back to active. If it found missed changes, push is not delivering: stay recovering
    (polled at the normal interval) until a notification proves it works again.
    """
    if sub.state is not PushState.RECOVERING:
        return sub.state
    return PushState.ACTIVE if missed_changes == 0 else PushState.RECOVERING


def check_gmail_ready(
    *, provider: ProviderKind, has_refresh_token: bool, scopes: frozenset[str]
) -> None:
    """The readiness guard before a Gmail watch is registered; raises NotReady with the reason."""
    if provider is not ProviderKind.GMAIL:
        raise NotReady(f"this is a {provider} mailbox, not a Gmail mailbox")
    if not has_refresh_token:
        raise NotReady("the mailbox has no stored refresh token: connect it with Google first")
    if not scopes & {GMAIL_SCOPE_FULL, GMAIL_SCOPE_MODIFY}:
        raise NotReady(
            "the Google grant does not include https://mail.google.com/ or gmail.modify, "
            "which users.watch needs: reconnect the mailbox and re-consent"
        )
