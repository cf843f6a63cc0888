"""The SMTP client against a real SMTP server (aiosmtpd on loopback): every security mode,
password and XOAUTH2 sign-in, how replies map into our errors, and the precise stage of each
connection failure."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator

import pytest

from maildesk.domain.mail_servers import Security
from maildesk.errors import (
    CapabilityMissing,
    InputError,
    LoginFailed,
    OAuthInvalid,
    ProviderRejected,
    ProviderUnavailable,
)
from maildesk.providers.imap import OAuth2Login, PasswordLogin
from maildesk.providers.imap_connection import Stage
from maildesk.providers.smtp import SmtpServer, check_outgoing_server, send_message
from tests.support.ports import free_port
from tests.support.smtp_peer import PeerTls, SmtpPeer

USER = "me@example.org"
PASSWORD = "peer-pass-4711"
TOKEN = "ya29.access-token-0815"
MESSAGE = (
    b"From: me@example.org\r\nTo: you@example.net\r\nSubject: hello\r\n"
    b"Message-ID: <m1@example.org>\r\n\r\nHi there.\r\n.leading dot line\r\n"
)


def server_for(peer: SmtpPeer, security: Security | None = None, **options: float) -> SmtpServer:
    return SmtpServer(
        peer.host, peer.port, security or Security(peer.tls.value),
        ssl_context=peer.client_context(), local_hostname="client.test",
        connect_timeout=options.get("connect_timeout", 5.0),
        command_timeout=options.get("command_timeout", 5.0),
    )


@pytest.fixture
def plain_peer() -> Iterator[SmtpPeer]:
    with SmtpPeer(tls=PeerTls.NONE, users={USER: PASSWORD}) as peer:
        yield peer


@pytest.fixture
def starttls_peer() -> Iterator[SmtpPeer]:
    with SmtpPeer(tls=PeerTls.STARTTLS, users={USER: PASSWORD}) as peer:
        yield peer


@pytest.fixture
def ssl_peer() -> Iterator[SmtpPeer]:
    with SmtpPeer(tls=PeerTls.SSL, users={USER: PASSWORD}) as peer:
        yield peer


@pytest.fixture
def token_peer() -> Iterator[SmtpPeer]:
    with SmtpPeer(tls=PeerTls.STARTTLS, tokens={USER: TOKEN}) as peer:
        yield peer


# -- sending -------------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", list(PeerTls))
async def test_sends_with_password_on_every_security_mode(tls: PeerTls) -> None:
    with SmtpPeer(tls=tls, users={USER: PASSWORD}) as peer:
        await send_message(server_for(peer), PasswordLogin(USER, PASSWORD), MESSAGE,
                           sender=USER, recipients=["you@example.net", "bcc@example.com"])
        [received] = await asyncio.to_thread(peer.wait_for, 1)
    assert received.mail_from == USER
    assert received.rcpt_tos == ("you@example.net", "bcc@example.com")
    assert received.login == USER
    # Sent byte for byte (dot-stuffing undone by the server).
    assert received.content.replace(b"\r\n", b"\n") == MESSAGE.replace(b"\r\n", b"\n")


async def test_sends_with_xoauth2(token_peer: SmtpPeer) -> None:
    await send_message(server_for(token_peer), OAuth2Login(USER, TOKEN), MESSAGE,
                       sender=USER, recipients=["you@example.net"])
    [received] = await asyncio.to_thread(token_peer.wait_for, 1)
    assert received.login == USER
    assert received.rcpt_tos == ("you@example.net",)


async def test_wrong_access_token_is_oauth_invalid(token_peer: SmtpPeer) -> None:
    with pytest.raises(OAuthInvalid, match=r"^AUTH: the server refused the access token"):
        await send_message(server_for(token_peer), OAuth2Login(USER, "expired"), MESSAGE,
                           sender=USER, recipients=["you@example.net"])
    assert token_peer.messages == []


async def test_wrong_password_is_login_failed_and_never_echoes_it(
    starttls_peer: SmtpPeer,
) -> None:
    with pytest.raises(LoginFailed, match=r"^AUTH: the server refused the password") as info:
        await send_message(server_for(starttls_peer), PasswordLogin(USER, "not-the-pass"),
                           MESSAGE, sender=USER, recipients=["you@example.net"])
    assert "not-the-pass" not in str(info.value)
    assert starttls_peer.messages == []


async def test_no_sign_in_to_a_server_that_requires_one_is_refused(
    starttls_peer: SmtpPeer,
) -> None:
    with pytest.raises(ProviderRejected) as info:
        await send_message(server_for(starttls_peer), None, MESSAGE,
                           sender=USER, recipients=["you@example.net"])
    assert info.value.status == 530
    assert starttls_peer.messages == []


@pytest.mark.parametrize("command", ["MAIL", "RCPT", "DATA"])
async def test_a_4xx_reply_is_transient(starttls_peer: SmtpPeer, command: str) -> None:
    starttls_peer.fail_next(command, 451, "4.3.0 try again later")
    with pytest.raises(ProviderUnavailable, match=r"451 4.3.0 try again later"):
        await send_message(server_for(starttls_peer), PasswordLogin(USER, PASSWORD), MESSAGE,
                           sender=USER, recipients=["you@example.net"])
    assert starttls_peer.messages == []
    # The failure was used up: the retry goes through.
    await send_message(server_for(starttls_peer), PasswordLogin(USER, PASSWORD), MESSAGE,
                       sender=USER, recipients=["you@example.net"])
    assert len(await asyncio.to_thread(starttls_peer.wait_for, 1)) == 1


@pytest.mark.parametrize("command", ["MAIL", "RCPT", "DATA"])
async def test_a_5xx_reply_is_permanent_with_the_server_text(
    starttls_peer: SmtpPeer, command: str,
) -> None:
    starttls_peer.fail_next(command, 554, "5.7.1 message refused by policy")
    with pytest.raises(ProviderRejected, match=r"554 5.7.1 message refused by policy") as info:
        await send_message(server_for(starttls_peer), PasswordLogin(USER, PASSWORD), MESSAGE,
                           sender=USER, recipients=["you@example.net"])
    assert info.value.status == 554
    assert b"Hi there" not in str(info.value).encode()
    assert starttls_peer.messages == []


async def test_one_refused_recipient_sends_to_nobody(starttls_peer: SmtpPeer) -> None:
    # The first RCPT is refused, the second accepted: the second must not get the message
    # either, or a retry (after fixing the address) would deliver to it twice.
    starttls_peer.fail_next("RCPT", 550, "5.1.1 no such user")
    with pytest.raises(ProviderRejected, match=r"unknown@example.net: 550 5.1.1 no such user") \
            as info:
        await send_message(server_for(starttls_peer), PasswordLogin(USER, PASSWORD), MESSAGE,
                           sender=USER, recipients=["unknown@example.net", "ok@example.net"])
    assert info.value.status == 550
    assert "ok@example.net" not in str(info.value)
    await asyncio.sleep(0.2)
    assert starttls_peer.messages == []


async def test_international_address_is_sent_with_smtputf8(plain_peer: SmtpPeer) -> None:
    await send_message(server_for(plain_peer), PasswordLogin(USER, PASSWORD), MESSAGE,
                       sender=USER, recipients=["jürgen@exämple.de"])
    [received] = await asyncio.to_thread(plain_peer.wait_for, 1)
    assert received.rcpt_tos == ("jürgen@exämple.de",)


async def test_international_address_without_smtputf8_is_a_missing_capability() -> None:
    script = _Scripted(b"220 mx.test ESMTP\r\n", ehlo=[b"mx.test", b"8BITMIME"])
    async with script as port:
        with pytest.raises(CapabilityMissing) as info:
            await send_message(SmtpServer("127.0.0.1", port, Security.NONE, connect_timeout=5),
                               None, MESSAGE, sender=USER, recipients=["jürgen@example.de"])
    assert info.value.capability == "SMTPUTF8"
    assert not any(line.startswith(b"MAIL") for line in script.received)


async def test_bad_addresses_are_refused_before_connecting() -> None:
    # Port 9 on a name under .invalid: if we connected first, the error would be DNS.
    server = SmtpServer("mail.example.invalid", 9, Security.SSL, connect_timeout=2)
    bad = [[], ["a@example.net\r\nRCPT TO:<evil@example.net>"], ["Bob <bob@example.net>"],
           ["no-at-sign"], ["a@example.net", ""]]
    for recipients in bad:
        with pytest.raises(InputError, match=r"^SMTP: "):
            await send_message(server, None, MESSAGE, sender=USER, recipients=recipients)
    with pytest.raises(InputError, match=r"sender"):
        await send_message(server, None, MESSAGE, sender="me@exa\nmple.org",
                           recipients=["you@example.net"])


# -- where a connection fails --------------------------------------------------------------------


async def test_unresolvable_host_is_dns_stage() -> None:
    server = SmtpServer("smtp.maildesk-test.invalid", 587, Security.STARTTLS, connect_timeout=5)
    check = await check_outgoing_server(server, PasswordLogin(USER, PASSWORD))
    assert (check.ok, check.stage, check.error_kind) == (False, Stage.DNS, "unavailable")
    assert check.reason.startswith("DNS: cannot resolve 'smtp.maildesk-test.invalid'")
    with pytest.raises(ProviderUnavailable, match=r"^DNS: "):
        await send_message(server, None, MESSAGE, sender=USER, recipients=["you@example.net"])


async def test_closed_port_is_tcp_stage() -> None:
    port = free_port()  # nobody listens there
    server = SmtpServer("127.0.0.1", port, Security.NONE, connect_timeout=5)
    check = await check_outgoing_server(server, None)
    assert (check.ok, check.stage) == (False, Stage.TCP)
    assert check.reason == (
        f"TCP: cannot connect to 127.0.0.1:{port} (127.0.0.1: connection refused)")


async def test_implicit_tls_to_a_plain_port_is_tls_stage_with_a_hint(
    starttls_peer: SmtpPeer,
) -> None:
    check = await check_outgoing_server(server_for(starttls_peer, Security.SSL),
                                        PasswordLogin(USER, PASSWORD))
    assert (check.ok, check.stage) == (False, Stage.TLS)
    assert check.reason.startswith(f"TLS: handshake with {starttls_peer.host}:"
                                   f"{starttls_peer.port} failed")
    assert "try security=starttls" in check.reason


async def test_untrusted_certificate_is_tls_stage(ssl_peer: SmtpPeer,
                                                  starttls_peer: SmtpPeer) -> None:
    for peer in (ssl_peer, starttls_peer):
        server = SmtpServer(peer.host, peer.port, Security(peer.tls.value),
                            ssl_context=ssl.create_default_context(), connect_timeout=5)
        check = await check_outgoing_server(server, PasswordLogin(USER, PASSWORD))
        assert (check.ok, check.stage) == (False, Stage.TLS), peer.tls
        assert check.reason.startswith(f"TLS: the certificate of {peer.host}:{peer.port} "
                                       "is not trusted"), check.reason
        with pytest.raises(ProviderUnavailable, match=r"not trusted"):
            await send_message(server, PasswordLogin(USER, PASSWORD), MESSAGE, sender=USER,
                               recipients=["you@example.net"])
        assert peer.messages == []


async def test_plain_connection_to_a_tls_port_says_no_greeting(ssl_peer: SmtpPeer) -> None:
    server = server_for(ssl_peer, Security.NONE, connect_timeout=1.0)
    check = await check_outgoing_server(server, PasswordLogin(USER, PASSWORD))
    assert (check.ok, check.stage) == (False, Stage.GREETING)
    assert "sent no greeting" in check.reason
    assert "try security=ssl" in check.reason


async def test_starttls_requested_but_not_offered_is_a_missing_capability(
    plain_peer: SmtpPeer,
) -> None:
    check = await check_outgoing_server(server_for(plain_peer, Security.STARTTLS),
                                        PasswordLogin(USER, PASSWORD))
    assert (check.ok, check.stage, check.error_kind) == (
        False, Stage.CAPABILITY, "capability_missing")
    assert check.reason.startswith("TLS: ")
    assert "does not offer STARTTLS" in check.reason


async def test_xoauth2_on_a_password_only_server_is_a_missing_capability() -> None:
    script = _Scripted(b"220 mx.test ESMTP\r\n", ehlo=[b"mx.test", b"AUTH PLAIN LOGIN"])
    async with script as port:
        check = await check_outgoing_server(
            SmtpServer("127.0.0.1", port, Security.NONE, connect_timeout=5),
            OAuth2Login(USER, TOKEN))
    assert (check.ok, check.stage, check.error_kind) == (
        False, Stage.CAPABILITY, "capability_missing")
    assert check.reason == f"AUTH: 127.0.0.1:{port} does not offer XOAUTH2 sign-in"
    assert "AUTH=PLAIN" in check.capabilities
    assert not any(TOKEN.encode() in line for line in script.received)


async def test_no_auth_offered_is_a_missing_capability_with_a_hint() -> None:
    script = _Scripted(b"220 mx.test ESMTP\r\n", ehlo=[b"mx.test", b"8BITMIME"])
    async with script as port:
        check = await check_outgoing_server(
            SmtpServer("127.0.0.1", port, Security.NONE, connect_timeout=5),
            PasswordLogin(USER, PASSWORD))
    assert (check.ok, check.stage) == (False, Stage.CAPABILITY)
    assert "offers no sign-in" in check.reason
    assert "try security=starttls" in check.reason


async def test_greeting_refusal_is_greeting_stage() -> None:
    async with _Scripted(b"554 5.3.2 no service for you\r\n") as port:
        check = await check_outgoing_server(
            SmtpServer("127.0.0.1", port, Security.NONE, connect_timeout=5), None)
    assert (check.ok, check.stage, check.error_kind) == (False, Stage.GREETING, "rejected")
    assert "554 5.3.2 no service for you" in check.reason


async def test_temporary_greeting_refusal_is_transient() -> None:
    async with _Scripted(b"421 4.3.2 too busy, try later\r\n") as port:
        with pytest.raises(ProviderUnavailable, match=r"421 4.3.2 too busy"):
            await send_message(SmtpServer("127.0.0.1", port, Security.NONE, connect_timeout=5),
                               None, MESSAGE, sender=USER, recipients=["you@example.net"])


async def test_silent_server_times_out_at_the_command_timeout() -> None:
    # Greets, then never answers EHLO: the check ends within the timeouts, at the greeting.
    async with _Scripted(b"220 hello\r\n", silent=True) as port:
        server = SmtpServer("127.0.0.1", port, Security.NONE, connect_timeout=1.0,
                            command_timeout=1.0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        check = await check_outgoing_server(server, None)
        assert loop.time() - started < 4
    assert (check.ok, check.stage, check.error_kind) == (False, Stage.GREETING, "unavailable")


async def test_message_larger_than_the_servers_size_limit_is_refused_before_data() -> None:
    script = _Scripted(b"220 mx.test ESMTP\r\n", ehlo=[b"mx.test", b"SIZE 100"])
    async with script as port:
        with pytest.raises(ProviderRejected, match=r"larger than .* accepts \(100 bytes\)"):
            await send_message(SmtpServer("127.0.0.1", port, Security.NONE, connect_timeout=5),
                               None, MESSAGE + b"x" * 200, sender=USER,
                               recipients=["you@example.net"])
    assert not any(line.startswith(b"DATA") for line in script.received)


# -- the check on success ------------------------------------------------------------------------


@pytest.mark.parametrize("tls", list(PeerTls))
async def test_check_succeeds_and_sends_nothing(tls: PeerTls) -> None:
    with SmtpPeer(tls=tls, users={USER: PASSWORD}) as peer:
        check = await check_outgoing_server(server_for(peer), PasswordLogin(USER, PASSWORD))
        assert peer.messages == []
    assert (check.ok, check.stage, check.error_kind) == (True, Stage.READY, "")
    assert check.reason == "connected, signed in and ready to send"
    assert "AUTH=PLAIN" in check.capabilities
    assert ("no TLS" in " ".join(check.warnings)) == (tls is PeerTls.NONE)


async def test_check_reports_a_refused_password_at_the_auth_stage(ssl_peer: SmtpPeer) -> None:
    check = await check_outgoing_server(server_for(ssl_peer), PasswordLogin(USER, "wrong"))
    assert (check.ok, check.stage, check.error_kind) == (False, Stage.AUTH, "login_failed")
    assert check.reason.startswith("AUTH: the server refused the password")


# -- helpers -------------------------------------------------------------------------------------


class _Scripted:
    """A tiny loopback SMTP server for replies aiosmtpd will not give: it sends ``greeting``,
    answers EHLO with the ``ehlo`` lines, QUIT with 221 and anything else with 250 (or, when
    ``silent``, nothing at all). ``received`` keeps the lines it was sent."""

    def __init__(self, greeting: bytes, *, ehlo: list[bytes] | None = None,
                 silent: bool = False) -> None:
        self.greeting = greeting
        self.ehlo = ehlo or [b"mx.test"]
        self.silent = silent
        self.received: list[bytes] = []
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            writer.write(self.greeting)
            await writer.drain()
            while line := await reader.readline():
                self.received.append(line)
                if self.silent:
                    continue
                verb = line[:4].upper()
                if verb == b"EHLO":
                    lines = self.ehlo
                    reply = b"".join(b"250-" + x + b"\r\n" for x in lines[:-1])
                    writer.write(reply + b"250 " + lines[-1] + b"\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(b"250 OK\r\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        sock: socket.socket = self._server.sockets[0]
        port: int = sock.getsockname()[1]
        return port

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()
        await asyncio.sleep(0.05)  # let the handlers see the close and finish
