"""Plain words for operators: connection states, typed error kinds and realtime states.

The store keeps a short stable code for every failure (``errors.MailDeskError.kind``); the
account page shows the sentence below first and the provider's own detail underneath.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from maildesk.push.status import PushStatus

PROVIDER_NAMES = {"gmail": ("Gmail", "Google"), "outlook": ("Outlook", "Microsoft"),
                  "imap": ("IMAP", "the IMAP server")}


def sentence(message: str) -> str:
    """An error's message (lower-case, no full stop, as raised) as a sentence for a page."""
    return message[:1].upper() + message[1:] + "."


def provider_names(provider: str) -> tuple[str, str]:
    """(product, organisation): ("Gmail", "Google"), ("Outlook", "Microsoft")."""
    return PROVIDER_NAMES.get(provider, (provider.capitalize(), provider.capitalize()))


STATE_SENTENCES = {
    "new": "Connected; the first sync has not started yet.",
    "syncing": "The first sync is running: the newest mail is loaded first, older mail follows.",
    "ok": "Connected. The last sync succeeded.",
    "degraded": "The last sync hit a temporary problem. MailDesk retries automatically with a "
                "back-off; nothing needs to be done.",
    "reauth_required": "The mailbox must be reconnected: the provider no longer accepts its "
                       "sign-in. Mail already synced stays available.",
    "error": "The last sync failed with an error that retrying does not fix quickly. MailDesk "
             "keeps retrying slowly.",
}


def error_sentence(kind: str | None, provider: str) -> str:
    """The typed last error in plain words (``kind`` as stored with the account)."""
    _, org = provider_names(provider)
    sentences = {
        "reauth_required": f"{org} no longer accepts this mailbox's sign-in. An administrator "
                           "must reconnect the mailbox.",
        "oauth_invalid": f"{org} refused the stored token: access was revoked or has expired. "
                         "Reconnect the mailbox (no mail is lost).",
        "scope_missing": "The mailbox was connected without a permission MailDesk needs to read "
                         "mail. Reconnect it and accept every requested permission.",
        "wrong_token_kind": "This mailbox is connected with a token for IMAP/SMTP, which cannot "
                            "call Microsoft Graph. Reconnect it with the Microsoft Graph option.",
        "login_failed": "The mail server refused the user name or password. Enter the current "
                        "password for this mailbox (no mail is lost meanwhile).",
        "capability_missing": "The mail server lacks a feature MailDesk needs for this "
                              "connection; the detail below names it.",
        "oauth_not_configured": f"The {org} OAuth app credentials are not configured on this "
                                "server, so MailDesk cannot sign in to the mailbox.",
        "auth": f"{org} refused MailDesk's credentials. Check the OAuth app settings, then "
                "reconnect the mailbox.",
        "rate_limited": f"{org} is rate-limiting requests. MailDesk waits as long as {org} asks "
                        "and retries automatically.",
        "unavailable": f"{org} could not be reached (network problem or provider outage). "
                       "MailDesk retries automatically.",
        "transient": f"A temporary problem talking to {org}. MailDesk retries automatically.",
        "protocol": f"{org} sent an answer MailDesk could not read. It is retried slowly; if it "
                    "persists, report it with the detail below.",
        "rejected": f"{org} refused a request MailDesk made. It is retried slowly; if it "
                    "persists, report it with the detail below.",
        "cursor_expired": f"{org} no longer knew the sync position; a full resync brings the "
                          "mailbox back in step (nothing is duplicated).",
        "not_ready": "Realtime push cannot be registered yet (see the reason below).",
        "config": "A server setting is missing or invalid (named below).",
        "store": "The MailDesk database could not be reached or refused a write.",
    }
    return sentences.get(kind or "", "An unexpected error; the detail below says more.")


@dataclass(frozen=True, slots=True)
class RealtimeText:
    state: str  # a CSS modifier: off, pending, active, recovering, error
    label: str  # Active, Recovering, Error, Off, Pending
    detail: str
    expiration: datetime | None = None
    error: str | None = None


def realtime_text(status: PushStatus | None, provider: str, poll_minutes: float) -> RealtimeText:
    every = f"{poll_minutes:g} minute{'' if poll_minutes == 1 else 's'}"
    if status is None or status.state == "stopped":
        return RealtimeText("off", "Off", f"Realtime push is not enabled. The mailbox is "
                            f"checked on a schedule, every {every}.")
    if provider == "imap":
        return _idle_text(status, every)
    thing = "watch" if provider == "gmail" else "subscription"
    if status.state == "active":
        return RealtimeText("active", "Active", f"The {thing} is registered; new mail "
                            "normally appears within seconds.", expiration=status.expiration)
    if status.state == "recovering":
        return RealtimeText("recovering", "Recovering",
                            "No notification arrived for a while, or a check found changes "
                            f"push had not announced. The mailbox is polled every {every} until "
                            "notifications arrive again; no mail is lost.",
                            expiration=status.expiration)
    if status.state == "error":
        kind, _, detail = (status.last_error or "").partition(": ")
        reason = error_sentence(kind, provider) if detail else "The registration failed."
        times = f"{status.failure_count} time{'' if status.failure_count == 1 else 's'}"
        return RealtimeText("error", "Error", f"Registering or renewing the {thing} failed "
                            f"({times} in a row); it is retried on every renewal run. "
                            f"Meanwhile the mailbox is polled every {every}.",
                            expiration=status.expiration, error=f"{reason} {detail}".strip())
    return RealtimeText("pending", "Pending", f"The {thing} has not been registered yet.")


def _idle_text(status: PushStatus, every: str) -> RealtimeText:
    """IMAP realtime is an IDLE connection we hold, not a registration at the provider."""
    folders = status.resource or "INBOX"
    if status.state == "active":
        return RealtimeText("active", "Active", f"MailDesk holds an IDLE connection on "
                            f"{folders}; new mail normally appears within a second or two.")
    if status.state == "error":
        kind, _, detail = (status.last_error or "").partition(": ")
        reason = error_sentence(kind, "imap") if detail else "The IDLE connection failed."
        times = f"{status.failure_count} time{'' if status.failure_count == 1 else 's'}"
        return RealtimeText("error", "Error", f"The IDLE connection failed ({times} in a row); "
                            "it is reconnected with growing pauses, or — if the server refused "
                            "the sign-in — once the password is updated. Meanwhile the mailbox "
                            f"is polled every {every}.", error=f"{reason} {detail}".strip())
    return RealtimeText("pending", "Pending", "The IDLE connection is not established yet; "
                        f"until it is, the mailbox is polled every {every}.")
