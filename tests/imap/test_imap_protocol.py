"""Client behaviour a real Dovecot will not show on request: XOAUTH2, refusals, garbage,
silence, dead IDLE connections, STARTTLS injection — against a scripted loopback peer."""

from __future__ import annotations

import base64
import json
import time

import pytest

from maildesk.errors import (
    CapabilityMissing,
    OAuthInvalid,
    ProtocolViolation,
    ProviderUnavailable,
)
from maildesk.providers.imap import ImapClient, OAuth2Login, PasswordLogin
from maildesk.providers.imap_connection import ImapServer, Security
from maildesk.providers.imap_fetch import Exists

from .fake_server import GREETING, FakeImap, Peer

TOKEN = "ya29.secret-access-token"
LOGIN = PasswordLogin("me@example.org", "pw")


def sasl(user: str, token: str) -> bytes:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode())


async def logout(peer: Peer) -> None:
    tag = await peer.expect(rb"LOGOUT")
    await peer.send(b"* BYE Logging out\r\n" + tag + b" OK Logout completed.\r\n")


async def select_inbox(peer: Peer) -> None:
    tag = await peer.expect(rb"SELECT INBOX")
    await peer.send(
        b"* 4 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 5] ok\r\n"
        + tag
        + b" OK [READ-WRITE] Select completed.\r\n"
    )


# -- XOAUTH2 -------------------------------------------------------------------------------------


async def test_xoauth2_with_initial_response() -> None:
    async def script(peer: Peer) -> None:
        await peer.send(GREETING)
        tag = await peer.expect(b"AUTHENTICATE XOAUTH2 " + sasl("me@gmail.com", TOKEN))
        await peer.send(tag + b" OK [CAPABILITY IMAP4rev1 IDLE] Thats all she wrote!\r\n")
        await logout(peer)

    async with FakeImap(script) as fake:
        client = await ImapClient.connect(fake.settings(), OAuth2Login("me@gmail.com", TOKEN))
        assert client.capabilities == frozenset({"IMAP4REV1", "IDLE"})
        assert client.enabled == frozenset()  # nothing to ENABLE on this server
        await client.logout()


async def test_xoauth2_without_sasl_ir_waits_for_the_continuation() -> None:
    async def script(peer: Peer) -> None:
        await peer.send(b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] hi\r\n")
        tag = await peer.expect(rb"AUTHENTICATE XOAUTH2")
        await peer.send(b"+ \r\n")
        assert await peer.line() == sasl("me@example.org", TOKEN) + b"\r\n"
        await peer.send(tag + b" OK done\r\n")
        capability = await peer.expect(rb"CAPABILITY")
        await peer.send(b"* CAPABILITY IMAP4rev1\r\n" + capability + b" OK\r\n")
        await logout(peer)

    async with FakeImap(script) as fake:
        client = await ImapClient.connect(fake.settings(), OAuth2Login("me@example.org", TOKEN))
        await client.logout()


async def test_refused_token_is_oauth_invalid_and_never_echoed() -> None:
    challenge = base64.b64encode(
        json.dumps(
            {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}
        ).encode()
    )

    async def script(peer: Peer) -> None:
        await peer.send(GREETING)
        tag = await peer.expect(rb"AUTHENTICATE XOAUTH2 \S+")
        await peer.send(b"+ " + challenge + b"\r\n")
        assert await peer.line() == b"\r\n"  # the empty answer that ends the exchange
        await peer.send(tag + b" NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n")
        await peer.until_closed()

    async with FakeImap(script) as fake:
        with pytest.raises(OAuthInvalid) as caught:
            await ImapClient.connect(fake.settings(), OAuth2Login("me@gmail.com", TOKEN))
    message = str(caught.value)
    assert "status 401" in message
    assert "AUTHENTICATIONFAILED" in message
    assert TOKEN not in message
    assert caught.value.kind == "oauth_invalid"


async def test_xoauth2_not_offered() -> None:
    async def script(peer: Peer) -> None:
        await peer.send(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n")
        await peer.until_closed()

    async with FakeImap(script) as fake:
        with pytest.raises(CapabilityMissing) as caught:
            await ImapClient.connect(fake.settings(), OAuth2Login("me@example.org", TOKEN))
    assert caught.value.capability == "AUTH=XOAUTH2"


# -- refusals ------------------------------------------------------------------------------------


async def test_login_disabled_without_tls() -> None:
    async def script(peer: Peer) -> None:
        await peer.send(b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] hi\r\n")
        await peer.until_closed()

    async with FakeImap(script) as fake:
        with pytest.raises(CapabilityMissing, match="LOGINDISABLED"):
            await ImapClient.connect(fake.settings(), LOGIN)


async def test_server_unavailable_during_login_is_transient() -> None:
    async def script(peer: Peer) -> None:
        await peer.send(GREETING)
        tag = await peer.expect(rb"LOGIN .*")
        await peer.send(tag + b" NO [UNAVAILABLE] Backend down, try later\r\n")
        await peer.until_closed()

    async with FakeImap(script) as fake:
        with pytest.raises(ProviderUnavailable, match="UNAVAILABLE"):
            await ImapClient.connect(fake.settings(), LOGIN)


async def test_bye_greeting_is_a_refused_connection() -> None:
    async def script(peer: Peer) -> None:
        await peer.send(b"* BYE Too many connections from your IP\r\n")

    async with FakeImap(script) as fake:
        with pytest.raises(ProviderUnavailable, match=r"^GREETING: .*Too many connections"):
            await ImapClient.connect(fake.settings(), LOGIN)


async def test_starttls_not_offered() -> None:
    async def script(peer: Peer) -> None:
        await peer.send(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n")
        await peer.until_closed()

    async with FakeImap(script) as fake:
        settings = ImapServer(fake.host, fake.port, Security.STARTTLS, connect_timeout=3)
        with pytest.raises(CapabilityMissing, match="try security=ssl") as caught:
            await ImapClient.connect(settings, LOGIN)
    assert caught.value.capability == "STARTTLS"


async def test_plaintext_injected_after_starttls_is_refused() -> None:
    async def script(peer: Peer) -> None:
        await peer.send(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n")
        tag = await peer.expect(rb"STARTTLS")
        await peer.send(tag + b" OK Begin TLS\r\n* 99 EXISTS\r\n")
        await peer.until_closed()

    async with FakeImap(script) as fake:
        settings = ImapServer(fake.host, fake.port, Security.STARTTLS, connect_timeout=3)
        with pytest.raises(ProtocolViolation, match="after the STARTTLS answer"):
            await ImapClient.connect(settings, LOGIN)


# -- garbage -------------------------------------------------------------------------------------


async def test_not_an_imap_server() -> None:
    async def script(peer: Peer) -> None:
        await peer.send(b"SSH-2.0-OpenSSH_9.2\r\n")
        await peer.until_closed()

    async with FakeImap(script) as fake:
        with pytest.raises(ProtocolViolation, match=r"^GREETING: .*does not speak IMAP"):
            await ImapClient.connect(fake.settings(), LOGIN)


@pytest.mark.parametrize(
    "answer",
    [
        b"* 1 FETCH (UID 1 FLAGS (\\Seen)\r\n",  # unbalanced list
        b'* 1 FETCH (BODY[] {2}\r\nab "unterminated)\r\n',  # broken after a literal
        b"ZZZ9 OK wrong tag\r\n",
        b"+ nobody asked\r\n",
        b"* 1 FETCH (BODY[] {999999999999}\r\n",
    ],
)
async def test_garbage_mid_command_is_a_protocol_violation_and_closes(answer: bytes) -> None:
    async def script(peer: Peer) -> None:
        await peer.login()
        await select_inbox(peer)
        await peer.expect(rb"UID FETCH 1:\* .*")
        await peer.send(answer)
        await peer.until_closed()

    async with FakeImap(script) as fake:
        client = await ImapClient.connect(fake.settings(), LOGIN)
        await client.select("INBOX")
        with pytest.raises(ProtocolViolation):
            await client.fetch_messages("1:*")
        assert client.closed
        await client.logout()


async def test_server_hanging_up_mid_literal() -> None:
    async def script(peer: Peer) -> None:
        await peer.login()
        await select_inbox(peer)
        await peer.expect(rb"UID FETCH 1 \(UID BODY.PEEK\[\]\)")
        await peer.send(b"* 1 FETCH (UID 1 BODY[] {100}\r\nonly part")

    async with FakeImap(script) as fake:
        client = await ImapClient.connect(fake.settings(), LOGIN)
        await client.select("INBOX")
        with pytest.raises(ProviderUnavailable, match="in the middle of a literal"):
            await client.fetch_body("INBOX:7:1")
        await client.logout()


# -- silence and dead connections ----------------------------------------------------------------


async def test_silent_server_times_out_the_command() -> None:
    async def script(peer: Peer) -> None:
        await peer.login()
        await peer.expect(rb"NOOP")
        await peer.until_closed()  # never answers

    async with FakeImap(script) as fake:
        client = await ImapClient.connect(fake.settings(command_timeout=0.5), LOGIN)
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable, match="no answer within"):
            await client.noop()
        assert time.monotonic() - started < 3
        assert client.closed
        await client.logout()


async def test_idle_on_a_dead_connection_fails_at_the_keepalive() -> None:
    async def script(peer: Peer) -> None:
        await peer.login()
        await select_inbox(peer)
        await peer.expect(rb"IDLE")
        await peer.send(b"+ idling\r\n")
        assert await peer.line() == b"DONE\r\n"
        await peer.until_closed()  # the tagged answer never comes: the link is dead

    async with FakeImap(script) as fake:
        settings = fake.settings(command_timeout=0.5, idle_keepalive=0.3)
        client = await ImapClient.connect(settings, LOGIN)
        await client.select("INBOX")
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable, match="connection dead"):
            await client.idle(600)
        assert time.monotonic() - started < 3
        await client.logout()


async def test_idle_is_reissued_and_keepalives_are_not_events() -> None:
    async def script(peer: Peer) -> None:
        await peer.login()
        await select_inbox(peer)
        for _ in range(2):  # two quiet rounds, each ended by DONE
            tag = await peer.expect(rb"IDLE")
            await peer.send(b"+ idling\r\n* OK Still here\r\n")
            assert await peer.line() == b"DONE\r\n"
            await peer.send(tag + b" OK Idle completed.\r\n")
        tag = await peer.expect(rb"IDLE")
        await peer.send(b"+ idling\r\n* 5 EXISTS\r\n* 1 RECENT\r\n")
        assert await peer.line() == b"DONE\r\n"
        await peer.send(b"* 6 EXISTS\r\n" + tag + b" OK Idle completed.\r\n")
        await logout(peer)

    async with FakeImap(script) as fake:
        client = await ImapClient.connect(fake.settings(idle_keepalive=0.2), LOGIN)
        await client.select("INBOX")
        assert await client.idle(600) == []
        assert await client.idle(0.1) == []
        assert await client.idle(600) == [Exists(5), Exists(6)]
        await client.logout()


async def test_events_from_other_commands_are_handed_to_idle() -> None:
    async def script(peer: Peer) -> None:
        await peer.login()
        await select_inbox(peer)
        tag = await peer.expect(rb"UID SEARCH ALL")
        await peer.send(b"* SEARCH 1 2 3 4\r\n* 5 EXISTS\r\n" + tag + b" OK Search done\r\n")
        await logout(peer)  # no IDLE: the queued news is returned without asking again

    async with FakeImap(script) as fake:
        client = await ImapClient.connect(fake.settings(), LOGIN)
        await client.select("INBOX")
        assert await client.uid_search() == [1, 2, 3, 4]
        assert await client.idle(600) == [Exists(5)]
        await client.logout()


async def test_idle_not_offered() -> None:
    async def script(peer: Peer) -> None:
        await peer.login(capabilities=b"IMAP4rev1")
        await select_inbox(peer)
        await logout(peer)

    async with FakeImap(script) as fake:
        client = await ImapClient.connect(fake.settings(), LOGIN)
        await client.select("INBOX")
        with pytest.raises(CapabilityMissing) as caught:
            await client.idle(1)
        assert caught.value.capability == "IDLE"
        await client.logout()


# -- literals ------------------------------------------------------------------------------------


async def test_append_with_a_synchronizing_literal() -> None:
    message = b"Subject: hi\r\n\r\nbody\r\n"

    async def script(peer: Peer) -> None:
        await peer.login(capabilities=b"IMAP4rev1 UIDPLUS")  # no LITERAL+
        size = str(len(message)).encode()
        tag = await peer.expect(rb'APPEND "Sent Items" \(\\Seen\) \{' + size + rb"\}")
        await peer.send(b"+ Ready for literal data\r\n")
        assert await peer.read(len(message)) == message
        assert await peer.line() == b"\r\n"
        await peer.send(tag + b" OK [APPENDUID 7 42] Append completed.\r\n")
        await logout(peer)

    async with FakeImap(script) as fake:
        client = await ImapClient.connect(fake.settings(), LOGIN)
        assert await client.append("Sent Items", message, flags=["\\Seen"]) == 42
        await client.logout()
