"""Replying in Chromium, as a user the mailbox is shared with: open a message, Reply, type,
Send; the flash says it was sent and the reply is listed in Sent at once (MailDesk's own entry,
before any sync)."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

from playwright.async_api import Browser, expect

from tests.support.harness import Harness
from tests.web.browser import tab
from tests.web.support import AGENT, Site

MAILBOX = "support@example.com"


async def test_reply_from_a_message_and_see_it_in_sent(
    harness: Harness, site: Site, base_url: str, browser: Browser,
) -> None:
    h = harness
    account_id = await h.add_gmail(MAILBOX, seed=5)
    h.google.add_message(MAILBOX, subject="Invoice 7781 is wrong",
                         sender="Ada Lovelace <ada@example.org>", to=MAILBOX,
                         text="The total is off by 12 EUR.", html="",
                         message_id_header="<invoice-7781@example.org>")
    await h.sync_until_idle()
    await site.user(AGENT, share=[account_id])
    async with tab(browser, base_url, AGENT) as t:
        page = t.page
        await page.goto(f"/mailboxes/{account_id}")
        await page.locator("#message-list li.msg", has_text="Invoice 7781 is wrong").click()
        await expect(page.locator("#message-subject")).to_have_text("Invoice 7781 is wrong")

        await page.get_by_role("link", name="Reply", exact=True).click()
        await expect(page.locator("#compose-title")).to_have_text("Reply")
        await expect(page.get_by_label("To", exact=True)).to_have_value(
            "Ada Lovelace <ada@example.org>")
        await expect(page.get_by_label("Subject")).to_have_value("Re: Invoice 7781 is wrong")
        body = page.get_by_label("Message")
        assert "> The total is off by 12 EUR." in await body.input_value()
        await body.press("Control+Home")
        await body.type("Sorry, fixed in the attached copy.\n\n")

        await page.get_by_role("button", name="Send").click()
        await page.wait_for_load_state()
        await expect(page.locator(".flash-success")).to_contain_text(
            "“Re: Invoice 7781 is wrong” was sent")
        await expect(page.locator("h1.list-title")).to_have_text("Sent")
        row = page.locator("#message-list li.msg", has_text="Re: Invoice 7781 is wrong")
        await expect(row).to_have_count(1)
        t.assert_clean()

    [copy] = [parsed for m in h.google.mailbox(MAILBOX).all_messages()
              if "SENT" in m.label_ids and isinstance(parsed := email.message_from_bytes(
                  m.raw(), policy=email.policy.default), EmailMessage)
              and parsed["Subject"] == "Re: Invoice 7781 is wrong"]
    assert copy["In-Reply-To"] == "<invoice-7781@example.org>"
    text = copy.get_body(("plain",))
    assert text is not None
    assert str(text.get_content()).replace("\r\n", "\n").startswith(
        "Sorry, fixed in the attached copy.\n\nOn ")
