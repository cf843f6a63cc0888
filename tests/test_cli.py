"""The `maildesk` command, driven as an operator drives it.

Configuration reaches the CLI the production way only: ``MAILDESK_*`` environment variables
(``monkeypatch.setenv``), pointing at a temp data folder, at a database from ``db_url`` (so these
tests run on SQLite and on PostgreSQL) and at the Google simulator served over real loopback HTTP.

How sync tests, async fixtures and the simulator fit together:

* ``main()`` calls ``asyncio.run``, which refuses to run inside a running loop, so every test that
  calls ``main()`` is a plain ``def`` test.
* ``db_url`` is an async fixture. pytest-asyncio (``asyncio_mode = "auto"``) sets it up and tears
  it down on its own function-scoped loop, which sits idle while a sync test body runs; so a sync
  test can take ``db_url`` as it is, and ``main()``'s ``asyncio.run`` gets a fresh loop of its own
  in the same thread. Nothing async is shared between the two loops: only the URL string.
* The simulator cannot live on either loop (neither runs while ``main()`` blocks on the other), so
  it runs on a loop in a background thread (``tests.support.sim_thread``). Real HTTP on a free
  port is what lets the console-script subprocess reach it too. The simulator's state is changed
  only through ``server.call``, on its own thread.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from maildesk.cli import main
from maildesk.domain.accounts import GMAIL_SCOPE_FULL, ProviderKind
from maildesk.errors import ConfigError
from maildesk.passwords import verify_password
from maildesk.secretbox import SecretBox
from maildesk.sim.gmail_state import GoogleState
from maildesk.sim.google import create_google_app
from maildesk.store import accounts as account_store
from maildesk.store import push as push_store
from maildesk.store import users as user_store
from maildesk.store.database import Database
from maildesk.store.tables import accounts, folders, messages, push_subscriptions
from tests.support.harness import CLIENT_ID, CLIENT_SECRET
from tests.support.sim_thread import ThreadedServer, serve_in_thread

ALICE = "alice@example.com"
SEEDED = 200


# ------------------------------------------------------------------------------ plumbing
@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Cli = Callable[..., Result]


@dataclass
class Sim:
    state: GoogleState
    server: ThreadedServer

    @property
    def url(self) -> str:
        return self.server.url

    def grant(self, email: str) -> str:
        return self.server.call(
            self.state.create_grant, email, (GMAIL_SCOPE_FULL,), client_id=CLIENT_ID
        )

    def seed(self, email: str, count: int) -> None:
        self.server.call(self.state.seed_mailbox, email, count)

    def revoke(self, refresh_token: str) -> None:
        self.server.call(self.state.revoke_grant, refresh_token)

    def deliver(self, email: str, subject: str) -> str:
        return self.server.call(
            self.state.add_message, email, subject=subject, sender="bob@example.org", to=email,
            text="hello", html="<p>hello</p>",
        )


@pytest.fixture
def google() -> Iterator[Sim]:
    state = GoogleState(rng=random.Random(7))
    state.create_client(CLIENT_ID, CLIENT_SECRET)
    with serve_in_thread(create_google_app(state)) as server:
        yield Sim(state, server)


def _clear_maildesk_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MAILDESK_") and name != "MAILDESK_TEST_DB":
            monkeypatch.delenv(name)


@pytest.fixture
def base_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A temp data folder (default SQLite store inside it) and quiet logs; nothing else."""
    _clear_maildesk_env(monkeypatch)
    env = {
        "MAILDESK_DATA_DIR": str(tmp_path / "data"),
        # INFO would add alembic's migration chatter; these tests look at our own output.
        "MAILDESK_LOG_LEVEL": "WARNING",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def db_env(
    base_env: dict[str, str], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """``base_env`` on the database of ``db_url`` (both backends)."""
    monkeypatch.setenv("MAILDESK_DATABASE_URL", db_url)
    return {**base_env, "MAILDESK_DATABASE_URL": db_url}


@pytest.fixture
def cli_env(
    db_env: dict[str, str], google: Sim, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The whole environment of a MailDesk on ``db_url`` that talks to the simulator."""
    env = {
        **db_env,
        "MAILDESK_GOOGLE_CLIENT_ID": CLIENT_ID,
        "MAILDESK_GOOGLE_CLIENT_SECRET": CLIENT_SECRET,
        "MAILDESK_GOOGLE_TOKEN_URL": f"{google.url}/token",
        "MAILDESK_GOOGLE_REVOKE_URL": f"{google.url}/revoke",
        "MAILDESK_GOOGLE_AUTHORIZE_URL": f"{google.url}/o/oauth2/v2/auth",
        "MAILDESK_GMAIL_API_URL": google.url,
        "MAILDESK_PREFETCH_BODIES": "5",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``maildesk ARGV`` in-process; exit code and what it printed."""

    def run(*argv: str) -> Result:
        capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse exits by itself on bad arguments
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def assert_error(result: Result, code: int, *fragments: str) -> str:
    """Failed with ``code`` and exactly one line on stderr (containing every fragment)."""
    assert result.code == code, result
    assert "Traceback" not in result.err + result.out
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    line = lines[0]
    assert line.startswith("maildesk"), line
    for fragment in fragments:
        assert fragment.lower() in line.lower(), (fragment, line)
    return line


def assert_ok(result: Result) -> Result:
    assert result.code == 0, result
    assert result.err == "", result.err
    return result


def maildesk_script() -> str:
    """The installed console script of the interpreter running the tests."""
    beside = Path(sys.executable).parent / "maildesk"
    found = str(beside) if beside.exists() else shutil.which("maildesk")
    assert found, "the maildesk console script is not installed"
    return found


def run_script(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAILDESK_")}
    return subprocess.run(
        [maildesk_script(), *argv], env={**clean, **env}, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=60, check=False,
    )


def count_rows(db_url: str, account_id: int | None = None) -> tuple[int, int]:
    """(messages, folders) in the store, of one account or all."""

    async def count() -> tuple[int, int]:
        db = Database(db_url)
        try:
            async with db.read() as conn:
                m = select(func.count()).select_from(messages)
                f = select(func.count()).select_from(folders)
                if account_id is not None:
                    m = m.where(messages.c.account_id == account_id)
                    f = f.where(folders.c.account_id == account_id)
                return int(await conn.scalar(m) or 0), int(await conn.scalar(f) or 0)
        finally:
            await db.dispose()

    return asyncio.run(count())


# ------------------------------------------------------------------------------ bad arguments
BAD_ARGUMENTS = [
    pytest.param(["frobnicate"], "invalid choice", id="unknown-command"),
    pytest.param([], "required", id="no-command"),
    pytest.param(["account"], "required", id="no-subcommand"),
    pytest.param(["user", "create", "--email", "a@example.com"], "--password",
                 id="missing-required-option"),
    pytest.param(["serve", "--port", "abc"], "'abc'", id="port-not-a-number"),
    pytest.param(["account", "list", "--jsn"], "--jsn", id="unknown-option"),
    pytest.param(["account", "sync"], "account", id="missing-argument"),
]


@pytest.mark.parametrize(("argv", "fragment"), BAD_ARGUMENTS)
def test_bad_arguments_are_one_line_and_exit_2(
    base_env: dict[str, str], cli: Cli, argv: list[str], fragment: str
) -> None:
    result = cli(*argv)
    assert_error(result, 2, "error:", fragment)
    assert result.out == ""


def test_bad_arguments_through_the_console_script(base_env: dict[str, str]) -> None:
    # The real exit status and stderr of the installed script (the others run in-process).
    proc = run_script(base_env, "serve", "--port", "abc")
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    assert_error(result, 2, "maildesk serve: error:", "invalid int value: 'abc'")


# ------------------------------------------------------------------------------ settings
def test_settings_json_masks_secrets(
    base_env: dict[str, str], cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILDESK_SECRET_KEY", "sk-newest,sk-older")
    monkeypatch.setenv("MAILDESK_GOOGLE_CLIENT_SECRET", "google-shh")
    monkeypatch.setenv("MAILDESK_GOOGLE_CLIENT_ID", "visible-client-id")
    monkeypatch.setenv("MAILDESK_POLL_INTERVAL", "60")
    monkeypatch.setenv("MAILDESK_DATABASE_URL", "postgresql+asyncpg://md:pg-shh@db:5432/md")
    result = assert_ok(cli("settings", "--json"))
    shown = result.json()
    assert shown["MAILDESK_SECRET_KEY"] == "***"
    assert shown["MAILDESK_GOOGLE_CLIENT_SECRET"] == "***"
    assert shown["MAILDESK_MICROSOFT_CLIENT_SECRET"] == ""  # unset: shown as unset
    assert shown["MAILDESK_GOOGLE_CLIENT_ID"] == "visible-client-id"
    assert shown["MAILDESK_POLL_INTERVAL"] == "60.0"
    assert shown["MAILDESK_DATA_DIR"] == base_env["MAILDESK_DATA_DIR"]
    assert shown["MAILDESK_DATABASE_URL"] == "postgresql+asyncpg://md:***@db:5432/md"
    for secret in ("sk-newest", "sk-older", "google-shh", "pg-shh"):
        assert secret not in result.out

    text = assert_ok(cli("settings")).out
    assert "MAILDESK_SECRET_KEY=***" in text.splitlines()
    assert "google-shh" not in text
    assert "pg-shh" not in text


def test_rotate_secrets_re_encrypts_every_stored_secret_with_the_newest_key(
    db_env: dict[str, str], db_url: str, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every secret column: the refresh token, the IMAP password and the Graph clientState.
    plain = {"refresh_token_enc": "rt-plain", "password_enc": "pw-plain",
             "client_state_enc": "cs-plain"}
    old, new = SecretBox(["key-old"]), SecretBox(["key-new"])
    monkeypatch.setenv("MAILDESK_SECRET_KEY", "key-old")
    assert_ok(cli("migrate"))

    async def seed() -> None:
        db = Database(db_url)
        try:
            async with db.transaction() as conn:
                now = datetime.now(UTC)
                account_id = await account_store.create(
                    conn, provider=ProviderKind.OUTLOOK, email=ALICE, now=now,
                    refresh_token_enc=old.encrypt(plain["refresh_token_enc"]),
                    password_enc=old.encrypt(plain["password_enc"]))
                await push_store.upsert(
                    conn, account_id=account_id, provider=ProviderKind.OUTLOOK, now=now,
                    client_state_enc=old.encrypt(plain["client_state_enc"]))
        finally:
            await db.dispose()

    async def stored() -> dict[str, str]:
        db = Database(db_url)
        try:
            async with db.read() as conn:
                account = (await conn.execute(select(
                    accounts.c.refresh_token_enc, accounts.c.password_enc))).one()
                state = await conn.scalar(select(push_subscriptions.c.client_state_enc))
        finally:
            await db.dispose()
        return {"refresh_token_enc": account.refresh_token_enc,
                "password_enc": account.password_enc, "client_state_enc": str(state)}

    asyncio.run(seed())
    monkeypatch.setenv("MAILDESK_SECRET_KEY", "key-new,key-old")
    result = assert_ok(cli("rotate-secrets"))
    assert result.out.strip() == "re-encrypted 3 stored secrets with the newest key"
    rotated = asyncio.run(stored())
    for column, secret in plain.items():
        assert new.decrypt(rotated[column]) == secret, column  # the old key can now be dropped
        with pytest.raises(ConfigError):
            old.decrypt(rotated[column])


def test_settings_from_a_config_file_with_the_environment_winning(
    base_env: dict[str, str], cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "maildesk.toml"
    path.write_text('port = 9100\nhost = "0.0.0.0"\n')
    monkeypatch.setenv("MAILDESK_PORT", "9200")
    shown = assert_ok(cli("--config", str(path), "settings", "--json")).json()
    assert shown["MAILDESK_PORT"] == "9200"
    assert shown["MAILDESK_HOST"] == "0.0.0.0"  # noqa: S104 - a displayed value


def test_a_bad_setting_is_one_line_naming_it(
    base_env: dict[str, str], cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILDESK_POLL_INTERVAL", "soon")
    assert_error(cli("account", "list"), 1, "MAILDESK_POLL_INTERVAL")
    monkeypatch.setenv("MAILDESK_POLL_INTERVAL", "60")
    monkeypatch.setenv("MAILDESK_BASE_URL", "https://mail.example.com/")
    assert_error(cli("settings"), 1, "MAILDESK_BASE_URL", "slash")


def test_an_unknown_key_in_the_config_file_is_one_line(
    base_env: dict[str, str], cli: Cli, tmp_path: Path
) -> None:
    path = tmp_path / "maildesk.toml"
    path.write_text("prot = 9100\n")
    assert_error(cli("--config", str(path), "settings"), 1, "MAILDESK_PROT", "unknown")


# ------------------------------------------------------------------------------ migrate
def test_migrate_creates_the_default_sqlite_store(base_env: dict[str, str], cli: Cli) -> None:
    data_dir = Path(base_env["MAILDESK_DATA_DIR"])
    assert not data_dir.exists()
    first = assert_ok(cli("migrate")).out
    assert first.startswith("database at revision ")
    assert (data_dir / "maildesk.db").is_file()
    assert assert_ok(cli("migrate")).out == first  # idempotent
    assert assert_ok(cli("account", "list", "--json")).json() == []


def test_migrate_on_each_backend(db_env: dict[str, str], cli: Cli) -> None:
    out = assert_ok(cli("migrate")).out
    revision = out.strip().removeprefix("database at revision ")
    assert revision, out
    assert revision != "None", out
    assert assert_ok(cli("migrate")).out == out


def test_every_listing_command_takes_json(db_env: dict[str, str], cli: Cli) -> None:
    # DESIGN.md §7: scripts rely on --json of account list, push status and jobs.
    for command in (["account", "list"], ["push", "status"], ["jobs"]):
        assert assert_ok(cli(*command, "--json")).json() == [], command
        assert assert_ok(cli(*command)).out.strip() == "(none)", command


# ------------------------------------------------------------------------------ users
def _users(db_url: str) -> list[user_store.UserRow]:
    async def load() -> list[user_store.UserRow]:
        db = Database(db_url)
        try:
            async with db.read() as conn:
                return await user_store.list_all(conn)
        finally:
            await db.dispose()

    return asyncio.run(load())


def test_user_create(db_env: dict[str, str], cli: Cli) -> None:
    out = assert_ok(cli("user", "create", "--email", "Admin@Example.com",
                        "--password", "correct horse", "--admin")).out
    assert out.startswith("created admin admin@example.com (id ")
    out = assert_ok(cli("user", "create", "--email", "bob@example.com",
                        "--password", "battery staple")).out
    assert out.startswith("created user bob@example.com (id ")

    users = {u.email: u for u in _users(db_env["MAILDESK_DATABASE_URL"])}
    assert set(users) == {"admin@example.com", "bob@example.com"}
    assert users["admin@example.com"].is_admin
    assert not users["bob@example.com"].is_admin
    assert verify_password(users["bob@example.com"].password_hash, "battery staple")
    assert "battery staple" not in users["bob@example.com"].password_hash


def test_user_create_refusals(db_env: dict[str, str], cli: Cli) -> None:
    db_url = db_env["MAILDESK_DATABASE_URL"]
    short = cli("user", "create", "--email", "bob@example.com", "--password", "short")
    assert_error(short, 1, "password", "at least 8")
    assert short.out == ""
    assert_error(cli("user", "create", "--email", "bob", "--password", "long enough"), 1,
                 "not an email address")
    assert _users(db_url) == []

    assert_ok(cli("user", "create", "--email", "bob@example.com", "--password", "long enough"))
    duplicate = cli("user", "create", "--email", "BOB@example.com", "--password", "other one")
    assert_error(duplicate, 1, "bob@example.com", "already exists")
    assert [u.email for u in _users(db_url)] == ["bob@example.com"]


# ------------------------------------------------------------------------------ accounts
def test_the_account_lifecycle(
    cli_env: dict[str, str], google: Sim, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_url = cli_env["MAILDESK_DATABASE_URL"]
    token = google.grant(ALICE)
    google.seed(ALICE, SEEDED)

    added = assert_ok(cli("account", "add-gmail", "--email", ALICE, "--refresh-token", token))
    assert added.out.startswith(f"connected {ALICE} as account ")
    assert token not in added.out
    twice = cli("account", "add-gmail", "--email", ALICE, "--refresh-token", google.grant(ALICE))
    assert_error(twice, 1, "already exists")

    # Before the first sync.
    [before] = assert_ok(cli("account", "list", "--json")).json()
    account_id = before["id"]
    assert before == {
        "id": account_id, "provider": "gmail", "email": ALICE, "state": "new",
        "last_error": None, "messages": 0, "folders": 0, "last_sync_at": None,
        "backfill_done": False, "backfill_fetched": 0,
    }
    table = assert_ok(cli("account", "list")).out.splitlines()
    assert table[0].split()[:7] == ["ID", "PROVIDER", "EMAIL", "STATE", "MESSAGES", "FOLDERS",
                                    "LAST_SYNC_AT"]
    assert table[1].split()[:6] == [str(account_id), "gmail", ALICE, "new", "0", "0"]
    assert assert_ok(cli("jobs", "--json")).json() == []

    # Sync by id: everything arrives.
    synced = assert_ok(cli("account", "sync", str(account_id))).out
    assert synced.startswith(f"account {account_id} ({ALICE}): ok added={SEEDED} ")
    [after] = assert_ok(cli("account", "list", "--json")).json()
    assert after["state"] == "ok"
    assert after["last_error"] is None
    assert after["messages"] == SEEDED
    assert after["folders"] == count_rows(db_url, account_id)[1] > 0
    last_sync = datetime.fromisoformat(after["last_sync_at"])
    assert abs(datetime.now(UTC) - last_sync) < timedelta(minutes=5)
    row = assert_ok(cli("account", "list")).out.splitlines()[1].split()
    assert row[3:6] == ["ok", str(SEEDED), str(after["folders"])]
    assert row[6] == last_sync.strftime("%Y-%m-%d")

    # Sync by email address: only what is new.
    google.deliver(ALICE, "one more")
    synced = assert_ok(cli("account", "sync", ALICE)).out
    assert synced.startswith(f"account {account_id} ({ALICE}): ok added=1 ")
    [again] = assert_ok(cli("account", "list", "--json")).json()
    assert again["messages"] == SEEDED + 1
    assert datetime.fromisoformat(again["last_sync_at"]) >= last_sync

    # The sync job's last run.
    [job] = assert_ok(cli("jobs", "--json")).json()
    assert job["job"] == "sync"
    assert job["status"] == "ok"
    assert job["error"] is None
    assert isinstance(job["duration_ms"], int)
    assert job["duration_ms"] >= 0
    assert job["detail"].startswith("added=1 ")
    assert job["runs_kept"] == 2
    assert datetime.fromisoformat(job["last_run"]) >= last_sync
    jobs_table = assert_ok(cli("jobs")).out.splitlines()
    assert jobs_table[0].split()[:4] == ["JOB", "LAST_RUN", "DURATION_MS", "STATUS"]
    assert jobs_table[1].split()[0] == "sync"
    assert jobs_table[1].split()[4] == "ok"

    # Remove: refused without --yes when nobody can be asked...
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    refused = cli("account", "remove", str(account_id))
    assert_error(refused, 1, "--yes")
    assert len(assert_ok(cli("account", "list", "--json")).json()) == 1
    assert count_rows(db_url, account_id)[0] == SEEDED + 1

    # ...and done with it: the account and all its mail are gone.
    removed = assert_ok(cli("account", "remove", ALICE, "--yes")).out
    assert removed.startswith(f"removed account {account_id} ({ALICE})")
    assert assert_ok(cli("account", "list", "--json")).json() == []
    assert count_rows(db_url) == (0, 0)
    assert assert_ok(cli("account", "list")).out.strip() == "(none)"


class _Terminal(io.StringIO):
    """A stdin that claims to be a terminal, with the operator's answer typed in."""

    def isatty(self) -> bool:
        return True


def test_remove_asks_on_a_terminal(
    db_env: dict[str, str], cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --no-verify stores the token without asking the provider: nothing to sync here.
    assert_ok(cli("account", "add-gmail", "--email", ALICE, "--refresh-token", "1//x",
                  "--no-verify"))
    for answer in ("n\n", "\n", "whatever\n"):
        monkeypatch.setattr(sys, "stdin", _Terminal(answer))
        result = cli("account", "remove", ALICE)
        assert result.code == 1, answer
        assert f"Remove {ALICE} (account " in result.out
        assert "nothing removed" in result.out
        assert [a["email"] for a in assert_ok(cli("account", "list", "--json")).json()] == [ALICE]

    monkeypatch.setattr(sys, "stdin", _Terminal("y\n"))
    result = assert_ok(cli("account", "remove", ALICE))
    assert "removed account" in result.out
    assert assert_ok(cli("account", "list", "--json")).json() == []


def test_add_gmail_refuses_tokens_it_cannot_use(
    cli_env: dict[str, str], google: Sim, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    revoked = google.grant(ALICE)
    google.revoke(revoked)
    line = assert_error(cli("account", "add-gmail", "--email", ALICE, "--refresh-token", revoked),
                        1, "expired or revoked")
    assert revoked not in line

    unknown = cli("account", "add-gmail", "--email", ALICE, "--refresh-token", "1//made-up")
    assert_error(unknown, 1, "expired or revoked")

    someone_else = google.grant("mallory@example.com")
    assert_error(cli("account", "add-gmail", "--email", ALICE, "--refresh-token", someone_else),
                 1, "mallory@example.com", ALICE)

    monkeypatch.setenv("MAILDESK_GOOGLE_CLIENT_SECRET", "not-the-secret")
    line = assert_error(cli("account", "add-gmail", "--email", ALICE, "--refresh-token",
                            google.grant(ALICE)), 1, "MAILDESK_GOOGLE_CLIENT_SECRET")
    assert "not-the-secret" not in line

    assert assert_ok(cli("account", "list", "--json")).json() == []


def test_a_sync_whose_grant_was_revoked_fails_and_says_so(
    cli_env: dict[str, str], google: Sim, cli: Cli
) -> None:
    token = google.grant(ALICE)
    assert_ok(cli("account", "add-gmail", "--email", ALICE, "--refresh-token", token))
    google.revoke(token)
    result = cli("account", "sync", ALICE)
    assert result.code == 1
    assert "reauth_required" in result.out
    assert "Traceback" not in result.out + result.err
    [account] = assert_ok(cli("account", "list", "--json")).json()
    assert account["state"] == "reauth_required"
    assert "expired or revoked" in account["last_error"]
    [job] = assert_ok(cli("jobs", "--json")).json()
    assert (job["job"], job["status"]) == ("sync", "failed")
    assert "oauth_invalid" in job["error"]


def test_an_unknown_account_is_one_line_and_exit_1(db_env: dict[str, str], cli: Cli) -> None:
    for ref in ("999", "nobody@example.com"):
        assert_error(cli("account", "sync", ref), 1, "no account", ref)
        assert_error(cli("account", "remove", ref, "--yes"), 1, "no account", ref)


# ------------------------------------------------------------------------------ console script
def test_the_console_script_syncs_a_mailbox(
    cli_env: dict[str, str], google: Sim, cli: Cli
) -> None:
    # Another process, reaching the simulator over HTTP and the database on its own.
    google.seed(ALICE, 25)
    assert_ok(cli("account", "add-gmail", "--email", ALICE, "--refresh-token", google.grant(ALICE)))

    synced = run_script(cli_env, "account", "sync", ALICE)
    assert (synced.returncode, synced.stderr) == (0, ""), synced
    assert "ok added=25 " in synced.stdout
    listed = run_script(cli_env, "account", "list", "--json")
    assert (listed.returncode, listed.stderr) == (0, ""), listed
    [account] = json.loads(listed.stdout)
    assert (account["email"], account["state"], account["messages"]) == (ALICE, "ok", 25)


# ------------------------------------------------------------------------------ bad environments
def test_an_unreachable_database_is_one_line(
    base_env: dict[str, str], cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Port 1 on loopback: refused at once, no server there.
    monkeypatch.setenv("MAILDESK_DATABASE_URL", "postgresql+asyncpg://maildesk@127.0.0.1:1/x")
    assert_error(cli("account", "list"), 1, "database")


def test_a_data_dir_that_is_a_file_is_one_line_naming_it(
    base_env: dict[str, str], cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv("MAILDESK_DATA_DIR", str(not_a_folder))
    assert_error(cli("account", "list"), 1, "MAILDESK_DATA_DIR")
