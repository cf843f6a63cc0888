"""Connecting IMAP mailboxes (``maildesk.imap_mailboxes``) against a real Dovecot and a real SMTP
server: verification before storing, the encrypted password, refusals with the precise stage,
testing a stored mailbox's servers, and entering a new password."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from maildesk import imap_mailboxes
from maildesk.clock import ManualClock
from maildesk.domain.accounts import AccountState, ProviderKind
from maildesk.domain.mail_servers import MailServers, Security, SignIn
from maildesk.errors import InputError, OAuthInvalid
from maildesk.imap_mailboxes import ImapSetup, setup_from_fields
from maildesk.providers.imap_connection import Stage
from maildesk.store import accounts as account_store
from tests.support.dovecot import DovecotServer
from tests.support.harness import Harness
from tests.support.smtp_peer import PeerTls, SmtpPeer

WRONG = "not-the-password-4711"


@contextlib.asynccontextmanager
async def imap_harness(db_url: str, clock: ManualClock, directory: Path, dovecot: DovecotServer,
                       **overrides: Any) -> AsyncIterator[Harness]:
    """The harness trusting Dovecot's certificate. (MailDesk trusts one extra CA file; the SMTP
    peer's self-signed certificate has the same subject as Dovecot's, so one bundle of both
    cannot be verified: the SMTP peer here speaks plain SMTP, and the TLS modes of the SMTP
    client are proven in tests/providers/test_smtp.py.)"""
    async with Harness.open(db_url=db_url, clock=clock, data_dir=directory,
                            tls_ca_file=str(dovecot.cert_path), imap_timeout=10.0,
                            imap_connect_timeout=10.0, **overrides) as h:
        yield h


@pytest.fixture
def smtp_peer(dovecot: DovecotServer, imap_user: str) -> Iterator[SmtpPeer]:
    with SmtpPeer(tls=PeerTls.NONE, users={imap_user: dovecot.password}) as peer:
        yield peer


def fields(dovecot: DovecotServer, user: str, *, password: str | None = None,
           security: Security = Security.STARTTLS, peer: SmtpPeer | None = None,
           **extra: Any) -> dict[str, Any]:
    port = dovecot.imaps_port if security is Security.SSL else dovecot.imap_port
    given: dict[str, Any] = {
        "email": f"{user}@example.org", "host": dovecot.host, "port": port,
        "security": security.value, "username": user,
        "password": dovecot.password if password is None else password,
    }
    if peer is not None:
        given.update(smtp_host=peer.host, smtp_port=peer.port, smtp_security=peer.tls.value)
    return {**given, **extra}


async def all_stored_text(h: Harness) -> str:
    """Every value of every table, as text: where a leaked secret would show."""
    found: list[str] = []
    async with h.services.db.read() as conn:
        names = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        for name in names:
            rows = (await conn.execute(text(f'SELECT * FROM "{name}"'))).all()  # noqa: S608
            found += [str(value) for row in rows for value in row]
    return "\n".join(found)


async def imap_rows(h: Harness) -> list[account_store.AccountRow]:
    async with h.services.db.read() as conn:
        return [a for a in await account_store.list_all(conn) if a.provider is ProviderKind.IMAP]


# -- adding ----------------------------------------------------------------------------------------


async def test_add_verifies_both_servers_and_stores_the_password_encrypted(
    db_url: str, clock: ManualClock, tmp_path: Path, dovecot: DovecotServer, imap_user: str,
    smtp_peer: SmtpPeer,
) -> None:
    async with imap_harness(db_url, clock, tmp_path, dovecot) as h:
        setup = setup_from_fields(fields(dovecot, imap_user, peer=smtp_peer,
                                         idle_folders="INBOX, Archive"))
        outcome = await imap_mailboxes.add_imap(h.services, setup)
        assert outcome.failed is None, [c.sentence() for c in outcome.checks]
        assert outcome.account_id is not None
        [incoming, outgoing] = outcome.checks
        assert (incoming.which, incoming.check.stage) == ("incoming", Stage.READY)
        assert (outgoing.which, outgoing.check.stage) == ("outgoing", Stage.READY)
        assert incoming.server == f"{dovecot.host}:{dovecot.imap_port} (starttls)"
        assert outgoing.server == f"{smtp_peer.host}:{smtp_peer.port} (none)"
        assert outgoing.check.warnings[0].startswith("no TLS")
        assert "AUTH=PLAIN" in outgoing.check.capabilities
        assert smtp_peer.messages == [], "the outgoing test sends nothing"

        [row] = await imap_rows(h)
        assert row.id == outcome.account_id
        assert row.email == f"{imap_user}@example.org"
        assert row.state is AccountState.NEW
        assert row.password_enc
        assert row.refresh_token_enc is None
        assert h.services.secrets.decrypt(row.password_enc) == dovecot.password
        servers = MailServers.of_account(row.settings)
        assert servers == setup.servers
        assert servers.idle_folders == ("INBOX", "Archive")
        assert servers.smtp is not None
        assert servers.smtp.port == smtp_peer.port
        assert row.sync_requested_at is not None, "the first sync is requested at once"
        stored = await all_stored_text(h)
        assert dovecot.password not in stored, "the plain password is nowhere in the database"


async def test_a_wrong_password_is_refused_at_auth_and_nothing_is_stored(
    db_url: str, clock: ManualClock, tmp_path: Path, dovecot: DovecotServer, imap_user: str,
) -> None:
    async with imap_harness(db_url, clock, tmp_path, dovecot) as h:
        setup = setup_from_fields(fields(dovecot, imap_user, password=WRONG,
                                         security=Security.SSL))
        outcome = await imap_mailboxes.add_imap(h.services, setup)
        assert outcome.account_id is None
        failed = outcome.failed
        assert failed is not None
        assert (failed.which, failed.check.stage, failed.check.error_kind) == (
            "incoming", Stage.AUTH, "login_failed")
        assert imap_mailboxes.describe(failed.check).startswith(
            "AUTH: the server refused the password")
        assert await imap_rows(h) == []
        assert WRONG not in failed.sentence()


async def test_a_failing_outgoing_server_also_stores_nothing(
    db_url: str, clock: ManualClock, tmp_path: Path, dovecot_full: DovecotServer,
) -> None:
    user = dovecot_full.new_user()
    with SmtpPeer(tls=PeerTls.NONE, users={user: "another password"}) as peer:
        async with imap_harness(db_url, clock, tmp_path, dovecot_full) as h:
            outcome = await imap_mailboxes.add_imap(
                h.services, setup_from_fields(fields(dovecot_full, user, peer=peer)))
            assert outcome.account_id is None
            [incoming, outgoing] = outcome.checks
            assert incoming.ok
            assert (outgoing.ok, outgoing.check.stage, outgoing.check.error_kind) == (
                False, Stage.AUTH, "login_failed")
            assert outcome.failed is outgoing
            assert await imap_rows(h) == []


async def test_a_duplicate_is_refused_before_connecting(
    db_url: str, clock: ManualClock, tmp_path: Path, dovecot_full: DovecotServer,
) -> None:
    user = dovecot_full.new_user()
    async with imap_harness(db_url, clock, tmp_path, dovecot_full) as h:
        setup = setup_from_fields(fields(dovecot_full, user))
        first = await imap_mailboxes.add_imap(h.services, setup)
        assert first.account_id is not None
        with pytest.raises(InputError, match=f"already exists \\(id {first.account_id}\\)"):
            await imap_mailboxes.add_imap(h.services, setup)
        # Even one that could not connect at all: the duplicate is found first.
        elsewhere = ImapSetup(setup.email, MailServers.from_json(
            {**setup.servers.to_json(), "imap": {"host": "imap.maildesk-test.invalid",
                                                  "port": 993, "security": "ssl"}}),
            password="x")
        with pytest.raises(InputError, match="already exists"):
            await imap_mailboxes.add_imap(h.services, elsewhere)
        assert len(await imap_rows(h)) == 1


async def test_no_verify_stores_a_server_that_cannot_be_reached_and_the_test_says_why(
    db_url: str, clock: ManualClock, tmp_path: Path, dovecot_full: DovecotServer,
) -> None:
    async with imap_harness(db_url, clock, tmp_path, dovecot_full) as h:
        setup = setup_from_fields({
            "email": "far@example.org", "host": "imap.maildesk-test.invalid",
            "username": "far@example.org", "password": "pw", "smtp_host":
            "smtp.maildesk-test.invalid", "smtp_port": 587})
        outcome = await imap_mailboxes.add_imap(h.services, setup, verify=False)
        assert outcome.account_id is not None
        assert outcome.checks == ()
        [row] = await imap_rows(h)
        incoming = await imap_mailboxes.test_incoming(h.services, row)
        assert (incoming.ok, incoming.check.stage) == (False, Stage.DNS)
        assert imap_mailboxes.describe(incoming.check).startswith(
            "DNS: cannot resolve 'imap.maildesk-test.invalid'")
        outgoing = await imap_mailboxes.test_outgoing(h.services, row)
        assert (outgoing.ok, outgoing.check.stage) == (False, Stage.DNS)
        assert outgoing.server == "smtp.maildesk-test.invalid:587 (starttls)"


async def test_stored_mailbox_tests_use_the_stored_sign_in(
    db_url: str, clock: ManualClock, tmp_path: Path, dovecot: DovecotServer, imap_user: str,
) -> None:
    async with imap_harness(db_url, clock, tmp_path, dovecot) as h:
        with SmtpPeer(tls=PeerTls.NONE, users={imap_user: dovecot.password}) as peer:
            outcome = await imap_mailboxes.add_imap(
                h.services, setup_from_fields(fields(dovecot, imap_user, peer=peer)))
            [row] = await imap_rows(h)
            assert row.id == outcome.account_id
            incoming = await imap_mailboxes.test_incoming(h.services, row)
            assert (incoming.ok, incoming.check.stage) == (True, Stage.READY)
            assert incoming.sentence().startswith(
                f"Incoming server (IMAP) {dovecot.host}:{dovecot.imap_port} (starttls): OK: "
                "connected, signed in and opened INBOX")
            assert "IDLE" in incoming.check.capabilities
            if dovecot.flavour.value == "basic":
                assert any("CONDSTORE" in w for w in incoming.check.warnings)
            outgoing = await imap_mailboxes.test_outgoing(h.services, row)
            assert (outgoing.ok, outgoing.check.stage) == (True, Stage.READY)
            assert h.services.connectors.imap.in_use(row.id) == 0, "the test's slot is returned"
        # The SMTP server went away: the test says where it failed.
        outgoing = await imap_mailboxes.test_outgoing(h.services, row)
        assert (outgoing.ok, outgoing.check.stage) == (False, Stage.TCP)
        assert "connection refused" in outgoing.check.reason


async def test_stored_mailbox_without_smtp_cannot_test_outgoing(
    db_url: str, clock: ManualClock, tmp_path: Path, dovecot_full: DovecotServer,
) -> None:
    async with imap_harness(db_url, clock, tmp_path, dovecot_full) as h:
        await imap_mailboxes.add_imap(
            h.services, setup_from_fields(fields(dovecot_full, dovecot_full.new_user())),
            verify=False)
        [row] = await imap_rows(h)
        with pytest.raises(InputError, match="no outgoing \\(SMTP\\) server"):
            await imap_mailboxes.test_outgoing(h.services, row)
        gmail = await h.add_gmail("g@example.com")
        async with h.services.db.read() as conn:
            gmail_row = await account_store.get(conn, gmail)
        with pytest.raises(InputError, match="not an IMAP mailbox"):
            await imap_mailboxes.test_incoming(h.services, gmail_row)


# -- a new password ----------------------------------------------------------------------------


async def test_a_new_password_clears_reconnect_needed_and_sync_resumes(
    db_url: str, clock: ManualClock, tmp_path: Path, dovecot: DovecotServer, imap_user: str,
) -> None:
    async with imap_harness(db_url, clock, tmp_path, dovecot) as h:
        # Stored with a password the server no longer accepts (changed at the provider).
        outcome = await imap_mailboxes.add_imap(
            h.services, setup_from_fields(fields(dovecot, imap_user, password=WRONG)),
            verify=False)
        account_id = outcome.account_id
        assert account_id is not None
        [result] = await h.sync()
        assert (result.status, result.error_kind) == ("reauth_required", "login_failed"), result
        [row] = await imap_rows(h)
        assert row.state is AccountState.REAUTH_REQUIRED
        assert row.retry_at is not None

        # A wrong new password is refused at AUTH and changes nothing.
        refused = await imap_mailboxes.set_password(h.services, account_id, "still wrong")
        assert not refused.stored
        assert refused.check is not None
        assert refused.check.check.stage is Stage.AUTH
        [unchanged] = await imap_rows(h)
        assert unchanged.password_enc == row.password_enc
        assert unchanged.state is AccountState.REAUTH_REQUIRED

        done = await imap_mailboxes.set_password(h.services, account_id, dovecot.password)
        assert done.stored
        assert done.check is not None
        assert done.check.ok
        [fixed] = await imap_rows(h)
        assert h.services.secrets.decrypt(fixed.password_enc or "") == dovecot.password
        assert fixed.state is AccountState.NEW
        assert (fixed.last_error, fixed.last_error_kind, fixed.retry_at) == (None, None, None)
        assert fixed.sync_request_seq > row.sync_request_seq, "a sync is requested"
        [again] = await h.sync()
        assert again.status == "ok", again
        [synced] = await imap_rows(h)
        assert synced.state is AccountState.OK
        assert dovecot.password not in await all_stored_text(h)


async def test_set_password_refuses_oauth_and_non_imap_mailboxes(
    db_url: str, clock: ManualClock, tmp_path: Path, dovecot_full: DovecotServer,
) -> None:
    async with imap_harness(db_url, clock, tmp_path, dovecot_full) as h:
        token = h.grant("x@gmail.com")
        setup = setup_from_fields({"host": dovecot_full.host, "port": dovecot_full.imaps_port,
                                   "username": "x@gmail.com", "sign_in": "google",
                                   "refresh_token": token})
        assert setup.servers.sign_in is SignIn.GOOGLE
        outcome = await imap_mailboxes.add_imap(h.services, setup, verify=False)
        assert outcome.account_id is not None
        with pytest.raises(InputError, match=r"\(XOAUTH2\), not a password"):
            await imap_mailboxes.set_password(h.services, outcome.account_id, "pw")
        gmail = await h.add_gmail("g@example.com")
        with pytest.raises(InputError, match="not an IMAP mailbox"):
            await imap_mailboxes.set_password(h.services, gmail, "pw")


# -- XOAUTH2 (Google / Microsoft tokens) -------------------------------------------------------


async def test_xoauth2_setup_exchanges_the_token_then_checks_the_server(
    db_url: str, clock: ManualClock, tmp_path: Path, dovecot_full: DovecotServer,
) -> None:
    async with imap_harness(db_url, clock, tmp_path, dovecot_full) as h:
        base = {"host": dovecot_full.host, "port": dovecot_full.imaps_port,
                "username": "x@gmail.com", "sign_in": "google"}
        # A live Google grant: the exchange works, and Dovecot (no XOAUTH2) is the problem.
        setup = setup_from_fields({**base, "refresh_token": h.grant("x@gmail.com")})
        [report] = await imap_mailboxes.check_setup(h.services, setup)
        assert (report.ok, report.check.stage, report.check.error_kind) == (
            False, Stage.CAPABILITY, "capability_missing")
        assert "XOAUTH2" in report.check.reason
        assert any(r.url.path == "/token" for r in h.requests)
        # A dead token: every test fails at AUTH with the token endpoint's reason ...
        dead = setup_from_fields({**base, "refresh_token": "1//not-a-grant"})
        [report] = await imap_mailboxes.check_setup(h.services, dead)
        assert (report.ok, report.check.stage, report.check.error_kind) == (
            False, Stage.AUTH, "oauth_invalid")
        # ... and adding it is refused as such, with nothing stored.
        with pytest.raises(OAuthInvalid):
            await imap_mailboxes.add_imap(h.services, dead)
        assert await imap_rows(h) == []
        # A Microsoft IMAP/SMTP grant: exchanged with the IMAP scopes; stored as that kind.
        ms_token = h.outlook_grant("m@contoso.example", kind="imap")
        ms = setup_from_fields({**base, "username": "m@contoso.example",
                                "sign_in": "microsoft", "refresh_token": ms_token})
        [report] = await imap_mailboxes.check_setup(h.services, ms)
        assert report.check.stage is Stage.CAPABILITY, report.sentence()
        outcome = await imap_mailboxes.add_imap(h.services, ms, verify=False)
        [row] = await imap_rows(h)
        assert row.id == outcome.account_id
        assert row.token_kind == "imap"
        assert row.password_enc is None
        assert h.services.secrets.decrypt(row.refresh_token_enc or "") == ms_token


# -- reading the operator's input --------------------------------------------------------------


def test_setup_defaults_and_refusals() -> None:
    setup = setup_from_fields({"host": " imap.example.org ", "username": "Me@Example.org",
                               "password": "pw", "smtp_host": "smtp.example.org",
                               "smtp_port": "465"})
    assert setup.email == "me@example.org"
    assert (setup.servers.imap.port, setup.servers.imap.security) == (993, Security.SSL)
    assert setup.servers.smtp is not None
    assert (setup.servers.smtp.port, setup.servers.smtp.security) == (465, Security.SSL)
    plain = setup_from_fields({"host": "h", "security": "starttls", "username": "u",
                               "email": "u@example.org", "password": "pw",
                               "smtp_host": "s"})
    assert plain.servers.imap.port == 143
    assert plain.servers.smtp is not None
    assert (plain.servers.smtp.port, plain.servers.smtp.security) == (587, Security.STARTTLS)
    assert "pw" not in repr(plain)
    refusals: dict[str, dict[str, Any]] = {
        "IMAP host": {"username": "u@x.org", "password": "p"},
        "IMAP port": {"host": "h", "port": "99999", "username": "u@x.org", "password": "p"},
        "IMAP security": {"host": "h", "security": "tls", "username": "u@x.org",
                          "password": "p"},
        "user name": {"host": "h", "password": "p"},
        "email: required": {"host": "h", "username": "plainuser", "password": "p"},
        "password: required": {"host": "h", "username": "u@x.org"},
        "refresh token": {"host": "h", "username": "u@x.org", "sign_in": "google"},
        "sign-in": {"host": "h", "username": "u@x.org", "sign_in": "kerberos"},
        "SMTP host": {"host": "h", "username": "u@x.org", "password": "p", "smtp_port": 25},
        "sent copy": {"host": "h", "username": "u@x.org", "password": "p",
                      "sent_copy": "sometimes"},
    }
    for fragment, given in refusals.items():
        with pytest.raises(InputError, match=fragment):
            setup_from_fields(given)
