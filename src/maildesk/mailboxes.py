"""Operations on connected mailboxes, shared by the CLI, the REST API and the web UI."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from maildesk.domain.accounts import AccountState, ProviderKind
from maildesk.domain.push import PushState
from maildesk.errors import InputError, MailDeskError
from maildesk.providers.http import TokenSource
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
    email = email.strip().lower()
    if "@" not in email:
        raise InputError(f"not an email address: {email!r}")
    if not refresh_token.strip():
        raise InputError("the refresh token is empty")
    scopes: frozenset[str] = frozenset()
    if verify:
        grant = await services.connectors.google_oauth.refresh(refresh_token.strip())
        scopes = grant.scopes

        async def token(*, force_refresh: bool = False) -> str:
            return grant.access_token

        source: TokenSource = token
        profile = await services.connectors.gmail_with_token(source).profile()
        if profile.email.lower() != email:
            raise InputError(f"the token belongs to {profile.email}, not {email}")
    async with services.db.transaction() as conn:
        account_id = await account_store.create(
            conn, provider=ProviderKind.GMAIL, email=email, now=services.clock.now(),
            refresh_token_enc=services.secrets.encrypt(refresh_token.strip()), scopes=scopes,
        )
    services.worker.wake()
    return account_id


async def reconnect_gmail(services: Services, account_id: int, *, refresh_token: str) -> None:
    """Store a new refresh token for an existing mailbox; sync resumes where it stopped."""
    grant = await services.connectors.google_oauth.refresh(refresh_token.strip())
    async with services.db.transaction() as conn:
        await account_store.set_credentials(
            conn, account_id, refresh_token_enc=services.secrets.encrypt(refresh_token.strip()),
            scopes=grant.scopes, now=services.clock.now(),
        )
        await account_store.update_fields(conn, account_id, state=AccountState.OK.value,
                                          last_error=None, last_error_kind=None)
    services.connectors.forget_tokens(account_id)
    services.worker.wake()
    # Realtime resumes at once: a watch that failed for want of a valid token is re-registered
    # now rather than at the next renewal run (which would also retry it).
    async with services.db.read() as conn:
        row = await push_store.get(conn, account_id, ProviderKind.GMAIL)
    if row is not None and row.sub.state is PushState.ERROR:
        with contextlib.suppress(MailDeskError):
            await services.push.renew_account(account_id, ProviderKind.GMAIL)


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
    services.worker.wake()


async def sync_now(services: Services, account_id: int) -> SyncResult:
    """Sync one mailbox now, in this process (refused while another worker holds it)."""
    lease = timedelta(seconds=services.settings.lease_seconds)
    async with services.db.transaction() as conn:
        await account_store.request_sync(conn, account_id, reason="manual",
                                         now=services.clock.now())
        claim = await account_store.claim_one(conn, account_id, owner=services.runner.owner,
                                              now=services.clock.now(), lease=lease)
    if claim is None:
        raise InputError(f"account {account_id} is being synced by another worker right now")
    return await services.runner.run(claim)


async def remove(services: Services, account_id: int) -> None:
    """Disconnect the mailbox and delete all its local data."""
    async with services.db.transaction() as conn:
        await account_store.remove(conn, account_id)
    services.connectors.forget_tokens(account_id)
