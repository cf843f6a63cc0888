"""`maildesk demo`: the embedded default, end to end, on one machine with no accounts anywhere.

SQLite in a data folder, the Google and Microsoft simulators on free loopback ports, a seeded
Gmail and a seeded Outlook mailbox connected through the real OAuth, Gmail and Graph client code,
both with realtime push on (Pub/Sub with OIDC tokens; Graph subscriptions with the validation
handshake, delivered over real HTTP to this server's webhooks), an administrator with a fresh random
password (printed once, at start), a gentle generator of new mail, and a log line per arrival
as the store commits it. The web UI needs sign-in exactly as under ``maildesk serve``. Each start
resets the demo's own database (the simulator keeps its mailbox in memory, so an old store would
describe a mailbox that is gone).

This module is the one place outside tests that imports the simulators.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from pathlib import Path

from sqlalchemy import select

from maildesk import mailboxes
from maildesk.app import create_app, serve_until, stop_on_signals
from maildesk.config import Settings
from maildesk.domain.accounts import GMAIL_SCOPE_FULL, ProviderKind
from maildesk.domain.events import ChangeKind
from maildesk.errors import MailDeskError
from maildesk.live.bus import LiveBus
from maildesk.passwords import hash_password
from maildesk.push.manager import gmail_push_settings
from maildesk.services import Services, open_services
from maildesk.sim.gmail_state import GoogleState
from maildesk.sim.google import create_google_app
from maildesk.sim.microsoft import create_microsoft_app
from maildesk.sim.microsoft_state import MicrosoftState
from maildesk.sim.server import serve_app
from maildesk.store import accounts as account_store
from maildesk.store import users as user_store
from maildesk.store.tables import messages

log = logging.getLogger("maildesk.demo")

DEMO_EMAIL = "support@demo.maildesk.test"
DEMO_OUTLOOK = "sales@demo.maildesk.test"
DEMO_ADMIN = "admin@demo.maildesk.test"
DEMO_PROJECT = "maildesk-demo"
DEMO_TOPIC = f"projects/{DEMO_PROJECT}/topics/gmail-push"
DEMO_SIGNER = f"gmail-push@{DEMO_PROJECT}.iam.gserviceaccount.com"
CLIENT_ID = "maildesk-demo"
CLIENT_SECRET = "maildesk-demo-secret"  # noqa: S105 - the simulator's own demo credential

_SENDERS = ["Ada Lovelace <ada@example.org>", "Grace Hopper <grace@example.net>",
            "Linus T <linus@example.com>", "Margaret H <margaret@example.org>",
            "Ken T <ken@example.net>", "Barbara L <barbara@example.com>"]
_TOPICS = ["Invoice", "Order", "Ticket", "Question about", "Follow-up on", "Renewal of"]
_THINGS = ["plan upgrade", "shipment 4417", "login trouble", "the Q3 report", "API access",
           "our contract", "a refund", "the onboarding call"]


async def run_demo(
    settings: Settings,
    *,
    data_dir: Path,
    port: int,
    messages: int,
    interval: float,
    duration: float = 0.0,
) -> None:
    data_dir = _fresh_data_dir(data_dir)
    google = GoogleState(rng=random.Random(2026))
    google.create_client(CLIENT_ID, CLIENT_SECRET)
    refresh_token = google.create_grant(DEMO_EMAIL, [GMAIL_SCOPE_FULL], client_id=CLIENT_ID)
    google.seed_mailbox(DEMO_EMAIL, messages, days=120)

    # The simulator delivers Pub/Sub pushes to our webhook over real HTTP, like Google.
    push_url = f"http://127.0.0.1:{port}/maildesk/push/gmail"
    google.pubsub.add_subscription(DEMO_TOPIC, push_url, audience=push_url,
                                   service_account=DEMO_SIGNER)
    microsoft = MicrosoftState(rng=random.Random(2027))
    microsoft.register_app(CLIENT_ID, CLIENT_SECRET)
    microsoft.ensure_mailbox(DEMO_OUTLOOK)
    microsoft.seed_mailbox(DEMO_OUTLOOK, max(1, messages // 2), days=120)
    outlook_token = microsoft.grant(DEMO_OUTLOOK, CLIENT_ID)
    async with (
        serve_app(create_google_app(google, deliver_pushes=True)) as sim_url,
        serve_app(create_microsoft_app(microsoft, deliver_notifications=True)) as ms_url,
    ):
        settings = settings.replace(
            data_dir=data_dir, database_url="", port=port, base_url=f"http://127.0.0.1:{port}",
            allow_loopback_webhooks=True,
            google_client_id=CLIENT_ID, google_client_secret=CLIENT_SECRET,
            google_token_url=f"{sim_url}/token", google_revoke_url=f"{sim_url}/revoke",
            google_authorize_url=f"{sim_url}/o/oauth2/v2/auth",
            google_certs_url=f"{sim_url}/oauth2/v1/certs", gmail_api_url=sim_url,
            microsoft_client_id=CLIENT_ID, microsoft_client_secret=CLIENT_SECRET,
            microsoft_authority_url=ms_url, graph_api_url=f"{ms_url}/v1.0",
        )
        async with open_services(settings) as services:
            account_id = await mailboxes.add_gmail(
                services, email=DEMO_EMAIL, refresh_token=refresh_token
            )
            await mailboxes.sync_now(services, account_id)  # the inbox, newest first
            await services.push.enable(account_id, ProviderKind.GMAIL, gmail_push_settings(
                project=DEMO_PROJECT, topic=DEMO_TOPIC, audience=push_url,
                signers=[DEMO_SIGNER]))
            outlook_id = await mailboxes.add_outlook(
                services, email=DEMO_OUTLOOK, refresh_token=outlook_token)
            await mailboxes.sync_now(services, outlook_id)
            password = await _create_admin(services)
            banner = (
                f"MailDesk demo: http://127.0.0.1:{port}/  (data in {data_dir})\n"
                f"Sign in as {DEMO_ADMIN} with password {password}  (administrator; a new "
                "random password every start)\n"
                f"Google simulator: {sim_url}  mailbox {DEMO_EMAIL}: {messages} seeded "
                f"messages. Microsoft simulator: {ms_url}  mailbox {DEMO_OUTLOOK}. New mail "
                f"every {interval:g} s, to each in turn. Realtime test: open a mailbox's "
                "Account page, then its realtime assistant. Ctrl-C stops.")
            stop, listening = asyncio.Event(), asyncio.Event()
            with stop_on_signals(stop):
                async with asyncio.TaskGroup() as group:
                    group.create_task(_log_arrivals(services, services.bus, stop))
                    group.create_task(_generate(google, microsoft, interval, stop))
                    group.create_task(_progress(services, account_id, stop))
                    group.create_task(_progress(services, outlook_id, stop))
                    group.create_task(_when_listening(listening, banner, services, outlook_id))
                    if duration > 0:
                        group.create_task(_stop_after(duration, stop))
                    await serve_until(create_app(services), services, stop, listening=listening)


async def _when_listening(listening: asyncio.Event, banner: str, services: Services,
                          outlook_id: int) -> None:
    """Once this server accepts connections: print the URL (it opens from then on) and turn on
    Outlook push (Graph validates the webhook before it creates a subscription)."""
    await listening.wait()
    print(banner, flush=True)
    try:
        await services.push.enable(outlook_id, ProviderKind.OUTLOOK, {})
    except MailDeskError as exc:
        print(f"Outlook push could not be enabled: {exc.message}", flush=True)


async def _create_admin(services: Services) -> str:
    """The demo's administrator, with a random password that is only ever printed."""
    password = secrets.token_urlsafe(12)
    async with services.db.transaction() as conn:
        await user_store.create(conn, email=DEMO_ADMIN, password_hash=hash_password(password),
                                is_admin=True, now=services.clock.now())
    return password


def _fresh_data_dir(data_dir: Path) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in ("maildesk.db", "maildesk.db-wal", "maildesk.db-shm"):
        (data_dir / name).unlink(missing_ok=True)
    return data_dir.resolve()


async def _stop_after(seconds: float, stop: asyncio.Event) -> None:
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        stop.set()


async def _generate(google: GoogleState, microsoft: MicrosoftState, interval: float,
                    stop: asyncio.Event) -> None:
    rng = random.Random(7)
    n = 0
    while not stop.is_set():
        try:
            async with asyncio.timeout(interval):
                await stop.wait()
            return
        except TimeoutError:
            pass
        n += 1
        subject = f"{rng.choice(_TOPICS)} {rng.choice(_THINGS)} (#{n})"
        if n % 2 == 0:
            microsoft.add_message(DEMO_OUTLOOK, subject=subject, sender=rng.choice(_SENDERS),
                                  to=DEMO_OUTLOOK, text=f"Hello,\n\nabout {subject}.\n",
                                  html=f"<p>Hello,</p><p>about <b>{subject}</b>.</p>")
            continue
        google.add_message(DEMO_EMAIL, subject=subject, sender=rng.choice(_SENDERS),
                           to=DEMO_EMAIL, text=f"Hello,\n\nabout {subject}.\n",
                           html=f"<p>Hello,</p><p>about <b>{subject}</b>.</p>")
        if n % 5 == 1 and n > 1:
            # Now and then something leaves the inbox, as in a real mailbox.
            inbox = [m.id for m in google.mailbox(DEMO_EMAIL).all_messages()
                     if "INBOX" in m.label_ids]
            if inbox:
                google.trash_message(DEMO_EMAIL, rng.choice(inbox))


async def _log_arrivals(services: Services, bus: LiveBus, stop: asyncio.Event) -> None:
    """One line per message that arrived (not per backfilled one) or left, once committed."""
    with bus.subscribe(maxsize=10_000) as sub:
        while not stop.is_set():
            getter = asyncio.ensure_future(sub.get())
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            getter.cancel()
            stopper.cancel()
            if getter not in done or getter.cancelled():
                return
            event = getter.result()
            if event is None:
                continue
            async with services.db.read() as conn:
                row = (await conn.execute(select(messages.c.subject, messages.c.received_at)
                                          .where(messages.c.id == event.message_id))).first()
            if event.kind is ChangeKind.ADDED and row is not None:
                age = services.clock.now() - row.received_at
                if age.total_seconds() < 600:
                    print(f"arrived  #{event.message_id}: {row.subject}", flush=True)
            elif event.kind is ChangeKind.REMOVED:
                print(f"removed  #{event.message_id}", flush=True)


async def _progress(services: Services, account_id: int, stop: asyncio.Event) -> None:
    """A status line every 30 s: what the store holds and where the sync is."""
    while not stop.is_set():
        try:
            async with asyncio.timeout(30):
                await stop.wait()
            return
        except TimeoutError:
            pass
        async with services.db.read() as conn:
            account = await account_store.get(conn, account_id)
            count = (await account_store.counts(conn)).get(account_id, (0, 0))
        print(f"status   {account.email}: {account.state}, {count[0]} messages in "
              f"{count[1]} folders, backfill {'done' if account.backfill_done else 'running'}",
              flush=True)
