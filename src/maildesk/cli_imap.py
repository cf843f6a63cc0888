"""`maildesk` commands for classic IMAP/SMTP mailboxes: ``account add-imap``,
``account test-incoming``, ``account test-outgoing`` and ``account set-password``.

A test prints the server, the stage it reached and the precise reason (``DNS: …``, ``TLS: …``,
``AUTH: …``, ``CAPABILITY: …``); a failed test or a refused setup is one line on stderr and exit
1, never a stack trace. Passwords can come from standard input (``--password-stdin``) so they
need not appear on the command line or in the shell history.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from typing import Any

from maildesk import imap_mailboxes, mailboxes
from maildesk.cli_support import Handler, Parser
from maildesk.config import Settings
from maildesk.domain.mail_servers import MailServers
from maildesk.errors import InputError
from maildesk.imap_mailboxes import CheckReport
from maildesk.services import open_services


def add_commands(sub: argparse._SubParsersAction[Parser],
                 account: argparse._SubParsersAction[Parser]) -> None:
    """Add this module's parsers: top-level commands to ``sub``, ``account …`` ones to
    ``account``."""
    add = account.add_parser(
        "add-imap", help="connect a classic IMAP/SMTP mailbox (verified before it is stored)",
        description="Connect an IMAP mailbox. The incoming server (and the outgoing one, when "
        "given) is tested first; nothing is stored when a test fails (--no-verify skips "
        "them). The password is stored encrypted.")
    add.add_argument("--email", help="the mailbox's address (default: the user name, when it "
                     "is an address)")
    add.add_argument("--host", required=True, help="IMAP server host name")
    add.add_argument("--port", type=int,
                     help="IMAP port (default 993 for ssl, 143 for starttls and none)")
    add.add_argument("--security", choices=["ssl", "starttls", "none"], default="ssl",
                     help="ssl (implicit TLS, default), starttls, or none (no encryption: only "
                     "for tests and trusted local networks)")
    add.add_argument("--username", required=True, help="IMAP user name")
    _password_options(add)
    add.add_argument("--sign-in", choices=["password", "google", "microsoft"],
                     default="password", help="password (default), or XOAUTH2 with a Google or "
                     "Microsoft refresh token (--refresh-token)")
    add.add_argument("--refresh-token", help="OAuth refresh token for --sign-in google or "
                     "microsoft (a Microsoft token for IMAP/SMTP)")
    add.add_argument("--tenant", help="Microsoft tenant of the grant (default: "
                     "MAILDESK_MICROSOFT_TENANT)")
    add.add_argument("--smtp-host", help="outgoing (SMTP) server host name; without it the "
                     "mailbox cannot send")
    add.add_argument("--smtp-port", type=int,
                     help="SMTP port (default 465 for ssl, 587 for starttls, 25 for none)")
    add.add_argument("--smtp-security", choices=["ssl", "starttls", "none"],
                     help="default: ssl on port 465, else starttls")
    add.add_argument("--smtp-username", help="SMTP user name (default: the IMAP user name); "
                     "the password is the same")
    add.add_argument("--sent-copy", choices=["auto", "append", "server"], default="auto",
                     help="who files sent mail in Sent: append (MailDesk appends a copy), server "
                     "(the server keeps one, as Gmail and Microsoft 365 do), auto (server for "
                     "Google/Microsoft sign-in, else append)")
    add.add_argument("--idle-folders", metavar="FOLDERS",
                     help="folders watched with IDLE for instant mail, separated by commas "
                     "(default INBOX)")
    add.add_argument("--no-verify", action="store_true",
                     help="store without testing the servers first")

    for name, which in (("test-incoming", "incoming (IMAP)"), ("test-outgoing",
                                                                "outgoing (SMTP)")):
        test = account.add_parser(
            name, help=f"test a mailbox's {which} server: connect, secure, sign in",
            description=f"Test the {which} server of a stored IMAP mailbox with its stored "
            "sign-in; prints the stage reached and the reason. Exit 1 when it fails.")
        test.add_argument("account", help="account id or email address")
        test.add_argument("--json", action="store_true")

    password = account.add_parser(
        "set-password", help="enter an IMAP mailbox's new password (after it was changed at "
        "the provider)",
        description="Store a new password for an IMAP mailbox (tested against the incoming "
        "server first). Clears a 'reconnect needed' state and syncs at once. Without "
        "--password or --password-stdin it is asked for on the terminal.")
    password.add_argument("account", help="account id or email address")
    _password_options(password)
    password.add_argument("--no-verify", action="store_true",
                          help="store without testing it against the server first")


def _password_options(parser: Parser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--password", help="the password (visible in the process list and "
                       "shell history: prefer --password-stdin)")
    group.add_argument("--password-stdin", action="store_true",
                       help="read the password from standard input (one line)")


async def _password(args: argparse.Namespace, *, required: bool) -> str | None:
    if args.password is not None:
        return str(args.password)
    if args.password_stdin:
        line: str = await asyncio.to_thread(sys.stdin.readline)
        text = line.rstrip("\r\n")
        if not text:
            raise InputError("no password on standard input")
        return text
    if not required:
        return None
    if not sys.stdin.isatty():
        raise InputError("give the password with --password-stdin (or --password)")
    typed: str = await asyncio.to_thread(getpass.getpass, "Password: ")
    return typed


def _fields(args: argparse.Namespace, password: str | None) -> dict[str, Any]:
    return {
        "email": args.email, "host": args.host, "port": args.port, "security": args.security,
        "username": args.username, "password": password, "sign_in": args.sign_in,
        "refresh_token": args.refresh_token, "tenant": args.tenant,
        "smtp_host": args.smtp_host, "smtp_port": args.smtp_port,
        "smtp_security": args.smtp_security, "smtp_username": args.smtp_username,
        "sent_copy": args.sent_copy, "idle_folders": args.idle_folders,
    }


def _print_warnings(report: CheckReport) -> None:
    for warning in report.check.warnings:
        print(f"  warning: {warning}")


def _fail(report: CheckReport, what: str) -> int:
    print(f"maildesk: error: {what}: {report.title} {report.server}: "
          f"{imap_mailboxes.describe(report.check)}", file=sys.stderr)
    return 1


async def _add_imap(args: argparse.Namespace, settings: Settings) -> int:
    password = await _password(args, required=args.sign_in == "password")
    setup = imap_mailboxes.setup_from_fields(_fields(args, password))
    async with open_services(settings) as s:
        outcome = await imap_mailboxes.add_imap(s, setup, verify=not args.no_verify)
    failed = outcome.failed
    if failed is not None or outcome.account_id is None:
        assert failed is not None
        return _fail(failed, "not stored (fix the setting, or store anyway with --no-verify)")
    for report in outcome.checks:
        print(report.sentence(warnings=False))
        _print_warnings(report)
    servers = setup.servers
    sending = "no outgoing server: it cannot send" if servers.smtp is None else (
        f"sends through {imap_mailboxes.address_text(servers.smtp)}")
    print(f"connected {setup.email} as account {outcome.account_id} (IMAP "
          f"{imap_mailboxes.address_text(servers.imap)}, {sending}); it syncs when "
          "`maildesk serve` runs (or now with `maildesk account sync`)")
    return 0


def _test(which: str) -> Handler:
    async def test(args: argparse.Namespace, settings: Settings) -> int:
        async with open_services(settings) as s:
            account = await mailboxes.find(s, args.account)
            if which == imap_mailboxes.INCOMING:
                report = await imap_mailboxes.test_incoming(s, account)
            else:
                report = await imap_mailboxes.test_outgoing(s, account)
        if args.json:
            print(json.dumps({"account_id": account.id, **report.to_json()}, indent=2))
            return 0 if report.ok else 1
        if not report.ok:
            return _fail(report, f"account {account.id} ({account.email})")
        print(report.sentence(warnings=False))
        _print_warnings(report)
        return 0

    return test


async def _set_password(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as s:
        account = await mailboxes.find(s, args.account)
        if account.provider.value != "imap":
            raise InputError(f"account {account.id} ({account.email}) is not an IMAP mailbox")
        MailServers.of_account(account.settings)  # broken settings: say so before asking
        password = await _password(args, required=True)
        assert password is not None
        outcome = await imap_mailboxes.set_password(s, account.id, password,
                                                    verify=not args.no_verify)
    if not outcome.stored:
        assert outcome.check is not None
        return _fail(outcome.check, "the new password was not stored")
    print(f"new password stored for account {account.id} ({account.email}); a sync is "
          "requested (it runs when `maildesk serve` runs, or now with `maildesk account sync`)")
    return 0


HANDLERS: dict[str, Handler] = {
    "account add-imap": _add_imap,
    "account test-incoming": _test(imap_mailboxes.INCOMING),
    "account test-outgoing": _test(imap_mailboxes.OUTGOING),
    "account set-password": _set_password,
}
