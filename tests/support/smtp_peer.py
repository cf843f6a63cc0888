"""aiosmtpd as the SMTP peer of the tests: a real SMTP server on a free loopback port.

It records every accepted message, checks sign-in (PLAIN/LOGIN passwords, XOAUTH2 bearer tokens)
and can be told to refuse the next commands with a given reply, to prove how the sender handles
a 4xx (retried) and a 5xx (left in Drafts with its error)::

    with SmtpPeer(tls=PeerTls.STARTTLS, users={"me@example.org": "pw"}) as peer:
        ...
        peer.fail_next("DATA", 451, "4.3.0 try later", times=2)
        peer.wait_for(1)
        peer.messages[0].content
"""

from __future__ import annotations

import base64
import enum
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support.dovecot import HOST, _self_signed
from tests.support.ports import free_port


class PeerTls(enum.StrEnum):
    NONE = "none"
    STARTTLS = "starttls"
    SSL = "ssl"


@dataclass(frozen=True, slots=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    login: str | None


@dataclass(slots=True)
class _Failure:
    command: str
    code: int
    text: str
    times: int


@dataclass(slots=True)
class _Handler:
    users: dict[str, str]
    tokens: dict[str, str]
    messages: list[Received] = field(default_factory=list)
    failures: list[_Failure] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.arrived = threading.Condition(self.lock)

    def _failure(self, command: str) -> str | None:
        with self.lock:
            for failure in self.failures:
                if failure.command == command and failure.times > 0:
                    failure.times -= 1
                    return f"{failure.code} {failure.text}"
        return None

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        if (reply := self._failure("MAIL")) is not None:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        if (reply := self._failure("RCPT")) is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if (reply := self._failure("DATA")) is not None:
            return reply
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode()
        login = session.auth_data.login.decode() if isinstance(
            session.auth_data, LoginPassword) else (
            session.auth_data if isinstance(session.auth_data, str) else None)
        with self.arrived:
            self.messages.append(Received(str(envelope.mail_from),
                                          tuple(envelope.rcpt_tos), content, login))
            self.arrived.notify_all()
        return "250 Message accepted"

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        """SASL XOAUTH2: ``user=U^Aauth=Bearer T^A^A`` (initial response or after a 334)."""
        if len(args) > 1:
            blob = args[1]
        else:
            answer = await server.challenge_auth("", encode_to_b64=False)
            if not isinstance(answer, bytes):
                return AuthResult(success=False, handled=False)
            blob = answer.decode()
        try:
            parts = base64.b64decode(blob).decode().split("\x01")
            fields = dict(p.split("=", 1) for p in parts if "=" in p)
        except (ValueError, UnicodeDecodeError):
            return AuthResult(success=False, handled=False)
        user = fields.get("user", "")
        token = fields.get("auth", "").removeprefix("Bearer ")
        ok = bool(user) and self.tokens.get(user) == token
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)


def _authenticator(users: dict[str, str]) -> Any:
    def check(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
              auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode()
        ok = users.get(login) == auth_data.password.decode()
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return check


class SmtpPeer:
    """A running aiosmtpd server. ``users`` (login → password) or ``tokens`` (login → access
    token) make sign-in required; with neither, anyone may send."""

    def __init__(self, *, tls: PeerTls = PeerTls.NONE, users: dict[str, str] | None = None,
                 tokens: dict[str, str] | None = None) -> None:
        self.tls = tls
        self._dir = tempfile.TemporaryDirectory(prefix="smtp-peer-")
        self.cert_path, key_path = _self_signed(Path(self._dir.name))
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(self.cert_path, key_path)
        self.handler = _Handler(dict(users or {}), dict(tokens or {}))
        kwargs: dict[str, Any] = {
            "auth_require_tls": False,
            "auth_required": bool(users or tokens),
            "authenticator": _authenticator(self.handler.users),
        }
        if tls is PeerTls.STARTTLS:
            kwargs.update(tls_context=server_ctx, require_starttls=True)
        elif tls is PeerTls.SSL:
            kwargs["ssl_context"] = server_ctx
        self.host = HOST
        self.port = free_port()
        self._controller = Controller(self.handler, hostname=HOST, port=self.port, **kwargs)

    def start(self) -> Self:
        self._controller.start()
        return self

    def stop(self) -> None:
        try:
            self._controller.stop()
        finally:
            self._dir.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client_context(self) -> ssl.SSLContext:
        """A client context trusting this server's self-signed certificate."""
        return ssl.create_default_context(cafile=str(self.cert_path))

    @property
    def messages(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.messages)

    def fail_next(self, command: str, code: int, text: str, *, times: int = 1) -> None:
        """Answer the next ``times`` ``command`` (MAIL, RCPT or DATA) with ``code text``."""
        with self.handler.lock:
            self.handler.failures.append(_Failure(command.upper(), code, text, times))

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until ``count`` messages arrived (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        with self.handler.arrived:
            while len(self.handler.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"SMTP peer: {len(self.handler.messages)} of {count} messages arrived")
                self.handler.arrived.wait(left)
            return list(self.handler.messages)
