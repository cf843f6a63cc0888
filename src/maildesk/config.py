"""Settings: one typed object, read once at start from ``MAILDESK_*`` variables.

Every setting is declared once below with its environment name, default and description; the
docs page ``docs/settings.md`` lists them all and a test fails when one is missing there.
An optional TOML file (``MAILDESK_CONFIG_FILE``) may hold the same names; the environment wins.
Durations are in seconds.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import secrets
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from maildesk.errors import ConfigError

PREFIX = "MAILDESK_"


def _setting(default: Any, doc: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"doc": doc, "secret": secret})


@dataclass(frozen=True, slots=True)
class Settings:
    """All of MailDesk's configuration. Field ``x`` is read from ``MAILDESK_X``."""

    data_dir: Path = _setting(
        Path("maildesk-data"),
        "Folder for the SQLite database, the generated secret key and other local state.",
    )
    database_url: str = _setting(
        "",
        "SQLAlchemy URL of the store. Empty: a SQLite file `maildesk.db` in the data folder. "
        "PostgreSQL: `postgresql+asyncpg://user:pass@host:5432/db`.",
    )
    base_url: str = _setting(
        "http://127.0.0.1:8025",
        "Public address of this server, without trailing slash; webhook URLs are built from it.",
    )
    secret_key: str = _setting(
        "",
        "Key(s) that encrypt secrets at rest and sign sessions. Comma-separated for rotation: the "
        "first encrypts, all decrypt. Empty: generated once and kept in `DATA_DIR/secret.key`.",
        secret=True,
    )
    host: str = _setting("127.0.0.1", "Interface the web server listens on.")
    port: int = _setting(8025, "Port the web server listens on.")
    log_level: str = _setting("INFO", "Python logging level.")
    poll_interval: float = _setting(
        120.0, "Seconds between polls of a mailbox whose push is missing, silent or broken."
    )
    safety_poll_interval: float = _setting(
        1800.0, "Seconds between safety-sweep polls of mailboxes whose push is healthy."
    )
    push_silence_threshold: float = _setting(
        21600.0, "Seconds without a notification after which an active push subscription is "
        "treated as silent and the mailbox falls back to polling."
    )
    push_renewal_interval: float = _setting(
        3600.0, "Seconds between runs of the push renewal + silence detector job."
    )
    allow_loopback_webhooks: bool = _setting(
        False, "Allow registering push with an http:// or loopback base URL (demo and tests only)."
    )
    lease_seconds: float = _setting(
        120.0, "How long a worker's claim on a mailbox lasts without being extended; a crashed "
        "worker's mailboxes are taken over after this."
    )
    worker_concurrency: int = _setting(4, "Mailboxes one worker process syncs at the same time.")
    worker_tick: float = _setting(
        1.0, "Seconds between scheduler ticks when nothing wakes the worker earlier."
    )
    sync_followup_quiet: float = _setting(
        0.3, "A follow-up sync (requests arrived while the previous run was busy) starts once "
        "no new request has come for this many seconds; 0 starts it at once."
    )
    sync_followup_max_wait: float = _setting(
        2.0, "Longest wait, in seconds, of a follow-up sync for requests to pause: a mailbox "
        "that never goes quiet is still synced this often."
    )
    http_timeout: float = _setting(30.0, "Read timeout, in seconds, of every provider HTTP call.")
    http_connect_timeout: float = _setting(5.0, "Connect timeout of every provider HTTP call.")
    max_inline_retry_wait: float = _setting(
        30.0, "Longest Retry-After a sync waits out in place; longer waits defer the mailbox."
    )
    backfill_pages_per_run: int = _setting(
        20, "History pages of older mail fetched per sync run before yielding to other work."
    )
    prefetch_bodies: int = _setting(
        50, "Bodies of newly arrived messages fetched into the cache after each sync run."
    )
    imap_connect_timeout: float = _setting(
        20.0, "Seconds to reach an IMAP or SMTP server and finish its TLS handshake."
    )
    imap_timeout: float = _setting(
        60.0, "Longest wait, in seconds, for an IMAP or SMTP server's next answer during a command."
    )
    imap_max_connections: int = _setting(
        3, "IMAP connections one mailbox may hold at once (IDLE watcher, sync, sending); extra "
        "users wait for a free one."
    )
    imap_idle: bool = _setting(
        True, "Hold an IMAP IDLE connection per IMAP mailbox so new mail arrives at once; off: "
        "IMAP mailboxes are polled."
    )
    imap_idle_keepalive: float = _setting(
        240.0, "Longest single IDLE, in seconds, before it is re-issued (and the connection "
        "proven alive); must stay under RFC 2177's 29 minutes."
    )
    imap_reconnect_max: float = _setting(
        300.0, "Cap, in seconds, of the jittered backoff between IDLE reconnect attempts."
    )
    tls_ca_file: str = _setting(
        "", "PEM file of extra certificate authorities trusted for IMAP and SMTP TLS (servers "
        "with a private CA). The system's trust store is always used too."
    )
    send_max_attempts: int = _setting(
        6, "Attempts to send one message through transient failures (backoff between them) "
        "before it is left in Drafts with its error."
    )
    google_client_id: str = _setting("", "OAuth client id of the Google Cloud app.")
    google_client_secret: str = _setting("", "OAuth client secret of the Google app.", secret=True)
    google_authorize_url: str = _setting(
        "https://accounts.google.com/o/oauth2/v2/auth", "Google OAuth authorization endpoint."
    )
    google_token_url: str = _setting(
        "https://oauth2.googleapis.com/token", "Google OAuth token endpoint."
    )
    google_revoke_url: str = _setting(
        "https://oauth2.googleapis.com/revoke", "Google OAuth revocation endpoint."
    )
    google_certs_url: str = _setting(
        "https://www.googleapis.com/oauth2/v1/certs",
        "Google's OIDC signing certificates, used to verify Pub/Sub push tokens.",
    )
    gmail_api_url: str = _setting(
        "https://gmail.googleapis.com", "Base of the Gmail API (without /gmail/v1)."
    )
    microsoft_client_id: str = _setting("", "Application (client) id of the Entra app.")
    microsoft_client_secret: str = _setting(
        "", "Client secret of the Entra app.", secret=True
    )
    microsoft_tenant: str = _setting(
        "common", "Tenant for Microsoft sign-in: `common`, `organizations` or a tenant id."
    )
    microsoft_authority_url: str = _setting(
        "https://login.microsoftonline.com", "Microsoft identity platform root."
    )
    graph_api_url: str = _setting(
        "https://graph.microsoft.com/v1.0", "Microsoft Graph base URL."
    )
    outlook_subscription_lifetime: float = _setting(
        518400.0, "Seconds a Microsoft Graph subscription is requested for (Graph may shorten "
        "it; the expiration it returns is what is stored). Renewed with about a day to spare."
    )
    graph_delta_page_size: int = _setting(
        200, "Messages per Graph delta page (`Prefer: odata.maxpagesize`)."
    )

    # ----------------------------------------------------------------------------------------
    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'maildesk.db').resolve()}"

    @property
    def secret_keys(self) -> list[str]:
        """The configured keys, newest first. Empty until ``with_secret_key`` ran."""
        return [k.strip() for k in self.secret_key.split(",") if k.strip()]

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def with_secret_key(self) -> Settings:
        """Fill in the secret key from the data folder, generating it on first start."""
        if self.secret_key:
            return self
        path = self.data_dir / "secret.key"
        try:
            if path.exists():
                key = path.read_text().strip()
            else:
                self.data_dir.mkdir(parents=True, exist_ok=True)
                key = secrets.token_urlsafe(32)
                # Created with owner-only permissions from the start, not chmod'ed afterwards.
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(key + "\n")
        except OSError as exc:
            raise ConfigError(env_name("data_dir"),
                              f"cannot use {self.data_dir} ({exc.strerror or exc})") from exc
        return self.replace(secret_key=key)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, config_file: Path | None = None
    ) -> Settings:
        """Read settings from a TOML file (optional) and then the environment."""
        env = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        file_name = config_file or (Path(env[PREFIX + "CONFIG_FILE"]) if env.get(
            PREFIX + "CONFIG_FILE") else None)
        if file_name is not None:
            try:
                raw = tomllib.loads(file_name.read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                problem = f"cannot read {file_name}: {exc}"
                raise ConfigError(PREFIX + "CONFIG_FILE", problem) from exc
            for key, value in raw.items():
                name = key.lower()
                if name not in _FIELDS:
                    raise ConfigError(PREFIX + key.upper(), "unknown setting in the config file")
                values[name] = _parse(name, str(value) if not isinstance(value, str) else value)
        for name in _FIELDS:
            env_name = PREFIX + name.upper()
            if env_name in env:
                values[name] = _parse(name, env[env_name])
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for name in ("base_url", "gmail_api_url", "google_token_url", "graph_api_url",
                     "microsoft_authority_url", "google_certs_url", "google_revoke_url",
                     "google_authorize_url"):
            value = getattr(self, name)
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(env_name(name), f"not an http(s) URL: {value!r}")
        if self.base_url.endswith("/"):
            raise ConfigError(env_name("base_url"), "must not end with a slash")
        for name in ("poll_interval", "safety_poll_interval", "lease_seconds", "worker_tick",
                     "http_timeout", "http_connect_timeout", "push_silence_threshold",
                     "push_renewal_interval", "outlook_subscription_lifetime",
                     "imap_connect_timeout", "imap_timeout", "imap_reconnect_max"):
            value = getattr(self, name)
            # `not value > 0` also refuses NaN, which every comparison answers False to.
            if not math.isfinite(value) or not value > 0:
                raise ConfigError(env_name(name), "must be a finite number greater than 0")
        if not 1 <= self.port <= 65535:
            raise ConfigError(env_name("port"), "must be between 1 and 65535")
        if logging.getLevelName(self.log_level.upper()) not in _LEVELS:
            raise ConfigError(env_name("log_level"),
                              "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        for name in ("sync_followup_quiet", "sync_followup_max_wait"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(env_name(name), "must be a finite number, 0 or more")
        if self.worker_concurrency < 1:
            raise ConfigError(env_name("worker_concurrency"), "must be at least 1")
        if self.imap_max_connections < 1:
            raise ConfigError(env_name("imap_max_connections"), "must be at least 1")
        if not 0 < self.imap_idle_keepalive < 29 * 60:
            raise ConfigError(env_name("imap_idle_keepalive"),
                              "must be greater than 0 and under 1740 (29 minutes)")
        if self.send_max_attempts < 1:
            raise ConfigError(env_name("send_max_attempts"), "must be at least 1")
        if not 1 <= self.graph_delta_page_size <= 1000:
            raise ConfigError(env_name("graph_delta_page_size"), "must be between 1 and 1000")

    def describe(self) -> dict[str, str]:
        """Settings for display, with secrets masked."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            shown = "***" if f.metadata.get("secret") and value else str(value)
            if f.name == "database_url" and value:
                shown = _mask_url_password(value)
            out[env_name(f.name)] = shown
        return out


_LEVELS = {logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL}


def _mask_url_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def env_name(field_name: str) -> str:
    return PREFIX + field_name.upper()


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


_PARSERS: dict[type[Any] | str, Callable[[str], Any]] = {
    "Path": lambda raw: Path(raw).expanduser(),
    "str": lambda raw: raw.strip(),
    "int": int,
    "float": float,
    "bool": _parse_bool,
}

_FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(Settings)}


def _parse(name: str, raw: str) -> Any:
    kind = _FIELDS[name].type
    type_name = kind if isinstance(kind, str) else kind.__name__
    try:
        return _PARSERS[type_name](raw)
    except (ValueError, KeyError) as exc:
        raise ConfigError(env_name(name), f"invalid value: {exc}") from exc


def documented_settings() -> list[tuple[str, str, str]]:
    """(environment name, default, description) of every setting, in declaration order."""
    rows = []
    for f in dataclasses.fields(Settings):
        rows.append((env_name(f.name), str(f.default), str(f.metadata["doc"])))
    return rows
