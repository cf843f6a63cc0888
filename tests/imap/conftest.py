"""Dovecot for the IMAP tests: one server per flavour for the session, a fresh user per test.

``dovecot`` is parametrized over both flavours (``full``: CONDSTORE, QRESYNC, SPECIAL-USE;
``basic``: none of them), so a test that takes it runs against each. Tests that need one flavour
take ``dovecot_full`` or ``dovecot_basic``. If Dovecot is missing or cannot start the tests fail:
they never skip.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from maildesk.providers.imap import ImapClient, ImapServer, PasswordLogin
from tests.support.dovecot import DovecotServer, Flavour, MailboxAdmin

from .servers import server_settings


def _serve(flavour: Flavour) -> Iterator[DovecotServer]:
    server = DovecotServer(flavour)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dovecot_full() -> Iterator[DovecotServer]:
    yield from _serve(Flavour.FULL)


@pytest.fixture(scope="session")
def dovecot_basic() -> Iterator[DovecotServer]:
    yield from _serve(Flavour.BASIC)


@pytest.fixture(params=[Flavour.FULL, Flavour.BASIC], ids=["full", "basic"])
def dovecot(request: pytest.FixtureRequest) -> DovecotServer:
    server: DovecotServer = request.getfixturevalue(f"dovecot_{request.param}")
    return server


@pytest.fixture
def imap_user(dovecot: DovecotServer) -> str:
    """A user nobody has used: an empty INBOX plus the flavour's auto-created folders."""
    return dovecot.new_user()


@pytest.fixture
def admin(dovecot: DovecotServer, imap_user: str) -> Iterator[MailboxAdmin]:
    """The test side's own (imaplib) connection as ``imap_user``; call it via to_thread."""
    with dovecot.admin(imap_user) as connection:
        yield connection


@pytest.fixture
def imap_server(dovecot: DovecotServer) -> ImapServer:
    return server_settings(dovecot)


@pytest.fixture
async def client(
    dovecot: DovecotServer, imap_server: ImapServer, imap_user: str
) -> AsyncIterator[ImapClient]:
    session = await ImapClient.connect(imap_server, PasswordLogin(imap_user, dovecot.password))
    try:
        yield session
    finally:
        await asyncio.wait_for(session.logout(), 15)
