"""A throwaway Dovecot IMAP server for tests and benchmarks.

``DovecotServer`` runs Debian's ``dovecot-imapd`` against a config written into a fresh temp dir,
listening only on 127.0.0.1 on ports chosen free at start: one plain IMAP port (STARTTLS offered)
and one implicit-TLS port, with a self-signed certificate made here with ``cryptography``. Every
user name logs in with :data:`PASSWORD` (a static passdb) and gets its own Maildir under the temp
dir, so a test takes a fresh mailbox just by picking a new name (:meth:`DovecotServer.new_user`)::

    with DovecotServer(Flavour.FULL) as server:
        user = server.new_user()
        server.deliver(user, "INBOX", [message_bytes, ...])   # fast: writes Maildir files
        with server.admin(user) as admin:                     # imaplib, from the test side
            admin.set_flags("INBOX", [1, 2], r"\\Seen")

Two flavours: ``FULL`` is Dovecot as shipped (CONDSTORE, QRESYNC, SPECIAL-USE folders Sent,
Drafts, Trash, Junk, Archive); ``BASIC`` advertises neither CONDSTORE nor QRESYNC nor SPECIAL-USE
(like Office 365 IMAP) and names its folders the Exchange way (Sent Items, Deleted Items, Junk
Email) so role detection must go by name.

Dovecot's login processes refuse to run as root. As root (sessions and CI) the default
unprivileged users stay (``dovenull`` for logins, ``dovecot`` for internals) and the mail store is
given to ``dovecot``; as any other user everything runs as that user. ``python -m
tests.support.dovecot [basic]`` starts one and prints its ports until SIGINT/SIGTERM.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import grp
import imaplib
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self

from tests.support.ports import free_port

__all__ = ["PASSWORD", "DovecotServer", "Flavour", "MailboxAdmin", "make_message"]

HOST = "127.0.0.1"
PASSWORD = "secret-pass"
DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 40
_users = itertools.count(1)

# Dovecot 2.3's built-in post-login capabilities minus CONDSTORE, QRESYNC and SPECIAL-USE.
_BASIC_CAPABILITY = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT THREAD=REFERENCES MULTIAPPEND "
    "UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 ESEARCH SEARCHRES WITHIN "
    "LIST-STATUS BINARY MOVE LITERAL+"
)


class Flavour(enum.StrEnum):
    FULL = "full"
    BASIC = "basic"


_FOLDERS = {
    # name in the namespace -> special-use flag (FULL only)
    Flavour.FULL: {
        "Sent": r"\Sent",
        "Drafts": r"\Drafts",
        "Trash": r"\Trash",
        "Junk": r"\Junk",
        "Archive": r"\Archive",
    },
    Flavour.BASIC: {
        "Sent Items": "",
        "Drafts": "",
        "Deleted Items": "",
        "Junk Email": "",
        "Archive": "",
    },
}


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A fresh key and self-signed certificate for ``localhost`` and 127.0.0.1."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def make_message(
    index: int,
    *,
    subject: str | None = None,
    sender: str = "Alice Example <alice@example.org>",
    to: str = "Bob <bob@example.org>",
    body: str | None = None,
    date: dt.datetime | None = None,
    message_id: str | None = None,
) -> bytes:
    """A small RFC 5322 message, numbered so tests can tell them apart."""
    when = date or dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=index)
    lines = [
        f"From: {sender}",
        f"To: {to}",
        f"Subject: {subject if subject is not None else f'Message {index}'}",
        f"Date: {when.strftime('%a, %d %b %Y %H:%M:%S +0000')}",
        f"Message-ID: {message_id or f'<m{index}.{uuid.uuid4().hex[:8]}@test.example>'}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
        body if body is not None else f"Body of message {index}.",
        "",
    ]
    return "\r\n".join(lines).encode()


class DovecotServer:
    """One throwaway Dovecot: its own config, temp dir, free loopback ports and certificate.

    ``start()`` blocks until both ports accept connections (or raises ``RuntimeError`` with the
    tail of Dovecot's log); ``stop()`` stops it and deletes everything it wrote.
    """

    def __init__(self, flavour: Flavour = Flavour.FULL, *, startup_timeout: float = 20.0) -> None:
        self.flavour = flavour
        self._startup_timeout = startup_timeout
        self._dir: Path | None = None
        self._ports: tuple[int, int] | None = None
        self._as_root = os.geteuid() == 0
        self.cert_path = Path()
        self._uid, self._gid = -1, -1
        # Maildir file names must be unique across deliver() calls within one second too.
        self._delivered = itertools.count(1)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._dir is not None:
            raise RuntimeError("DovecotServer already started")
        if not Path(DOVECOT).is_file():
            raise RuntimeError(
                f"{DOVECOT} not found: install Debian's IMAP server with "
                "apt-get install -y dovecot-imapd"
            )
        self._dir = Path(tempfile.mkdtemp(prefix="maildesk-dovecot-"))
        try:
            # The imap processes run as the mail user: they must be able to walk to the store.
            self._dir.chmod(0o755)
            (self._dir / "mail").mkdir()
            (self._dir / "tls").mkdir()
            self.cert_path, key_path = _self_signed(self._dir / "tls")
            if self._as_root:
                mail_user = self._system_user("dovecot")
                os.chown(self._dir / "mail", mail_user.pw_uid, mail_user.pw_gid)
            self._uid, self._gid = self._mail_ids()
            for _ in range(_PORT_ATTEMPTS):
                self._ports = (free_port(HOST), free_port(HOST))
                self._write_config(key_path)
                if self._start_server():
                    return
            raise RuntimeError("dovecot could not bind free ports:\n" + self.log_tail())
        except BaseException:
            self._discard()
            raise

    def stop(self) -> None:
        """Stop the server and remove its directory; safe to call more than once."""
        if self._dir is None:
            return
        self._discard()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses and credentials ---------------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def imap_port(self) -> int:
        """Plain IMAP (STARTTLS offered)."""
        return self._require_ports()[0]

    @property
    def imaps_port(self) -> int:
        """Implicit TLS."""
        return self._require_ports()[1]

    @property
    def directory(self) -> Path:
        if self._dir is None:
            raise RuntimeError("DovecotServer is not running")
        return self._dir

    @property
    def password(self) -> str:
        return PASSWORD

    @property
    def sent_folder(self) -> str:
        return "Sent" if self.flavour is Flavour.FULL else "Sent Items"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's self-signed certificate (and only it)."""
        context = ssl.create_default_context(cafile=str(self.cert_path))
        return context

    def new_user(self, prefix: str = "user") -> str:
        """A user name nobody used yet on this server: an empty mailbox on first login."""
        return f"{prefix}{next(_users)}-{uuid.uuid4().hex[:6]}"

    # -- test-side mailbox access ----------------------------------------------------------------

    def admin(self, user: str) -> MailboxAdmin:
        """An imaplib connection as ``user`` for arranging test state (use as a context manager)."""
        return MailboxAdmin(self, user)

    def deliver(
        self,
        user: str,
        folder: str,
        messages: Iterable[bytes],
        *,
        seen: bool = False,
        start: dt.datetime | None = None,
    ) -> int:
        """Write messages straight into ``user``'s Maildir (much faster than APPEND).

        Dovecot assigns UIDs in file-name order the next time the folder is opened. The folder
        must exist (INBOX always does; others after a login created them, or via ``admin``).
        Each file's mtime, which Dovecot reports as INTERNALDATE, is one minute after the last,
        starting at ``start``. Returns the number written.
        """
        target = self.maildir(user, folder)
        self._make_maildir(target)
        base = start or dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
        stamp = int(time.time())
        count = 0
        suffix = ":2,S" if seen else ":2,"
        for count, raw in enumerate(messages, start=1):
            name = f"{stamp}.M{next(self._delivered):08d}P{os.getpid()}.maildesk{suffix}"
            path = target / "cur" / name
            path.write_bytes(raw)
            mtime = (base + dt.timedelta(minutes=count)).timestamp()
            os.utime(path, (mtime, mtime))
            if self._as_root:
                os.chown(path, self._uid, self._gid)
        return count

    def maildir(self, user: str, folder: str) -> Path:
        """Path of ``folder`` in ``user``'s Maildir++ store (``.Sent Items`` etc.)."""
        root = self.directory / "mail" / user
        if folder.upper() == "INBOX":
            return root
        return root / ("." + folder.replace("/", "."))

    def doveadm(self, *args: str, timeout: float = 15) -> str:
        """Run ``doveadm`` against this server; returns stdout, raises on failure."""
        result = subprocess.run(
            [DOVEADM, "-c", str(self._config_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"doveadm {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def kick(self, user: str) -> None:
        """Disconnect every IMAP session of ``user`` (the server closes them with a BYE)."""
        self.doveadm("kick", user)

    def kill_sessions(self, user: str) -> int:
        """SIGKILL the imap processes serving ``user``: the connections drop without a BYE, as
        when a server crashes. Returns how many processes were killed."""
        killed = 0
        for line in self.doveadm("who", "-1", user).splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[0] == user and fields[2].isdigit():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(fields[2]), signal.SIGKILL)
                    killed += 1
        return killed

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = (self.directory / "dovecot.log").read_text(errors="replace")
        except OSError:
            return "(no dovecot log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- internals -------------------------------------------------------------------------------

    @property
    def _config_path(self) -> Path:
        return self.directory / "dovecot.conf"

    def _require_ports(self) -> tuple[int, int]:
        if self._ports is None or self._dir is None:
            raise RuntimeError("DovecotServer is not running")
        return self._ports

    @staticmethod
    def _system_user(name: str) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            raise RuntimeError(
                f"running as root, but there is no {name!r} user for Dovecot's processes "
                "(apt-get install -y dovecot-imapd creates it)"
            ) from None

    def _mail_ids(self) -> tuple[int, int]:
        if self._as_root:
            user = self._system_user("dovecot")
            return user.pw_uid, user.pw_gid
        return os.geteuid(), os.getegid()

    def _make_maildir(self, path: Path) -> None:
        for sub in ("", "cur", "new", "tmp"):
            (path / sub).mkdir(parents=True, exist_ok=True)
            if self._as_root:
                os.chown(path / sub, self._uid, self._gid)
        if self._as_root:
            # The user's root directory may have been created by us just now, too.
            os.chown(path.parent, self._uid, self._gid)

    def _write_config(self, key_path: Path) -> None:
        d = self.directory
        imap_port, imaps_port = self._require_ports()
        users = ""
        if not self._as_root:
            me = pwd.getpwuid(os.geteuid()).pw_name
            group = grp.getgrgid(os.getegid()).gr_name
            # Without root Dovecot can neither switch users or groups nor chroot.
            users = (
                f"default_internal_user = {me}\ndefault_login_user = {me}\n"
                f"default_internal_group = {group}\n"
                "service anvil {\n  chroot =\n}\n"
                "service imap-login {\n  chroot =\n}\n"
            )
        mailboxes = []
        for name, flag in _FOLDERS[self.flavour].items():
            use = f"    special_use = {flag}\n" if flag else ""
            mailboxes.append(f'  mailbox "{name}" {{\n    auto = subscribe\n{use}  }}\n')
        capability = (
            f"imap_capability = {_BASIC_CAPABILITY}\n" if self.flavour is Flavour.BASIC else ""
        )
        config = f"""\
protocols = imap
listen = {HOST}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
ssl = yes
ssl_cert = <{self.cert_path}
ssl_key = <{key_path}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:{d}/mail/%u
first_valid_uid = 1
first_valid_gid = 1
mailbox_idle_check_interval = 1 secs
{capability}{users}
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={self._uid} gid={self._gid} home={d}/mail/%u
}}
namespace inbox {{
  inbox = yes
  separator = /
{"".join(mailboxes)}}}
# Dovecot delays logins from an IP after failed ones (2, 4, 8 … s, the "auth penalty"). All
# tests log in from 127.0.0.1 and several try wrong passwords: an auth process that cannot
# reach anvil's penalty socket skips the penalty.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = {HOST}
    port = {imaps_port}
    ssl = yes
  }}
}}
"""
        self._config_path.write_text(config)

    def _start_server(self) -> bool:
        """Start Dovecot; True once both ports answer, False if a port was taken meanwhile."""
        # The daemon inherits our stdio: a pipe would never reach EOF, so use a file.
        startup_log = self.directory / "startup.log"
        with startup_log.open("wb") as out:
            result = subprocess.run(
                [DOVECOT, "-c", str(self._config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=30,
                check=False,
                cwd=self.directory,
            )
        if result.returncode != 0:
            output = startup_log.read_text(errors="replace")
            if re.search(r"Address already in use", output + self.log_tail()):
                return False
            raise RuntimeError(f"dovecot failed to start: {output.strip()}\n{self.log_tail()}")
        deadline = time.monotonic() + self._startup_timeout
        for port in self._require_ports():
            while True:
                try:
                    with socket.create_connection((HOST, port), timeout=1):
                        break
                except OSError:
                    if not self._master_running():
                        if "Address already in use" in self.log_tail():
                            return False
                        raise RuntimeError(
                            "dovecot exited during startup:\n" + self.log_tail()
                        ) from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"dovecot did not listen on port {port} within "
                            f"{self._startup_timeout} s:\n{self.log_tail()}"
                        ) from None
                    time.sleep(0.05)
        return True

    def _master_pid(self) -> int | None:
        try:
            return int((self.directory / "run" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _master_running(self) -> bool:
        pid = self._master_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def _discard(self) -> None:
        directory, self._dir = self._dir, None
        if directory is None:
            return
        self._dir = directory
        try:
            pid = self._master_pid()
            if pid is not None and self._master_running():
                # SIGTERM is what "dovecot stop" sends, without its extra second of waiting.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 10
                while self._master_running() and time.monotonic() < deadline:
                    time.sleep(0.05)
                if self._master_running():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        finally:
            self._dir = None
            self._ports = None
            shutil.rmtree(directory, ignore_errors=True)


class MailboxAdmin:
    """The test side's own IMAP connection (stdlib imaplib, blocking): arrange and change state.

    Call it from async tests through ``asyncio.to_thread``. UIDs are IMAP UIDs.
    """

    def __init__(self, server: DovecotServer, user: str) -> None:
        self._imap = imaplib.IMAP4(server.host, server.imap_port, timeout=30)
        self._imap.login(user, server.password)
        self._selected: str | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            self._imap.logout()

    @staticmethod
    def _q(name: str) -> str:
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def _check(self, typ: str, data: Sequence[object], what: str) -> None:
        if typ != "OK":
            raise RuntimeError(f"{what} failed: {typ} {data!r}")

    def select(self, folder: str) -> None:
        if self._selected != folder:
            typ, data = self._imap.select(self._q(folder))
            self._check(typ, data, f"SELECT {folder}")
            self._selected = folder

    def append(
        self, folder: str, messages: Iterable[bytes], *, flags: str = ""
    ) -> list[int]:
        """APPEND each message; returns the UIDs Dovecot assigned (APPENDUID)."""
        uids = []
        for raw in messages:
            typ, data = self._imap.append(self._q(folder), flags or None, None, raw)
            self._check(typ, data, f"APPEND {folder}")
            match = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
            if match is None:
                raise RuntimeError(f"no APPENDUID in {data!r}")
            uids.append(int(match.group(1)))
        return uids

    def uids(self, folder: str) -> list[int]:
        self.select(folder)
        typ, data = self._imap.uid("SEARCH", "ALL")
        self._check(typ, data, "UID SEARCH")
        return [int(x) for x in (data[0] or b"").split()]

    def set_flags(self, folder: str, uids: Sequence[int], flags: str, *, add: bool = True) -> None:
        """``+FLAGS`` (or ``-FLAGS`` with ``add=False``) on the given UIDs."""
        self.select(folder)
        op = "+FLAGS" if add else "-FLAGS"
        typ, data = self._imap.uid("STORE", ",".join(map(str, uids)), op, f"({flags})")
        self._check(typ, data, "UID STORE")

    def expunge(self, folder: str, uids: Sequence[int]) -> None:
        """Delete exactly these UIDs (UID EXPUNGE, so other \\Deleted mail is left alone)."""
        self.set_flags(folder, uids, r"\Deleted")
        typ, data = self._imap.uid("EXPUNGE", ",".join(map(str, uids)))
        self._check(typ, data, "UID EXPUNGE")

    def create(self, folder: str) -> None:
        typ, data = self._imap.create(self._q(folder))
        self._check(typ, data, f"CREATE {folder}")

    def delete(self, folder: str) -> None:
        if self._selected == folder:
            self._imap.close()
            self._selected = None
        typ, data = self._imap.delete(self._q(folder))
        self._check(typ, data, f"DELETE {folder}")

    def recreate(self, folder: str) -> None:
        """Delete and create ``folder``: its UIDVALIDITY changes, its mail is gone."""
        self.delete(folder)
        self.create(folder)


def main(argv: list[str]) -> int:
    flavour = Flavour(argv[0]) if argv else Flavour.FULL
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with DovecotServer(flavour) as server:
        print(
            f"dovecot ({flavour}) imap=127.0.0.1:{server.imap_port} "
            f"imaps=127.0.0.1:{server.imaps_port} password={server.password} "
            f"cert={server.cert_path} dir={server.directory}",
            flush=True,
        )
        while not stop:
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
