"""Operations on IMAP mailboxes, shared by the CLI, the REST API and the web UI: read the
servers an operator typed, test them ("Test incoming server" / "Test outgoing server"), add the
mailbox, test a stored one, and enter a new password after a provider password change.

Secrets: the password is stored encrypted in ``accounts.password_enc``, an XOAUTH2 refresh token
in ``accounts.refresh_token_enc``; the server settings (no secret) in
``accounts.settings_json["imap"]``. Nothing here logs or returns a secret, and check results
carry only the stage and the server's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from maildesk.config import Settings
from maildesk.domain.accounts import AccountState, ProviderKind, TokenKind
from maildesk.domain.mail_servers import (
    DEFAULT_IDLE_FOLDERS,
    SETTINGS_KEY,
    MailServers,
    Security,
    SentCopy,
    ServerAddress,
    SignIn,
)
from maildesk.errors import InputError, MailDeskError
from maildesk.providers.imap import Credentials, OAuth2Login, PasswordLogin
from maildesk.providers.imap_check import ServerCheck, check_incoming_server
from maildesk.providers.imap_connection import Stage
from maildesk.providers.smtp import SmtpServer, check_outgoing_server
from maildesk.services import Services
from maildesk.store import accounts as account_store
from maildesk.store.accounts import AccountRow
from maildesk.sync.imap_sessions import ImapSessions

__all__ = [
    "INCOMING",
    "OUTGOING",
    "AddOutcome",
    "CheckReport",
    "ImapSetup",
    "PasswordOutcome",
    "add_imap",
    "check_setup",
    "describe",
    "set_password",
    "setup_from_fields",
    "test_incoming",
    "test_outgoing",
]

log = logging.getLogger(__name__)

INCOMING = "incoming"
OUTGOING = "outgoing"
IMAP_PORTS = {Security.SSL: 993, Security.STARTTLS: 143, Security.NONE: 143}
SMTP_PORTS = {Security.SSL: 465, Security.STARTTLS: 587, Security.NONE: 25}
_STAGE_PREFIX = re.compile(r"^([A-Z]+): ")
_E = TypeVar("_E", Security, SignIn, SentCopy)


@dataclass(frozen=True, slots=True)
class ImapSetup:
    """What an operator gave to connect an IMAP mailbox (validated, not yet stored)."""

    email: str
    servers: MailServers
    password: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class CheckReport:
    """One server test: which side, which server, and the check's outcome."""

    which: str  # INCOMING or OUTGOING
    server: str  # "host:port (security)"
    check: ServerCheck

    @property
    def ok(self) -> bool:
        return self.check.ok

    @property
    def title(self) -> str:
        return "Incoming server (IMAP)" if self.which == INCOMING else "Outgoing server (SMTP)"

    def sentence(self, *, warnings: bool = True) -> str:
        """One line for people: "Incoming server (IMAP) imap.example.org:993 (ssl): OK: …",
        with the warnings of a passed check in parentheses unless ``warnings`` is False."""
        text = f"{self.title} {self.server}: {describe(self.check)}"
        if warnings and self.check.ok and self.check.warnings:
            text += " (" + "; ".join(self.check.warnings) + ")"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "which": self.which,
            "server": self.server,
            "ok": self.check.ok,
            "stage": self.check.stage.value,
            "reason": self.check.reason,
            "summary": describe(self.check),
            "error_kind": self.check.error_kind or None,
            "capabilities": sorted(self.check.capabilities),
            "warnings": list(self.check.warnings),
        }


@dataclass(frozen=True, slots=True)
class AddOutcome:
    """``account_id`` is None when a check failed (then nothing was stored)."""

    account_id: int | None
    checks: tuple[CheckReport, ...] = ()

    @property
    def failed(self) -> CheckReport | None:
        return next((c for c in self.checks if not c.ok), None)

    def to_json(self) -> dict[str, Any]:
        return {"account_id": self.account_id, "ok": self.account_id is not None,
                "checks": [c.to_json() for c in self.checks]}


@dataclass(frozen=True, slots=True)
class PasswordOutcome:
    """``stored`` is False when the new password failed its check (nothing was changed)."""

    stored: bool
    check: CheckReport | None = None

    def to_json(self) -> dict[str, Any]:
        return {"stored": self.stored, "check": self.check.to_json() if self.check else None}


def describe(check: ServerCheck) -> str:
    """A check in one line, led by its stage: ``"AUTH: the server refused the password"``,
    ``"DNS: cannot resolve 'mail.example.invalid': …"``, ``"OK: connected, …"``."""
    if check.ok:
        return f"OK: {check.reason}"
    stage = check.stage.value.upper()
    found = _STAGE_PREFIX.match(check.reason)
    if found is not None and found.group(1) == stage:
        return check.reason
    return f"{stage}: {check.reason}"


# -- reading what the operator gave ----------------------------------------------------------------


def setup_from_fields(fields: Mapping[str, Any]) -> ImapSetup:
    """Validate an operator's input (CLI options, API JSON, the web form) into a setup.

    Fields: ``email`` (default: ``username`` when it is an address), ``host``, ``port``
    (default by ``security``: 993 ssl, 143 starttls/none), ``security`` (default ssl),
    ``username``, ``sign_in`` (password | google | microsoft), ``password`` or
    ``refresh_token``, ``tenant`` (Microsoft), ``smtp_host``, ``smtp_port`` (default 465 ssl,
    587 starttls, 25 none), ``smtp_security`` (default: ssl on port 465, else starttls),
    ``smtp_username`` (default: the IMAP user name), ``sent_copy`` (auto | append | server),
    ``idle_folders`` (a list, or names separated by commas). :class:`InputError` names the
    field.
    """
    security = _choice(fields.get("security"), Security, "IMAP security", Security.SSL)
    imap = ServerAddress.parse(_text(fields.get("host")), _port(fields.get("port"), security,
                               IMAP_PORTS), security.value, "IMAP")
    username = _text(fields.get("username"))
    if not username:
        raise InputError("IMAP user name: required")
    sign_in = _choice(fields.get("sign_in"), SignIn, "sign-in", SignIn.PASSWORD)
    smtp: ServerAddress | None = None
    smtp_host = _text(fields.get("smtp_host"))
    if smtp_host:
        smtp_port = fields.get("smtp_port")
        default = Security.SSL if str(smtp_port or "").strip() == "465" else Security.STARTTLS
        smtp_security = _choice(fields.get("smtp_security"), Security, "SMTP security", default)
        smtp = ServerAddress.parse(smtp_host, _port(smtp_port, smtp_security, SMTP_PORTS),
                                   smtp_security.value, "SMTP")
    elif _text(fields.get("smtp_port")) or _text(fields.get("smtp_username")):
        raise InputError("SMTP host: required when other SMTP settings are given")
    servers = MailServers(
        imap=imap,
        username=username,
        sign_in=sign_in,
        smtp=smtp,
        smtp_username=_text(fields.get("smtp_username")) or None,
        idle_folders=_folders(fields.get("idle_folders")),
        sent_copy=_choice(fields.get("sent_copy"), SentCopy, "sent copy", SentCopy.AUTO),
    )
    email = _text(fields.get("email")).lower() or (username.lower() if "@" in username else "")
    if not email:
        raise InputError("email: required when the user name is not an email address")
    if "@" not in email or any(c.isspace() for c in email):
        raise InputError(f"email: not an email address: {email!r}")
    password = fields.get("password")
    token = fields.get("refresh_token")
    tenant = _text(fields.get("tenant")) or None
    if sign_in is SignIn.PASSWORD:
        if not isinstance(password, str) or not password:
            raise InputError("password: required for password sign-in")
        return ImapSetup(email, servers, password=password)
    if not isinstance(token, str) or not token.strip():
        raise InputError(f"refresh token: required for {sign_in.value} sign-in (XOAUTH2)")
    if tenant and sign_in is not SignIn.MICROSOFT:
        raise InputError("tenant: only for Microsoft sign-in")
    return ImapSetup(email, servers, refresh_token=token.strip(), tenant=tenant)


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else "" if value is None else str(value)


def _choice(value: Any, kind: type[_E], what: str, default: _E) -> _E:
    text = _text(value).lower()
    if not text:
        return default
    try:
        return kind(text)
    except ValueError:
        raise InputError(f"{what}: one of {', '.join(m.value for m in kind)}") from None


def _port(value: Any, security: Security, defaults: Mapping[Security, int]) -> Any:
    return defaults[security] if value is None or _text(value) == "" else value


def _folders(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return DEFAULT_IDLE_FOLDERS
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise InputError("IDLE folders: folder names separated by commas")
    cleaned = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
    return cleaned or DEFAULT_IDLE_FOLDERS


# -- servers and sign-in ---------------------------------------------------------------------------


def address_text(address: ServerAddress) -> str:
    return f"{address.host}:{address.port} ({address.security.value})"


def smtp_server(sessions: ImapSessions, settings: Settings, address: ServerAddress) -> SmtpServer:
    """The SMTP endpoint of a mailbox with MailDesk's trust store and timeouts."""
    return SmtpServer(address.host, address.port, address.security, ssl_context=sessions.tls,
                      connect_timeout=settings.imap_connect_timeout,
                      command_timeout=settings.imap_timeout)


@dataclass(frozen=True, slots=True)
class _SignedIn:
    credentials: Credentials = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)  # what to store (rotated)
    scopes: frozenset[str] = frozenset()
    token_kind: str | None = None


async def _sign_in(services: Services, setup: ImapSetup) -> _SignedIn:
    """The credentials of a setup: the password, or a fresh access token exchanged from the
    refresh token (Google, or Microsoft's IMAP/SMTP token kind; Microsoft rotates the refresh
    token, and the rotated one is what must be stored)."""
    servers = setup.servers
    if servers.sign_in is SignIn.PASSWORD:
        assert setup.password is not None
        return _SignedIn(PasswordLogin(servers.username, setup.password))
    assert setup.refresh_token is not None
    connectors = services.connectors
    if servers.sign_in is SignIn.GOOGLE:
        grant = await connectors.google_oauth.refresh(setup.refresh_token)
        kind = None
    else:
        tenant = setup.tenant or services.settings.microsoft_tenant
        grant = await connectors.microsoft_oauth(tenant, TokenKind.IMAP).refresh(
            setup.refresh_token)
        kind = TokenKind.IMAP.value
    return _SignedIn(OAuth2Login(servers.username, grant.access_token),
                     refresh_token=grant.refresh_token or setup.refresh_token,
                     scopes=grant.scopes, token_kind=kind)


def _failed(stage: Stage, exc: MailDeskError) -> ServerCheck:
    return ServerCheck(ok=False, stage=stage, reason=str(exc), error_kind=exc.kind)


async def _check_pair(services: Services, servers: MailServers, credentials: Credentials | None,
                      *, incoming: bool, outgoing: bool,
                      sign_in_error: MailDeskError | None = None) -> list[CheckReport]:
    """Run the requested checks (both at once). A sign-in that could not even be prepared (a
    dead refresh token) fails each check at the AUTH stage with that reason."""
    sessions = services.connectors.imap
    settings = services.settings

    async def imap_check() -> CheckReport:
        where = address_text(servers.imap)
        if credentials is None:
            assert sign_in_error is not None
            return CheckReport(INCOMING, where, _failed(Stage.AUTH, sign_in_error))
        return CheckReport(INCOMING, where, await check_incoming_server(
            sessions.server(servers), credentials))

    async def smtp_check() -> CheckReport:
        assert servers.smtp is not None
        where = address_text(servers.smtp)
        if credentials is None:
            assert sign_in_error is not None
            return CheckReport(OUTGOING, where, _failed(Stage.AUTH, sign_in_error))
        login = dataclasses.replace(credentials, username=servers.smtp_login)
        return CheckReport(OUTGOING, where, await check_outgoing_server(
            smtp_server(sessions, settings, servers.smtp), login))

    if outgoing and servers.smtp is None:
        raise InputError("SMTP server: none is configured for this mailbox")
    async with asyncio.TaskGroup() as group:
        tasks = ([group.create_task(imap_check())] if incoming else []) + (
            [group.create_task(smtp_check())] if outgoing else [])
    return [t.result() for t in tasks]


# -- operations ------------------------------------------------------------------------------------


async def check_setup(services: Services, setup: ImapSetup, *, incoming: bool = True,
                      outgoing: bool = True) -> list[CheckReport]:
    """Test servers an operator typed, before anything is stored. ``outgoing`` is skipped
    when the setup has no SMTP server. Never raises for a server-side problem."""
    signed, error = await _try_sign_in(services, setup)
    return await _check_pair(
        services, setup.servers, signed.credentials if signed else None, incoming=incoming,
        outgoing=outgoing and setup.servers.smtp is not None, sign_in_error=error)


async def _try_sign_in(services: Services, setup: ImapSetup
                       ) -> tuple[_SignedIn | None, MailDeskError | None]:
    try:
        return await _sign_in(services, setup), None
    except MailDeskError as exc:
        return None, exc


async def add_imap(services: Services, setup: ImapSetup, *, verify: bool = True) -> AddOutcome:
    """Store a new IMAP mailbox; with ``verify`` only after its servers passed their checks
    (the incoming server, and the outgoing one when given). The worker syncs it at once and
    the IDLE supervisor starts watching it."""
    async with services.db.read() as conn:
        for row in await account_store.list_all(conn):
            if row.provider is ProviderKind.IMAP and row.email == setup.email:
                raise InputError(f"an imap account for {setup.email} already exists "
                                 f"(id {row.id})")
    checks: list[CheckReport] = []
    if verify:
        # A refresh token that cannot be exchanged is refused as such (OAuthInvalid, …), as
        # add-gmail does: there is no server to blame yet.
        signed = await _sign_in(services, setup)
        checks = await _check_pair(services, setup.servers, signed.credentials, incoming=True,
                                   outgoing=setup.servers.smtp is not None)
        if any(not c.ok for c in checks):
            return AddOutcome(None, tuple(checks))
        refresh_token, scopes, kind = signed.refresh_token, signed.scopes, signed.token_kind
    else:
        refresh_token = setup.refresh_token
        scopes = frozenset()
        kind = TokenKind.IMAP.value if setup.servers.sign_in is SignIn.MICROSOFT else None
    settings: dict[str, Any] = {SETTINGS_KEY: setup.servers.to_json()}
    if setup.tenant:
        settings["tenant"] = setup.tenant
    secrets = services.secrets
    async with services.db.transaction() as conn:
        account_id = await account_store.create(
            conn, provider=ProviderKind.IMAP, email=setup.email, now=services.clock.now(),
            password_enc=secrets.encrypt(setup.password) if setup.password else None,
            refresh_token_enc=secrets.encrypt(refresh_token) if refresh_token else None,
            scopes=scopes, token_kind=kind, settings=settings,
        )
    services.wake()
    services.idle.wake()
    log.info("added IMAP mailbox %s as account %s (%s)", setup.email, account_id,
             "verified" if verify else "not verified")
    return AddOutcome(account_id, tuple(checks))


def _imap_account(account: AccountRow) -> MailServers:
    if account.provider is not ProviderKind.IMAP:
        raise InputError(f"account {account.id} ({account.email}) is not an IMAP mailbox")
    return MailServers.of_account(account.settings)


async def _stored_test(services: Services, account: AccountRow, which: str) -> CheckReport:
    servers = _imap_account(account)
    address = servers.imap if which == INCOMING else servers.smtp
    if address is None:
        raise InputError(f"account {account.id} ({account.email}) has no outgoing (SMTP) "
                         "server configured")
    sessions = services.connectors.imap
    async with contextlib.AsyncExitStack() as stack:
        try:
            # A test is one more connection of the mailbox: it takes one of its slots.
            async with asyncio.timeout(services.settings.imap_connect_timeout):
                await stack.enter_async_context(sessions.slot(account.id))
        except TimeoutError:
            reason = (f"all {sessions.in_use(account.id)} connections of this mailbox are in "
                      "use (sync, IDLE, sending); try again in a moment")
            return CheckReport(which, address_text(address),
                               ServerCheck(False, Stage.TCP, reason, "unavailable"))
        credentials: Credentials | None = None
        error: MailDeskError | None = None
        try:
            credentials = await sessions.credentials(account, servers)
        except MailDeskError as exc:
            error = exc
        [report] = await _check_pair(services, servers, credentials, incoming=which == INCOMING,
                                     outgoing=which == OUTGOING, sign_in_error=error)
    # Stage and error kind only: reasons can quote the server, never worth a log line.
    log.info("account %s: %s server test: %s", account.id, which,
             "ok" if report.ok else f"failed at {report.check.stage} ({report.check.error_kind})")
    return report


async def test_incoming(services: Services, account: AccountRow) -> CheckReport:
    """"Test incoming server" of a stored mailbox, with its stored sign-in. Changes nothing."""
    return await _stored_test(services, account, INCOMING)


async def test_outgoing(services: Services, account: AccountRow) -> CheckReport:
    """"Test outgoing server" of a stored mailbox (connect, secure, sign in; sends nothing)."""
    return await _stored_test(services, account, OUTGOING)


async def set_password(services: Services, account_id: int, password: str, *,
                       verify: bool = True) -> PasswordOutcome:
    """Enter a mailbox's new password (after a password change at the provider).

    With ``verify`` the incoming server must accept it first (else nothing changes). Stored
    encrypted; the mailbox's error and back-off are cleared and a sync is requested at once;
    the IDLE watch reconnects with the new password.
    """
    if not password:
        raise InputError("password: required")
    async with services.db.read() as conn:
        account = await account_store.get(conn, account_id)
    servers = _imap_account(account)
    if servers.sign_in is not SignIn.PASSWORD:
        raise InputError(f"account {account.id} ({account.email}) signs in with "
                         f"{servers.sign_in.value} (XOAUTH2), not a password")
    report: CheckReport | None = None
    if verify:
        [report] = await _check_pair(services, servers,
                                     PasswordLogin(servers.username, password),
                                     incoming=True, outgoing=False)
        if not report.ok:
            return PasswordOutcome(False, report)
    now = services.clock.now()
    async with services.db.transaction() as conn:
        current = await account_store.get(conn, account_id)
        await account_store.update_fields(
            conn, account_id, password_enc=services.secrets.encrypt(password),
            state=(AccountState.OK if current.initial_sync_done else AccountState.NEW).value,
            last_error=None, last_error_kind=None, last_error_at=None, retry_at=None,
            failure_count=0)
        await account_store.request_sync(conn, account_id, reason="password", now=now)
    services.connectors.forget_tokens(account_id)
    services.idle.wake()
    services.wake()
    log.info("account %s: new password stored (%s)", account_id,
             "verified" if verify else "not verified")
    return PasswordOutcome(True, report)
