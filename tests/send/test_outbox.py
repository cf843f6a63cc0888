"""The outbox's failure rules against the Google simulator's fault injection: transient
failures retried with backoff by the ``outbox`` job, permanent ones and exhausted attempts
left in Drafts with the error, "Try sending again", a crashed attempt, an attempt whose answer
was lost, a local entry removed behind its back, and a send before the folders were listed."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest

from maildesk import mailboxes
from maildesk.clock import ManualClock
from maildesk.domain.compose import Draft, OutboxState
from maildesk.errors import InputError
from maildesk.send import service
from maildesk.send.delivery import SENDING_DEADLINE
from maildesk.store import mail as mail_store
from maildesk.store import outbox as outbox_store
from tests.support.harness import Harness

from .helpers import stored, with_header

ALICE = "alice@example.com"
SEND_PATH = "/messages/send"


def _sends(h: Harness) -> int:
    return sum(1 for r in h.requests if r.method == "POST" and r.url.path.endswith(SEND_PATH))


def _copies(h: Harness, header: str) -> int:
    parser = BytesParser(policy=policy.default)
    return sum(1 for m in h.google.mailbox(ALICE).all_messages()
               if parser.parsebytes(m.raw()).get("Message-ID") == header)


async def _outbox_job(h: Harness) -> str:
    [job] = [j for j in h.services.worker.periodic if j.name == "outbox"]
    return await job.run()


@contextlib.asynccontextmanager
async def _opened(db_url: str, clock: ManualClock, tmp_path: Path,
                  **settings: Any) -> AsyncIterator[tuple[Harness, int]]:
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path, **settings) as h:
        account_id = await h.add_gmail(ALICE, seed=2)
        await h.sync_until_idle()
        yield h, account_id


DRAFT = Draft(to=("bob@example.com",), subject="Status", text="All green.")


async def test_transient_failures_are_retried_with_backoff_and_sent_once(
    db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    async with _opened(db_url, clock, tmp_path) as (h, account_id):
        h.google.add_fault(path=SEND_PATH, method="POST", status=503, count=2)
        outcome = await service.send(h.services, account_id=account_id, draft=DRAFT)
        assert outcome.state == "retrying"
        assert "503" in (outcome.error or "")
        [local] = await with_header(h.services, account_id, outcome.message_id_header)
        assert local.folders == ("sent",)  # on its way: still shown in Sent
        first = await service.outbox_item(h.services, outcome.outbox_id)
        assert first.attempts == 1
        assert first.next_attempt_at is not None
        first_wait = first.next_attempt_at - clock.now()
        assert timedelta(seconds=15) <= first_wait <= timedelta(seconds=30)

        await _outbox_job(h)  # not due yet: nothing is tried
        assert _sends(h) == 1

        clock.set(first.next_attempt_at)
        await _outbox_job(h)
        second = await service.outbox_item(h.services, outcome.outbox_id)
        assert (second.state, second.attempts, _sends(h)) == ("retrying", 2, 2)
        assert second.next_attempt_at is not None
        assert second.next_attempt_at - clock.now() >= timedelta(seconds=30)  # backed off

        clock.set(second.next_attempt_at)
        detail = await _outbox_job(h)
        assert "sent 1" in detail
        done = await service.outbox_item(h.services, outcome.outbox_id)
        assert (done.state, done.attempts, done.error) == ("sent", 3, None)
        assert _sends(h) == 3
        assert _copies(h, outcome.message_id_header) == 1

        await h.sync_until_idle()
        [copy] = await with_header(h.services, account_id, outcome.message_id_header)
        assert not copy.remote_id.startswith("local:")


async def test_exhausted_attempts_leave_the_message_in_drafts_and_resend_works(
    db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    async with _opened(db_url, clock, tmp_path, send_max_attempts=2) as (h, account_id):
        fault = h.google.add_fault(path=SEND_PATH, method="POST", status=503)
        outcome = await service.send(h.services, account_id=account_id, draft=DRAFT)
        assert outcome.state == "retrying"
        item = await service.outbox_item(h.services, outcome.outbox_id)
        assert item.next_attempt_at is not None
        clock.set(item.next_attempt_at)
        await _outbox_job(h)

        failed = await service.outbox_item(h.services, outcome.outbox_id)
        assert failed.state == "failed"
        assert "gave up after 2 attempts" in (failed.error or "")
        [draft] = await with_header(h.services, account_id, outcome.message_id_header)
        assert draft.folders == ("drafts",)
        assert draft.id == outcome.local_message_id
        behind = await service.for_message(h.services, draft.id)
        assert behind is not None
        assert behind.error == failed.error
        assert _copies(h, outcome.message_id_header) == 0

        # Not due any more: the job leaves a failed message alone.
        clock.advance(3600)
        await _outbox_job(h)
        assert _sends(h) == 2

        h.google.faults.rules.remove(fault)
        again = await service.resend(h.services, outbox_id=outcome.outbox_id)
        assert again.state == "sent"
        assert again.message_id_header == outcome.message_id_header  # the same message
        assert again.local_message_id == draft.id
        [entry] = await with_header(h.services, account_id, outcome.message_id_header)
        assert entry.folders == ("sent",)
        assert _copies(h, outcome.message_id_header) == 1
        with pytest.raises(InputError, match="sent already"):
            await service.resend(h.services, outbox_id=outcome.outbox_id)


async def test_a_permanent_failure_goes_to_drafts_at_once(
    db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    async with _opened(db_url, clock, tmp_path) as (h, account_id):
        h.google.add_fault(path=SEND_PATH, method="POST", status=400, count=1)
        outcome = await service.send(h.services, account_id=account_id, draft=DRAFT)
        assert outcome.state == "failed"
        assert "400" in (outcome.error or "")
        [draft] = await with_header(h.services, account_id, outcome.message_id_header)
        assert draft.folders == ("drafts",)
        item = await service.outbox_item(h.services, outcome.outbox_id)
        assert (item.attempts, item.next_attempt_at) == (1, None)
        assert [i.id for i in await service.outbox(h.services, account_id)] == [item.id]
        # A sync does not take a local draft away.
        await h.sync_until_idle()
        assert len(await with_header(h.services, account_id, outcome.message_id_header)) == 1


async def test_bad_recipients_are_refused_naming_the_field(
    db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    async with _opened(db_url, clock, tmp_path) as (h, account_id):
        with pytest.raises(InputError, match=r"^cc: not an email address: 'bob at example'"):
            await service.send(h.services, account_id=account_id,
                               draft=Draft(to=("a@example.com",), cc=("bob at example",)))
        with pytest.raises(InputError, match=r"^to: at least one recipient"):
            await service.send(h.services, account_id=account_id, draft=Draft(to=()))
        assert await service.outbox(h.services, account_id) == []
        assert _sends(h) == 0


async def test_an_attempt_a_crash_interrupted_is_tried_again_after_its_deadline(
    db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    async with _opened(db_url, clock, tmp_path) as (h, account_id):
        h.google.add_fault(path=SEND_PATH, method="POST", status=503, count=1)
        outcome = await service.send(h.services, account_id=account_id, draft=DRAFT)
        # As a worker that died in the middle of its attempt leaves it:
        async with h.services.db.transaction() as conn:
            await outbox_store.update_row(conn, outcome.outbox_id, clock.now(),
                                          state=OutboxState.SENDING,
                                          next_attempt_at=clock.now() + SENDING_DEADLINE)
        with pytest.raises(InputError, match="being sent"):
            await service.resend(h.services, outbox_id=outcome.outbox_id)
        clock.advance(60)
        await _outbox_job(h)
        assert _sends(h) == 1  # another worker's attempt may still be running
        clock.advance(SENDING_DEADLINE.total_seconds())
        await _outbox_job(h)
        item = await service.outbox_item(h.services, outcome.outbox_id)
        assert item.state == "sent"
        assert _copies(h, outcome.message_id_header) == 1


async def test_a_message_that_went_out_despite_an_error_is_not_sent_twice(
    db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    async with _opened(db_url, clock, tmp_path) as (h, account_id):
        h.google.add_fault(path=SEND_PATH, method="POST", status=503, count=1)
        outcome = await service.send(h.services, account_id=account_id, draft=DRAFT)
        assert outcome.state == "retrying"
        # Gmail did process that request (only its answer was lost) and the copy syncs in.
        async with h.services.db.read() as conn:
            row = await outbox_store.get(conn, outcome.outbox_id)
        h.google.send_message(ALICE, row.mime)
        await mailboxes.request_sync(h.services, account_id)  # as Gmail's push would
        await h.sync_until_idle()
        [copy] = await with_header(h.services, account_id, outcome.message_id_header)
        assert not copy.remote_id.startswith("local:")

        clock.advance(3600)
        await _outbox_job(h)
        item = await service.outbox_item(h.services, outcome.outbox_id)
        assert item.state == "sent"
        assert _sends(h) == 1
        assert _copies(h, outcome.message_id_header) == 1


async def test_a_draft_removed_behind_the_outboxs_back_is_put_back(
    db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    async with _opened(db_url, clock, tmp_path) as (h, account_id):
        h.google.add_fault(path=SEND_PATH, method="POST", status=400, count=1)
        outcome = await service.send(h.services, account_id=account_id, draft=DRAFT)
        assert outcome.local_message_id is not None
        [draft] = await with_header(h.services, account_id, outcome.message_id_header)
        async with h.services.db.transaction() as conn:  # removed by something else
            [folder] = [f for f in await mail_store.list_folders(conn, account_id)
                        if f.role.value == "drafts"]
            await mail_store.unlink_messages(conn, account_id, folder.id, [draft.remote_id],
                                             clock.now())
            await mail_store.delete_orphans(conn, account_id, [draft.id], clock.now())
        assert await with_header(h.services, account_id, outcome.message_id_header) == []
        assert (await service.outbox_item(h.services, outcome.outbox_id)).local_message_id is None

        assert "restored 1" in await _outbox_job(h)
        [back] = await with_header(h.services, account_id, outcome.message_id_header)
        assert back.folders == ("drafts",)
        item = await service.outbox_item(h.services, outcome.outbox_id)
        assert (item.state, item.local_message_id) == ("failed", back.id)


async def test_sent_before_the_first_sync_shows_in_a_stand_in_sent_folder(
    db_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path) as h:
        account_id = await h.add_gmail(ALICE, seed=2)
        outcome = await service.send(h.services, account_id=account_id, draft=DRAFT)
        assert outcome.state == "sent"
        [local] = await with_header(h.services, account_id, outcome.message_id_header)
        assert local.folders == ("sent",)
        async with h.services.db.read() as conn:
            [stand_in] = await mail_store.list_folders(conn, account_id)
        assert (stand_in.remote_id, stand_in.name) == ("local:folder:sent", "Sent")

        await h.sync_until_idle()
        async with h.services.db.read() as conn:
            sent_folders = [f.remote_id for f in await mail_store.list_folders(conn, account_id)
                            if f.role.value == "sent"]
        assert sent_folders == ["SENT"]
        [copy] = await with_header(h.services, account_id, outcome.message_id_header)
        assert copy.folders == ("sent",)
        assert not copy.remote_id.startswith("local:")
        assert len(await stored(h.services, account_id)) == 3
