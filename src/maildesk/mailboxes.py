"""Operations on connected mailboxes, shared by the CLI, the REST API and the web UI."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from maildesk.domain.accounts import AccountState, ProviderKind, TokenKind
from maildesk.domain.push import PushState
from maildesk.errors import InputError, MailDeskError, OAuthInvalid, ScopeMissing
from maildesk.providers.gmail import GmailClient
from maildesk.providers.graph import GraphClient
from maildesk.providers.microsoft_oauth import token_kind
from maildesk.providers.oauth import TokenGrant
from maildesk.services import Services
from maildesk.store import accounts as account_store
from maildesk.store import push as push_store
from maildesk.store.accounts import AccountRow
from maildesk.sync.runner import SyncResult


@dataclass(frozen=True, slots=True)
class AccountSummary:
    id: int
    provider: str
    email: str
    state: str
    last_error: str | None
    messages: int
    folders: int
    last_sync_at: datetime | None
    backfill_done: bool
    backfill_fetched: int

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id, "provider": self.provider, "email": self.email, "state": self.state,
            "last_error": self.last_error, "messages": self.messages, "folders": self.folders,
            "last_sync_at": self.last_sync_at.isoformat() if self.last_sync_at else None,
            "backfill_done": self.backfill_done, "backfill_fetched": self.backfill_fetched,
        }


async def add_gmail(
    services: Services, *, email: str, refresh_token: str, verify: bool = True
) -> int:
    """Connect a Gmail mailbox from an existing refresh token.

    With ``verify`` the token is exchanged once: the grant must be alive (else OAuthInvalid),
    its scopes are recorded, and the mailbox behind it must be ``email``.
    """
    email = _email(email)
    token = _token(refresh_token)
    scopes: frozenset[str] = frozenset()
    if verify:
        grant = await services.connectors.google_oauth.refresh(token)
        scopes = grant.scopes
        address = await _mailbox_of(services, ProviderKind.GMAIL, grant.access_token)
        if address.lower() != email:
            raise InputError(f"the token belongs to {address}, not {email}")
    return await _create(services, ProviderKind.GMAIL, email, token, scopes=scopes)


async def add_outlook(
    services: Services, *, email: str, refresh_token: str, tenant: str | None = None,
    verify: bool = True,
) -> int:
    """Connect an Outlook / Microsoft 365 mailbox from an existing refresh token.

    With ``verify`` the token is exchanged once: the grant must be alive, its kind (Graph or
    IMAP/SMTP) and scopes are recorded, and for a Graph grant the mailbox behind it must be
    ``email``. Microsoft rotates refresh tokens on every exchange, so what is stored is the
    token that exchange returned, not the one given (which may already be spent).
    An IMAP-only grant is stored too, marked as such: it syncs and pushes only once reconnected
    with the Microsoft Graph option, and every place that refuses it says so.
    """
    email = _email(email)
    token = _token(refresh_token)
    tenant = (tenant or services.settings.microsoft_tenant).strip()
    scopes: frozenset[str] = frozenset()
    kind: TokenKind | None = None
    if verify:
        grant = await _microsoft_grant(services, tenant, token)
        scopes, kind = grant.scopes, token_kind(grant)
        token = grant.refresh_token or token
        if kind is TokenKind.GRAPH:
            address = await _mailbox_of(services, ProviderKind.OUTLOOK, grant.access_token)
            if address.lower() != email:
                raise InputError(f"the token belongs to {address}, not {email}")
    return await _create(services, ProviderKind.OUTLOOK, email, token, scopes=scopes,
                         token_kind=kind.value if kind else None, settings={"tenant": tenant})


async def _create(services: Services, provider: ProviderKind, email: str, refresh_token: str,
                  **fields: Any) -> int:
    """Store a new mailbox with its (encrypted) refresh token; the worker syncs it at once."""
    async with services.db.transaction() as conn:
        account_id = await account_store.create(
            conn, provider=provider, email=email, now=services.clock.now(),
            refresh_token_enc=services.secrets.encrypt(refresh_token), **fields)
    services.wake()
    return account_id


async def _microsoft_grant(services: Services, tenant: str, token: str) -> TokenGrant:
    """Exchange a Microsoft refresh token, asking for Graph scopes first. A grant consented
    only for IMAP/SMTP is refused for Graph scopes (consent required): asking again with the
    IMAP scopes tells such a grant apart from a dead one."""
    try:
        return await services.connectors.microsoft_oauth(tenant).refresh(token)
    except (OAuthInvalid, ScopeMissing) as graph_refused:
        try:
            return await services.connectors.microsoft_oauth(tenant, TokenKind.IMAP).refresh(
                token)
        except MailDeskError:
            raise graph_refused from None


def _email(email: str) -> str:
    email = email.strip().lower()
    if "@" not in email:
        raise InputError(f"not an email address: {email!r}")
    return email


def _token(refresh_token: str) -> str:
    token = refresh_token.strip()
    if not token:
        raise InputError("the refresh token is empty")
    return token


async def _mailbox_of(services: Services, provider: ProviderKind, access_token: str) -> str:
    """The address of the mailbox an access token opens (a real profile call), as the provider
    spells it."""

    async def fixed(*, force_refresh: bool = False) -> str:
        return access_token

    connectors = services.connectors
    client: GmailClient | GraphClient = (connectors.gmail_with_token(fixed)
                                         if provider is ProviderKind.GMAIL
                                         else connectors.graph_with_token(fixed))
    return (await client.profile()).email


async def reconnect_gmail(services: Services, account_id: int, *, refresh_token: str) -> None:
    """Store a new refresh token for an existing mailbox; sync resumes where it stopped."""
    grant = await services.connectors.google_oauth.refresh(refresh_token.strip())
    await _reconnected(services, account_id, ProviderKind.GMAIL, refresh_token.strip(),
                       grant.scopes)


async def reconnect_gmail_grant(services: Services, account_id: int, grant: TokenGrant) -> None:
    """Finish a Gmail reconnect (the OAuth code flow's answer): the grant must carry a refresh
    token and belong to this mailbox; then as :func:`reconnect_gmail`."""
    if not grant.refresh_token:
        raise InputError("Google returned no refresh token; sign in again and accept the "
                         "consent screen")
    async with services.db.read() as conn:
        account = await account_store.get(conn, account_id)
    address = await _mailbox_of(services, ProviderKind.GMAIL, grant.access_token)
    if address.lower() != account.email:
        raise InputError(f"you signed in as {address}, not {account.email}: sign in with "
                         "the mailbox's own Google account")
    await reconnect_gmail(services, account_id, refresh_token=grant.refresh_token)


async def reconnect_outlook(services: Services, account_id: int, grant: TokenGrant) -> None:
    """Store the grant of an Outlook reconnect (the OAuth code flow's answer): the returned
    refresh token (Microsoft rotates them), its kind (Graph or IMAP/SMTP) and scopes. A Graph
    grant must belong to this mailbox. Sync resumes at once and a failed subscription is
    registered again, as for Gmail."""
    if not grant.refresh_token:
        raise InputError("Microsoft returned no refresh token (is offline_access requested?)")
    async with services.db.read() as conn:
        account = await account_store.get(conn, account_id)
    kind = token_kind(grant)
    if kind is TokenKind.GRAPH:
        address = await _mailbox_of(services, ProviderKind.OUTLOOK, grant.access_token)
        if address.lower() != account.email:
            raise InputError(f"you signed in as {address}, not {account.email}: sign in "
                             "with the mailbox's own Microsoft account")
    await _reconnected(services, account_id, ProviderKind.OUTLOOK, grant.refresh_token,
                       grant.scopes, token_kind=kind.value)


async def _reconnected(services: Services, account_id: int, provider: ProviderKind,
                       refresh_token: str, scopes: frozenset[str], **fields: Any) -> None:
    """Store a reconnect's token and clear the mailbox's error; sync resumes at once."""
    async with services.db.transaction() as conn:
        await account_store.set_credentials(
            conn, account_id, refresh_token_enc=services.secrets.encrypt(refresh_token),
            scopes=scopes, now=services.clock.now(),
        )
        await account_store.update_fields(conn, account_id, state=AccountState.OK.value,
                                          last_error=None, last_error_kind=None, **fields)
    services.connectors.forget_tokens(account_id)
    services.wake()
    # Realtime resumes at once: a registration that failed for want of a valid token is retried
    # now rather than at the next renewal run (which would also retry it).
    async with services.db.read() as conn:
        row = await push_store.get(conn, account_id, provider)
    if row is not None and row.sub.state is PushState.ERROR:
        with contextlib.suppress(MailDeskError):
            await services.push.renew_account(account_id, provider)


async def summaries(services: Services) -> list[AccountSummary]:
    async with services.db.read() as conn:
        rows = await account_store.list_all(conn)
        counts = await account_store.counts(conn)
    return [_summary(r, counts.get(r.id, (0, 0))) for r in rows]


def _summary(r: AccountRow, count: tuple[int, int]) -> AccountSummary:
    error = f"{r.last_error_kind}: {r.last_error}" if r.last_error else None
    return AccountSummary(r.id, r.provider.value, r.email, r.state.value, error, count[0],
                          count[1], r.last_sync_at, r.backfill_done, r.backfill_fetched)


async def find(services: Services, ref: str) -> AccountRow:
    async with services.db.read() as conn:
        return await account_store.find(conn, ref)


async def request_sync(services: Services, account_id: int, reason: str = "manual") -> None:
    async with services.db.transaction() as conn:
        await account_store.request_sync(conn, account_id, reason=reason,
                                         now=services.clock.now())
    services.wake()


# How often ``sync_now`` looks again while another worker holds the mailbox.
_CLAIM_RETRY = 0.25


async def sync_now(services: Services, account_id: int) -> SyncResult:
    """Sync one mailbox now, in this process.

    If another worker is syncing it (a server beside the CLI, which a connect or a push just
    woke), wait for that run to end and then sync: the request stamped first makes sure that
    worker's run is followed by one, ours or its own. Refused only if the mailbox stays held
    for a whole lease (``MAILDESK_LEASE_SECONDS``)."""
    lease = timedelta(seconds=services.settings.lease_seconds)
    async with services.db.transaction() as conn:
        await account_store.request_sync(conn, account_id, reason="manual",
                                         now=services.clock.now())
    loop = asyncio.get_running_loop()
    give_up = loop.time() + services.settings.lease_seconds
    while True:
        async with services.db.transaction() as conn:
            claim = await account_store.claim_one(conn, account_id, owner=services.runner.owner,
                                                  now=services.clock.now(), lease=lease)
        if claim is not None:
            return await services.runner.run(claim)
        if loop.time() >= give_up:
            raise InputError(f"account {account_id} is being synced by another worker; it "
                             "was still busy after the lease time, try again later")
        await asyncio.sleep(_CLAIM_RETRY)


async def remove(services: Services, account_id: int) -> None:
    """Disconnect the mailbox and delete all its local data."""
    async with services.db.transaction() as conn:
        await account_store.remove(conn, account_id)
    services.connectors.forget_tokens(account_id)
