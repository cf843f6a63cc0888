"""Client settings for the test Dovecot (its own certificate trusted, short timeouts)."""

from __future__ import annotations

from maildesk.providers.imap import ImapServer, Security
from tests.support.dovecot import DovecotServer


def server_settings(
    dovecot: DovecotServer, security: Security = Security.STARTTLS, **overrides: float
) -> ImapServer:
    port = dovecot.imaps_port if security is Security.SSL else dovecot.imap_port
    settings: dict[str, float] = {"connect_timeout": 10.0, "command_timeout": 10.0}
    settings.update(overrides)
    return ImapServer(
        dovecot.host, port, security, ssl_context=dovecot.ssl_context(), **settings
    )
