"""The SMTP client: send one message through a mailbox's outgoing server, and the "Test outgoing
server" diagnostic. Built on aiosmtplib; every failure is translated into our exception tree.

We open the connection ourselves, step by step (DNS, TCP, TLS, greeting, STARTTLS, sign-in), so
a failure names the stage it happened in — the same stages and wording as the IMAP side
(``"DNS: …"``, ``"TLS: … not trusted"``, ``"AUTH: …"``) — and aiosmtplib speaks the protocol on
the connected socket.

How errors map (callers decide retry vs. give up on the type alone):

* DNS, TCP and TLS failures, timeouts, a dropped connection and any 4xx reply →
  :class:`ProviderUnavailable` (transient: retry later);
* a 5xx reply to MAIL, RCPT or DATA (recipient unknown, message refused, too large) →
  :class:`ProviderRejected` with the server's reply text (never the message content);
* a refused sign-in → :class:`LoginFailed` (password) or :class:`OAuthInvalid` (XOAUTH2);
* something we need and the server lacks (STARTTLS, AUTH, XOAUTH2, SMTPUTF8) →
  :class:`CapabilityMissing`.

A message is sent to all of its recipients or to none: if the server refuses any recipient we
reset the transaction before DATA, so a retry can never deliver twice to the ones it accepted.

Nothing sent or received is logged: commands carry passwords and tokens, DATA carries mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiosmtplib

from maildesk.domain.mail_servers import Security
from maildesk.errors import (
    CapabilityMissing,
    InputError,
    LoginFailed,
    MailDeskError,
    OAuthInvalid,
    ProtocolViolation,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
)
from maildesk.providers.imap import OAuth2Login, PasswordLogin
from maildesk.providers.imap_check import ServerCheck
from maildesk.providers.imap_connection import Stage
from maildesk.providers.resolve import Deadline, resolve

__all__ = [
    "SmtpCredentials",
    "SmtpServer",
    "check_outgoing_server",
    "send_message",
]

SmtpCredentials = PasswordLogin | OAuth2Login | None
_QUIT_TIMEOUT = 5.0
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class SmtpServer:
    """Where and how to reach an outgoing server. Timeouts are seconds.

    ``connect_timeout`` bounds DNS + TCP + TLS + greeting together; ``command_timeout`` bounds
    every later wait for an answer. ``ssl_context`` defaults to the system's trust store with
    hostname checks. ``local_hostname`` is the name we give in EHLO (default: our FQDN).
    """

    host: str
    port: int
    security: Security
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    connect_timeout: float = 20.0
    command_timeout: float = 60.0
    local_hostname: str | None = None

    def __post_init__(self) -> None:
        if self.connect_timeout <= 0 or self.command_timeout <= 0:
            raise ValueError("timeouts must be positive")

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


async def send_message(
    server: SmtpServer,
    credentials: PasswordLogin | OAuth2Login | None,
    message: bytes,
    *,
    sender: str,
    recipients: Sequence[str],
) -> None:
    """Send ``message`` (RFC 5322 bytes, sent as is) from ``sender`` to every one of
    ``recipients`` (the envelope: Bcc recipients are in it, not in the headers).

    Returns once the server accepted the message for all recipients. Raises
    :class:`InputError` for an address we cannot put in an SMTP command, otherwise only the
    provider errors described in the module docstring.
    """
    envelope_from, envelope_to, utf8 = _envelope(sender, recipients)
    smtp = await _open(server, credentials)
    try:
        if utf8 and not smtp.supports_extension("smtputf8"):
            raise CapabilityMissing(
                "SMTPUTF8",
                f"SMTP: {server.where} does not accept international (non-ASCII) addresses "
                "(no SMTPUTF8)",
            )
        options = _mail_options(smtp, server, message, utf8=utf8)
        encoding = "utf-8" if utf8 else "ascii"
        timeout = server.command_timeout
        try:
            await smtp.mail(envelope_from, options=options, encoding=encoding, timeout=timeout)
        except aiosmtplib.SMTPResponseException as exc:
            raise _reply_error(server, "refused the sender", exc.code, exc.message) from exc
        refused: list[tuple[str, int, str]] = []
        for recipient in envelope_to:
            try:
                await smtp.rcpt(recipient, encoding=encoding, timeout=timeout)
            except aiosmtplib.SMTPResponseException as exc:
                refused.append((recipient, exc.code, exc.message))
        if refused:
            await _reset(smtp)
            raise _refused_recipients(server, refused)
        try:
            await smtp.data(message, timeout=timeout)
        except aiosmtplib.SMTPResponseException as exc:
            raise _reply_error(server, "refused the message", exc.code, exc.message) from exc
        # Accepted: the message is sent. Nothing after this point may raise.
        await _quit(smtp)
    except MailDeskError:
        raise
    except aiosmtplib.SMTPNotSupported as exc:
        raise CapabilityMissing(exc.message, f"SMTP: {server.where}: {exc.message}") from exc
    except ValueError as exc:
        raise InputError(f"SMTP: {exc}") from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise _connection_error(server, exc) from exc
    finally:
        _close(smtp)


async def check_outgoing_server(
    server: SmtpServer, credentials: PasswordLogin | OAuth2Login | None
) -> ServerCheck:
    """Connect, secure, sign in and say precisely where and why it failed.

    Never raises for a server-side problem: DNS, TCP, TLS, greeting, sign-in and a missing
    capability each come back as a :class:`ServerCheck` with the stage. Nothing is sent.
    """
    stage = Stage.DNS

    def at(value: Stage) -> None:
        nonlocal stage
        stage = value

    seen: set[str] = set()
    smtp: aiosmtplib.SMTP | None = None
    try:
        smtp = await _open(server, credentials, on_stage=at, seen=seen)
        stage = Stage.CAPABILITY
        capabilities = _capabilities(smtp)
        warnings = []
        if server.security is Security.NONE:
            warnings.append("no TLS: the password and mail cross the network unencrypted")
        if not smtp.supports_extension("8bitmime"):
            warnings.append("no 8BITMIME: messages must be 7-bit clean")
        if not smtp.supports_extension("smtputf8"):
            warnings.append("no SMTPUTF8: international (non-ASCII) addresses cannot be used")
        if credentials is None and smtp.supports_extension("auth"):
            warnings.append("no sign-in was tried: the server may refuse to relay mail")
        await _quit(smtp)
        return ServerCheck(
            ok=True,
            stage=Stage.READY,
            reason="connected, " + ("signed in " if credentials is not None else "")
            + "and ready to send",
            capabilities=capabilities,
            warnings=tuple(warnings),
        )
    except MailDeskError as exc:
        return ServerCheck.failure(exc, stage, frozenset(seen))
    finally:
        if smtp is not None:
            _close(smtp)


# -- opening -------------------------------------------------------------------------------------


async def _open(
    server: SmtpServer,
    credentials: PasswordLogin | OAuth2Login | None,
    *,
    on_stage: Callable[[Stage], None] | None = None,
    seen: set[str] | None = None,
) -> aiosmtplib.SMTP:
    """Resolve, connect, TLS (implicit or STARTTLS), greeting, EHLO and sign-in.

    ``on_stage`` is told each stage as it begins; ``seen`` receives the server's extensions
    after each EHLO (so a failed check can still show what the server offered).
    """

    def note() -> None:
        if seen is not None:
            seen.clear()
            seen.update(_capabilities(smtp))

    def stage(value: Stage) -> None:
        if on_stage is not None:
            on_stage(value)

    remaining = Deadline(server.connect_timeout).remaining

    stage(Stage.DNS)
    addresses = await resolve(server.host, server.port, remaining())
    stage(Stage.TCP)
    sock = await _connect_tcp(server, addresses, remaining)
    implicit_tls = server.security is Security.SSL
    context = server.ssl_context or ssl.create_default_context()
    try:
        smtp = aiosmtplib.SMTP(
            hostname=server.host,
            sock=sock,
            use_tls=implicit_tls,
            start_tls=False,
            tls_context=context if implicit_tls else None,
            timeout=server.command_timeout,
            local_hostname=server.local_hostname or await _local_hostname(remaining()),
        )
    except BaseException:
        sock.close()
        raise
    try:
        stage(Stage.TLS if implicit_tls else Stage.GREETING)
        await _connect(smtp, server, remaining(), on_stage=stage)
        stage(Stage.GREETING)
        await _ehlo(smtp, server, remaining())
        note()
        if server.security is Security.STARTTLS:
            stage(Stage.TLS)
            await _starttls(smtp, server, context, remaining())
            await _ehlo(smtp, server, remaining())
            note()
        if credentials is not None:
            stage(Stage.AUTH)
            await _sign_in(smtp, server, credentials)
    except MailDeskError:
        _close(smtp)
        raise
    except (aiosmtplib.SMTPException, OSError) as exc:
        _close(smtp)
        raise _connection_error(server, exc) from exc
    except BaseException:
        _close(smtp)
        raise
    return smtp


async def _connect_tcp(
    server: SmtpServer,
    addresses: list[tuple[socket.AddressFamily, tuple[object, ...]]],
    remaining: Callable[[], float],
) -> socket.socket:
    loop = asyncio.get_running_loop()
    problems: list[str] = []
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(remaining()):
                await loop.sock_connect(sock, sockaddr)
        except TimeoutError:
            sock.close()
            problems.append(f"{sockaddr[0]}: timed out")
            break  # the deadline is spent
        except ConnectionRefusedError:
            sock.close()
            problems.append(f"{sockaddr[0]}: connection refused")
        except OSError as exc:
            sock.close()
            problems.append(f"{sockaddr[0]}: {exc.strerror or exc}")
        except BaseException:
            sock.close()
            raise
        else:
            return sock
    raise ProviderUnavailable(f"TCP: cannot connect to {server.where} ({'; '.join(problems)})")


async def _local_hostname(limit: float) -> str:
    """Our name for EHLO. ``getfqdn`` may wait on DNS, so it is bounded; a bare ``localhost``
    is what most clients fall back to."""
    try:
        async with asyncio.timeout(min(limit, 5.0)):
            name = await asyncio.to_thread(socket.getfqdn)
    except TimeoutError:
        return "localhost"
    return name if _HOSTNAME.fullmatch(name or "") else "localhost"


async def _connect(
    smtp: aiosmtplib.SMTP,
    server: SmtpServer,
    limit: float,
    *,
    on_stage: Callable[[Stage], None],
) -> None:
    """aiosmtplib's connect on our socket: the TLS handshake (implicit TLS) and the greeting."""
    implicit_tls = server.security is Security.SSL
    try:
        await smtp.connect(timeout=limit)
    except aiosmtplib.SMTPConnectResponseError as exc:
        on_stage(Stage.GREETING)
        raise _reply_error(server, "refused the connection", exc.code, exc.message) from exc
    except aiosmtplib.SMTPConnectTimeoutError as exc:
        if implicit_tls and not isinstance(exc.__cause__, aiosmtplib.SMTPTimeoutError):
            raise ProviderUnavailable(f"TLS: handshake with {server.where} timed out") from exc
        on_stage(Stage.GREETING)
        hint = "" if implicit_tls else " (does the port expect TLS? try security=ssl)"
        raise ProviderUnavailable(
            f"GREETING: {server.where} sent no greeting within {limit:.0f} s{hint}"
        ) from exc
    except aiosmtplib.SMTPConnectError as exc:
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLError) or (implicit_tls and isinstance(cause, OSError)
                                               and not isinstance(cause,
                                                                  aiosmtplib.SMTPException)):
            raise _tls_error(server, cause) from exc
        on_stage(Stage.GREETING)
        raise ProviderUnavailable(
            f"GREETING: {server.where} closed the connection before greeting"
        ) from exc


async def _ehlo(smtp: aiosmtplib.SMTP, server: SmtpServer, limit: float) -> None:
    """EHLO, or HELO for an old server that does not know EHLO."""
    try:
        await smtp.ehlo(timeout=limit)
    except aiosmtplib.SMTPHeloError as exc:
        if not smtp.is_connected:
            raise _reply_error(server, "refused EHLO", exc.code, exc.message) from exc
        try:
            await smtp.helo(timeout=limit)
        except aiosmtplib.SMTPHeloError as again:
            raise _reply_error(server, "refused HELO", again.code, again.message) from again


async def _starttls(
    smtp: aiosmtplib.SMTP, server: SmtpServer, context: ssl.SSLContext, limit: float
) -> None:
    if not smtp.supports_extension("starttls"):
        raise CapabilityMissing(
            "STARTTLS", f"TLS: {server.where} does not offer STARTTLS (try security=ssl)"
        )
    try:
        await smtp.starttls(tls_context=context, timeout=limit)
    except aiosmtplib.SMTPResponseException as exc:
        raise ProviderUnavailable(
            f"TLS: STARTTLS refused by {server.where}: {exc.code} {exc.message}"
        ) from exc
    except aiosmtplib.SMTPTimeoutError as exc:
        raise ProviderUnavailable(f"TLS: handshake with {server.where} timed out") from exc
    except aiosmtplib.SMTPServerDisconnected as exc:
        raise ProviderUnavailable(
            f"TLS: {server.where} closed the connection during the handshake"
        ) from exc
    except OSError as exc:
        raise _tls_error(server, exc) from exc


def _tls_error(server: SmtpServer, exc: BaseException) -> ProviderUnavailable:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ProviderUnavailable(
            f"TLS: the certificate of {server.where} is not trusted: {exc.verify_message}"
        )
    if isinstance(exc, ssl.SSLError):
        hint = ""
        if exc.reason in ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE"):
            hint = " (the port does not speak TLS: try security=starttls)"
        return ProviderUnavailable(
            f"TLS: handshake with {server.where} failed: {exc.reason or exc}{hint}"
        )
    return ProviderUnavailable(f"TLS: {server.where} closed the connection during the handshake")


async def _sign_in(
    smtp: aiosmtplib.SMTP, server: SmtpServer, credentials: PasswordLogin | OAuth2Login
) -> None:
    if not smtp.supports_extension("auth"):
        hint = "" if server.security is not Security.NONE else " (try security=starttls)"
        raise CapabilityMissing(
            "AUTH", f"AUTH: {server.where} offers no sign-in (SMTP AUTH) on this connection{hint}"
        )
    timeout = server.command_timeout
    if isinstance(credentials, OAuth2Login):
        if "xoauth2" not in smtp.server_auth_methods:
            raise CapabilityMissing(
                "AUTH=XOAUTH2", f"AUTH: {server.where} does not offer XOAUTH2 sign-in"
            )
        try:
            await smtp.auth_xoauth2(credentials.username, credentials.access_token,
                                    timeout=timeout)
        except aiosmtplib.SMTPAuthenticationError as exc:
            if 400 <= exc.code < 500:
                raise _reply_error(server, "could not sign in now", exc.code,
                                   exc.message) from exc
            raise OAuthInvalid(
                f"AUTH: the server refused the access token ({exc.code} {exc.message})"
            ) from exc
        return
    if not smtp.supported_auth_methods:
        offered = " ".join(m.upper() for m in smtp.server_auth_methods) or "none"
        raise CapabilityMissing(
            "AUTH PLAIN", f"AUTH: {server.where} offers no password sign-in we speak "
            f"(PLAIN, LOGIN, CRAM-MD5); it offers {offered}"
        )
    try:
        await smtp.login(credentials.username, credentials.password, timeout=timeout)
    except aiosmtplib.SMTPAuthenticationError as exc:
        if 400 <= exc.code < 500:
            raise _reply_error(server, "could not sign in now", exc.code, exc.message) from exc
        raise LoginFailed(
            f"AUTH: the server refused the password ({exc.code} {exc.message})"
        ) from exc


# -- sending -------------------------------------------------------------------------------------


def _envelope(sender: str, recipients: Sequence[str]) -> tuple[str, list[str], bool]:
    """Validate the envelope before connecting; ``True`` when it needs SMTPUTF8.

    Bare addresses only: a display name, angle brackets, spaces or control characters are
    refused rather than "parsed", so an address can never smuggle a second command or silently
    turn into another recipient.
    """
    if isinstance(recipients, str):
        raise InputError("SMTP: recipients must be a list of addresses")
    envelope_from = _bare_address(sender, "sender")
    envelope_to = [_bare_address(r, "recipient") for r in recipients]
    if not envelope_to:
        raise InputError("SMTP: at least one recipient address is required")
    utf8 = not all(a.isascii() for a in [envelope_from, *envelope_to])
    return envelope_from, envelope_to, utf8


def _bare_address(address: str, what: str) -> str:
    value = address.strip() if isinstance(address, str) else ""
    local, at, domain = value.rpartition("@")
    if (
        not at or not local or not domain
        or any(c.isspace() or c in '<>"' or ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        raise InputError(f"SMTP: the {what} {value[:80]!r} is not a plain email address")
    return value


def _mail_options(
    smtp: aiosmtplib.SMTP, server: SmtpServer, message: bytes, *, utf8: bool
) -> list[str]:
    options: list[str] = []
    if smtp.supports_extension("size"):
        limit = smtp.esmtp_extensions.get("size", "").strip()
        if limit.isdigit() and int(limit) > 0 and len(message) > int(limit):
            raise ProviderRejected(
                f"SMTP: the message ({len(message)} bytes) is larger than {server.where} "
                f"accepts ({limit} bytes)",
                status=552,
            )
        options.append(f"SIZE={len(message)}")
    if not message.isascii() and smtp.supports_extension("8bitmime"):
        options.append("BODY=8BITMIME")
    if utf8:
        options.append("SMTPUTF8")
    return options


def _refused_recipients(
    server: SmtpServer, refused: list[tuple[str, int, str]]
) -> ProviderError:
    detail = "; ".join(f"{address}: {code} {text}" for address, code, text in refused)
    permanent = [code for _, code, _ in refused if code >= 500]
    if permanent:
        return ProviderRejected(
            f"SMTP: {server.where} refused recipient(s) — {detail}", status=permanent[0]
        )
    if all(400 <= code < 500 for _, code, _ in refused):
        return ProviderUnavailable(f"SMTP: {server.where} deferred recipient(s) — {detail}")
    return ProtocolViolation(f"SMTP: unexpected answer to RCPT — {detail}")


async def _reset(smtp: aiosmtplib.SMTP) -> None:
    """Abandon the transaction; the connection is closed right after anyway."""
    with contextlib.suppress(aiosmtplib.SMTPException, OSError):
        await smtp.rset(timeout=_QUIT_TIMEOUT)


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    # The work is done (or abandoned): a rude goodbye changes nothing.
    with contextlib.suppress(aiosmtplib.SMTPException, OSError):
        await smtp.quit(timeout=_QUIT_TIMEOUT)


def _close(smtp: aiosmtplib.SMTP) -> None:
    """Drop the connection at once. After QUIT (or a failure) there is nothing left to say, and
    a graceful TLS shutdown would linger waiting for the server's close_notify."""
    transport = smtp.transport
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    smtp.close()


# -- translation ---------------------------------------------------------------------------------


def _reply_error(server: SmtpServer, what: str, code: int, text: str) -> ProviderError:
    """A reply code into our tree: 4xx transient, 5xx permanent, anything else malformed."""
    message = f"SMTP: {server.where} {what}: {code} {text}".rstrip()
    if 400 <= code < 500:
        return ProviderUnavailable(message)
    if 500 <= code < 600:
        return ProviderRejected(message, status=code)
    return ProtocolViolation(message)


def _connection_error(server: SmtpServer, exc: BaseException) -> ProviderError:
    """A failure of the connection itself (never a reply the server chose to give)."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _reply_error(server, "answered", exc.code, exc.message)
    if isinstance(exc, TimeoutError):
        return ProviderUnavailable(
            f"SMTP: {server.where}: no answer within {server.command_timeout:.0f} s "
            "(connection dead?)"
        )
    if isinstance(exc, ssl.SSLError):
        return ProviderUnavailable(f"SMTP: {server.where}: TLS error ({exc.reason})")
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | ConnectionError):
        return ProviderUnavailable(f"SMTP: {server.where} closed the connection")
    if isinstance(exc, aiosmtplib.SMTPException):
        return ProviderUnavailable(f"SMTP: {server.where}: {exc.message}")
    return ProviderUnavailable(f"SMTP: {server.where}: connection lost ({exc})")


def _capabilities(smtp: aiosmtplib.SMTP) -> frozenset[str]:
    caps = {name.upper() for name in smtp.esmtp_extensions}
    caps |= {f"AUTH={m.upper()}" for m in smtp.server_auth_methods}
    return frozenset(caps)
