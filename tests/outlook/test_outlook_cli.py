"""The Outlook commands as an operator runs them: `account add-outlook`, `account sync`,
`push outlook enable|disable` and `push status`, against the Microsoft simulator over real
loopback HTTP, with `maildesk serve` running so Graph's validation handshake reaches it."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from maildesk.sim.microsoft import create_microsoft_app
from maildesk.sim.microsoft_state import MicrosoftState
from tests.support.harness import CLIENT_ID, CLIENT_SECRET
from tests.support.ports import free_port
from tests.support.sim_thread import ThreadedServer, serve_in_thread
from tests.test_cli import Cli, assert_error, assert_ok, maildesk_script

OLIVIA = "olivia@example.com"


@pytest.fixture
def microsoft() -> Iterator[tuple[MicrosoftState, ThreadedServer]]:
    state = MicrosoftState(notify_backoff_scale=0.01)
    state.register_app(CLIENT_ID, CLIENT_SECRET)
    with serve_in_thread(create_microsoft_app(state, deliver_notifications=True)) as server:
        yield state, server


@pytest.fixture
def outlook_env(
    db_env: dict[str, str], microsoft: tuple[MicrosoftState, ThreadedServer],
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    _, server = microsoft
    port = free_port()
    env = {
        **db_env,
        "MAILDESK_MICROSOFT_CLIENT_ID": CLIENT_ID,
        "MAILDESK_MICROSOFT_CLIENT_SECRET": CLIENT_SECRET,
        "MAILDESK_MICROSOFT_AUTHORITY_URL": server.url,
        "MAILDESK_GRAPH_API_URL": f"{server.url}/v1.0",
        "MAILDESK_BASE_URL": f"http://127.0.0.1:{port}",
        "MAILDESK_PORT": str(port),
        "MAILDESK_ALLOW_LOOPBACK_WEBHOOKS": "true",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def served(outlook_env: dict[str, str]) -> Iterator[str]:
    """`maildesk serve` on the same settings, until the test ends."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAILDESK_")}
    proc = subprocess.Popen([maildesk_script(), "serve"], env={**clean, **outlook_env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = outlook_env["MAILDESK_BASE_URL"]
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "maildesk serve did not come up"
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stderr is not None:
            proc.stderr.close()


def test_outlook_from_the_command_line(
    served: str, microsoft: tuple[MicrosoftState, ThreadedServer], cli: Cli
) -> None:
    state, server = microsoft
    server.call(state.ensure_mailbox, OLIVIA)
    server.call(state.seed_mailbox, OLIVIA, 40)
    token = server.call(state.grant, OLIVIA, CLIENT_ID)

    added = assert_ok(cli("account", "add-outlook", "--email", OLIVIA, "--refresh-token", token))
    assert added.out.startswith(f"connected {OLIVIA} as account ")
    assert token not in added.out
    # The server's worker, woken by the connect over LISTEN/NOTIFY on PostgreSQL, may run the
    # initial sync first; `account sync` then waits for it and runs its own: 40 either way.
    synced = assert_ok(cli("account", "sync", OLIVIA)).out
    assert f"({OLIVIA}): ok added=" in synced
    [listed] = assert_ok(cli("account", "list", "--json")).json()
    assert (listed["email"], listed["messages"]) == (OLIVIA, 40)

    enabled = assert_ok(cli("push", "outlook", "enable", OLIVIA)).out
    [sub] = server.call(lambda: list(state.subscriptions.by_id.values()))
    assert enabled.startswith(f"Outlook push active for {OLIVIA}: subscription {sub.id}")
    assert sub.client_state
    assert sub.client_state not in enabled
    [row] = assert_ok(cli("push", "status", "--json")).json()
    assert (row["provider"], row["state"], row["email"]) == ("outlook", "active", OLIVIA)
    assert sub.client_state not in str(row)

    stopped = assert_ok(cli("push", "outlook", "disable", OLIVIA)).out
    assert "Outlook push stopped" in stopped
    assert server.call(lambda: dict(state.subscriptions.by_id)) == {}
    [row] = assert_ok(cli("push", "status", "--json")).json()
    assert row["state"] == "stopped"


def test_add_outlook_refuses_a_dead_grant(
    outlook_env: dict[str, str], microsoft: tuple[MicrosoftState, ThreadedServer], cli: Cli
) -> None:
    state, server = microsoft
    server.call(state.ensure_mailbox, OLIVIA)
    token = server.call(state.grant, OLIVIA, CLIENT_ID)
    server.call(state.revoke, OLIVIA, code="70008")
    assert_error(cli("account", "add-outlook", "--email", OLIVIA, "--refresh-token", token),
                 1, "70008")
    assert assert_ok(cli("account", "list", "--json")).json() == []
