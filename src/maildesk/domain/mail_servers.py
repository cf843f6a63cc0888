"""Where an IMAP mailbox lives: its incoming (IMAP) and outgoing (SMTP) servers and how we sign in.

Stored, without any secret, in ``accounts.settings_json`` under ``"imap"``; the password lives
encrypted in ``accounts.password_enc`` and an OAuth refresh token (XOAUTH2 sign-in to Gmail or
Microsoft 365 over IMAP/SMTP) in ``accounts.refresh_token_enc``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Self

from maildesk.errors import InputError

SETTINGS_KEY = "imap"
DEFAULT_IDLE_FOLDERS = ("INBOX",)


class Security(enum.StrEnum):
    """How a connection to a mail server is protected."""

    SSL = "ssl"  # implicit TLS (IMAP 993, SMTP 465)
    STARTTLS = "starttls"  # plain connect, then STARTTLS before anything else (IMAP 143, SMTP 587)
    NONE = "none"  # no TLS at all: tests and trusted local networks only


class SignIn(enum.StrEnum):
    """How we authenticate: a password, or SASL XOAUTH2 with a Google or Microsoft token."""

    PASSWORD = "password"  # noqa: S105 (a sign-in kind, not a secret)
    GOOGLE = "google"
    MICROSOFT = "microsoft"


class SentCopy(enum.StrEnum):
    """Who files a sent message in the Sent folder.

    ``server``: the server (or its SMTP submission) keeps a copy itself — Gmail, Microsoft 365.
    ``append``: nobody does, so after sending we APPEND our copy to the mapped Sent folder.
    ``auto``: ``server`` for Google/Microsoft sign-in, ``append`` otherwise (most classic IMAP
    servers, Dovecot included, keep nothing).
    """

    AUTO = "auto"
    APPEND = "append"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class ServerAddress:
    host: str
    port: int
    security: Security

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "security": self.security.value}

    @classmethod
    def from_json(cls, raw: Any, what: str) -> Self:
        if not isinstance(raw, dict):
            raise InputError(f"{what}: expected host, port and security")
        return cls.parse(raw.get("host"), raw.get("port"), raw.get("security"), what)

    @classmethod
    def parse(cls, host: Any, port: Any, security: Any, what: str) -> Self:
        """Validate operator input (CLI, API, form) into an address; InputError names the field."""
        if not isinstance(host, str) or not host.strip() or any(c.isspace() for c in host.strip()):
            raise InputError(f"{what} host: a host name or address is required")
        try:
            number = int(port)
        except (TypeError, ValueError):
            raise InputError(f"{what} port: a number from 1 to 65535 is required") from None
        if not 1 <= number <= 65535 or isinstance(port, bool):
            raise InputError(f"{what} port: a number from 1 to 65535 is required")
        try:
            sec = Security(str(security).strip().lower())
        except ValueError:
            raise InputError(f"{what} security: one of ssl, starttls, none") from None
        return cls(host.strip(), number, sec)


@dataclass(frozen=True, slots=True)
class MailServers:
    """An IMAP mailbox's connection settings (no secrets)."""

    imap: ServerAddress
    username: str
    sign_in: SignIn = SignIn.PASSWORD
    smtp: ServerAddress | None = None
    # SMTP user name when it differs from the IMAP one (None: the same).
    smtp_username: str | None = None
    idle_folders: tuple[str, ...] = field(default=DEFAULT_IDLE_FOLDERS)
    sent_copy: SentCopy = SentCopy.AUTO

    @property
    def appends_sent(self) -> bool:
        """Whether we must APPEND sent messages to the Sent folder ourselves."""
        if self.sent_copy is SentCopy.AUTO:
            return self.sign_in is SignIn.PASSWORD
        return self.sent_copy is SentCopy.APPEND

    @property
    def smtp_login(self) -> str:
        return self.smtp_username or self.username

    def to_json(self) -> dict[str, Any]:
        return {
            "imap": self.imap.to_json(),
            "username": self.username,
            "sign_in": self.sign_in.value,
            "smtp": None if self.smtp is None else self.smtp.to_json(),
            "smtp_username": self.smtp_username,
            "idle_folders": list(self.idle_folders),
            "sent_copy": self.sent_copy.value,
        }

    @classmethod
    def from_json(cls, raw: Any) -> Self:
        if not isinstance(raw, dict):
            raise InputError("the mailbox has no IMAP server settings")
        username = raw.get("username")
        if not isinstance(username, str) or not username:
            raise InputError("IMAP user name: required")
        smtp_raw = raw.get("smtp")
        smtp_username = raw.get("smtp_username")
        folders = raw.get("idle_folders") or list(DEFAULT_IDLE_FOLDERS)
        if not isinstance(folders, list) or not all(isinstance(f, str) and f for f in folders):
            raise InputError("IDLE folders: a list of folder names")
        try:
            sign_in = SignIn(raw.get("sign_in", SignIn.PASSWORD.value))
            sent_copy = SentCopy(raw.get("sent_copy", SentCopy.AUTO.value))
        except ValueError as exc:
            raise InputError(f"IMAP settings: {exc}") from None
        return cls(
            imap=ServerAddress.from_json(raw.get("imap"), "IMAP"),
            username=username,
            sign_in=sign_in,
            smtp=None if smtp_raw is None else ServerAddress.from_json(smtp_raw, "SMTP"),
            smtp_username=smtp_username if isinstance(smtp_username, str) and smtp_username
            else None,
            idle_folders=tuple(folders),
            sent_copy=sent_copy,
        )

    @classmethod
    def of_account(cls, settings: dict[str, Any]) -> Self:
        """The servers stored in an account's settings (InputError when there are none)."""
        return cls.from_json(settings.get(SETTINGS_KEY))
