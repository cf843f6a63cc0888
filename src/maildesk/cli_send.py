"""`maildesk` commands for sending: ``send``, ``reply``, ``forward``, ``outbox``,
``outbox-retry``.

Each prints what became of the message: ``sent``, ``not sent yet (…); retrying at …`` (exit 0:
it is queued, and ``maildesk serve`` retries it), or, on stderr with exit 1, why it failed
(the message is then kept in Drafts; ``outbox-retry`` sends it again, same Message-ID).
``--text-file -`` reads the text from standard input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from maildesk import mailboxes, sending
from maildesk.cli_support import Handler, Parser, print_table
from maildesk.config import Settings
from maildesk.domain.compose import Draft
from maildesk.errors import InputError
from maildesk.send import service
from maildesk.send.service import SendOutcome
from maildesk.services import Services, open_services


def _text_options(parser: Parser) -> None:
    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="the message text")
    text.add_argument("--text-file", metavar="FILE",
                      help="read the message text from FILE (UTF-8; - for standard input)")


def _recipients(parser: Parser, *, to_required: bool) -> None:
    parser.add_argument("--to", action="append", required=to_required, default=[],
                        metavar="ADDR", help="recipient (repeatable)")
    parser.add_argument("--cc", action="append", default=[], metavar="ADDR",
                        help="copy recipient (repeatable)")
    parser.add_argument("--bcc", action="append", default=[], metavar="ADDR",
                        help="blind copy recipient, in no header (repeatable)")


def add_commands(sub: argparse._SubParsersAction[Parser],
                 account: argparse._SubParsersAction[Parser]) -> None:
    """Add this module's parsers: top-level commands to ``sub``, ``account …`` ones to
    ``account``."""
    send = sub.add_parser("send", help="send a new message from a mailbox")
    send.add_argument("account", help="the mailbox to send from: account id or email address")
    _recipients(send, to_required=True)
    send.add_argument("--subject", required=True)
    _text_options(send)

    reply = sub.add_parser("reply", help="reply to a message (its sender, or --all)")
    reply.add_argument("message_id", type=int, help="the message's id (as in the UI's address)")
    reply.add_argument("--all", action="store_true", help="reply to every recipient too")
    _text_options(reply)

    forward = sub.add_parser("forward", help="forward a message")
    forward.add_argument("message_id", type=int, help="the message's id (as in the UI's address)")
    _recipients(forward, to_required=True)
    _text_options(forward)

    outbox = sub.add_parser("outbox", help="a mailbox's sent, retrying and failed messages")
    outbox.add_argument("account")
    outbox.add_argument("--json", action="store_true")

    retry = sub.add_parser("outbox-retry", help="send a failed message again (same Message-ID)")
    retry.add_argument("outbox_id", type=int)


async def _read_text(args: argparse.Namespace) -> str:
    if args.text is not None:
        return str(args.text)
    if args.text_file == "-":
        return await asyncio.to_thread(sys.stdin.read)
    path = Path(args.text_file)
    try:
        return await asyncio.to_thread(path.read_text, encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(f"cannot read --text-file {path}: {reason}") from exc


async def _report(s: Services, outcome: SendOutcome) -> int:
    """One line: on stdout when sent or queued for a retry, on stderr (exit 1) when failed."""
    again = await sending.next_attempt(s, outcome)
    line = f"outbox {outcome.outbox_id}: {sending.outcome_sentence(outcome, again)}"
    if outcome.state == sending.FAILED:
        print(f"maildesk: error: {line} (kept in Drafts; send it again with "
              f"`maildesk outbox-retry {outcome.outbox_id}`)", file=sys.stderr)
        return 1
    print(f"{line} (Message-ID {outcome.message_id_header})")
    return 0


async def _send(args: argparse.Namespace, settings: Settings) -> int:
    text = await _read_text(args)
    async with open_services(settings) as s:
        account = await mailboxes.find(s, args.account)
        draft = Draft(to=tuple(args.to), cc=tuple(args.cc), bcc=tuple(args.bcc),
                      subject=args.subject, text=text)
        return await _report(s, await service.send(s, account_id=account.id, draft=draft))


async def _reply(args: argparse.Namespace, settings: Settings) -> int:
    text = await _read_text(args)
    async with open_services(settings) as s:
        outcome = await sending.reply(s, message_id=args.message_id, reply_all=args.all,
                                      text=text)
        return await _report(s, outcome)


async def _forward(args: argparse.Namespace, settings: Settings) -> int:
    text = await _read_text(args)
    async with open_services(settings) as s:
        outcome = await sending.forward(s, message_id=args.message_id, to=args.to,
                                        cc=args.cc, bcc=args.bcc, text=text)
        return await _report(s, outcome)


async def _outbox(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as s:
        account = await mailboxes.find(s, args.account)
        items = await service.outbox(s, account.id)
    if args.json:
        print(json.dumps([sending.item_json(i) for i in items], indent=2))
        return 0
    print_table([{
        "id": i.id, "state": i.state, "created": i.created_at, "to": ", ".join(i.to),
        "subject": i.subject, "attempts": i.attempts,
        "next_attempt": i.next_attempt_at if i.state == sending.RETRYING else None,
        "error": i.error,
    } for i in items], ["id", "state", "created", "to", "subject", "attempts", "next_attempt",
                        "error"])
    return 0


async def _outbox_retry(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as s:
        await service.outbox_item(s, args.outbox_id)  # NotFound: one line, exit 1
        return await _report(s, await service.resend(s, outbox_id=args.outbox_id))


HANDLERS: dict[str, Handler] = {
    "send": _send,
    "reply": _reply,
    "forward": _forward,
    "outbox": _outbox,
    "outbox-retry": _outbox_retry,
}
