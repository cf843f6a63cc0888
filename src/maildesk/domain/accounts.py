"""Account kinds and connection states."""

from __future__ import annotations

import enum


class ProviderKind(enum.StrEnum):
    GMAIL = "gmail"
    OUTLOOK = "outlook"
    IMAP = "imap"


class AccountState(enum.StrEnum):
    """Connection state shown to operators.

    ``ok``: the last sync succeeded. ``syncing``: the initial sync is running. ``reauth_required``:
    the grant is revoked/expired or lacks a scope, only a reconnect fixes it. ``degraded``: the last
    sync hit a transient failure (network, 5xx, rate limit) and is being retried with backoff.
    ``error``: a failure that retrying will not fix (a provider protocol problem); still retried
    slowly so the account recovers by itself once the cause is gone.
    """

    NEW = "new"
    SYNCING = "syncing"
    OK = "ok"
    DEGRADED = "degraded"
    REAUTH_REQUIRED = "reauth_required"
    ERROR = "error"


GMAIL_SCOPE_FULL = "https://mail.google.com/"
GMAIL_SCOPE_MODIFY = "https://www.googleapis.com/auth/gmail.modify"
GMAIL_SCOPE_READONLY = "https://www.googleapis.com/auth/gmail.readonly"
GMAIL_SCOPE_SEND = "https://www.googleapis.com/auth/gmail.send"

# Microsoft: a Graph grant needs Mail.ReadWrite (or Mail.Read) plus offline_access; an IMAP/SMTP
# grant (audience outlook.office.com) cannot call Graph at all.
GRAPH_SCOPE_READWRITE = "https://graph.microsoft.com/Mail.ReadWrite"
GRAPH_SCOPE_READ = "https://graph.microsoft.com/Mail.Read"
GRAPH_SCOPE_SEND = "https://graph.microsoft.com/Mail.Send"
MS_SCOPE_OFFLINE = "offline_access"
OUTLOOK_IMAP_SCOPE = "https://outlook.office.com/IMAP.AccessAsUser.All"
OUTLOOK_SMTP_SCOPE = "https://outlook.office.com/SMTP.Send"


class TokenKind(enum.StrEnum):
    """Which Microsoft API a stored grant can call (``accounts.token_kind``)."""

    GRAPH = "graph"
    IMAP = "imap"
