"""The Google simulator's whole in-memory world, and the control API tests drive it with.

``GoogleState`` holds OAuth clients, grants and tokens (``oauth``), one ``Mailbox`` per address,
and the fault rules. It speaks no HTTP: ``maildesk.sim.google`` serves it. Every random choice
comes from the ``random.Random`` passed in and every timestamp from the injected clock, so a run
is reproducible from its seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from datetime import datetime
from email.utils import getaddresses
from typing import Any

from maildesk.clock import Clock, SystemClock
from maildesk.errors import InputError, NotFound
from maildesk.sim.faults import FaultInjector, FaultRule
from maildesk.sim.gmail_mime import parse_headers
from maildesk.sim.gmail_objects import SimMessage, Watch
from maildesk.sim.mailbox import Listener, Mailbox
from maildesk.sim.oauth_state import OAuthClient, OAuthRegistry
from maildesk.sim.pubsub import PubSub
from maildesk.sim.seed import seed_mailbox

WATCH_DAYS = 7


class GoogleState:
    """OAuth + Gmail state of the simulator; the python control API.

    ``rng`` defaults to ``random.Random(0)`` and ``clock`` to the system clock. Mailboxes are
    created on demand by ``create_grant``/``ensure_mailbox``; every other method raises
    ``NotFound`` for an unknown address or message and ``InputError`` for bad input.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        faults: Iterable[FaultRule] = (),
        latency_ms: float = 0.0,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.rng = rng or random.Random(0)
        self.oauth = OAuthRegistry(self.clock, random.Random(self.rng.getrandbits(64)))
        self.faults = FaultInjector(faults, latency_ms)
        self.mailboxes: dict[str, Mailbox] = {}
        self._listeners: list[Listener] = []
        self._pubsub: PubSub | None = None

    # -- time ------------------------------------------------------------------------------

    def now_ms(self) -> int:
        """The clock's time in epoch milliseconds."""
        return int(self.clock.now().timestamp() * 1000)

    # -- Pub/Sub push ----------------------------------------------------------------------

    @property
    def pubsub(self) -> PubSub:
        """The Pub/Sub model pushing this state's Gmail notifications (``maildesk.sim.pubsub``),
        with the OIDC signing keys as ``pubsub.keys``. Created (and subscribed to every mailbox
        change) on first use, so a state that never pushes never generates RSA keys."""
        if self._pubsub is None:
            self._pubsub = PubSub(self.clock, lookup=self.mailboxes.get)
            self.subscribe(self._pubsub.on_change)
        return self._pubsub

    # -- OAuth -----------------------------------------------------------------------------

    def create_client(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        *,
        redirect_uris: Iterable[str] = (),
    ) -> OAuthClient:
        """Register an OAuth client (generated id/secret when not given)."""
        return self.oauth.create_client(client_id, client_secret, redirect_uris)

    def create_grant(
        self, email: str, scopes: Iterable[str], *, client_id: str | None = None
    ) -> str:
        """Consent of ``email`` for ``scopes``; creates the mailbox; returns the refresh token."""
        self.ensure_mailbox(email)
        return self.oauth.create_grant(email, scopes, client_id).refresh_token

    def revoke_grant(self, refresh_token: str) -> None:
        """Revoke a grant; its refresh token and all its access tokens stop working."""
        self.oauth.revoke(refresh_token)

    def issue_access_token(self, refresh_token: str) -> str:
        """A fresh access token for a live grant (skips the token endpoint in tests)."""
        grant = self.oauth.grants.get(refresh_token)
        if grant is None or grant.revoked:
            raise NotFound("unknown or revoked refresh token")
        return self.oauth.issue_access_token(grant).token

    def set_consent(
        self, email: str, *, allow: bool = True, scopes: Iterable[str] | None = None
    ) -> None:
        """What ``email`` does on the next consent screens: deny, or tick only ``scopes``
        (Google's granular consent lets users untick scopes). Default: grant what is asked."""
        if not allow:
            self.oauth.consent[email] = None
        elif scopes is not None:
            self.oauth.consent[email] = tuple(scopes)
        else:
            self.oauth.consent.pop(email, None)

    def expire_access_tokens(self, email: str | None = None) -> int:
        """Expire the live access tokens of ``email`` (or everyone's); returns how many."""
        return self.oauth.expire_access_tokens(email)

    # -- mailboxes -------------------------------------------------------------------------

    def ensure_mailbox(self, email: str) -> Mailbox:
        """The mailbox of ``email``, created empty if new."""
        mailbox = self.mailboxes.get(email)
        if mailbox is None:
            mailbox = Mailbox(email, random.Random(self.rng.getrandbits(64)), self._notify)
            self.mailboxes[email] = mailbox
        return mailbox

    def mailbox(self, email: str) -> Mailbox:
        """The mailbox of ``email``, or ``NotFound``."""
        try:
            return self.mailboxes[email]
        except KeyError:
            raise NotFound(f"no mailbox {email}") from None

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(email, history_id)`` after every mailbox change; returns unsubscribe.

        This is the hook for push delivery: it runs synchronously inside the change.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _notify(self, email: str, history_id: int) -> None:
        for listener in list(self._listeners):
            listener(email, history_id)

    def create_label(self, email: str, name: str) -> str:
        """A user label (``Label_N``) in the mailbox; returns its id."""
        return self.mailbox(email).create_label(name).id

    def add_message(
        self,
        email: str,
        *,
        subject: str,
        sender: str,
        to: str,
        text: str,
        html: str,
        labels: Iterable[str] = ("INBOX", "UNREAD"),
        internal_date: int | datetime | None = None,
        message_id_header: str | None = None,
        thread_id: str | None = None,
    ) -> str:
        """A new message (``messagesAdded`` in history); returns its id.

        ``internal_date`` is epoch ms or an aware datetime; default now.
        """
        message = self.mailbox(email).add(
            subject=subject,
            sender=sender,
            to=to,
            text=text,
            html=html,
            labels=labels,
            internal_date=self._date_ms(internal_date),
            message_id_header=message_id_header,
            thread_id=thread_id,
        )
        return message.id

    def send_message(self, email: str, raw: bytes, *, thread_id: str | None = None) -> SimMessage:
        """``messages.send``: store ``raw`` under SENT and deliver a copy to every recipient
        that is a mailbox of this simulator (INBOX, UNREAD)."""
        mailbox = self.mailbox(email)
        if thread_id is not None and not mailbox.has_thread(thread_id):
            raise InputError(f"Invalid thread id: {thread_id}")
        headers = parse_headers(raw)
        names = {name.lower() for name, _ in headers}
        prefix = b""
        if "from" not in names:
            prefix += f"From: {email}\r\n".encode()
        if "message-id" not in names:
            prefix += (
                f"Message-ID: <{self.rng.getrandbits(64):x}.sim@{_domain(email)}>\r\n".encode()
            )
        raw = prefix + raw
        now = self.now_ms()
        sent = mailbox.add_raw(raw, labels={"SENT"}, internal_date=now, thread_id=thread_id)
        recipients = getaddresses([v for n, v in headers if n.lower() in ("to", "cc", "bcc")])
        for address in {addr.lower() for _, addr in recipients if addr}:
            target = self.mailboxes.get(address)
            if target is not None and target is not mailbox:
                target.add_raw(raw, labels={"INBOX", "UNREAD"}, internal_date=now, thread_id=None)
        return sent

    def delete_message(self, email: str, message_id: str) -> None:
        """Delete permanently (``messagesDeleted``)."""
        self.mailbox(email).delete(message_id)

    def trash_message(self, email: str, message_id: str) -> None:
        """Move to Bin (``labelsAdded TRASH`` + ``labelsRemoved INBOX``)."""
        self.mailbox(email).trash(message_id)

    def untrash_message(self, email: str, message_id: str) -> None:
        """Move out of Bin back to the inbox."""
        self.mailbox(email).untrash(message_id)

    def modify_labels(
        self, email: str, message_id: str, add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> list[str]:
        """Add/remove labels in one change; returns the message's labels afterwards."""
        return sorted(self.mailbox(email).modify(message_id, add, remove).label_ids)

    def expire_history(self, email: str, keep_after: int | None = None) -> int:
        """Forget the mailbox's history (up to ``keep_after``); returns the new minimum id.

        ``history.list`` with a ``startHistoryId`` below it then answers 404.
        """
        return self.mailbox(email).expire_history(keep_after)

    def seed_mailbox(self, email: str, count: int, *, days: int = 365) -> list[str]:
        """Fill the mailbox (created if new) with ``count`` realistic messages; returns ids."""
        if count < 0 or days < 1:
            raise InputError("count must be >= 0 and days >= 1")
        mailbox = self.ensure_mailbox(email)
        rng = random.Random(self.rng.getrandbits(64))
        return seed_mailbox(mailbox, rng, now_ms=self.now_ms(), count=count, days=days)

    def set_watch(
        self, email: str, topic_name: str, label_ids: Iterable[str], behavior: str
    ) -> Watch:
        """Start or replace the mailbox's push watch (expires in 7 days)."""
        mailbox = self.mailbox(email)
        mailbox.watch = Watch(
            topic_name=topic_name,
            label_ids=tuple(label_ids),
            label_filter_behavior=behavior,
            expiration_ms=self.now_ms() + WATCH_DAYS * 86_400_000,
            history_id=mailbox.history_id,
        )
        watch = mailbox.watch
        if self._pubsub is not None:
            self._pubsub.watch_started(email)  # a successful watch notifies at once
        return watch

    def stop_watch(self, email: str) -> None:
        """Remove the mailbox's push watch."""
        self.mailbox(email).watch = None

    def snapshot(self, email: str) -> dict[str, Any]:
        """Every message id with its labels, plus history ids and watch: what tests compare."""
        mailbox = self.mailbox(email)
        watch = mailbox.watch
        return {
            "emailAddress": email,
            "historyId": str(mailbox.history_id),
            "minHistoryId": str(mailbox.min_history_id),
            "messages": {m.id: sorted(m.label_ids) for m in mailbox.all_messages()},
            "threads": {m.id: m.thread_id for m in mailbox.all_messages()},
            "labels": [label.to_json() for label in mailbox.labels.values()],
            "watch": None
            if watch is None
            else {
                "topicName": watch.topic_name,
                "labelIds": list(watch.label_ids),
                "labelFilterBehavior": watch.label_filter_behavior,
                "expiration": str(watch.expiration_ms),
                "historyId": str(watch.history_id),
            },
        }

    # -- faults ----------------------------------------------------------------------------

    def add_fault(self, rule: FaultRule | None = None, /, **fields: Any) -> FaultRule:
        """Add a fault rule, given as a ``FaultRule`` or as its fields (see ``faults``)."""
        return self.faults.add(rule if rule is not None else FaultRule.from_json(fields))

    def set_latency(self, latency_ms: float) -> None:
        """Delay every Gmail/OAuth request by ``latency_ms`` (async sleep)."""
        self.faults.latency_ms = latency_ms

    def clear_faults(self) -> None:
        """Remove every fault rule and the global latency."""
        self.faults.clear()

    def _date_ms(self, value: int | datetime | None) -> int:
        if value is None:
            return self.now_ms()
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise InputError("internal_date must be timezone-aware")
            return int(value.timestamp() * 1000)
        return int(value)


def _domain(email: str) -> str:
    return email.rpartition("@")[2] or "sim.invalid"
