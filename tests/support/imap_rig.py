"""Fixtures shared by the IMAP tests outside ``tests/imap/`` (API, web, CLI), which name them in
their module (``h = imap_rig.dovecot_harness``; pytest registers a fixture under the name it is
bound to), beside ``dovecot_full = imap_fixtures.dovecot_full``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from maildesk.clock import ManualClock
from tests.support.dovecot import DovecotServer
from tests.support.harness import Harness
from tests.support.smtp_peer import PeerTls, SmtpPeer


@pytest.fixture
async def dovecot_harness(db_url: str, clock: ManualClock, tmp_path: Path,
                          dovecot_full: DovecotServer) -> AsyncIterator[Harness]:
    """MailDesk trusting Dovecot's certificate, with short IMAP timeouts."""
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path,
                            tls_ca_file=str(dovecot_full.cert_path), imap_timeout=10.0,
                            imap_connect_timeout=10.0) as harness:
        yield harness


@pytest.fixture
def dovecot_login(dovecot_full: DovecotServer) -> str:
    """A fresh Dovecot user (its password is ``dovecot_full.password``)."""
    return dovecot_full.new_user()


@pytest.fixture
def plain_smtp_peer(dovecot_full: DovecotServer, user: str) -> Iterator[SmtpPeer]:
    """A plain-text SMTP peer that signs in the module's ``user`` with the Dovecot password."""
    with SmtpPeer(tls=PeerTls.NONE, users={user: dovecot_full.password}) as running:
        yield running
