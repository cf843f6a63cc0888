"""One IMAP connection on asyncio streams: connect (DNS, TCP, TLS, greeting, STARTTLS), run
tagged commands with literals and continuations, read untagged data, IDLE, with timeouts on
everything.

Errors are ours: DNS, TCP, TLS failures, timeouts, resets and a server hanging up are
:class:`ProviderUnavailable` whose message starts with the stage (``"DNS: …"``, ``"TLS: …"``);
bytes we cannot parse are :class:`ProtocolViolation`; an extension we need and the server lacks is
:class:`CapabilityMissing`. Once a command failed half-way (timeout, cancellation, garbage) the
connection is closed: its state is unknown, and a fresh one is cheap.

Nothing sent or received is logged: commands carry passwords and tokens, responses carry mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from maildesk.domain.mail_servers import Security
from maildesk.errors import CapabilityMissing, ProtocolViolation, ProviderUnavailable
from maildesk.providers.imap_fetch import MailboxEvent, Vanished, mailbox_event
from maildesk.providers.imap_wire import (
    CommandPart,
    Continuation,
    Literal,
    Response,
    StatusResponse,
    Untagged,
    literal_length,
    parse_response,
    render_command,
)
from maildesk.providers.resolve import Deadline, resolve

__all__ = [
    "CommandResult",
    "ImapConnection",
    "ImapServer",
    "Security",
    "Stage",
]

# One response line (a SEARCH answer for a huge folder is long) and one literal (a message).
MAX_LINE = 8 * 1024 * 1024
MAX_LITERAL = 64 * 1024 * 1024
MAX_RESPONSE = 128 * 1024 * 1024
IDLE_LIMIT = 29 * 60  # RFC 2177: servers may drop an IDLE after 30 minutes


class Stage(enum.StrEnum):
    """How far a connection got; a failure is reported with the stage it happened in."""

    DNS = "dns"
    TCP = "tcp"
    TLS = "tls"
    GREETING = "greeting"
    AUTH = "auth"
    CAPABILITY = "capability"
    MAILBOX = "mailbox"
    READY = "ready"


@dataclass(frozen=True, slots=True)
class ImapServer:
    """Where and how to connect. Timeouts are seconds.

    ``command_timeout`` bounds every wait for the server during a command (it restarts with
    each piece of a long answer, so fetching a big folder is not cut off, but a silent server
    is). ``idle_keepalive`` is the longest one IDLE runs before we end it with DONE, whose answer
    proves the connection alive; it is kept below the 29 minutes RFC 2177 allows.
    ``ssl_context`` defaults to the system's trust store with hostname checks.
    """

    host: str
    port: int
    security: Security = Security.SSL
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    connect_timeout: float = 20.0
    command_timeout: float = 60.0
    idle_keepalive: float = 240.0

    def __post_init__(self) -> None:
        if not 0 < self.idle_keepalive < IDLE_LIMIT:
            raise ValueError(f"idle_keepalive must be between 0 and {IDLE_LIMIT} seconds")
        if self.connect_timeout <= 0 or self.command_timeout <= 0:
            raise ValueError("timeouts must be positive")


@dataclass(frozen=True, slots=True)
class CommandResult:
    """A finished command: its tagged status and the untagged responses that came with it."""

    done: StatusResponse
    responses: list[Untagged | StatusResponse]

    def untagged(self, keyword: str) -> list[Untagged]:
        return [r for r in self.responses if isinstance(r, Untagged) and r.keyword == keyword]


ContinuationHandler = Callable[[str], Awaitable[bytes]]
_ALL_EVENTS = frozenset({"EXISTS", "EXPUNGE", "VANISHED", "FETCH"})


class ImapConnection:
    """A connected, greeted IMAP session (not yet authenticated). Create with :meth:`open`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        server: ImapServer,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.server = server
        self.capabilities: frozenset[str] = frozenset()
        self.events: list[MailboxEvent] = []
        self._tags = itertools.count(1)
        self._lock = asyncio.Lock()
        self._bye: str | None = None
        self._closed = False

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, server: ImapServer, *, on_stage: Callable[[Stage], None] | None = None
    ) -> ImapConnection:
        """Resolve, connect, TLS (implicit or STARTTLS), read the greeting and capabilities.

        ``on_stage`` is told each stage as it begins (the connection test reports where a
        failure happened).
        """

        def stage(value: Stage) -> None:
            if on_stage is not None:
                on_stage(value)

        remaining = Deadline(server.connect_timeout).remaining

        where = f"{server.host}:{server.port}"
        stage(Stage.DNS)
        addresses = [(str(sockaddr[0]), int(str(sockaddr[1])))
                     for _family, sockaddr in await resolve(server.host, server.port, remaining())]
        stage(Stage.TCP)
        reader, writer = await _connect_tcp(server, addresses, remaining)
        conn = cls(reader, writer, server)
        try:
            context = server.ssl_context or ssl.create_default_context()
            if server.security is Security.SSL:
                stage(Stage.TLS)
                await conn._start_tls(context, remaining())
            stage(Stage.GREETING)
            greeting = await conn._greeting(remaining())
            if greeting.code == "CAPABILITY":
                conn.capabilities = _capabilities(greeting.code_args)
            if server.security is Security.STARTTLS:
                if not conn.capabilities:
                    await conn.refresh_capabilities()
                if "STARTTLS" not in conn.capabilities:
                    raise CapabilityMissing(
                        "STARTTLS", f"TLS: {where} does not offer STARTTLS (try security=ssl)"
                    )
                stage(Stage.TLS)
                result = await conn.command(b"STARTTLS")
                if not result.done.ok:
                    raise ProviderUnavailable(
                        f"TLS: STARTTLS refused by {where}: {result.done.text}"
                    )
                # Anything the server sent after its OK arrived unencrypted: refuse it (RFC 2595
                # response injection) instead of reading it as if it came over TLS.
                if getattr(reader, "_buffer", b""):
                    raise ProtocolViolation(f"TLS: {where} sent data after the STARTTLS answer")
                await conn._start_tls(context, remaining())
                conn.capabilities = frozenset()
            if not conn.capabilities:
                await conn.refresh_capabilities()
        except Exception:
            await conn.aclose()
            raise
        except BaseException:
            conn.abort()
            raise
        return conn

    async def _start_tls(self, context: ssl.SSLContext, limit: float) -> None:
        where = f"{self.server.host}:{self.server.port}"
        try:
            await self._writer.start_tls(
                context, server_hostname=self.server.host, ssl_handshake_timeout=limit
            )
        except ssl.SSLCertVerificationError as exc:
            raise ProviderUnavailable(
                f"TLS: the certificate of {where} is not trusted: {exc.verify_message}"
            ) from exc
        except ssl.SSLError as exc:
            hint = ""
            if exc.reason in ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE"):
                hint = " (the port does not speak TLS: try security=starttls)"
            raise ProviderUnavailable(
                f"TLS: handshake with {where} failed: {exc.reason or exc}{hint}"
            ) from exc
        except TimeoutError as exc:
            raise ProviderUnavailable(f"TLS: handshake with {where} timed out") from exc
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            raise ProviderUnavailable(
                f"TLS: {where} closed the connection during the handshake"
            ) from exc

    async def _greeting(self, limit: float) -> StatusResponse:
        where = f"{self.server.host}:{self.server.port}"
        hint = ""
        if self.server.security is not Security.SSL:
            hint = " (an implicit-TLS port waits for the client: try security=ssl)"
        line = await self._read_line(limit, quiet_ok=True)
        if line is None:
            raise ProviderUnavailable(
                f"GREETING: {where} sent no greeting within {limit:.0f} s{hint}"
            )
        if not line.startswith(b"* "):
            raise ProtocolViolation(f"GREETING: {where} does not speak IMAP{hint}")
        response = await self._finish_response(line)
        if not isinstance(response, StatusResponse) or response.status not in ("OK", "PREAUTH"):
            if isinstance(response, StatusResponse) and response.status == "BYE":
                raise ProviderUnavailable(
                    f"GREETING: {where} refused the connection: {response.text}"
                )
            raise ProtocolViolation(f"GREETING: {where} sent no IMAP greeting")
        return response

    # -- state -----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def has(self, capability: str) -> bool:
        return capability.upper() in self.capabilities

    def require(self, capability: str) -> None:
        if not self.has(capability):
            raise CapabilityMissing(capability)

    def abort(self) -> None:
        """Drop the connection now (no LOGOUT, no TLS goodbye). Safe to call more than once.

        The socket itself is released on the loop's next turn: prefer :meth:`aclose` where
        the caller can await.
        """
        if not self._closed:
            self._closed = True
            self._writer.transport.abort()

    async def aclose(self) -> None:
        """Drop the connection and wait (briefly) until the socket is released."""
        self.abort()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(2):
                await self._writer.wait_closed()

    async def refresh_capabilities(self) -> frozenset[str]:
        result = await self.command(b"CAPABILITY")
        caps: set[str] = set()
        for response in result.untagged("CAPABILITY"):
            caps |= _capabilities(response.values)
        if result.done.code == "CAPABILITY":
            caps |= _capabilities(result.done.code_args)
        if not result.done.ok or not caps:
            raise ProtocolViolation("IMAP: CAPABILITY answered without capabilities")
        self.capabilities = frozenset(caps)
        return self.capabilities

    # -- commands --------------------------------------------------------------------------------

    async def command(
        self,
        name: bytes,
        *args: CommandPart,
        on_continuation: ContinuationHandler | None = None,
        events: frozenset[str] = _ALL_EVENTS,
        what: str | None = None,
    ) -> CommandResult:
        """Send one command and read up to its tagged answer.

        ``events`` names the untagged kinds (EXISTS, EXPUNGE, VANISHED, FETCH) that are not
        this command's answer but news about the mailbox: they are also queued on
        :attr:`events` for the caller (IDLE) to pick up, so nothing arriving between commands
        is lost. ``what`` names the command in errors (never its arguments: they may be
        secrets).
        """
        label = what or name.decode()
        async with self._lock:
            self._ensure_open()
            tag = f"M{next(self._tags)}"
            segments = render_command(
                tag, [name, *args], literal_plus=self._literal_plus(args)
            )
            try:
                await self._write(segments[0])
                pending = list(segments[1:])
                responses: list[Untagged | StatusResponse] = []
                while True:
                    response = await self._read_response()
                    if isinstance(response, Continuation):
                        if pending:
                            await self._write(pending.pop(0))
                        elif on_continuation is not None:
                            await self._write(await on_continuation(response.text) + b"\r\n")
                        else:
                            raise ProtocolViolation(f"IMAP: unexpected continuation in {label}")
                        continue
                    if isinstance(response, StatusResponse) and response.tag != "*":
                        if response.tag != tag:
                            raise ProtocolViolation(f"IMAP: answer to an unknown tag in {label}")
                        return CommandResult(response, responses)
                    if isinstance(response, StatusResponse) and response.status == "BYE":
                        self._bye = response.text
                    responses.append(response)
                    self._note_event(response, events)
            except BaseException:
                # Half a command leaves the session in an unknown state.
                self.abort()
                raise

    def _literal_plus(self, args: Sequence[CommandPart]) -> bool:
        if "LITERAL+" in self.capabilities:
            return True
        if "LITERAL-" in self.capabilities:
            return all(len(a.data) <= 4096 for a in args if isinstance(a, Literal))
        return False

    def _note_event(self, response: Untagged | StatusResponse, kinds: frozenset[str]) -> None:
        if isinstance(response, Untagged) and response.keyword in kinds:
            event = mailbox_event(response)
            if event is not None and not (isinstance(event, Vanished) and event.earlier):
                self.events.append(event)

    # -- IDLE ------------------------------------------------------------------------------------

    async def idle(self, max_wait: float) -> list[MailboxEvent]:
        """IDLE until the server reports a change or ``max_wait`` seconds pass, then DONE.

        Returns the queued events at once if there are any. Every call ends with DONE and the
        server's tagged answer, so a dead connection is detected within ``command_timeout``.
        """
        if self.events:
            return self.take_events()
        self.require("IDLE")
        wait = min(max_wait, self.server.idle_keepalive)
        async with self._lock:
            self._ensure_open()
            tag = f"M{next(self._tags)}"
            try:
                await self._write(tag.encode() + b" IDLE\r\n")
                while True:
                    response = await self._read_response()
                    if isinstance(response, Continuation):
                        break
                    if isinstance(response, StatusResponse) and response.tag == tag:
                        raise ProtocolViolation(f"IMAP: IDLE refused: {response.text}")
                    self._idle_response(response)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + wait
                while not self.events:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    line = await self._read_line(left, quiet_ok=True)
                    if line is None:
                        break
                    self._idle_response(await self._finish_response(line))
                await self._write(b"DONE\r\n")
                while True:
                    response = await self._read_response()
                    if isinstance(response, StatusResponse) and response.tag == tag:
                        break
                    self._idle_response(response)
            except BaseException:
                self.abort()
                raise
        return self.take_events()

    def _idle_response(self, response: Response) -> None:
        if isinstance(response, Continuation):
            return  # some servers repeat "+ idling"
        if isinstance(response, StatusResponse):
            if response.tag != "*":
                raise ProtocolViolation("IMAP: unexpected tagged answer during IDLE")
            if response.status == "BYE":
                self._bye = response.text
            return  # "* OK Still here" keepalives
        self._note_event(response, _ALL_EVENTS)

    def take_events(self) -> list[MailboxEvent]:
        """Hand over (and forget) the queued mailbox events."""
        events, self.events = self.events, []
        return events

    # -- reading and writing ---------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise ProviderUnavailable(self._gone("the connection is closed"))

    def _gone(self, what: str) -> str:
        where = f"{self.server.host}:{self.server.port}"
        if self._bye is not None:
            return f"IMAP: {where} closed the connection: {self._bye}"
        return f"IMAP: {where}: {what}"

    async def _write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            async with asyncio.timeout(self.server.command_timeout):
                await self._writer.drain()
        except TimeoutError as exc:
            raise ProviderUnavailable(self._gone("sending timed out")) from exc
        except (ConnectionError, OSError) as exc:
            raise ProviderUnavailable(self._gone(f"connection lost ({exc})")) from exc

    async def _read_line(self, limit: float, *, quiet_ok: bool = False) -> bytes | None:
        try:
            async with asyncio.timeout(limit):
                return await self._reader.readuntil(b"\r\n")
        except TimeoutError as exc:
            if quiet_ok:
                return None
            raise ProviderUnavailable(
                self._gone(f"no answer within {limit:.0f} s (connection dead?)")
            ) from exc
        except asyncio.IncompleteReadError as exc:
            raise ProviderUnavailable(self._gone("the server closed the connection")) from exc
        except asyncio.LimitOverrunError as exc:
            raise ProtocolViolation("IMAP: response line too long") from exc
        except ssl.SSLError as exc:
            raise ProviderUnavailable(self._gone(f"TLS error ({exc.reason})")) from exc
        except (ConnectionError, OSError) as exc:
            raise ProviderUnavailable(self._gone(f"connection lost ({exc})")) from exc

    async def _read_response(self) -> Response:
        line = await self._read_line(self.server.command_timeout)
        assert line is not None
        return await self._finish_response(line)

    async def _finish_response(self, line: bytes) -> Response:
        """Read the literals (and the lines after them) that ``line`` announces, then parse."""
        chunks = [line]
        total = len(line)
        while (count := literal_length(line)) is not None:
            total += count
            if count > MAX_LITERAL or total > MAX_RESPONSE:
                raise ProtocolViolation(f"IMAP: literal of {count} bytes is too large")
            try:
                async with asyncio.timeout(self.server.command_timeout):
                    chunks.append(await self._reader.readexactly(count))
            except TimeoutError as exc:
                raise ProviderUnavailable(self._gone("stalled in the middle of a literal")) from exc
            except asyncio.IncompleteReadError as exc:
                raise ProviderUnavailable(self._gone("closed in the middle of a literal")) from exc
            except (ConnectionError, OSError) as exc:
                raise ProviderUnavailable(self._gone(f"connection lost ({exc})")) from exc
            next_line = await self._read_line(self.server.command_timeout)
            assert next_line is not None
            line = next_line
            total += len(line)
            chunks.append(line)
        return parse_response(b"".join(chunks))


def _capabilities(values: Sequence[object]) -> frozenset[str]:
    return frozenset(str(v).upper() for v in values if isinstance(v, str | int))


async def _connect_tcp(
    server: ImapServer, addresses: list[tuple[str, int]], remaining: Callable[[], float]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    problems: list[str] = []
    for host, port in addresses:
        try:
            async with asyncio.timeout(remaining()):
                return await asyncio.open_connection(host, port, limit=MAX_LINE)
        except TimeoutError:
            problems.append(f"{host}: timed out")
            break  # the deadline is spent
        except ConnectionRefusedError:
            problems.append(f"{host}: connection refused")
        except OSError as exc:
            problems.append(f"{host}: {exc.strerror or exc}")
    raise ProviderUnavailable(
        f"TCP: cannot connect to {server.host}:{server.port} ({'; '.join(problems)})"
    )
