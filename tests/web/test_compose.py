"""Compose, reply and forward in the UI, and "Try sending again" on a message that failed.

Driven in-process (httpx ASGITransport) by a signed-in client against a Gmail mailbox on the
Google simulator, which receives every send (``messages.send``) and keeps a copy under SENT.
"""

from __future__ import annotations

import email
import email.policy
import html
import re
from email.message import EmailMessage

import httpx
from sqlalchemy import select

from maildesk.domain.mail import FolderRole
from maildesk.store.tables import folders, message_folders, messages
from maildesk.web.compose import split_addresses
from tests.support.harness import Harness
from tests.web.support import ADMIN, AGENT, Site, csrf_of, post_form

EMAIL = "desk@example.com"
OTHER = "other@example.com"
BOB = "bob@example.org"
CAROL = "carol@example.org"


# ------------------------------------------------------------------------------- helpers
def sent_copies(h: Harness, mailbox: str) -> list[EmailMessage]:
    """What the Google simulator holds under SENT for ``mailbox``, parsed."""
    found = [m for m in h.google.mailbox(mailbox).all_messages() if "SENT" in m.label_ids]
    return [email.message_from_bytes(m.raw(), policy=email.policy.default)
            for m in found]


async def folder_id(h: Harness, account_id: int, role: FolderRole) -> int:
    async with h.services.db.read() as conn:
        found = await conn.scalar(select(folders.c.id).where(
            folders.c.account_id == account_id, folders.c.role == role.value))
    assert found is not None, role
    return int(found)


async def message_by_subject(h: Harness, account_id: int, subject: str) -> int:
    async with h.services.db.read() as conn:
        found = (await conn.execute(select(messages.c.id).where(
            messages.c.account_id == account_id, messages.c.subject == subject))).all()
    assert len(found) == 1, (subject, found)
    return int(found[0].id)


async def folders_of(h: Harness, message_id: int) -> set[int]:
    async with h.services.db.read() as conn:
        rows = (await conn.execute(select(message_folders.c.folder_id).where(
            message_folders.c.message_id == message_id))).all()
    return {int(r.folder_id) for r in rows}


async def mailbox_with_mail(h: Harness, address: str = EMAIL) -> int:
    """A synced Gmail mailbox holding one message from Bob (to it, Cc Carol): "Lunch?"."""
    account_id = await h.add_gmail(address)  # no seed: SENT holds only what we send
    h.google.add_message(address, subject="Lunch?", sender=f"Bob <{BOB}>",
                         to=f"{address}, {CAROL}", text="Noon at the usual place?", html="",
                         message_id_header="<lunch-1@example.org>")
    await h.sync_until_idle()
    return account_id


def field_value(page: str, name: str) -> str:
    found = re.search(rf'<input type="text" name="{name}" value="([^"]*)"', page)
    assert found is not None, name
    return html.unescape(found.group(1))


def body_value(page: str) -> str:
    found = re.search(r"<textarea name=\"text\"[^>]*>(.*?)</textarea>", page, re.S)
    assert found is not None
    return html.unescape(found.group(1))


def flashes(page: str) -> list[tuple[str, str]]:
    return [(level, html.unescape(text)) for level, text in re.findall(
        r'<p class="flash flash-(\w+)" data-level="\w+">(.*?)</p>', page, re.S)]


async def send_form(client: httpx.AsyncClient, account_id: int, query: str = "",
                    **fields: str) -> httpx.Response:
    """Open the compose page (``query`` for a reply/forward), keep its prefilled fields unless
    given, and press Send."""
    page = await client.get(f"/mailboxes/{account_id}/compose{query}")
    assert page.status_code == 200, page.text
    data = {name: field_value(page.text, name) for name in ("to", "cc", "bcc", "subject")}
    data["text"] = body_value(page.text)
    for hidden in ("mode", "source"):
        found = re.search(rf'name="{hidden}" value="([^"]*)"', page.text)
        if found:
            data[hidden] = found.group(1)
    data.update(fields)
    return await client.post(f"/mailboxes/{account_id}/compose",
                             data={"csrf_token": csrf_of(page.text), **data})


# ------------------------------------------------------------------------------- tests
def test_address_fields_split_on_commas_outside_quotes_and_brackets() -> None:
    assert split_addresses("") == ()
    assert split_addresses(" a@example.org ,b@example.org;\r\nc@example.org,, ") == (
        "a@example.org", "b@example.org", "c@example.org")
    assert split_addresses('"Doe, Jane" <jane@example.org>, Bob <bob@x.org>') == (
        '"Doe, Jane" <jane@example.org>', "Bob <bob@x.org>")
    assert split_addresses('"a \\" , b" <q@example.org>') == ('"a \\" , b" <q@example.org>',)
    # Nothing is silently dropped: what is not an address reaches the sender's check.
    assert split_addresses("not an address") == ("not an address",)


async def test_compose_and_send_lands_in_sent_with_a_flash(harness: Harness) -> None:
    h = harness
    account_id = await mailbox_with_mail(h)
    sent_folder = await folder_id(h, account_id, FolderRole.SENT)
    site = Site(h)
    await site.user(AGENT, share=(account_id,))
    async with site.client(AGENT) as client:
        mailbox_page = await client.get(f"/mailboxes/{account_id}")
        assert f'href="/mailboxes/{account_id}/compose"' in mailbox_page.text  # Compose button
        response = await send_form(client, account_id, to=f"{BOB}, Carol <{CAROL}>",
                                   bcc="hidden@example.net", subject="Quarterly numbers",
                                   text="Hi both,\r\nnumbers attached.\r\n")
        assert response.status_code == 303, response.text
        assert response.headers["location"] == f"/mailboxes/{account_id}?folder={sent_folder}"
        page = await client.get(response.headers["location"])
    [(level, text)] = flashes(page.text)
    assert level == "success"
    assert "“Quarterly numbers” was sent" in text
    # MailDesk's own entry is in Sent at once, before any sync.
    local = await message_by_subject(h, account_id, "Quarterly numbers")
    assert sent_folder in await folders_of(h, local)
    assert f'data-id="{local}"' in page.text
    # The provider got exactly this message: every field of the form, the text with LF lines
    # (Gmail keeps the Bcc in the sender's own copy only).
    [copy] = [m for m in sent_copies(h, EMAIL) if m["Subject"] == "Quarterly numbers"]
    assert {a.addr_spec for a in copy["To"].addresses} == {BOB, CAROL}
    assert [a.addr_spec for a in copy["Bcc"].addresses] == ["hidden@example.net"]
    content = copy.get_body(("plain",))
    assert content is not None
    assert content.get_content().replace("\r\n", "\n").startswith("Hi both,\nnumbers attached.")


async def test_reply_reply_all_and_forward_are_prefilled(harness: Harness) -> None:
    h = harness
    account_id = await mailbox_with_mail(h)
    source = await message_by_subject(h, account_id, "Lunch?")
    site = Site(h)
    await site.user(ADMIN, admin=True)
    async with site.client(ADMIN) as client:
        message_page = (await client.get(f"/mailboxes/{account_id}/messages/{source}")).text
        for mode in ("reply", "reply_all", "forward"):
            assert (f'href="/mailboxes/{account_id}/compose?mode={mode}&amp;message={source}"'
                    in message_page)
        reply = (await client.get(
            f"/mailboxes/{account_id}/compose?mode=reply&message={source}")).text
        reply_all = (await client.get(
            f"/mailboxes/{account_id}/compose?mode=reply_all&message={source}")).text
        forward = (await client.get(
            f"/mailboxes/{account_id}/compose?mode=forward&message={source}")).text

        assert BOB in field_value(reply, "to")
        assert CAROL not in field_value(reply, "to") + field_value(reply, "cc")
        assert field_value(reply, "subject") == "Re: Lunch?"
        assert "Noon at the usual place?" in body_value(reply)
        assert '<h1 class="list-title" id="compose-title">Reply</h1>' in reply

        everyone = field_value(reply_all, "to") + field_value(reply_all, "cc")
        assert BOB in everyone
        assert CAROL in everyone
        assert EMAIL not in everyone  # never to oneself

        assert field_value(forward, "to") == ""
        assert field_value(forward, "subject") == "Fwd: Lunch?"
        assert "Noon at the usual place?" in body_value(forward)

        # Sending the prefilled reply answers Bob in the same conversation.
        response = await send_form(client, account_id, f"?mode=reply&message={source}",
                                   text="Yes, see you there.\n\n" + body_value(reply))
        assert response.status_code == 303, response.text
    [copy] = [m for m in sent_copies(h, EMAIL) if m["Subject"] == "Re: Lunch?"]
    assert [a.addr_spec for a in copy["To"].addresses] == [BOB]
    assert copy["In-Reply-To"] == "<lunch-1@example.org>"


async def test_a_user_sends_only_from_mailboxes_shared_with_them(harness: Harness) -> None:
    h = harness
    mine = await mailbox_with_mail(h, EMAIL)
    other = await mailbox_with_mail(h, OTHER)
    foreign_message = await message_by_subject(h, other, "Lunch?")
    site = Site(h)
    await site.user(AGENT, share=(mine,))
    async with site.client(AGENT) as client:
        assert (await client.get(f"/mailboxes/{other}/compose")).status_code == 404
        # The form of a mailbox one may use, aimed at the other one.
        page = await client.get(f"/mailboxes/{mine}/compose")
        token = csrf_of(page.text)
        response = await client.post(f"/mailboxes/{other}/compose", data={
            "csrf_token": token, "mode": "new", "to": BOB, "subject": "sneaky", "text": "x"})
        assert response.status_code == 404
        # Nor may a message of the other mailbox be answered from one's own.
        answer = await client.get(
            f"/mailboxes/{mine}/compose?mode=reply&message={foreign_message}")
        assert answer.status_code == 404
        response = await client.post(f"/mailboxes/{mine}/compose", data={
            "csrf_token": token, "mode": "reply", "source": str(foreign_message),
            "to": BOB, "subject": "Re: Lunch?", "text": "x"})
        assert response.status_code == 404
    assert sent_copies(h, OTHER) == []
    assert sent_copies(h, EMAIL) == []


async def test_sending_needs_the_csrf_token(harness: Harness) -> None:
    h = harness
    account_id = await mailbox_with_mail(h)
    site = Site(h)
    await site.user(ADMIN, admin=True)
    async with site.client(ADMIN) as client:
        form = {"mode": "new", "to": BOB, "subject": "forged", "text": "x"}
        missing = await client.post(f"/mailboxes/{account_id}/compose", data=form)
        wrong = await client.post(f"/mailboxes/{account_id}/compose",
                                  data={**form, "csrf_token": "x" * 43})
        foreign = await client.post(f"/mailboxes/{account_id}/compose",
                                    data={**form, "csrf_token": csrf_of(
                                        (await client.get("/")).text)},
                                    headers={"Origin": "https://evil.example"})
    for response in (missing, wrong, foreign):
        assert response.status_code == 403
        assert "form has expired" in response.text
    assert sent_copies(h, EMAIL) == []


async def test_a_refused_form_comes_back_with_what_was_typed(harness: Harness) -> None:
    h = harness
    account_id = await mailbox_with_mail(h)
    site = Site(h)
    await site.user(ADMIN, admin=True)
    async with site.client(ADMIN) as client:
        response = await send_form(client, account_id, to="not an address",
                                   subject="Keep me", text="A long text I typed.")
    assert response.status_code == 400
    assert 'id="compose-error"' in response.text
    assert field_value(response.text, "to") == "not an address"
    assert field_value(response.text, "subject") == "Keep me"
    assert body_value(response.text) == "A long text I typed."
    assert sent_copies(h, EMAIL) == []


async def test_a_failed_send_shows_the_error_and_sends_again(harness: Harness) -> None:
    h = harness
    account_id = await mailbox_with_mail(h)
    drafts = await folder_id(h, account_id, FolderRole.DRAFTS)
    sent_folder = await folder_id(h, account_id, FolderRole.SENT)
    h.google.add_fault(path="/messages/send$", method="POST", status=400,
                       reason="Recipient address rejected by policy")
    site = Site(h)
    await site.user(AGENT, share=(account_id,))
    async with site.client(AGENT) as client:
        response = await send_form(client, account_id, to=BOB, subject="Budget",
                                   text="The budget is final.")
        assert response.status_code == 303, response.text
        local = await message_by_subject(h, account_id, "Budget")
        assert response.headers["location"] == f"/mailboxes/{account_id}/messages/{local}"
        page = (await client.get(response.headers["location"])).text
        [(level, text)] = flashes(page)
        assert level == "error"
        assert "“Budget” was not sent" in text
        assert "kept in Drafts" in text
        # The kept draft says why, and offers to send it again.
        assert 'id="send-state" data-state="failed"' in page
        error = re.search(r'<p class="problem-text" id="send-error">(.*?)</p>', page, re.S)
        assert error is not None
        assert error.group(1).startswith("Not sent: ")
        assert "Try sending again" in page
        assert await folders_of(h, local) == {drafts}
        assert sent_copies(h, EMAIL) == []

        # Fixed: try again from the draft's page.
        h.google.clear_faults()
        outbox = re.search(r'data-outbox="(\d+)"', page)
        assert outbox is not None
        again = await post_form(client, f"/mailboxes/{account_id}/messages/{local}",
                                f"/mailboxes/{account_id}/outbox/{outbox.group(1)}/resend")
        assert again.status_code == 303, again.text
        assert again.headers["location"] == f"/mailboxes/{account_id}?folder={sent_folder}"
        [(level, text)] = flashes((await client.get(again.headers["location"])).text)
        assert (level, "“Budget” was sent" in text) == ("success", True)
        # A second "Try sending again" (say, from a stale tab) sends nothing.
        twice = await post_form(client, f"/mailboxes/{account_id}",
                                f"/mailboxes/{account_id}/outbox/{outbox.group(1)}/resend")
        assert twice.status_code == 303
        [(level, text)] = flashes((await client.get(twice.headers["location"])).text)
        assert (level, text) == ("warning", "This message was sent already.")
    [copy] = sent_copies(h, EMAIL)
    assert copy["Subject"] == "Budget"


async def test_a_transient_failure_says_it_will_retry(harness: Harness) -> None:
    h = harness
    account_id = await mailbox_with_mail(h)
    h.google.add_fault(path="/messages/send$", method="POST", status=503)
    site = Site(h)
    await site.user(ADMIN, admin=True)
    async with site.client(ADMIN) as client:
        response = await send_form(client, account_id, to=BOB, subject="Later",
                                   text="No hurry.")
        assert response.status_code == 303, response.text
        [(level, text)] = flashes((await client.get(response.headers["location"])).text)
        assert level == "warning"
        assert "“Later” is not sent yet" in text
        assert "tries again automatically (next attempt 20" in text
        local = await message_by_subject(h, account_id, "Later")
        page = (await client.get(f"/mailboxes/{account_id}/messages/{local}")).text
    assert 'data-state="retrying"' in page
    assert "Try sending again" not in page
    assert sent_copies(h, EMAIL) == []


async def test_an_outbox_item_of_another_mailbox_cannot_be_resent_through_this_one(
    harness: Harness,
) -> None:
    h = harness
    mine = await mailbox_with_mail(h, EMAIL)
    other = await mailbox_with_mail(h, OTHER)
    h.google.add_fault(path="/messages/send$", method="POST", status=400)
    site = Site(h)
    await site.user(ADMIN, admin=True)
    await site.user(AGENT, share=(mine,))
    async with site.client(ADMIN) as admin:
        failed = await send_form(admin, other, to=BOB, subject="Theirs", text="x")
        assert failed.status_code == 303
        local = await message_by_subject(h, other, "Theirs")
        page = (await admin.get(f"/mailboxes/{other}/messages/{local}")).text
        outbox = re.search(r'data-outbox="(\d+)"', page)
        assert outbox is not None
    h.google.clear_faults()
    async with site.client(AGENT) as client:
        for account_id in (mine, other):
            response = await post_form(client, f"/mailboxes/{mine}",
                                       f"/mailboxes/{account_id}/outbox/{outbox.group(1)}"
                                       "/resend")
            assert response.status_code == 404
    assert sent_copies(h, OTHER) == []
