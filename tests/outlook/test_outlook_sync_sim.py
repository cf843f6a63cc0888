"""Outlook end to end against the Microsoft simulator over HTTP (in-process ASGI): the real
identity client, Graph client, sync engine and store, on both databases."""

from __future__ import annotations

import itertools
from pathlib import Path

from sqlalchemy import text

from maildesk import mailboxes
from maildesk.clock import ManualClock
from tests.support.harness import Harness


async def test_seeded_mailbox_syncs_to_identical_state(
    db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path) as h:
        account_id = await h.add_outlook("olivia@example.com", seed=120)
        results = await h.sync_until_idle()
        assert results
        assert all(r.status == "ok" for r in results), results
        assert await h.store_state(account_id) == h.outlook_state("olivia@example.com")
        assert len(await h.store_state(account_id)) == 120


async def test_rotated_refresh_token_is_stored_and_used_next_time(
    db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    # Strict rotation: an old refresh token is refused, so forgetting to store the new one
    # would break the second exchange.
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path) as h:
        h.microsoft.set_rotation("strict")
        account_id = await h.add_outlook("olivia@example.com", seed=5)
        assert all(r.status == "ok" for r in await h.sync_until_idle())
        clock.advance(7200)  # the access token has expired: the next sync must refresh
        h.microsoft.add_message("olivia@example.com", subject="after rotation")
        await mailboxes_request_sync(h, account_id)
        assert all(r.status == "ok" for r in await h.sync_until_idle())
        exchanges = [e for e in h.microsoft.exchanges if e.grant_type == "refresh_token"]
        assert len(exchanges) >= 3
        assert all(e.error is None for e in exchanges)
        # Each exchange presented the token the previous one issued.
        for before, after in itertools.pairwise(exchanges):
            assert after.used == before.issued
        assert len(await h.store_state(account_id)) == 6


async def test_aadsts70008_is_typed_and_loses_nothing(
    db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path) as h:
        account_id = await h.add_outlook("olivia@example.com", seed=30)
        assert all(r.status == "ok" for r in await h.sync_until_idle())
        before = await h.store_state(account_id)
        h.microsoft.revoke("olivia@example.com", code="70008")
        clock.advance(7200)
        await mailboxes_request_sync(h, account_id)
        results = await h.sync()
        assert [(r.status, r.error_kind) for r in results] == [("reauth_required",
                                                                "oauth_invalid")]
        assert "70008" in (results[0].error or "")
        assert await h.store_state(account_id) == before
        account = await mailboxes.find(h.services, str(account_id))
        assert account.state.value == "reauth_required"


async def test_expired_delta_token_restarts_the_folder_without_duplicates(
    db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    email = "olivia@example.com"
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path) as h:
        account_id = await h.add_outlook(email, seed=60)
        assert all(r.status == "ok" for r in await h.sync_until_idle())
        inbox = h.microsoft.snapshot(email)["wellKnown"]["inbox"]
        # Changes happen, then the delta token dies (410 SyncStateNotFound).
        gone = next(m for m, v in h.outlook_state(email).items() if v == [inbox])
        h.microsoft.delete_message(email, gone)
        h.microsoft.add_message(email, subject="new after expiry")
        h.microsoft.expire_delta(email)
        await mailboxes_request_sync(h, account_id)
        assert all(r.status == "ok" for r in await h.sync_until_idle())
        assert await h.store_state(account_id) == h.outlook_state(email)
        async with h.services.db.read() as conn:
            dupes = await conn.scalar(text(
                "SELECT count(*) FROM (SELECT remote_id FROM messages GROUP BY account_id, "
                "remote_id HAVING count(*) > 1) d"))
        assert dupes == 0


async def test_imap_only_token_cannot_sync_over_graph(
    db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path) as h:
        account_id = await h.add_outlook("ivan@example.com", kind="imap")
        account = await mailboxes.find(h.services, str(account_id))
        assert account.token_kind == "imap"
        results = await h.sync()
        assert [(r.status, r.error_kind) for r in results] == [("reauth_required",
                                                                "wrong_token_kind")]
        assert "Microsoft Graph option" in (results[0].error or "")


async def mailboxes_request_sync(h: Harness, account_id: int) -> None:
    await mailboxes.request_sync(h.services, account_id, "test")
