"""The IMAP commands as an operator runs them — `account add-imap`, `test-incoming`,
`test-outgoing`, `set-password` — against a real Dovecot and a real SMTP server (see
tests/test_cli.py for how the CLI's own event loop and the fixtures fit together)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess

import pytest

from maildesk.secretbox import SecretBox
from maildesk.store import accounts as account_store
from maildesk.store.database import Database
from tests import test_cli as cli_tests
from tests.support import imap_rig
from tests.support.dovecot import DovecotServer
from tests.support.ports import free_port
from tests.support.smtp_peer import SmtpPeer
from tests.test_cli import Cli, assert_error, assert_ok, maildesk_script

# The fixtures of tests/test_cli.py under their names here (pytest finds them as attributes).
base_env = cli_tests.base_env
db_env = cli_tests.db_env
cli = cli_tests.cli

WRONG = "wrong-password-0815"


@pytest.fixture
def imap_env(db_env: dict[str, str], dovecot_full: DovecotServer,
             monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A MailDesk on ``db_url`` that trusts Dovecot's certificate."""
    env = {**db_env, "MAILDESK_TLS_CA_FILE": str(dovecot_full.cert_path),
           "MAILDESK_IMAP_TIMEOUT": "10", "MAILDESK_IMAP_CONNECT_TIMEOUT": "10",
           "MAILDESK_SECRET_KEY": "cli-test-secret-key"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


user = imap_rig.dovecot_login


peer = imap_rig.plain_smtp_peer


def stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(text))


def add_args(dovecot: DovecotServer, user: str, *extra: str) -> list[str]:
    return ["account", "add-imap", "--email", f"{user}@example.org", "--host", dovecot.host,
            "--port", str(dovecot.imaps_port), "--security", "ssl", "--username", user, *extra]


def listed(cli: Cli) -> list[dict[str, object]]:
    result: list[dict[str, object]] = assert_ok(cli("account", "list", "--json")).json()
    return result


def test_add_with_password_on_stdin_then_test_both_servers(
    imap_env: dict[str, str], cli: Cli, dovecot_full: DovecotServer, user: str,
    peer: SmtpPeer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    stdin(monkeypatch, dovecot_full.password + "\n")
    result = assert_ok(cli(*add_args(
        dovecot_full, user, "--password-stdin", "--smtp-host", peer.host, "--smtp-port",
        str(peer.port), "--smtp-security", "none", "--idle-folders", "INBOX,Sent")))
    lines = result.out.splitlines()
    assert lines[0] == (f"Incoming server (IMAP) {dovecot_full.host}:{dovecot_full.imaps_port} "
                        "(ssl): OK: connected, signed in and opened INBOX")
    assert lines[1].startswith(f"Outgoing server (SMTP) {peer.host}:{peer.port} (none): OK: "
                               "connected, signed in and ready to send")
    assert lines[-1].startswith(f"connected {user}@example.org as account 1 (IMAP "
                                f"{dovecot_full.host}:{dovecot_full.imaps_port} (ssl), sends "
                                f"through {peer.host}:{peer.port} (none))")
    assert dovecot_full.password not in result.out
    [account] = listed(cli)
    assert (account["provider"], account["email"]) == ("imap", f"{user}@example.org")

    incoming = assert_ok(cli("account", "test-incoming", f"{user}@example.org"))
    assert incoming.out.startswith("Incoming server (IMAP) ")
    assert ": OK: connected, signed in and opened INBOX" in incoming.out
    report = assert_ok(cli("account", "test-incoming", "1", "--json")).json()
    assert (report["account_id"], report["ok"], report["stage"]) == (1, True, "ready")
    assert "IDLE" in report["capabilities"]
    outgoing = assert_ok(cli("account", "test-outgoing", "1"))
    assert ": OK: connected, signed in and ready to send" in outgoing.out
    assert "warning: no TLS" in outgoing.out
    assert peer.messages == [], "testing sends nothing"


def test_a_refused_password_stores_nothing_and_names_the_stage(
    imap_env: dict[str, str], cli: Cli, dovecot_full: DovecotServer, user: str,
) -> None:
    result = cli(*add_args(dovecot_full, user, "--password", WRONG))
    line = assert_error(result, 1, "not stored", "--no-verify", "Incoming server (IMAP)",
                        "AUTH: the server refused the password")
    assert WRONG not in line
    assert listed(cli) == []


def test_test_incoming_failures_are_one_line_with_the_stage(
    imap_env: dict[str, str], cli: Cli, dovecot_full: DovecotServer, user: str,
) -> None:
    assert_ok(cli("account", "add-imap", "--email", "far@example.org", "--host",
                  "imap.maildesk-test.invalid", "--username", "far@example.org",
                  "--password", "x", "--no-verify"))
    assert_error(cli("account", "test-incoming", "far@example.org"), 1,
                 "account 1 (far@example.org)",
                 "DNS: cannot resolve 'imap.maildesk-test.invalid'")
    result = cli("account", "test-incoming", "1", "--json")
    assert result.code == 1
    report = result.json()
    assert (report["ok"], report["stage"], report["error_kind"]) == (False, "dns", "unavailable")
    assert_error(cli("account", "test-outgoing", "1"), 1, "no outgoing (SMTP) server")
    # A port nobody listens on: TCP.
    port = free_port()
    assert_ok(cli("account", "add-imap", "--email", "closed@example.org", "--host",
                  dovecot_full.host, "--port", str(port), "--username", user, "--password", "x",
                  "--no-verify"))
    assert_error(cli("account", "test-incoming", "closed@example.org"), 1,
                 f"TCP: cannot connect to {dovecot_full.host}:{port}", "connection refused")


def test_set_password_after_a_provider_password_change(
    imap_env: dict[str, str], cli: Cli, dovecot_full: DovecotServer, user: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert_ok(cli(*add_args(dovecot_full, user, "--password", WRONG, "--no-verify")))
    assert_error(cli("account", "test-incoming", "1"), 1, "AUTH: the server refused the password")
    stdin(monkeypatch, "another wrong one\n")
    assert_error(cli("account", "set-password", "1", "--password-stdin"), 1,
                 "the new password was not stored", "AUTH:")
    stdin(monkeypatch, dovecot_full.password + "\n")
    done = assert_ok(cli("account", "set-password", f"{user}@example.org", "--password-stdin"))
    assert done.out.startswith(f"new password stored for account 1 ({user}@example.org)")
    assert_ok(cli("account", "test-incoming", "1"))
    # Not a terminal and no password given: refused rather than read from nowhere.
    stdin(monkeypatch, "")
    assert_error(cli("account", "set-password", "1"), 1, "--password-stdin")
    assert_error(cli("account", "set-password", "1", "--password-stdin"), 1,
                 "no password on standard input")


def test_set_password_is_only_for_imap_password_mailboxes(
    imap_env: dict[str, str], cli: Cli,
) -> None:
    assert_error(cli("account", "set-password", "7", "--password", "x"), 1, "no account")
    assert_ok(cli("account", "add-imap", "--host", "imap.gmail.com", "--username",
                  "me@gmail.com", "--sign-in", "google", "--refresh-token", "1//tok",
                  "--no-verify"))
    assert_error(cli("account", "set-password", "1", "--password", "x"), 1,
                 "signs in with google (XOAUTH2)")


def test_bad_setups_are_refused_before_anything_is_tried(
    imap_env: dict[str, str], cli: Cli,
) -> None:
    assert_error(cli("account", "add-imap", "--host", "h", "--username", "plain",
                     "--password", "x"), 1, "email: required")
    assert_error(cli("account", "add-imap", "--host", "h", "--username", "a@b.org",
                     "--sign-in", "microsoft", "--no-verify"), 1, "refresh token: required")
    assert_error(cli("account", "add-imap", "--host", "h", "--username", "a@b.org",
                     "--security", "tls", "--password", "x"), 2, "--security")
    assert_error(cli("account", "add-imap", "--host", "h", "--username", "a@b.org",
                     "--password", "x", "--password-stdin"), 2, "not allowed with")
    assert listed(cli) == []


def test_the_console_script_reads_the_password_from_stdin(
    imap_env: dict[str, str], dovecot_full: DovecotServer, user: str,
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAILDESK_")}
    result = subprocess.run(
        [maildesk_script(), *add_args(dovecot_full, user, "--password-stdin")],
        env={**clean, **imap_env}, input=dovecot_full.password + "\n", capture_output=True,
        text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "OK: connected, signed in and opened INBOX" in result.stdout
    assert "Traceback" not in result.stderr


def test_the_stored_password_is_encrypted(
    imap_env: dict[str, str], cli: Cli, dovecot_full: DovecotServer, user: str,
) -> None:
    assert_ok(cli(*add_args(dovecot_full, user, "--password", dovecot_full.password)))

    async def read() -> tuple[str | None, str]:
        db = Database(imap_env["MAILDESK_DATABASE_URL"])
        try:
            async with db.read() as conn:
                row = await account_store.get(conn, 1)
            return row.password_enc, json.dumps(row.settings)
        finally:
            await db.dispose()

    password_enc, settings = asyncio.run(read())
    assert password_enc is not None
    assert dovecot_full.password not in password_enc + settings
    assert SecretBox([imap_env["MAILDESK_SECRET_KEY"]]).decrypt(password_enc) == (
        dovecot_full.password)
