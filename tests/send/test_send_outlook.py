"""Sending from an Outlook mailbox through the Microsoft simulator: Graph ``sendMail`` in MIME
form keeps our Message-ID on the Sent Items copy, which replaces the local entry."""

from __future__ import annotations

import base64
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from maildesk.domain.compose import ComposeMode, Draft
from maildesk.send import service
from tests.support.harness import Harness

from .helpers import stored, with_header

OLIVIA = "olivia@example.com"


def _parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def _with_id(h: Harness, email: str, header: str) -> list[tuple[str, str]]:
    """(message id, well-known folder name or id) of the simulator's copies of ``header``."""
    mailbox = h.microsoft.mailbox(email)
    names = {folder_id: name for name, folder_id in mailbox.well_known.items()}
    return [(m.id, names.get(m.folder_id, m.folder_id)) for m in mailbox.messages.values()
            if m.internet_message_id == header]


async def test_send_mail_keeps_our_message_id_and_the_sent_items_copy_replaces_the_local_entry(
    harness: Harness,
) -> None:
    h = harness
    for who in ("oscar@example.com", "pia@example.com", "quinn@example.com"):
        h.microsoft.ensure_mailbox(who)
    account_id = await h.add_outlook(OLIVIA, seed=4)
    await h.sync_until_idle()

    outcome = await service.send(h.services, account_id=account_id, draft=Draft(
        to=("Oscar <oscar@example.com>",), cc=("pia@example.com",), bcc=("quinn@example.com",),
        subject="Größe der Lieferung", text="Bitte prüfen."))
    assert outcome.state == "sent"
    [local] = await with_header(h.services, account_id, outcome.message_id_header)
    assert (local.remote_id, local.folders) == (f"local:outbox:{outcome.outbox_id}", ("sent",))
    assert local.subject == "Größe der Lieferung"

    # The MIME form: text/plain, the base64 of our message (Bcc header for Graph to read).
    [request] = [r for r in h.requests if r.url.path.endswith("/me/sendMail")]
    assert request.headers["content-type"] == "text/plain"
    sent = _parse(base64.b64decode(request.content))
    assert sent["Message-ID"] == outcome.message_id_header
    assert sent["Bcc"] == "quinn@example.com"
    [(copy_id, folder)] = _with_id(h, OLIVIA, outcome.message_id_header)
    assert folder == "sentitems"
    for who in ("oscar@example.com", "pia@example.com", "quinn@example.com"):
        assert [f for _, f in _with_id(h, who, outcome.message_id_header)] == ["inbox"]

    await h.sync_until_idle()
    copies = await with_header(h.services, account_id, outcome.message_id_header)
    assert [(c.remote_id, c.folders) for c in copies] == [(copy_id, ("sent",))]
    assert len(await stored(h.services, account_id)) == 5


async def test_reply_from_outlook_carries_the_reply_headers(harness: Harness) -> None:
    h = harness
    h.microsoft.ensure_mailbox("oscar@example.com")
    account_id = await h.add_outlook(OLIVIA)
    original = h.microsoft.add_message(
        OLIVIA, subject="Invoice 17", sender="Oscar <oscar@example.com>", to=OLIVIA,
        text="Is it paid?", internet_message_id="<invoice-17@example.com>")
    await h.sync_until_idle()
    [row] = [s for s in await stored(h.services, account_id) if s.remote_id == original]

    draft = await service.prepare(h.services, account_id=account_id, mode=ComposeMode.REPLY,
                                  source_message_id=row.id)
    assert draft.to == ("Oscar <oscar@example.com>",)
    outcome = await service.send(h.services, account_id=account_id, draft=draft)
    assert outcome.state == "sent"
    [request] = [r for r in h.requests if r.url.path.endswith("/me/sendMail")]
    sent = _parse(base64.b64decode(request.content))
    assert sent["In-Reply-To"] == "<invoice-17@example.com>"
    assert sent["Subject"] == "Re: Invoice 17"
    [(_, folder)] = _with_id(h, "oscar@example.com", outcome.message_id_header)
    assert folder == "inbox"
