"""`maildesk demo`, the README's run command, as a user runs it: a real process on a free port."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.ports import free_port

MAILDESK = str(Path(sys.executable).parent / "maildesk")


def test_demo_syncs_both_seeded_mailboxes_and_new_mail_arrives_by_push(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILDESK_")}
    demo = subprocess.Popen(
        [MAILDESK, "demo", "--data-dir", str(data), "--port", str(port), "--messages", "40",
         "--interval", "0.4", "--duration", "12"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert demo.stdout is not None
        banner = demo.stdout.readline()
        assert banner.startswith("MailDesk demo: "), banner
        credentials = demo.stdout.readline()
        found = re.match(r"Sign in as (\S+) with password (\S+) ", credentials)
        assert found is not None, credentials
        email, password = found.groups()
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=5) as browser:
            # The URL is printed only once the web server listens: it opens at once.
            assert browser.get("/healthz").status_code == 200
            # Sign-in is required, as under `maildesk serve`.
            assert browser.get("/mailboxes/1").status_code == 303
            form = browser.get("/signin").text
            token = re.search(r'name="csrf_token" value="([^"]+)"', form)
            assert token is not None
            wrong = browser.post("/signin", data={"csrf_token": token.group(1), "email": email,
                                                  "password": password + "x"})
            assert wrong.status_code == 400
            signed_in = browser.post("/signin", data={
                "csrf_token": token.group(1), "email": email, "password": password,
                "next": "/mailboxes/1"})
            assert signed_in.status_code == 303, signed_in.text
            page = ""
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                page = browser.get("/mailboxes/1").text
                if "Inbox" in page:
                    break
                time.sleep(0.2)
            assert "Inbox" in page, "the live inbox is served"
            assert "Jobs" in browser.get("/admin/jobs").text, "the demo user is an admin"
        out, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    assert demo.returncode == 0, err[-2000:]
    arrivals = [line for line in out.splitlines() if line.startswith("arrived ")]
    assert len(arrivals) >= 5, out

    listed = subprocess.run([MAILDESK, "account", "list", "--json"], capture_output=True,
                            text=True, env={**env, "MAILDESK_DATA_DIR": str(data)}, timeout=60)
    assert listed.returncode == 0, listed.stderr
    by_provider = {a["provider"]: a for a in json.loads(listed.stdout)}
    assert sorted(by_provider) == ["gmail", "outlook"]
    assert all(a["state"] == "ok" for a in by_provider.values()), by_provider
    assert by_provider["gmail"]["messages"] >= 40
    assert by_provider["outlook"]["messages"] >= 20, "the seeded Outlook mailbox synced"
    assert (by_provider["gmail"]["messages"] + by_provider["outlook"]["messages"]
            >= 60 + len(arrivals) - 5), "arrivals went to both mailboxes (some later binned)"
    pushed = subprocess.run([MAILDESK, "push", "status", "--json"], capture_output=True,
                            text=True, env={**env, "MAILDESK_DATA_DIR": str(data)}, timeout=60)
    pushes = {p["provider"]: p for p in json.loads(pushed.stdout)}
    assert sorted(pushes) == ["gmail", "outlook"]
    for push in pushes.values():
        assert push["state"] == "active", push
        assert push["last_notification_at"] is not None, f"mail arrived through {push} push"
