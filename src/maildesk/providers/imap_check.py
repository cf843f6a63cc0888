"""The "Test incoming server" diagnostic: connect, sign in, open INBOX, and say precisely where
and why it failed (DNS, TCP, TLS, greeting, authentication, capability, mailbox) instead of
raising."""

from __future__ import annotations

from dataclasses import dataclass

from maildesk.errors import CapabilityMissing, MailDeskError
from maildesk.providers.imap import Credentials, ImapClient
from maildesk.providers.imap_connection import ImapConnection, ImapServer, Stage

__all__ = ["ServerCheck", "check_incoming_server"]


@dataclass(frozen=True, slots=True)
class ServerCheck:
    """The outcome of :func:`check_incoming_server`.

    ``stage`` is where it failed (or ``READY``); ``reason`` is one sentence for the operator;
    ``error_kind`` is the error's stable ``kind`` (``""`` when ok); ``warnings`` name missing
    extensions that degrade but do not prevent sync (IDLE → polling, CONDSTORE → plain diff).
    """

    ok: bool
    stage: Stage
    reason: str
    error_kind: str = ""
    capabilities: frozenset[str] = frozenset()
    warnings: tuple[str, ...] = ()

    @classmethod
    def failure(cls, exc: MailDeskError, stage: Stage,
                capabilities: frozenset[str]) -> ServerCheck:
        """The check that failed with ``exc`` at ``stage`` (a missing capability is reported
        as the capability stage wherever it was found)."""
        failed = Stage.CAPABILITY if isinstance(exc, CapabilityMissing) else stage
        return cls(ok=False, stage=failed, reason=str(exc), error_kind=exc.kind,
                   capabilities=capabilities)


async def check_incoming_server(server: ImapServer, credentials: Credentials) -> ServerCheck:
    """Connect, sign in and examine INBOX, reporting the first failure precisely.

    Never raises for a server-side problem: DNS, TCP, TLS, greeting, authentication, missing
    capability and a missing INBOX each come back as a :class:`ServerCheck` with the stage.
    """
    stage = Stage.DNS
    capabilities: frozenset[str] = frozenset()

    def at(value: Stage) -> None:
        nonlocal stage
        stage = value

    connection: ImapConnection | None = None
    try:
        connection = await ImapConnection.open(server, on_stage=at)
        client = ImapClient(connection)
        stage = Stage.AUTH
        await client.login(credentials)
        capabilities = client.capabilities
        stage = Stage.CAPABILITY
        if not capabilities & {"IMAP4REV1", "IMAP4REV2"}:
            raise CapabilityMissing("IMAP4rev1", "the server does not speak IMAP4rev1")
        warnings = []
        if not client.has("IDLE"):
            warnings.append("no IDLE: new mail is found by polling, not instantly")
        if not client.has("CONDSTORE"):
            warnings.append("no CONDSTORE: flag changes are found by comparing every message")
        elif not client.has("QRESYNC"):
            warnings.append("no QRESYNC: deletions are found by comparing UID lists")
        if not client.has("UIDPLUS"):
            warnings.append("no UIDPLUS: appended messages are matched after the next sync")
        stage = Stage.MAILBOX
        await client.select("INBOX", readonly=True)
        await client.logout()
        return ServerCheck(
            ok=True,
            stage=Stage.READY,
            reason="connected, signed in and opened INBOX",
            capabilities=capabilities,
            warnings=tuple(warnings),
        )
    except MailDeskError as exc:
        return ServerCheck.failure(
            exc, stage,
            capabilities or (connection.capabilities if connection else frozenset()))
    finally:
        if connection is not None:
            await connection.aclose()
