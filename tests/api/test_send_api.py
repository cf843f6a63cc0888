"""Sending through the REST API: new messages, replies, forwards, the outbox and its retry,
from Gmail mailboxes on the Google simulator (which receives every ``messages.send``)."""

from __future__ import annotations

import email
import email.policy
from collections.abc import AsyncIterator
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select

from maildesk import mailboxes
from maildesk.api import tokens
from maildesk.app import create_app
from maildesk.passwords import hash_password
from maildesk.store import users as user_store
from maildesk.store.tables import account_users, messages
from tests.support.harness import Harness

DESK = "desk@example.com"
OTHER = "other@example.com"
BOB = "bob@example.org"
CAROL = "carol@example.org"


@pytest.fixture
async def api(harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(harness.services)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://maildesk") as client:
        yield client


async def _token(h: Harness, email_address: str, *, admin: bool = False,
                 shared: tuple[int, ...] = ()) -> dict[str, str]:
    async with h.services.db.transaction() as conn:
        uid = await user_store.create(conn, email=email_address, password_hash=hash_password(
            "x" * 12), is_admin=admin, now=h.clock.now())
        for account_id in shared:
            await conn.execute(insert(account_users).values(account_id=account_id, user_id=uid))
        return {"Authorization": f"Bearer {await tokens.issue(conn, email_address)}"}


async def _mailbox(h: Harness, address: str) -> tuple[int, int]:
    """A synced Gmail mailbox with Bob's "Lunch?" to it: (account id, that message's id)."""
    account_id = await h.add_gmail(address)  # no seed: SENT holds only what we send
    h.google.add_message(address, subject="Lunch?", sender=f"Bob <{BOB}>", to=address,
                         text="Noon at the usual place?", html="",
                         message_id_header=f"<lunch@{address.partition('@')[2]}>")
    await h.sync_until_idle()
    async with h.services.db.read() as conn:
        found = await conn.scalar(select(messages.c.id).where(
            messages.c.account_id == account_id, messages.c.subject == "Lunch?"))
    assert found is not None
    return account_id, int(found)


def sent_copies(h: Harness, mailbox: str) -> dict[str, EmailMessage]:
    """The Google simulator's SENT messages of ``mailbox`` by Message-ID."""
    found: dict[str, EmailMessage] = {}
    for m in h.google.mailbox(mailbox).all_messages():
        if "SENT" in m.label_ids:
            parsed = email.message_from_bytes(m.raw(), policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            found[str(parsed["Message-ID"])] = parsed
    return found


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def assert_outcome(body: dict[str, Any], state: str) -> None:
    assert set(body) == {"outbox_id", "state", "error", "local_message_id",
                         "message_id_header", "next_attempt_at"}
    assert body["state"] == state, body
    assert isinstance(body["outbox_id"], int)
    assert body["message_id_header"].startswith("<")


async def test_send_answers_202_with_the_outcome_and_lists_the_outbox(
    harness: Harness, api: httpx.AsyncClient
) -> None:
    h = harness
    account_id, _ = await _mailbox(h, DESK)
    auth = await _token(h, "u@example.com", shared=(account_id,))
    response = await api.post(f"/api/v1/accounts/{account_id}/messages", headers=auth, json={
        "to": [f"Bob <{BOB}>"], "cc": [CAROL], "bcc": ["hidden@example.net"],
        "subject": "Numbers", "text": "Here they are.\n"})
    assert response.status_code == 202, response.text
    outcome = response.json()
    assert_outcome(outcome, "sent")
    assert outcome["error"] is None
    assert outcome["next_attempt_at"] is None
    copy = sent_copies(h, DESK)[outcome["message_id_header"]]
    assert copy["Subject"] == "Numbers"
    assert [a.addr_spec for a in copy["To"].addresses] == [BOB]
    assert [a.addr_spec for a in copy["Cc"].addresses] == [CAROL]
    assert text_of(copy).startswith("Here they are.")
    # The local Sent entry is the message the outcome names.
    async with h.services.db.read() as conn:
        local = (await conn.execute(select(messages.c.subject, messages.c.message_id_header)
                                    .where(messages.c.id == outcome["local_message_id"]))).one()
    assert (local.subject, local.message_id_header) == ("Numbers",
                                                        outcome["message_id_header"])

    listed = await api.get(f"/api/v1/accounts/{account_id}/outbox", headers=auth)
    assert listed.status_code == 200
    [item] = listed.json()
    assert item["id"] == outcome["outbox_id"]
    assert item["state"] == "sent"
    assert item["subject"] == "Numbers"
    assert item["account_id"] == account_id
    assert item["message_id_header"] == outcome["message_id_header"]
    assert any(BOB in to for to in item["to"])
    assert item["attempts"] >= 1


async def test_reply_all_and_forward(harness: Harness, api: httpx.AsyncClient) -> None:
    h = harness
    account_id, lunch = await _mailbox(h, DESK)
    h.google.add_message(DESK, subject="Plans", sender=f"Bob <{BOB}>",
                         to=f"{DESK}, Carol <{CAROL}>", text="Friday?", html="",
                         message_id_header="<plans@example.org>")
    await mailboxes.request_sync(h.services, account_id)
    await h.sync_until_idle()
    async with h.services.db.read() as conn:
        plans = int(await conn.scalar(select(messages.c.id).where(
            messages.c.subject == "Plans")) or 0)
    auth = await _token(h, "admin@example.com", admin=True)

    replied = await api.post(f"/api/v1/messages/{plans}/reply", headers=auth,
                             json={"all": True, "text": "Friday works."})
    assert replied.status_code == 202, replied.text
    assert_outcome(replied.json(), "sent")
    copy = sent_copies(h, DESK)[replied.json()["message_id_header"]]
    assert copy["Subject"] == "Re: Plans"
    assert copy["In-Reply-To"] == "<plans@example.org>"
    everyone = {a.addr_spec for a in copy["To"].addresses}
    everyone |= {a.addr_spec for a in copy["Cc"].addresses} if copy["Cc"] else set()
    assert everyone == {BOB, CAROL}
    body = text_of(copy)
    assert body.startswith("Friday works.\n\n")  # one's own text above the quote
    assert "> Friday?" in body

    only_bob = await api.post(f"/api/v1/messages/{lunch}/reply", headers=auth,
                              json={"text": "Sure."})
    assert only_bob.status_code == 202, only_bob.text
    copy = sent_copies(h, DESK)[only_bob.json()["message_id_header"]]
    assert [a.addr_spec for a in copy["To"].addresses] == [BOB]
    assert copy["Cc"] is None

    forwarded = await api.post(f"/api/v1/messages/{lunch}/forward", headers=auth,
                               json={"to": [CAROL], "text": "FYI"})
    assert forwarded.status_code == 202, forwarded.text
    copy = sent_copies(h, DESK)[forwarded.json()["message_id_header"]]
    assert copy["Subject"] == "Fwd: Lunch?"
    assert [a.addr_spec for a in copy["To"].addresses] == [CAROL]
    assert text_of(copy).startswith("FYI\n\n")
    assert "Noon at the usual place?" in text_of(copy)


async def test_a_failed_send_is_kept_and_resent_with_the_same_message_id(
    harness: Harness, api: httpx.AsyncClient
) -> None:
    h = harness
    account_id, _ = await _mailbox(h, DESK)
    auth = await _token(h, "u@example.com", shared=(account_id,))
    h.google.add_fault(path="/messages/send$", method="POST", status=400)
    response = await api.post(f"/api/v1/accounts/{account_id}/messages", headers=auth,
                              json={"to": [BOB], "subject": "Budget", "text": "Final."})
    assert response.status_code == 202, response.text
    failed = response.json()
    assert_outcome(failed, "failed")
    assert failed["error"]
    assert sent_copies(h, DESK) == {}
    [item] = (await api.get(f"/api/v1/accounts/{account_id}/outbox", headers=auth)).json()
    assert (item["state"], item["error"]) == ("failed", failed["error"])

    h.google.clear_faults()
    again = await api.post(f"/api/v1/outbox/{failed['outbox_id']}/resend", headers=auth)
    assert again.status_code == 202, again.text
    assert_outcome(again.json(), "sent")
    assert again.json()["outbox_id"] == failed["outbox_id"]
    assert again.json()["message_id_header"] == failed["message_id_header"]
    assert list(sent_copies(h, DESK)) == [failed["message_id_header"]]
    twice = await api.post(f"/api/v1/outbox/{failed['outbox_id']}/resend", headers=auth)
    assert twice.status_code == 400
    assert "sent already" in twice.json()["error"]
    assert len(sent_copies(h, DESK)) == 1


async def test_a_transient_failure_answers_retrying_with_the_next_attempt(
    harness: Harness, api: httpx.AsyncClient
) -> None:
    h = harness
    account_id, _ = await _mailbox(h, DESK)
    auth = await _token(h, "admin@example.com", admin=True)
    h.google.add_fault(path="/messages/send$", method="POST", status=503)
    response = await api.post(f"/api/v1/accounts/{account_id}/messages", headers=auth,
                              json={"to": [BOB], "subject": "Later", "text": "x"})
    assert response.status_code == 202, response.text
    outcome = response.json()
    assert_outcome(outcome, "retrying")
    assert outcome["error"]
    assert outcome["next_attempt_at"] > h.clock.now().isoformat()


BAD_BODIES = [
    pytest.param({"subject": "x", "text": "y"}, "to", id="no-recipients"),
    pytest.param({"to": BOB, "subject": "x"}, "to", id="to-not-a-list"),
    pytest.param({"to": [BOB], "cc": [1]}, "cc", id="cc-not-strings"),
    pytest.param({"to": ["not an address"]}, "to", id="bad-address"),
    pytest.param({"to": [BOB], "bcc": ["nobody"]}, "bcc", id="bad-bcc"),
    pytest.param({"to": [BOB], "subject": 5}, "subject", id="subject-not-text"),
    pytest.param([BOB], "JSON object", id="not-an-object"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
async def test_bad_input_is_400_naming_the_field(
    harness: Harness, api: httpx.AsyncClient, body: Any, field: str
) -> None:
    h = harness
    account_id, _ = await _mailbox(h, DESK)
    auth = await _token(h, "admin@example.com", admin=True)
    response = await api.post(f"/api/v1/accounts/{account_id}/messages", headers=auth,
                              json=body)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]
    assert response.json()["kind"] == "input"
    assert sent_copies(h, DESK) == {}


async def test_other_peoples_mailboxes_messages_and_outbox_are_404(
    harness: Harness, api: httpx.AsyncClient
) -> None:
    h = harness
    mine, _ = await _mailbox(h, DESK)
    other, foreign = await _mailbox(h, OTHER)
    admin = await _token(h, "admin@example.com", admin=True)
    h.google.add_fault(path="/messages/send$", method="POST", status=400)
    theirs = (await api.post(f"/api/v1/accounts/{other}/messages", headers=admin,
                             json={"to": [BOB], "subject": "Theirs"})).json()
    h.google.clear_faults()
    user = await _token(h, "u@example.com", shared=(mine,))
    refused = [
        await api.post(f"/api/v1/accounts/{other}/messages", headers=user,
                       json={"to": [BOB], "subject": "x"}),
        await api.get(f"/api/v1/accounts/{other}/outbox", headers=user),
        await api.post(f"/api/v1/messages/{foreign}/reply", headers=user, json={"text": "x"}),
        await api.post(f"/api/v1/messages/{foreign}/forward", headers=user,
                       json={"to": [BOB]}),
        await api.post(f"/api/v1/outbox/{theirs['outbox_id']}/resend", headers=user),
        await api.post("/api/v1/messages/999999/reply", headers=user, json={}),
        await api.post("/api/v1/outbox/999999/resend", headers=user),
        await api.post("/api/v1/accounts/999999/messages", headers=admin,
                       json={"to": [BOB]}),
    ]
    for response in refused:
        assert response.status_code == 404, (response.request.url, response.text)
        assert response.json()["kind"] == "not_found"
    assert sent_copies(h, OTHER) == {}
    # Without a token nothing is sent either.
    anonymous = await api.post(f"/api/v1/accounts/{mine}/messages", json={"to": [BOB]})
    assert anonymous.status_code == 401
    bad_all = await api.post(f"/api/v1/messages/{foreign}/reply", headers=admin,
                             json={"all": "yes"})
    assert bad_all.status_code == 400
    assert "all" in bad_all.json()["error"]
    assert sent_copies(h, DESK) == {}
