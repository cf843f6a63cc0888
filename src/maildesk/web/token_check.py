"""**Verify token now**: a real refresh exchange against the provider's token endpoint.

The badge on the account page only ever says "token stored"; this check is the one place that
says whether the token works, and it says it plainly:

* a fresh access token was issued → "Gmail token is valid - a fresh access token was issued."
  (Outlook: "Outlook token is valid - …");
* no token is stored → a warning to connect the mailbox;
* the exchange failed, or returned no access token → a warning that a reconnect is required;
* the provider could not be reached (network, 5xx, rate limit) → "could not reach Google/
  Microsoft, try again" — a transient failure says nothing about the token and never asks for
  a reconnect;
* the OAuth app itself is not configured or its client credentials are refused → that, naming
  the settings (reconnecting the mailbox would not help).

Microsoft rotates the refresh token on every exchange: the new one is stored (encrypted) right
away, so the check never leaves the mailbox holding a spent token. Checks of one mailbox run one
at a time. Nothing here logs a token.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Literal

from maildesk.domain.accounts import ProviderKind
from maildesk.errors import (
    AuthError,
    ConfigError,
    MailDeskError,
    OAuthInvalid,
    OAuthNotConfigured,
    TransientError,
)
from maildesk.providers.oauth import TokenGrant
from maildesk.services import Services
from maildesk.store import accounts as account_store
from maildesk.store.accounts import AccountRow
from maildesk.web.wording import provider_names

log = logging.getLogger(__name__)

Level = Literal["success", "warning", "error"]


@dataclass(frozen=True, slots=True)
class VerifyOutcome:
    level: Level
    code: str  # valid, no_token, reconnect, unreachable, not_configured, client_rejected, ...
    message: str


class TokenVerifier:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._locks: dict[int, asyncio.Lock] = {}

    async def verify(self, account: AccountRow) -> VerifyOutcome:
        lock = self._locks.setdefault(account.id, asyncio.Lock())
        async with lock:
            outcome = await self._verify(account)
        log.info("token check of account %s: %s", account.id, outcome.code)
        return outcome

    async def _verify(self, account: AccountRow) -> VerifyOutcome:
        product, org = provider_names(account.provider.value)
        reconnect = (f"A reconnect is required: {org} did not issue an access token for this "
                     "mailbox. Reconnect the mailbox to restore sync and realtime.")
        # Re-read: the row the page was rendered from may hold a token rotated since.
        async with self.services.db.read() as conn:
            account = await account_store.get(conn, account.id)
        if not account.refresh_token_enc:
            return VerifyOutcome("warning", "no_token", f"No {product} token is stored for this "
                                 "mailbox. Connect the mailbox first.")
        if account.provider not in (ProviderKind.GMAIL, ProviderKind.OUTLOOK):
            return VerifyOutcome("warning", "unsupported",
                                 f"{product} mailboxes have no OAuth token to verify.")
        try:
            token = self.services.secrets.decrypt(account.refresh_token_enc)
            grant = await self._exchange(account, token)
        except OAuthNotConfigured as exc:
            return VerifyOutcome("error", "not_configured",
                                 f"The token cannot be checked: the {org} OAuth app is not "
                                 f"configured on this server (missing {', '.join(exc.fields)}).")
        except TransientError:
            return VerifyOutcome("warning", "unreachable",
                                 f"Could not reach {org}, try again in a moment. The token was "
                                 "not checked, so this says nothing about it.")
        except OAuthInvalid as exc:
            return VerifyOutcome("warning", "reconnect", f"{reconnect} ({exc.message})")
        except AuthError as exc:
            if type(exc) is AuthError:
                # invalid_client: the app's id/secret are wrong, not the mailbox's grant.
                return VerifyOutcome("error", "client_rejected",
                                     f"{org} rejected this server's OAuth app credentials: "
                                     f"{exc.message}. Reconnecting the mailbox will not help.")
            return VerifyOutcome("warning", "reconnect", f"{reconnect} ({exc.message})")
        except ConfigError as exc:
            return VerifyOutcome("error", "undecryptable", f"The stored token cannot be read: "
                                 f"{exc.message}.")
        except MailDeskError as exc:
            # No usable answer (a refusal, or a 200 without an access token).
            return VerifyOutcome("warning", "reconnect", f"{reconnect} ({exc.message})")
        if not grant.access_token:
            return VerifyOutcome("warning", "reconnect", reconnect)
        return VerifyOutcome("success", "valid",
                             f"{product} token is valid - a fresh access token was issued.")

    async def _exchange(self, account: AccountRow, token: str) -> TokenGrant:
        connectors = self.services.connectors
        if account.provider is ProviderKind.GMAIL:
            grant = await connectors.google_oauth.refresh(token)
        else:
            grant = await connectors.microsoft_oauth(account.tenant).refresh(token)
        if grant.refresh_token and grant.refresh_token != token:
            # Rotated (always on Microsoft): the old token may already be spent, keep the new.
            async with self.services.db.transaction() as conn:
                await account_store.store_refresh_token(
                    conn, account.id, self.services.secrets.encrypt(grant.refresh_token))
        return grant
