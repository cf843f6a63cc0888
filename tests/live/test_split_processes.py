"""The split deployment with real processes: `maildesk web` (no worker) and `maildesk worker` on
one PostgreSQL database. A Gmail push reaches the web process's webhook, which wakes the worker
process over LISTEN/NOTIFY (its tick is far too long to explain a prompt sync); the worker syncs
and its change reaches a websocket client of the web process the same way. And `maildesk web`
refuses a SQLite store.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import random
import re
import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets

from maildesk import mailboxes
from maildesk.app import run_web
from maildesk.clock import SystemClock
from maildesk.config import Settings
from maildesk.domain.accounts import GMAIL_SCOPE_FULL, ProviderKind
from maildesk.errors import ConfigError
from maildesk.passwords import hash_password
from maildesk.push.manager import gmail_push_settings
from maildesk.services import Services, open_services
from maildesk.sim.gmail_state import GoogleState
from maildesk.sim.google import create_google_app
from maildesk.sim.server import serve_app
from maildesk.store import users as user_store
from maildesk.web.auth import SESSION_COOKIE
from tests.support.ports import free_port
from tests.support.process_env import google_sim_env
from tests.test_cli import maildesk_script, run_script

EMAIL = "split@example.com"
ADMIN = "admin@split.example"
CLIENT_ID = "split-test-client"
CLIENT_SECRET = "split-test-secret"
TOPIC = "projects/proj/topics/gmail"
SIGNER = "gmail-push@proj.iam.gserviceaccount.com"
WAIT = 10.0
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _env(sim: str, db_url: str, data_dir: Path, port: int) -> dict[str, str]:
    return google_sim_env(
        sim, db_url=db_url, data_dir=data_dir, client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET, secret_key="split-test-secret-key",
        MAILDESK_HOST="127.0.0.1", MAILDESK_PORT=str(port),
        MAILDESK_BASE_URL=f"http://127.0.0.1:{port}", MAILDESK_ALLOW_LOOPBACK_WEBHOOKS="true",
        # Only a wake-up can make the worker look for the pushed mailbox within the test.
        MAILDESK_WORKER_TICK="60", MAILDESK_POLL_INTERVAL="3600", MAILDESK_IMAP_IDLE="false",
        MAILDESK_LOG_LEVEL="INFO",
    )


@contextlib.asynccontextmanager
async def _process(command: str, env: dict[str, str], ready: bytes) -> AsyncIterator[None]:
    """`maildesk COMMAND` running until the block ends (then SIGTERM: it must exit cleanly);
    entered once a log line contains ``ready``."""
    proc = await asyncio.create_subprocess_exec(
        maildesk_script(), command, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    log: list[bytes] = []
    try:
        async with asyncio.timeout(WAIT):
            while ready not in (line := await proc.stderr.readline()):
                assert line, f"`maildesk {command}` exited: {b''.join(log).decode()[-2000:]}"
                log.append(line)
        async with asyncio.TaskGroup() as group:
            # Keep reading its log so a full pipe never blocks it.
            drain = group.create_task(proc.stderr.read())
            try:
                yield
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(WAIT):
                    code = await proc.wait()
                rest = await drain
                assert code == 0, f"`maildesk {command}` exited with {code}: {rest[-2000:]!r}"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _sync_until_idle(services: Services) -> None:
    for _ in range(20):
        claims = await services.worker.claim(5)
        if not claims:
            return
        for claim in claims:
            assert (await services.runner.run(claim)).status == "ok"
    raise AssertionError("still syncing")


async def _signed_in_headers(services: Services, base: str) -> dict[str, str]:
    password = secrets.token_urlsafe(16)
    async with services.db.transaction() as conn:
        await user_store.create(conn, email=ADMIN, password_hash=hash_password(password),
                                is_admin=True, now=services.clock.now())
    async with httpx.AsyncClient(base_url=base, timeout=WAIT) as browser:
        form = await browser.get("/signin")
        token = _CSRF.search(form.text)
        assert token is not None
        answer = await browser.post("/signin", data={
            "csrf_token": html.unescape(token.group(1)), "email": ADMIN,
            "password": password, "next": "/"})
        assert answer.status_code == 303, answer.text
        cookie = browser.cookies.get(SESSION_COOKIE)
    assert cookie
    return {"Cookie": f"{SESSION_COOKIE}={cookie}", "Origin": base}


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_change_synced_by_a_worker_process_reaches_a_websocket_of_a_web_process(
    db_url: str, tmp_path: Path,
) -> None:
    google = GoogleState(clock=SystemClock(), rng=random.Random(11))
    google.create_client(CLIENT_ID, CLIENT_SECRET)
    refresh_token = google.create_grant(EMAIL, (GMAIL_SCOPE_FULL,), client_id=CLIENT_ID)
    google.seed_mailbox(EMAIL, 5)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    push_url = f"{base}/maildesk/push/gmail"
    google.pubsub.add_subscription(TOPIC, push_url, audience=push_url, service_account=SIGNER)
    google.pubsub.backoff_scale = 0.01
    async with serve_app(create_google_app(google, deliver_pushes=True)) as sim:
        env = _env(sim, db_url, tmp_path, port)
        # This test's own process sets the mailbox up: connected, synced, push on.
        async with open_services(Settings.from_env(env)) as services:
            account_id = await mailboxes.add_gmail(services, email=EMAIL,
                                                   refresh_token=refresh_token)
            await _sync_until_idle(services)
            await services.push.enable(account_id, ProviderKind.GMAIL, gmail_push_settings(
                project="proj", topic=TOPIC, audience=push_url, signers=[SIGNER]))
            async with _process("worker", env, b"started"), \
                    _process("web", env, b"listening on"):
                headers = await _signed_in_headers(services, base)
                url = f"ws://127.0.0.1:{port}/ws/mailboxes/{account_id}"
                async with websockets.connect(url, additional_headers=headers,
                                              open_timeout=WAIT) as ws:
                    hello = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
                    assert hello["kind"] == "hello"
                    google.add_message(EMAIL, subject="across processes",
                                       sender="x@example.org", to=EMAIL, text="hi", html="")
                    async with asyncio.timeout(WAIT):
                        while True:
                            frame = json.loads(await ws.recv())
                            if frame["kind"] == "added" and frame["subject"] == "across processes":
                                break
    assert frame["message_id"] > 0
    assert frame["unread"] is True


async def test_web_refuses_a_sqlite_store(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, secret_key="test-key")
    with pytest.raises(ConfigError, match="maildesk serve") as refused:
        await run_web(settings)
    assert refused.value.field == "MAILDESK_DATABASE_URL"
    assert not (tmp_path / "maildesk.db").exists(), "refused before opening anything"


def test_the_web_command_refuses_sqlite_in_one_line(tmp_path: Path) -> None:
    done = run_script({"MAILDESK_DATA_DIR": str(tmp_path)}, "web", "--port", "0")
    assert done.returncode == 1
    assert done.stderr.startswith("maildesk: error: MAILDESK_DATABASE_URL: `maildesk web` "
                                  "needs a PostgreSQL database"), done.stderr
    assert "Traceback" not in done.stderr
