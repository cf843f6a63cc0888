"""Sending from a Gmail mailbox through the Google simulator: the local Sent entry, its
replacement by Gmail's copy, replies in Gmail's thread, forwards, retries and failures."""

from __future__ import annotations

import base64
import dataclasses
import json
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest

from maildesk import mailboxes
from maildesk.domain.compose import ComposeMode, Draft
from maildesk.domain.events import ChangeKind
from maildesk.errors import NotFound
from maildesk.send import service
from maildesk.sim.gmail_objects import SimMessage
from tests.support.harness import Harness

from .helpers import body_text, stored, with_header

ALICE = "alice@example.com"
BOB = "bob@example.com"


def _parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def _gmail_copy(h: Harness, header: str) -> list[SimMessage]:
    return [m for m in h.google.mailbox(ALICE).all_messages()
            if _parse(m.raw()).get("Message-ID") == header]


def _send_bodies(h: Harness) -> list[dict[str, str]]:
    return [json.loads(r.content) for r in h.requests
            if r.method == "POST" and r.url.path.endswith("/messages/send")]


async def _mailbox(h: Harness) -> int:
    h.google.ensure_mailbox(BOB)
    account_id = await h.add_gmail(ALICE, seed=3)
    await h.sync_until_idle()
    return account_id


async def test_send_shows_a_local_sent_entry_at_once_and_gmails_copy_replaces_it(
    harness: Harness,
) -> None:
    h = harness
    account_id = await _mailbox(h)
    with h.services.bus.subscribe(frozenset({account_id})) as live:
        outcome = await service.send(h.services, account_id=account_id, draft=Draft(
            to=("Bob <bob@example.com>",), bcc=("carol@example.com",), subject="Quarterly",
            text="Numbers attached.\nAlice"))
        published = live.queue.get_nowait()
    assert outcome.state == "sent"
    assert outcome.error is None
    assert published is not None
    assert published.kind is ChangeKind.ADDED
    assert published.message_id == outcome.local_message_id

    [local] = await with_header(h.services, account_id, outcome.message_id_header)
    assert local.id == outcome.local_message_id
    assert local.remote_id == f"local:outbox:{outcome.outbox_id}"
    assert local.folders == ("sent",)
    assert local.subject == "Quarterly"
    assert await body_text(h.services, local.id) == "Numbers attached.\nAlice\n"

    # Gmail took the recipients (Bcc too) from the headers and keeps the copy under SENT.
    [copy] = _gmail_copy(h, outcome.message_id_header)
    assert "SENT" in copy.label_ids
    assert _parse(copy.raw())["Bcc"] == "carol@example.com"
    [delivered] = [m for m in h.google.mailbox(BOB).all_messages()
                   if _parse(m.raw()).get("Message-ID") == outcome.message_id_header]
    assert _parse(delivered.raw())["Subject"] == "Quarterly"

    # The send asked for a sync; it brings Gmail's copy, which replaces the local entry.
    with h.services.bus.subscribe(frozenset({account_id})) as live:
        await h.sync_until_idle()
        kinds = {}
        while not live.queue.empty():
            event = live.queue.get_nowait()
            assert event is not None
            kinds[event.remote_id] = event.kind
    copies = await with_header(h.services, account_id, outcome.message_id_header)
    assert [(c.remote_id, c.folders) for c in copies] == [(copy.id, ("sent",))]
    assert kinds[local.remote_id] is ChangeKind.REMOVED
    assert kinds[copy.id] is ChangeKind.ADDED
    item = await service.outbox_item(h.services, outcome.outbox_id)
    assert (item.state, item.local_message_id) == ("sent", None)

    # Syncing again, even a full resync after expired history, leaves exactly one.
    h.google.expire_history(ALICE)
    await mailboxes.request_sync(h.services, account_id)
    await h.sync_until_idle()
    assert len(await with_header(h.services, account_id, outcome.message_id_header)) == 1


async def test_reply_is_filed_in_gmails_thread_with_the_reply_headers(harness: Harness) -> None:
    h = harness
    h.google.ensure_mailbox(BOB)
    account_id = await h.add_gmail(ALICE)
    original_id = h.google.add_message(
        ALICE, subject="RE: Plans", sender="Bob <bob@example.com>",
        to="alice@example.com, dave@example.com", text="Shall we meet?\nBob", html="",
        message_id_header="<plans-2@example.com>")
    await h.sync_until_idle()
    [row] = [s for s in await stored(h.services, account_id) if s.remote_id == original_id]
    thread_id = h.google.snapshot(ALICE)["threads"][original_id]

    draft = await service.prepare(h.services, account_id=account_id, mode=ComposeMode.REPLY_ALL,
                                  source_message_id=row.id)
    assert draft.to == ("Bob <bob@example.com>",)
    assert draft.cc == ("dave@example.com",)
    assert draft.subject == "Re: Plans"
    assert "> Shall we meet?" in draft.text
    outcome = await service.send(h.services, account_id=account_id, draft=draft)
    assert outcome.state == "sent"

    [request] = _send_bodies(h)
    assert request["threadId"] == thread_id
    sent = _parse(base64.urlsafe_b64decode(request["raw"]))
    assert sent["In-Reply-To"] == "<plans-2@example.com>"
    assert sent["References"] == "<plans-2@example.com>"
    assert sent["Subject"] == "Re: Plans"
    [copy] = _gmail_copy(h, outcome.message_id_header)
    assert copy.thread_id == thread_id

    await h.sync_until_idle()
    [stored_copy] = await with_header(h.services, account_id, outcome.message_id_header)
    assert stored_copy.remote_id == copy.id


async def test_forward_quotes_the_original_without_replying_to_it(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(ALICE)
    original_id = h.google.add_message(
        ALICE, subject="Fwd: Tickets", sender="Eve <eve@example.com>", to=ALICE,
        text="Row 7, seats 3 and 4.", html="", message_id_header="<tickets@example.com>")
    await h.sync_until_idle()
    [row] = [s for s in await stored(h.services, account_id) if s.remote_id == original_id]

    draft = await service.prepare(h.services, account_id=account_id, mode=ComposeMode.FORWARD,
                                  source_message_id=row.id)
    assert (draft.to, draft.subject) == ((), "Fwd: Tickets")
    assert "From: Eve <eve@example.com>" in draft.text
    assert "Row 7, seats 3 and 4." in draft.text
    outcome = await service.send(h.services, account_id=account_id,
                                 draft=dataclasses.replace(draft, to=(BOB,)))
    assert outcome.state == "sent"
    [request] = _send_bodies(h)
    sent = _parse(base64.urlsafe_b64decode(request["raw"]))
    assert sent["In-Reply-To"] is None
    assert sent["References"] == "<tickets@example.com>"
    assert "Row 7, seats 3 and 4." in sent.get_content()


async def test_prepare_refuses_a_message_of_another_mailbox(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(ALICE, seed=2)
    other_id = await h.add_gmail("zed@example.com", seed=2)
    await h.sync_until_idle()
    foreign = (await stored(h.services, other_id))[0]
    with pytest.raises(NotFound, match=str(foreign.id)):
        await service.prepare(h.services, account_id=account_id, mode=ComposeMode.REPLY,
                              source_message_id=foreign.id)


async def test_a_reply_whose_thread_is_gone_is_sent_on_its_own(harness: Harness) -> None:
    h = harness
    account_id = await h.add_gmail(ALICE)
    original_id = h.google.add_message(
        ALICE, subject="Old", sender="Bob <bob@example.com>", to=ALICE, text="?", html="",
        message_id_header="<old@example.com>")
    await h.sync_until_idle()
    [row] = [s for s in await stored(h.services, account_id) if s.remote_id == original_id]
    draft = await service.prepare(h.services, account_id=account_id, mode=ComposeMode.REPLY,
                                  source_message_id=row.id)
    h.google.delete_message(ALICE, original_id)  # the thread is gone at Gmail

    outcome = await service.send(h.services, account_id=account_id, draft=draft)
    assert outcome.state == "sent"
    requests = _send_bodies(h)
    assert ["threadId" in r for r in requests] == [True, False]
    [copy] = _gmail_copy(h, outcome.message_id_header)
    assert _parse(copy.raw())["In-Reply-To"] == "<old@example.com>"
