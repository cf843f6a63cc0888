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

Graph adds lifecycle notifications on top, which never change the machine, only feed it: a
pending ``LifecycleAction`` is noted on the row by the webhook and performed by the push job
as a renewal (``reauthorize``: reauthorize, then renew; ``recreate``: register anew and resync,
the row ``recovering`` meanwhile since nothing is delivered); ``missed`` only requests a sync.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from maildesk.domain.accounts import GMAIL_SCOPE_FULL, GMAIL_SCOPE_MODIFY, ProviderKind, TokenKind
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
# Outlook: a Graph subscription is requested for ``outlook_subscription_lifetime`` (6 days) but
# Graph may grant less; renew with about a day to spare, judged only by the expiration Graph
# returned (an age rule would be wrong for a shortened lifetime).
OUTLOOK_RENEW_WITHIN = timedelta(hours=24)


def renewal_window(provider: ProviderKind) -> tuple[timedelta, timedelta | None]:
    """(renew when the expiration is this close, renew when the registration is this old)."""
    if provider is ProviderKind.OUTLOOK:
        return OUTLOOK_RENEW_WITHIN, None
    return GMAIL_RENEW_WITHIN, GMAIL_RENEW_AFTER


class LifecycleAction(enum.StrEnum):
    """What a Graph lifecycle notification asks of us, kept on the subscription row until the
    push job has done it (never inside the webhook request)."""

    REAUTHORIZE = "reauthorize"  # reauthorizationRequired: reauthorize, then renew
    RECREATE = "recreate"  # subscriptionRemoved: register anew, then resync


# Graph's lifecycleEvent values → the action they need (``missed`` needs only a resync).
LIFECYCLE_EVENTS: dict[str, LifecycleAction | None] = {
    "reauthorizationRequired": LifecycleAction.REAUTHORIZE,
    "subscriptionRemoved": LifecycleAction.RECREATE,
    "missed": None,
}


def stronger_action(
    current: LifecycleAction | None, new: LifecycleAction | None
) -> LifecycleAction | None:
    """Recreating a subscription also reauthorizes it, so a pending recreate absorbs the rest."""
    if LifecycleAction.RECREATE in (current, new):
        return LifecycleAction.RECREATE
    return current or new


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


def renewal_due(
    sub: PushSubscription,
    now: datetime,
    *,
    within: timedelta = GMAIL_RENEW_WITHIN,
    max_age: timedelta | None = GMAIL_RENEW_AFTER,
) -> bool:
    """Renew when the expiration falls within ``within``, when the registration is older than
    ``max_age`` (None: no age rule), or when the last attempt failed (failures are retried on
    every run)."""
    if sub.state in (PushState.STOPPED, PushState.PENDING):
        return False
    if sub.state is PushState.ERROR or sub.expiration is None:
        return True
    if sub.expiration - now <= within:
        return True
    if max_age is None:
        return False
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


_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa", ".lan")


def webhook_base_problem(base_url: str, *, allow_loopback: bool) -> str | None:
    """Why Microsoft could not deliver to webhooks under ``base_url``, or None.

    Graph sends its validation handshake and every notification only to an ``https://`` URL it
    can reach from the internet; ``allow_loopback`` (``MAILDESK_ALLOW_LOOPBACK_WEBHOOKS``: demo
    and tests, where a simulator delivers) waives both rules.
    """
    if allow_loopback:
        return None
    parts = urlsplit(base_url)
    if parts.scheme != "https":
        return (f"MAILDESK_BASE_URL is {parts.scheme or 'not'} an https:// address: Microsoft "
                "only delivers push to https:// with a valid certificate; set it to this "
                "server's public https:// address")
    host = (parts.hostname or "").rstrip(".").lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        local = (not host or host == "localhost" or "." not in host
                 or host.endswith(_LOCAL_SUFFIXES))
    else:
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        local = not (mapped or address).is_global
    if local:
        return (f"MAILDESK_BASE_URL points at a local-only address ({host or 'no host'}), "
                "which Microsoft cannot reach: set it to this server's public https:// address")
    return None


def check_outlook_ready(
    *,
    provider: ProviderKind,
    has_refresh_token: bool,
    token_kind: str | None,
    base_url: str,
    allow_loopback: bool,
) -> None:
    """The stored-state part of the readiness guard before a Graph subscription is registered;
    raises NotReady with the reason. (That the token is usable is checked by the adapter with a
    real call; who may register is checked by the CLI/API.)"""
    if provider is not ProviderKind.OUTLOOK:
        raise NotReady(f"this is a {provider} mailbox, not an Outlook / Microsoft 365 mailbox")
    if not has_refresh_token:
        raise NotReady(
            "the mailbox has no stored refresh token: connect it with Microsoft first"
        )
    if token_kind == TokenKind.IMAP:
        raise NotReady(
            "the mailbox is connected with an IMAP-only Microsoft token, which cannot call Graph "
            "subscriptions: reconnect with the Microsoft Graph option"
        )
    problem = webhook_base_problem(base_url, allow_loopback=allow_loopback)
    if problem is not None:
        raise NotReady(problem)
