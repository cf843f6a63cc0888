""""Test incoming server": every failure comes back as a stage and a sentence, never a raise."""

from __future__ import annotations

from maildesk.providers.imap import ImapServer, OAuth2Login, PasswordLogin, Security, Stage
from maildesk.providers.imap_check import check_incoming_server
from tests.support.dovecot import DovecotServer, Flavour
from tests.support.ports import free_port

from .fake_server import FakeImap, Peer
from .servers import server_settings


async def test_a_working_server(dovecot: DovecotServer, imap_user: str) -> None:
    for security in (Security.SSL, Security.STARTTLS):
        check = await check_incoming_server(
            server_settings(dovecot, security), PasswordLogin(imap_user, dovecot.password)
        )
        assert check.ok, check.reason
        assert check.stage is Stage.READY
        assert check.error_kind == ""
        assert "IDLE" in check.capabilities
        if dovecot.flavour is Flavour.FULL:
            assert check.warnings == ()
        else:
            assert check.warnings == (
                "no CONDSTORE: flag changes are found by comparing every message",
            )


async def test_wrong_password(dovecot_full: DovecotServer) -> None:
    check = await check_incoming_server(
        server_settings(dovecot_full), PasswordLogin("someone", "wrong")
    )
    assert (check.ok, check.stage, check.error_kind) == (False, Stage.AUTH, "login_failed")
    assert check.reason.startswith("AUTH: the server refused the password")
    assert "wrong" not in check.reason.replace("refused", "")


async def test_unknown_host() -> None:
    server = ImapServer("no-such-host.invalid", 993, Security.SSL, connect_timeout=5)
    check = await check_incoming_server(server, PasswordLogin("u", "p"))
    assert (check.ok, check.stage, check.error_kind) == (False, Stage.DNS, "unavailable")
    assert check.reason.startswith("DNS: cannot resolve 'no-such-host.invalid'")


async def test_closed_port() -> None:
    port = free_port()  # nothing listens there
    server = ImapServer("127.0.0.1", port, Security.SSL, connect_timeout=5)
    check = await check_incoming_server(server, PasswordLogin("u", "p"))
    assert (check.ok, check.stage) == (False, Stage.TCP)
    assert check.reason == (
        f"TCP: cannot connect to 127.0.0.1:{port} (127.0.0.1: connection refused)"
    )


async def test_untrusted_certificate(dovecot_full: DovecotServer) -> None:
    server = ImapServer(dovecot_full.host, dovecot_full.imaps_port, Security.SSL)
    check = await check_incoming_server(server, PasswordLogin("u", dovecot_full.password))
    assert (check.ok, check.stage) == (False, Stage.TLS)
    assert "certificate" in check.reason
    assert "not trusted" in check.reason


async def test_oauth_on_a_server_without_xoauth2(dovecot_full: DovecotServer) -> None:
    check = await check_incoming_server(
        server_settings(dovecot_full), OAuth2Login("someone", "token")
    )
    assert (check.ok, check.stage, check.error_kind) == (
        False, Stage.CAPABILITY, "capability_missing",
    )
    assert "XOAUTH2" in check.reason


async def test_not_an_imap_server() -> None:
    async def script(peer: Peer) -> None:
        await peer.send(b"220 smtp.example.org ESMTP\r\n")
        await peer.until_closed()

    async with FakeImap(script) as fake:
        check = await check_incoming_server(fake.settings(), PasswordLogin("u", "p"))
    assert (check.ok, check.stage, check.error_kind) == (False, Stage.GREETING, "protocol")


async def test_server_without_imap4rev1() -> None:
    async def script(peer: Peer) -> None:
        await peer.login(capabilities=b"IMAP2 IDLE")
        await peer.until_closed()

    async with FakeImap(script) as fake:
        check = await check_incoming_server(fake.settings(), PasswordLogin("u", "p"))
    assert (check.ok, check.stage) == (False, Stage.CAPABILITY)
    assert check.reason == "the server does not speak IMAP4rev1"
