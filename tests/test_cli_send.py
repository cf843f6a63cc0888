"""The sending commands as an operator runs them: `send`, `reply`, `forward`, `outbox` and
`outbox-retry`, from a Gmail mailbox on the Google simulator served over loopback HTTP (see
tests/test_cli.py for how the sync tests, the CLI's own loop and the simulator fit together)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import io
import re
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.store.database import Database
from maildesk.store.tables import messages
from tests import test_cli as cli_tests
from tests.test_cli import Cli, Result, Sim, assert_error, assert_ok

# The fixtures of tests/test_cli.py, under their names here (pytest finds a module's fixtures
# among its attributes).
base_env = cli_tests.base_env
db_env = cli_tests.db_env
cli_env = cli_tests.cli_env
google = cli_tests.google
cli = cli_tests.cli

DESK = "desk@example.com"
BOB = "bob@example.org"
CAROL = "carol@example.org"
_OUTCOME = re.compile(r"^outbox (\d+): sent \(Message-ID (<[^>]+>)\)$")


def sent_copies(google: Sim) -> dict[str, EmailMessage]:
    """The simulator's SENT messages of the mailbox, by Message-ID."""

    def collect() -> list[bytes]:
        return [m.raw() for m in google.state.mailbox(DESK).all_messages()
                if "SENT" in m.label_ids]

    found: dict[str, EmailMessage] = {}
    for raw in google.server.call(collect):
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        found[str(parsed["Message-ID"])] = parsed
    return found


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def message_id(db_url: str, subject: str) -> int:
    async def find() -> int:
        db = Database(db_url)
        try:
            async with db.read() as conn:
                found = await conn.scalar(select(messages.c.id).where(
                    messages.c.subject == subject))
        finally:
            await db.dispose()
        assert found is not None, subject
        return int(found)

    return asyncio.run(find())


@pytest.fixture
def desk(cli_env: dict[str, str], google: Sim, cli: Cli) -> str:
    """A synced mailbox holding Bob's "Plans?" (to it and Carol); its account id."""
    token = google.grant(DESK)  # creates the mailbox
    google.server.call(google.state.add_message, DESK, subject="Plans?",
                       sender=f"Bob <{BOB}>", to=f"{DESK}, Carol <{CAROL}>", text="Friday?",
                       html="", message_id_header="<plans@example.org>")
    added = assert_ok(cli("account", "add-gmail", "--email", DESK, "--refresh-token", token))
    account = added.out.split(" as account ")[1].split(";")[0]
    assert_ok(cli("account", "sync", account))
    return account


def sent_line(result: Result) -> tuple[int, str]:
    """The outbox id and Message-ID of a ``sent`` outcome line."""
    assert_ok(result)
    found = _OUTCOME.match(result.out.strip())
    assert found is not None, result.out
    return int(found.group(1)), found.group(2)


def test_send_reply_forward_and_the_outbox(
    desk: str, google: Sim, cli: Cli, cli_env: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, first_id = sent_line(cli(
        "send", DESK, "--to", f"Bob <{BOB}>", "--to", "dora@example.org", "--cc", CAROL,
        "--bcc", "hidden@example.net", "--subject", "Numbers", "--text", "Here they are."))
    copy = sent_copies(google)[first_id]
    assert copy["Subject"] == "Numbers"
    assert {a.addr_spec for a in copy["To"].addresses} == {BOB, "dora@example.org"}
    assert [a.addr_spec for a in copy["Cc"].addresses] == [CAROL]
    assert text_of(copy).startswith("Here they are.")

    plans = message_id(cli_env["MAILDESK_DATABASE_URL"], "Plans?")
    reply_file = tmp_path / "reply.txt"
    reply_file.write_text("Friday works.\nSee you — Åsa\n", encoding="utf-8")
    _, reply_id = sent_line(cli("reply", str(plans), "--all", "--text-file", str(reply_file)))
    copy = sent_copies(google)[reply_id]
    assert copy["Subject"] == "Re: Plans?"
    assert copy["In-Reply-To"] == "<plans@example.org>"
    everyone = {a.addr_spec for a in copy["To"].addresses}
    everyone |= {a.addr_spec for a in copy["Cc"].addresses} if copy["Cc"] else set()
    assert everyone == {BOB, CAROL}
    assert text_of(copy).startswith("Friday works.\nSee you — Åsa\n\n")
    assert "> Friday?" in text_of(copy)

    monkeypatch.setattr(sys, "stdin", io.StringIO("FYI, from stdin"))
    _, forward_id = sent_line(cli("forward", str(plans), "--to", "erin@example.org",
                                  "--text-file", "-"))
    copy = sent_copies(google)[forward_id]
    assert copy["Subject"] == "Fwd: Plans?"
    assert [a.addr_spec for a in copy["To"].addresses] == ["erin@example.org"]
    assert text_of(copy).startswith("FYI, from stdin\n\n")
    assert "Friday?" in text_of(copy)

    listed = assert_ok(cli("outbox", desk, "--json")).json()
    assert {i["message_id_header"] for i in listed} == {first_id, reply_id, forward_id}
    assert {i["state"] for i in listed} == {"sent"}
    [numbers] = [i for i in listed if i["id"] == first]
    assert numbers["subject"] == "Numbers"
    assert numbers["error"] is None
    table = assert_ok(cli("outbox", DESK)).out.splitlines()
    assert table[0].split() == ["ID", "STATE", "CREATED", "TO", "SUBJECT", "ATTEMPTS",
                                "NEXT_ATTEMPT", "ERROR"]
    assert len(table) == 4
    assert any(line.split()[:2] == [str(first), "sent"] and "Numbers" in line
               for line in table[1:])


def test_a_failed_send_is_one_line_and_exit_1_then_retried(
    desk: str, google: Sim, cli: Cli
) -> None:
    google.server.call(google.state.add_fault, path="/messages/send$", method="POST",
                       status=400)
    failed = cli("send", desk, "--to", BOB, "--subject", "Budget", "--text", "Final.")
    line = assert_error(failed, 1, "failed", "kept in Drafts", "maildesk outbox-retry")
    outbox_id = int(re.search(r"outbox (\d+): failed", line).group(1))  # type: ignore[union-attr]
    assert failed.out == ""
    assert sent_copies(google) == {}
    [item] = assert_ok(cli("outbox", desk, "--json")).json()
    assert (item["id"], item["state"]) == (outbox_id, "failed")
    assert item["error"]

    google.server.call(google.state.clear_faults)
    again_id, message = sent_line(cli("outbox-retry", str(outbox_id)))
    assert again_id == outbox_id
    assert list(sent_copies(google)) == [item["message_id_header"]] == [message]
    assert_error(cli("outbox-retry", str(outbox_id)), 1, "sent already")
    assert len(sent_copies(google)) == 1


def test_a_transient_failure_says_when_it_retries(desk: str, google: Sim, cli: Cli) -> None:
    google.server.call(google.state.add_fault, path="/messages/send$", method="POST",
                       status=503)
    result = assert_ok(cli("send", desk, "--to", BOB, "--subject", "Later", "--text", "x"))
    assert re.fullmatch(r"outbox \d+: not sent yet \(.+\); retrying at "
                        r"\d{4}-\d\d-\d\d \d\d:\d\d UTC \(Message-ID <[^>]+>\)\n", result.out)
    assert sent_copies(google) == {}
    [item] = assert_ok(cli("outbox", desk, "--json")).json()
    assert item["state"] == "retrying"
    assert item["next_attempt_at"] is not None


BAD_ARGUMENTS = [
    pytest.param(["send", DESK, "--subject", "s", "--text", "t"], "--to", id="send-no-to"),
    pytest.param(["send", DESK, "--to", BOB, "--text", "t"], "--subject", id="send-no-subject"),
    pytest.param(["send", DESK, "--to", BOB, "--subject", "s"], "--text", id="send-no-text"),
    pytest.param(["send", DESK, "--to", BOB, "--subject", "s", "--text", "t", "--text-file",
                  "f"], "not allowed with", id="send-two-texts"),
    pytest.param(["reply", "abc", "--text", "t"], "'abc'", id="reply-id-not-a-number"),
    pytest.param(["reply", "1"], "--text", id="reply-no-text"),
    pytest.param(["forward", "1", "--text", "t"], "--to", id="forward-no-to"),
    pytest.param(["outbox"], "account", id="outbox-no-account"),
    pytest.param(["outbox-retry", "x"], "'x'", id="retry-id-not-a-number"),
]


@pytest.mark.parametrize(("argv", "fragment"), BAD_ARGUMENTS)
def test_bad_arguments_exit_2_with_one_line(cli: Cli, argv: list[str], fragment: str) -> None:
    result = cli(*argv)
    assert_error(result, 2, fragment)


def test_failures_are_one_line_and_exit_1(
    desk: str, google: Sim, cli: Cli, tmp_path: Path
) -> None:
    assert_error(cli("send", "nobody@example.com", "--to", BOB, "--subject", "s", "--text",
                     "t"), 1, "nobody@example.com")
    assert_error(cli("send", desk, "--to", "not an address", "--subject", "s", "--text", "t"),
                 1, "to:")
    assert_error(cli("send", desk, "--to", BOB, "--subject", "s", "--text-file",
                     str(tmp_path / "missing.txt")), 1, "--text-file", "missing.txt")
    assert_error(cli("reply", "999999", "--text", "t"), 1, "no message with id 999999")
    assert_error(cli("forward", "999999", "--to", BOB, "--text", "t"), 1, "999999")
    assert_error(cli("outbox-retry", "999999"), 1, "999999")
    assert_error(cli("outbox", "nobody@example.com"), 1, "nobody@example.com")
    assert sent_copies(google) == {}
