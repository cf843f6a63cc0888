"""The realtime test timeline: the pure checkpoint evaluation, and the six checkpoints read from
what a real push through the simulator leaves in the store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from maildesk.domain.accounts import ProviderKind
from maildesk.push import timeline
from maildesk.push.timeline import Observations, evaluate
from maildesk.store.tables import messages
from tests.push.gmail_pubsub import PUSH_SETTINGS
from tests.support.harness import Harness

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def statuses(t: timeline.Timeline) -> list[str]:
    return [c.status for c in t.checkpoints]


def test_nothing_seen_is_waiting_while_young_and_missing_later() -> None:
    young = evaluate("gmail", T0, Observations(), at(30))
    assert statuses(young) == ["waiting"] * 6
    assert young.observed == 0
    assert not young.complete
    assert "checkpoint 1" in young.hint
    assert "HTTP 405" in young.hint
    old = evaluate("gmail", T0, Observations(), at(121))
    assert statuses(old) == ["missing"] * 6
    finished = evaluate("gmail", T0, Observations(), at(5), finished_at=at(5))
    assert statuses(finished) == ["missing"] * 6


def test_each_checkpoint_observed_with_its_time_and_gaps_explained() -> None:
    seen = Observations(delivered=at(1), verified=at(1), sync_started=at(2), row=None,
                        body=at(3), visible=None)
    result = evaluate("gmail", T0, seen, at(10))
    assert statuses(result) == ["observed", "observed", "observed", "missing", "observed",
                                "waiting"]
    assert [c.at for c in result.checkpoints][:3] == [at(1), at(1), at(2)]
    assert result.observed == 4
    assert "checkpoint 4" in result.hint
    titles = [c.title for c in result.checkpoints]
    assert titles == [
        "Pub/Sub delivered the notification to your webhook",
        "MailDesk verified the OIDC signature + audience",
        "Gmail history sync triggered for the mailbox",
        "Single-source-of-truth row created/updated",
        "Message body prefetched and cached",
        "Message visible in the MailDesk inbox",
    ]
    everything = Observations(at(0), at(1), at(2), at(3), at(4), at(5))
    done = evaluate("outlook", T0, everything, at(500))
    assert done.complete
    assert done.hint == ""
    assert done.checkpoints[1].title == "MailDesk verified the notification's clientState"


def test_a_refusal_at_checkpoint_two_names_its_reason_and_the_fix() -> None:
    seen = Observations(delivered=at(1), rejected="audience mismatch")
    result = evaluate("gmail", T0, seen, at(200))
    assert statuses(result)[:2] == ["observed", "missing"]
    assert "re-aligns the audience and saves the signer" in result.hint
    assert "audience mismatch" in result.hint


EMAIL = "timeline@example.com"


async def _observed(h: Harness, run: timeline.TestRun, count: int) -> timeline.Timeline:
    async with asyncio.timeout(10):
        while True:
            async with h.services.db.read() as conn:
                seen = await timeline.observe(conn, run)
            result = evaluate(run.provider, run.started_at, seen, h.clock.now())
            if result.observed >= count:
                return result
            await asyncio.sleep(0.02)


async def test_a_real_push_reaches_five_checkpoints_and_the_browser_report_the_sixth(
    pushing: Harness,
) -> None:
    h = pushing
    account_id = await h.add_gmail(EMAIL, seed=5)
    await h.sync_until_idle()
    await h.services.push.enable(account_id, ProviderKind.GMAIL, PUSH_SETTINGS)
    async with h.services.db.read() as conn:
        assert await timeline.current_test(conn, account_id) is None
        old_id = int((await conn.execute(select(messages.c.id).where(
            messages.c.account_id == account_id).limit(1))).scalar_one())
    async with h.services.db.transaction() as conn:
        await timeline.start_test(conn, account_id, "gmail", h.clock.now())
    async with h.services.db.read() as conn:
        run = await timeline.current_test(conn, account_id)
    assert run is not None
    assert run.finished_at is None
    async with h.services.db.read() as conn:
        before = evaluate("gmail", run.started_at, await timeline.observe(conn, run),
                          h.clock.now())
    assert before.observed == 0, "nothing from before the test counts"

    async with h.serving():
        h.google.add_message(EMAIL, subject="Timeline probe", sender="a@example.org",
                             to=EMAIL, text="hello", html="<p>hello</p>")
        result = await _observed(h, run, 5)
    assert statuses(result) == ["observed"] * 5 + ["waiting"]

    async with h.services.db.read() as conn:
        new_id = int((await conn.execute(select(messages.c.id).where(
            messages.c.account_id == account_id,
            messages.c.subject == "Timeline probe"))).scalar_one())
    async with h.services.db.transaction() as conn:
        assert not await timeline.record_visible(conn, account_id, old_id, h.clock.now()), \
            "a message from before the test is not the test's"
        assert await timeline.record_visible(conn, account_id, new_id, h.clock.now())
        assert not await timeline.record_visible(conn, account_id, new_id, h.clock.now()), \
            "once per test"
    result = await _observed(h, run, 6)
    assert result.complete

    async with h.services.db.transaction() as conn:
        await timeline.finish_test(conn, run, h.clock.now())
        assert not await timeline.record_visible(conn, account_id, new_id, h.clock.now())
        finished = await timeline.current_test(conn, account_id)
    assert finished is not None
    assert finished.finished_at is not None
