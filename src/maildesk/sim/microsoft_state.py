"""The Microsoft simulator's whole in-memory world, and the control API tests drive it with.

``MicrosoftState`` holds the identity platform (``identity``: apps, grants, rotating refresh
tokens, queued AADSTS errors), one ``OutlookMailbox`` per user, Graph subscriptions and their
``notifier``, and the fault rules. It speaks no HTTP: ``maildesk.sim.microsoft`` serves it.
Random choices come from the ``rng`` passed in and timestamps from the injected clock.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from maildesk.clock import Clock, SystemClock
from maildesk.errors import InputError, NotFound
from maildesk.sim.faults import FaultInjector, FaultRule
from maildesk.sim.graph_delta import DeltaFaults
from maildesk.sim.graph_mailbox import OutlookMailbox
from maildesk.sim.graph_notifier import Notifier
from maildesk.sim.graph_objects import WELL_KNOWN, parse_address
from maildesk.sim.graph_subscriptions import Subscriptions
from maildesk.sim.microsoft_identity import IdentityRegistry
from maildesk.sim.microsoft_identity_types import (
    GRAPH_SCOPES,
    IMAP_SCOPES,
    MicrosoftApp,
    TokenExchange,
)
from maildesk.sim.microsoft_seed import seed_outlook

Recipients = str | Iterable[str]


class MicrosoftState:
    """Identity platform + Graph mail + subscriptions of the simulator; the python control API.

    ``notify_backoff_scale`` multiplies the notification retry waits and retention (tests use
    a small one). Methods raise ``NotFound`` for an unknown mailbox, message or subscription and
    ``InputError`` for bad input.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        faults: Iterable[FaultRule] = (),
        latency_ms: float = 0.0,
        notify_backoff_scale: float = 1.0,
        tenant_id: str | None = None,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.rng = rng or random.Random(0)
        self.tenant_id = tenant_id or self._uuid()
        self.identity = IdentityRegistry(
            self.clock, random.Random(self.rng.getrandbits(64)), self.tenant_id
        )
        self.faults = FaultInjector(faults, latency_ms)
        self.delta_faults = DeltaFaults()
        self.mailboxes: dict[str, OutlookMailbox] = {}
        self._by_user_id: dict[str, OutlookMailbox] = {}
        self.notifier = Notifier(self.clock, backoff_scale=notify_backoff_scale)
        self.subscriptions = Subscriptions(
            self.clock,
            random.Random(self.rng.getrandbits(64)),
            self.notifier,
            self.tenant_id,
            self.mailbox,
        )

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    # -- identity --------------------------------------------------------------------------

    def register_app(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        *,
        redirect_uris: Iterable[str] = (),
    ) -> MicrosoftApp:
        """Register an app (generated id/secret when not given)."""
        return self.identity.create_app(client_id, client_secret, redirect_uris)

    def grant(
        self,
        email: str,
        client_id: str | None = None,
        *,
        kind: str = "graph",
        scopes: Iterable[str] | None = None,
    ) -> str:
        """Consent of ``email`` (mailbox created if new) to an app; returns the refresh token.

        ``kind`` "graph" grants Mail.ReadWrite + Mail.Send on Graph, "imap" IMAP + SMTP on
        outlook.office.com; ``scopes`` overrides. ``client_id`` defaults to the only app.
        """
        if kind not in ("graph", "imap"):
            raise InputError('kind must be "graph" or "imap"')
        if client_id is None:
            if len(self.identity.apps) != 1:
                raise InputError("client_id is required unless exactly one app is registered")
            client_id = next(iter(self.identity.apps))
        if client_id not in self.identity.apps:
            raise NotFound(f"no app {client_id}")
        self.ensure_mailbox(email)
        chosen = (
            tuple(scopes)
            if scopes is not None
            else (GRAPH_SCOPES if kind == "graph" else IMAP_SCOPES)
        )
        return self.identity.create_grant(email, client_id, chosen).current

    def set_rotation(self, mode: str) -> None:
        """``lenient`` (older refresh tokens stay valid) or ``strict`` (only the newest)."""
        if mode not in ("lenient", "strict"):
            raise InputError('rotation must be "lenient" or "strict"')
        self.identity.rotation = mode

    def set_scope_style(self, style: str) -> None:
        """How token responses write Graph scopes: ``url`` (prefixed) or ``bare``."""
        if style not in ("url", "bare"):
            raise InputError('scope style must be "url" or "bare"')
        self.identity.scope_style = style

    def revoke(self, email: str, *, code: str = "50173") -> int:
        """Revoke every grant of ``email``: refreshes answer invalid_grant ``code`` and
        outstanding access tokens get 401. Returns how many grants."""
        self.mailbox(email)
        return self.identity.revoke(email, code)

    def queue_token_error(self, name: str, count: int = 1, *, email: str | None = None) -> None:
        """The next ``count`` refreshes (of ``email``, or anyone) fail with the AADSTS answer
        ``name``: 70008, 700082, 50173, interaction_required, invalid_client,
        client_secret_expired, temporarily_unavailable."""
        self.identity.queue_error(name, count, email)

    def issue_access_token(self, refresh_token: str) -> str:
        """A fresh access token for a live grant (skips the token endpoint in tests)."""
        grant = self.identity.grants.get(refresh_token)
        if grant is None or grant.revoked_code:
            raise NotFound("unknown or revoked refresh token")
        return self.identity.issue_access_token(grant).token

    def expire_access_tokens(self, email: str | None = None) -> int:
        """Expire the live access tokens of ``email`` (or everyone's); returns how many."""
        return self.identity.expire_access_tokens(email)

    def set_consent(self, email: str, *, allow: bool = True) -> None:
        """Whether ``email`` consents on the next authorize screens."""
        if allow:
            self.identity.consent_denied.discard(email)
        else:
            self.identity.consent_denied.add(email)

    @property
    def exchanges(self) -> list[TokenExchange]:
        """Every token-endpoint call so far, oldest first (which refresh token was used)."""
        return list(self.identity.log)

    # -- mailboxes -------------------------------------------------------------------------

    def create_mailbox(
        self,
        email: str,
        *,
        display_name: str | None = None,
        user_id: str | None = None,
        well_known: Iterable[str] = tuple(WELL_KNOWN),
    ) -> OutlookMailbox:
        """A new empty mailbox with the given well-known folders (default: all six)."""
        if email in self.mailboxes:
            raise InputError(f"mailbox {email} exists")
        mailbox = OutlookMailbox(
            user_id=user_id or self._uuid(),
            email=email,
            display_name=display_name or email.split("@")[0].replace(".", " ").title(),
            rng=random.Random(self.rng.getrandbits(64)),
            listener=self.subscriptions.on_change,
            well_known=well_known,
        )
        self.mailboxes[email] = mailbox
        self._by_user_id[mailbox.user_id] = mailbox
        return mailbox

    def ensure_mailbox(self, email: str) -> OutlookMailbox:
        """The mailbox of ``email``, created if new."""
        return self.mailboxes.get(email) or self.create_mailbox(email)

    def mailbox(self, who: str) -> OutlookMailbox:
        """The mailbox of an email address or user id, or ``NotFound``."""
        found = self.mailboxes.get(who) or self._by_user_id.get(who)
        if found is None:
            lowered = who.lower()
            found = next((m for e, m in self.mailboxes.items() if e.lower() == lowered), None)
        if found is None:
            raise NotFound(f"no mailbox {who}")
        return found

    def add_folder(self, email: str, name: str, *, parent: str | None = None) -> str:
        """A custom folder (under ``parent``, an id or well-known name); returns its id."""
        return self.mailbox(email).add_folder(name, parent).id

    def add_message(
        self,
        email: str,
        *,
        folder: str = "inbox",
        subject: str = "",
        sender: str | None = None,
        to: Recipients | None = None,
        html: str = "",
        text: str = "",
        received_at: datetime | None = None,
        is_read: bool = False,
        flagged: bool = False,
        internet_message_id: str | None = None,
        draft: bool = False,
    ) -> str:
        """A new message in ``folder`` (id or well-known name); returns its immutable id.

        ``sender``/``to`` are ``"Name <addr>"`` strings; ``sender`` None makes a draft-like
        message without ``from``. ``received_at`` defaults to now (must be aware).
        """
        mailbox = self.mailbox(email)
        when = received_at or self.clock.now()
        if when.tzinfo is None:
            raise InputError("received_at must be timezone-aware")
        recipients = [to] if isinstance(to, str) else list(to or [mailbox.email])
        message = mailbox.add(
            folder=folder,
            subject=subject,
            sender=None if sender is None else parse_address(sender),
            to=[parse_address(r) for r in recipients],
            html=html,
            text=text,
            received_at=when,
            is_read=is_read,
            flag_status="flagged" if flagged else "notFlagged",
            internet_message_id=internet_message_id,
            is_draft=draft,
        )
        return message.id

    def update_message(
        self,
        email: str,
        message_id: str,
        *,
        is_read: bool | None = None,
        flagged: bool | None = None,
        flag_status: str | None = None,
        subject: str | None = None,
    ) -> None:
        """Change read state, flag (``flagged`` or an explicit ``flag_status``) or subject."""
        if flagged is not None:
            flag_status = "flagged" if flagged else "notFlagged"
        self.mailbox(email).update(
            message_id,
            is_read=is_read,
            flag_status=flag_status,
            subject=subject,
            when=self.clock.now(),
        )

    def move_message(self, email: str, message_id: str, folder: str) -> None:
        """Move to ``folder`` (id or well-known name); the id stays."""
        self.mailbox(email).move(message_id, folder, self.clock.now())

    def delete_message(self, email: str, message_id: str) -> None:
        """Delete permanently."""
        self.mailbox(email).delete(message_id)

    def send_mail(
        self,
        email: str,
        *,
        subject: str,
        to: Iterable[tuple[str, str]],
        html: str = "",
        text: str = "",
        save_to_sent: bool = True,
        also: Iterable[tuple[str, str]] = (),
        internet_message_id: str | None = None,
    ) -> None:
        """``sendMail``: a copy in Sent Items, and one in the inbox of every recipient (``to``
        and ``also``: Cc, Bcc) that is a mailbox here. ``internet_message_id`` is the MIME
        form's own Message-ID (the JSON form lets Graph assign one)."""
        mailbox = self.mailbox(email)
        recipients = list(to)
        me = (mailbox.display_name, mailbox.email)
        now = self.clock.now()
        message = None
        if save_to_sent and "sentitems" in mailbox.well_known:
            message = mailbox.add(
                folder="sentitems",
                subject=subject,
                sender=me,
                to=recipients,
                html=html,
                text=text,
                received_at=now,
                is_read=True,
                internet_message_id=internet_message_id,
            )
        delivered: set[str] = set()
        for _, address in [*recipients, *also]:
            if address.lower() in delivered:
                continue
            delivered.add(address.lower())
            target = self.mailboxes.get(address)
            if target is not None and target is not mailbox and "inbox" in target.well_known:
                target.add(
                    folder="inbox",
                    subject=subject,
                    sender=me,
                    to=recipients,
                    html=html,
                    text=text,
                    received_at=now,
                    internet_message_id=internet_message_id if message is None
                    else message.internet_message_id,
                )

    def expire_delta(
        self,
        email: str,
        folder: str | None = None,
        *,
        code: str = "SyncStateNotFound",
        status: int = 410,
    ) -> None:
        """Kill the delta tokens of ``folder`` (default: all folders): the next use answers
        ``status`` with error ``code`` (``SyncStateNotFound``; or e.g. ``resyncRequired``)."""
        self.mailbox(email).expire_delta(folder, status=status, code=code)

    def seed_mailbox(self, email: str, count: int, *, days: int = 365) -> list[str]:
        """Fill the mailbox (created if new) with ``count`` realistic messages; returns ids."""
        if count < 0 or days < 1:
            raise InputError("count must be >= 0 and days >= 1")
        mailbox = self.ensure_mailbox(email)
        rng = random.Random(self.rng.getrandbits(64))
        return seed_outlook(mailbox, rng, now=self.clock.now(), count=count, days=days)

    def snapshot(self, email: str) -> dict[str, Any]:
        """Folders and every message's folder, read and flag state: what tests compare."""
        mailbox = self.mailbox(email)
        return {
            "id": mailbox.user_id,
            "mail": mailbox.email,
            "folders": {f.id: mailbox.folder_json(f) for f in mailbox.folders.values()},
            "wellKnown": dict(mailbox.well_known),
            "messages": {
                m.id: {
                    "folder": m.folder_id,
                    "isRead": m.is_read,
                    "flag": m.flag_status,
                    "subject": m.subject,
                }
                for m in mailbox.messages.values()
            },
        }

    # -- subscriptions ---------------------------------------------------------------------

    def lifecycle(self, subscription_id: str, event: str) -> None:
        """POST lifecycle ``event`` (``reauthorizationRequired``, ``subscriptionRemoved`` —
        which also deletes the subscription — or ``missed``) to its lifecycle URL."""
        try:
            self.subscriptions.lifecycle(subscription_id, event)
        except ValueError as exc:
            raise InputError(str(exc)) from None

    # -- faults ----------------------------------------------------------------------------

    def add_fault(self, rule: FaultRule | None = None, /, **fields: Any) -> FaultRule:
        """Add a Graph/identity fault rule (e.g. ``path="/messages/delta", status=429,
        retry_after=7, count=2``); see ``maildesk.sim.faults``."""
        return self.faults.add(rule if rule is not None else FaultRule.from_json(fields))

    def set_latency(self, latency_ms: float) -> None:
        """Delay every Graph/identity request by ``latency_ms``."""
        self.faults.latency_ms = latency_ms

    def clear_faults(self) -> None:
        """Remove every fault rule, the latency and the delta/notification faults."""
        self.faults.clear()
        self.delta_faults.duplicate = 0
        self.notifier.faults.reset()
