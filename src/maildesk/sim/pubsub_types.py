"""Values of the simulated Pub/Sub: push subscriptions, push faults, and the delivery log."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from maildesk.errors import InputError

_TOPIC = re.compile(r"^projects/([^/]+)/topics/([^/]+)$")
_SUBSCRIPTION = re.compile(r"^projects/[^/]+/subscriptions/[^/]+$")


@dataclass(frozen=True, slots=True)
class PushSubscription:
    """A push subscription on ``topic``: POST to ``endpoint`` with a token for ``audience``
    signed as ``service_account``. ``name`` is ``projects/P/subscriptions/S``."""

    name: str
    topic: str
    endpoint: str
    audience: str
    service_account: str

    @classmethod
    def build(
        cls,
        topic: str,
        endpoint: str,
        *,
        audience: str | None = None,
        service_account: str | None = None,
        subscription: str | None = None,
    ) -> PushSubscription:
        """Validate and fill the defaults Pub/Sub uses: the audience is the endpoint URL; the
        subscription is ``projects/P/subscriptions/T-push``; the account ``pubsub-push@P…``."""
        match = _TOPIC.match(topic)
        if match is None:
            raise InputError("topic must look like projects/P/topics/T")
        project, short = match.groups()
        if not endpoint.startswith(("http://", "https://")):
            raise InputError("endpoint must be an http(s) URL")
        name = subscription or f"projects/{project}/subscriptions/{short}-push"
        if not _SUBSCRIPTION.match(name):
            raise InputError("subscription must look like projects/P/subscriptions/S")
        account = service_account or f"pubsub-push@{project}.iam.gserviceaccount.com"
        if "@" not in account:
            raise InputError("service_account must be an email address")
        return cls(name, topic, endpoint, audience or endpoint, account)

    def to_json(self) -> dict[str, str]:
        """As the control API shows it."""
        return {
            "subscription": self.name,
            "topic": self.topic,
            "endpoint": self.endpoint,
            "audience": self.audience,
            "service_account": self.service_account,
        }


TOKEN_FAULTS = ("wrong_audience", "expired", "foreign_signer", "service_account")


@dataclass(slots=True)
class PushFaults:
    """What goes wrong with pushes until cleared. Counters count down as they are used.

    * ``drop``: the next N publishes are lost (logged with outcome ``dropped``);
    * ``delay_ms``: every delivery attempt waits this long first (``clock.sleep``);
    * ``duplicate``: every message is delivered this many times in all (1 = normal);
    * ``reorder``: the next N messages are each held back and sent right after the following one;
    * token faults, on the next ``token_count`` attempts (``None``: every attempt):
      ``wrong_audience`` (the audience to put in instead), ``expired`` (``exp`` an hour ago),
      ``foreign_signer`` (signed by a key the certs do not publish, kid ``sim-foreign-1``),
      ``service_account`` (sign as this email instead of the subscription's).
    """

    drop: int = 0
    delay_ms: float = 0.0
    duplicate: int = 1
    reorder: int = 0
    wrong_audience: str | None = None
    expired: bool = False
    foreign_signer: bool = False
    service_account: str | None = None
    token_count: int | None = None

    def token_faulty(self) -> bool:
        """Whether the next attempt's token is spoiled (uses up one ``token_count``)."""
        if not (
            self.wrong_audience is not None
            or self.expired
            or self.foreign_signer
            or self.service_account is not None
        ):
            return False
        if self.token_count is None:
            return True
        if self.token_count <= 0:
            return False
        self.token_count -= 1
        return True

    def update(self, data: Mapping[str, Any]) -> None:
        """Set the given fields (control-API JSON); unknown or ill-typed ones are an
        ``InputError`` and nothing changes. ``wrong_audience: true`` picks a stock wrong one."""
        known = {f.name for f in fields(self)}
        if unknown := set(data) - known:
            raise InputError(f"unknown push fault fields: {sorted(unknown)}")
        staged: dict[str, Any] = {}
        for name, value in data.items():
            staged[name] = _check(name, value)
        for name, value in staged.items():
            setattr(self, name, value)

    def to_json(self) -> dict[str, Any]:
        """Every field."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _check(name: str, value: Any) -> Any:
    if name in ("drop", "reorder", "duplicate"):
        low = 1 if name == "duplicate" else 0
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise InputError(f"{name} must be an integer >= {low}")
        return value
    if name == "token_count":
        if value is not None and (not isinstance(value, int) or value < 0):
            raise InputError("token_count must be null or an integer >= 0")
        return value
    if name == "delay_ms":
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise InputError("delay_ms must be a number >= 0")
        return float(value)
    if name in ("expired", "foreign_signer"):
        if not isinstance(value, bool):
            raise InputError(f"{name} must be a boolean")
        return value
    if name == "wrong_audience" and value is True:
        return "https://wrong-audience.invalid/push"
    if value is not None and value is not False and not isinstance(value, str):
        raise InputError(f"{name} must be a string or null")
    return value or None


@dataclass(slots=True)
class DeliveryAttempt:
    """One POST of one message to one subscription. ``status`` is None when no answer came
    (``error`` says why); ``copy`` numbers duplicates from 0."""

    subscription: str
    attempt: int
    copy: int
    sent_at: datetime
    answered_at: datetime
    status: int | None
    acked: bool
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON for the control API."""
        return {
            "subscription": self.subscription,
            "attempt": self.attempt,
            "copy": self.copy,
            "sent_at": rfc3339(self.sent_at),
            "answered_at": rfc3339(self.answered_at),
            "status": self.status,
            "acked": self.acked,
            "error": self.error,
        }


@dataclass(slots=True)
class PublishRecord:
    """One notification Gmail published, and what became of it.

    ``outcome``: ``pending`` → ``acked`` (every delivery acked), ``gave_up`` (some delivery ran out
    of attempts or retention), ``dropped`` (a ``drop`` fault lost it) or ``cancelled`` (the
    deliverer stopped first).
    """

    message_id: str
    email: str
    history_id: int
    topic: str
    published_at: datetime
    subscriptions: tuple[str, ...]
    attempts: list[DeliveryAttempt] = field(default_factory=list)
    outcome: str = "pending"
    acked_at: datetime | None = None
    open_deliveries: int = 0

    @property
    def latency(self) -> float | None:
        """Seconds from publish to the last needed ack, once acked."""
        if self.acked_at is None or self.outcome != "acked":
            return None
        return (self.acked_at - self.published_at).total_seconds()

    def to_json(self) -> dict[str, Any]:
        """JSON for the control API."""
        return {
            "messageId": self.message_id,
            "emailAddress": self.email,
            "historyId": str(self.history_id),
            "topic": self.topic,
            "subscriptions": list(self.subscriptions),
            "publishTime": rfc3339(self.published_at),
            "outcome": self.outcome,
            "ackedAt": None if self.acked_at is None else rfc3339(self.acked_at),
            "latency": self.latency,
            "attempts": [a.to_json() for a in self.attempts],
        }


@dataclass(slots=True)
class PushStats:
    """Counters over the simulator's life (``rate_limited`` per mailbox)."""

    published: int = 0
    rate_limited: Counter[str] = field(default_factory=Counter)
    filtered: int = 0
    unrouted: int = 0
    dropped: int = 0
    attempts: int = 0
    acked: int = 0
    gave_up: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON for the control API."""
        return {
            "published": self.published,
            "rate_limited": sum(self.rate_limited.values()),
            "rate_limited_by_mailbox": dict(self.rate_limited),
            "filtered": self.filtered,
            "unrouted": self.unrouted,
            "dropped": self.dropped,
            "attempts": self.attempts,
            "acked": self.acked,
            "gave_up": self.gave_up,
        }


def rfc3339(when: datetime) -> str:
    """``2021-02-26T19:13:55.749Z``: UTC, milliseconds, ``Z``, as Pub/Sub writes publishTime."""
    utc = when.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
