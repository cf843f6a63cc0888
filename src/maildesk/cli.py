"""The `maildesk` command.

Every failure ends in one line on stderr and a non-zero exit (2 for bad arguments, 1 for
everything else), never a traceback. Listing commands take ``--json``; an ACCOUNT argument is
the account id or its email address.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maildesk import cli_imap, cli_send, mailboxes
from maildesk.api import tokens as api_tokens
from maildesk.cli_support import Handler, Parser, print_table
from maildesk.config import Settings
from maildesk.domain.accounts import ProviderKind
from maildesk.errors import InputError, MailDeskError
from maildesk.passwords import MIN_LENGTH, hash_password
from maildesk.push.manager import gmail_push_settings
from maildesk.push.status import push_status
from maildesk.services import open_services
from maildesk.store import jobs as job_store
from maildesk.store import users as user_store
from maildesk.store.migrate import current_revision


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="maildesk", description="Self-hosted realtime mailbox sync server.")
    p.add_argument("--config", type=Path, help="TOML settings file (MAILDESK_CONFIG_FILE)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    serve = sub.add_parser("serve", help="run the web app and the sync workers")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)

    sub.add_parser("worker", help="run a sync worker without the web server")

    web = sub.add_parser("web", help="run the web app without a worker (PostgreSQL, beside "
                                     "`maildesk worker` processes)")
    web.add_argument("--host")
    web.add_argument("--port", type=int)

    demo = sub.add_parser("demo", help="run the embedded demo (SQLite + simulators)")
    demo.add_argument("--data-dir", type=Path, default=Path("maildesk-demo"))
    demo.add_argument("--port", type=int, default=8025)
    demo.add_argument("--messages", type=int, default=400, help="seeded mailbox size")
    demo.add_argument("--interval", type=float, default=5.0,
                      help="seconds between generated messages")
    demo.add_argument("--duration", type=float, default=0.0,
                      help="stop after this many seconds (0: run until interrupted)")

    sub.add_parser("migrate", help="create or upgrade the database schema")

    user = sub.add_parser("user", help="manage users").add_subparsers(
        dest="user_command", required=True, parser_class=Parser)
    create = user.add_parser("create", help="create a user")
    create.add_argument("--email", required=True)
    create.add_argument("--password", required=True)
    create.add_argument("--admin", action="store_true")

    token = user.add_parser("token", help="issue an API token (replaces the previous one)")
    token.add_argument("--email", required=True)

    account = sub.add_parser("account", help="manage mailboxes").add_subparsers(
        dest="account_command", required=True, parser_class=Parser)
    add = account.add_parser("add-gmail", help="connect a Gmail mailbox from a refresh token")
    add.add_argument("--email", required=True)
    add.add_argument("--refresh-token", required=True)
    add.add_argument("--no-verify", action="store_true",
                     help="store the token without a test refresh exchange")
    outlook = account.add_parser(
        "add-outlook", help="connect an Outlook / Microsoft 365 mailbox from a refresh token")
    outlook.add_argument("--email", required=True)
    outlook.add_argument("--refresh-token", required=True)
    outlook.add_argument("--tenant",
                         help="tenant of the grant (default: MAILDESK_MICROSOFT_TENANT)")
    outlook.add_argument("--no-verify", action="store_true",
                         help="store the token without a test refresh exchange")
    listing = account.add_parser("list", help="list mailboxes")
    listing.add_argument("--json", action="store_true")
    sync = account.add_parser("sync", help="sync a mailbox now")
    sync.add_argument("account")
    remove = account.add_parser("remove", help="disconnect a mailbox and delete its local data")
    remove.add_argument("account")
    remove.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    push = sub.add_parser("push", help="realtime push subscriptions").add_subparsers(
        dest="push_command", required=True, parser_class=Parser)
    status = push.add_parser("status", help="every push subscription and its health")
    status.add_argument("--json", action="store_true")
    push.add_parser("renew-due", help="renew subscriptions that are due now")
    gmail = push.add_parser("gmail", help="Gmail push (Pub/Sub)").add_subparsers(
        dest="gmail_command", required=True, parser_class=Parser)
    enable = gmail.add_parser("enable", help="register a Gmail watch for a mailbox")
    enable.add_argument("account")
    enable.add_argument("--project", required=True, help="Google Cloud project id")
    enable.add_argument("--topic", required=True,
                        help="Pub/Sub topic: NAME or projects/PROJECT/topics/NAME")
    enable.add_argument("--audience", required=True, help="OIDC audience of the push")
    enable.add_argument("--signer", action="append", required=True,
                        help="service-account email allowed to sign pushes (repeatable)")
    disable = gmail.add_parser("disable", help="stop the mailbox's Gmail watch")
    disable.add_argument("account")

    outlook_push = push.add_parser(
        "outlook", help="Outlook push (Graph change notifications)").add_subparsers(
        dest="outlook_command", required=True, parser_class=Parser)
    o_enable = outlook_push.add_parser(
        "enable", help="register a Graph subscription for a mailbox (no inputs needed)")
    o_enable.add_argument("account")
    o_disable = outlook_push.add_parser("disable", help="delete the mailbox's Graph subscription")
    o_disable.add_argument("account")

    jobs = sub.add_parser("jobs", help="scheduled jobs: last run, duration, status, error")
    jobs.add_argument("--json", action="store_true")

    settings = sub.add_parser("settings", help="show the effective settings (secrets masked)")
    settings.add_argument("--json", action="store_true")
    sub.add_parser("rotate-secrets", help="re-encrypt stored secrets with the newest key")
    cli_imap.add_commands(sub, account)
    cli_send.add_commands(sub, account)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env(config_file=args.config)
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        # httpx logs every request URL at INFO: noise, and URLs can carry ids and tokens.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        handler = _HANDLERS[_command_key(args)]
        return asyncio.run(handler(args, settings))
    except MailDeskError as exc:
        print(f"maildesk: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last resort: a bug must still not end in a traceback
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        print(f"maildesk: error: unexpected {type(exc).__name__}: {exc} "
              "(MAILDESK_LOG_LEVEL=DEBUG shows the traceback)", file=sys.stderr)
        return 1


def _command_key(args: argparse.Namespace) -> str:
    parts = [str(args.command)]
    while (sub := getattr(args, f"{parts[-1]}_command", None)) is not None:
        parts.append(str(sub))
    return " ".join(parts)


# ------------------------------------------------------------------------------ commands
async def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as s:  # migrates when behind
        print(f"database at revision {await current_revision(s.db.engine)}")
    return 0


async def _user_create(args: argparse.Namespace, settings: Settings) -> int:
    email = args.email.strip().lower()
    if "@" not in email:
        raise InputError(f"not an email address: {email!r}")
    if len(args.password) < MIN_LENGTH:
        raise InputError(f"the password must have at least {MIN_LENGTH} characters")
    async with open_services(settings) as s, s.db.transaction() as conn:
        uid = await user_store.create(conn, email=email, password_hash=hash_password(
            args.password), is_admin=args.admin, now=s.clock.now())
    print(f"created {'admin' if args.admin else 'user'} {email} (id {uid})")
    return 0


async def _user_token(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as s, s.db.transaction() as conn:
        token = await api_tokens.issue(conn, args.email.strip().lower())
    print(token)
    return 0


async def _push_status(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as s:
        rows = await push_status(s.db)
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
    else:
        print_table([{
            "account": r.account_id, "email": r.email, "provider": r.provider,
            "state": r.state, "expires": r.expiration, "last_notification": r.last_notification_at,
            "failures": r.failure_count, "last_error": r.last_error,
        } for r in rows], ["account", "email", "provider", "state", "expires",
                           "last_notification", "failures", "last_error"])
    return 0


async def _push_renew_due(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as s:
        print(await s.push.renew_due())
    return 0


async def _push_gmail_enable(args: argparse.Namespace, settings: Settings) -> int:
    push_settings = gmail_push_settings(project=args.project, topic=args.topic,
                                        audience=args.audience, signers=args.signer)
    async with open_services(settings) as s:
        account = await mailboxes.find(s, args.account)
        row = await s.push.enable(account.id, ProviderKind.GMAIL, push_settings)
    expires = row.sub.expiration.isoformat() if row.sub.expiration else "?"
    print(f"Gmail push active for {account.email}: watch on {row.sub.resource}, "
          f"historyId {row.sub.subscription_id}, expires {expires}")
    return 0


async def _push_outlook_enable(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as s:
        account = await mailboxes.find(s, args.account)
        row = await s.push.enable(account.id, ProviderKind.OUTLOOK, {})
    expires = row.sub.expiration.isoformat() if row.sub.expiration else "?"
    print(f"Outlook push active for {account.email}: subscription {row.sub.subscription_id}, "
          f"expires {expires}")
    return 0


def _push_disable(provider: ProviderKind, name: str) -> Handler:
    """The ``push <provider> disable`` command: stop push; polling carries the mailbox."""

    async def disable(args: argparse.Namespace, settings: Settings) -> int:
        async with open_services(settings) as s:
            account = await mailboxes.find(s, args.account)
            await s.push.disable(account.id, provider)
        print(f"{name} push stopped for {account.email}; it is polled every "
              f"{settings.poll_interval:g} s")
        return 0

    return disable


async def _account_add_outlook(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as s:
        aid = await mailboxes.add_outlook(s, email=args.email, refresh_token=args.refresh_token,
                                          tenant=args.tenant, verify=not args.no_verify)
    print(f"connected {args.email.strip().lower()} as account {aid}; "
          "it syncs when `maildesk serve` runs (or now with `maildesk account sync`)")
    return 0


async def _account_add_gmail(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as s:
        aid = await mailboxes.add_gmail(s, email=args.email, refresh_token=args.refresh_token,
                                        verify=not args.no_verify)
    print(f"connected {args.email.strip().lower()} as account {aid}; "
          "it syncs when `maildesk serve` runs (or now with `maildesk account sync`)")
    return 0


async def _account_list(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as s:
        summaries = await mailboxes.summaries(s)
    if args.json:
        print(json.dumps([a.to_json() for a in summaries], indent=2))
    else:
        rows: list[dict[str, Any]] = [{
            **a.to_json(), "last_sync_at": a.last_sync_at,
            "backfill": "done" if a.backfill_done else f"{a.backfill_fetched} so far",
        } for a in summaries]
        print_table(rows, ["id", "provider", "email", "state", "messages", "folders",
                            "last_sync_at", "backfill", "last_error"])
    return 0


async def _account_sync(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as s:
        account = await mailboxes.find(s, args.account)
        result = await mailboxes.sync_now(s, account.id)
    print(f"account {account.id} ({account.email}): {result.status} {result.summary}"
          + (f" - {result.error_kind}: {result.error}" if result.error else ""))
    return 0 if result.status == "ok" else 1


async def _account_remove(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as s:
        account = await mailboxes.find(s, args.account)
        if not args.yes:
            if not sys.stdin.isatty():
                raise InputError("not removing without confirmation: add --yes")
            question = (f"Remove {account.email} (account {account.id}) and delete its "
                        "local mail? [y/N] ")
            answer = await asyncio.to_thread(input, question)
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing removed")
                return 1
        await mailboxes.remove(s, account.id)
    print(f"removed account {account.id} ({account.email}) and its local data")
    return 0


async def _jobs(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings) as s, s.db.read() as conn:
        runs = await job_store.latest(conn)
    rows = [{
        "job": r.job, "last_run": r.started_at, "duration_ms": r.duration_ms,
        "status": r.status, "error": r.error, "detail": r.detail, "runs_kept": r.runs,
    } for r in runs]
    if args.json:
        print(json.dumps(rows, indent=2, default=lambda v: v.isoformat()))
    else:
        print_table(rows, ["job", "last_run", "duration_ms", "status", "detail", "error"])
    return 0


async def _settings(args: argparse.Namespace, settings: Settings) -> int:
    described = settings.describe()
    if args.json:
        print(json.dumps(described, indent=2))
    else:
        for name, value in described.items():
            print(f"{name}={value}")
    return 0


async def _rotate_secrets(args: argparse.Namespace, settings: Settings) -> int:
    from maildesk.secrets_rotation import rotate_all

    async with open_services(settings) as s:
        count = await rotate_all(s)
    print(f"re-encrypted {count} stored secrets with the newest key")
    return 0


async def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from maildesk.app import run_worker

    await run_worker(settings)
    return 0


def _listening_on(args: argparse.Namespace, settings: Settings) -> Settings:
    """``settings`` with the address given by ``--host``/``--port``, if any."""
    if args.host:
        settings = settings.replace(host=args.host)
    if args.port:
        settings = settings.replace(port=args.port)
    return settings


async def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from maildesk.app import run_server

    await run_server(_listening_on(args, settings))
    return 0


async def _web(args: argparse.Namespace, settings: Settings) -> int:
    from maildesk.app import run_web

    await run_web(_listening_on(args, settings))
    return 0


async def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from maildesk.demo import run_demo

    await run_demo(settings, data_dir=args.data_dir, port=args.port, messages=args.messages,
                   interval=args.interval, duration=args.duration)
    return 0


_HANDLERS: dict[str, Handler] = {
    "serve": _serve,
    "worker": _worker,
    "web": _web,
    "demo": _demo,
    "migrate": _migrate,
    "user create": _user_create,
    "user token": _user_token,
    "push status": _push_status,
    "push renew-due": _push_renew_due,
    "push gmail enable": _push_gmail_enable,
    "push gmail disable": _push_disable(ProviderKind.GMAIL, "Gmail"),
    "push outlook enable": _push_outlook_enable,
    "push outlook disable": _push_disable(ProviderKind.OUTLOOK, "Outlook"),
    "account add-gmail": _account_add_gmail,
    "account add-outlook": _account_add_outlook,
    "account list": _account_list,
    "account sync": _account_sync,
    "account remove": _account_remove,
    "jobs": _jobs,
    "settings": _settings,
    "rotate-secrets": _rotate_secrets,
    **cli_imap.HANDLERS,
    **cli_send.HANDLERS,
}

__all__ = ["build_parser", "main"]
