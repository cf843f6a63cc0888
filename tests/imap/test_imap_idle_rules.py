"""The pure rules of IMAP realtime (``domain/idle.py``): folder plan, moved, health, fingerprint."""

from __future__ import annotations

import pytest

from maildesk.domain.idle import (
    FolderSnapshot,
    Health,
    IdlePlan,
    WatchHealth,
    moved,
    plan_folders,
    sign_in_fingerprint,
)
from maildesk.domain.push import PushState


@pytest.mark.parametrize(("folders", "bound", "plan"), [
    (("INBOX",), 3, IdlePlan(("INBOX",), ())),
    (("INBOX", "Sent", "Archive", "Drafts"), 3, IdlePlan(("INBOX", "Sent"), ("Archive", "Drafts"))),
    (("INBOX", "Sent"), 2, IdlePlan(("INBOX",), ("Sent",))),
    # One connection per mailbox: it is the sync run's; nothing IDLEs, the mailbox is polled.
    (("INBOX", "Sent"), 1, IdlePlan((), ())),
    # INBOX is case-insensitive; duplicates are watched once.
    (("inbox", "Work", "INBOX", "Work"), 5, IdlePlan(("INBOX", "Work"), ())),
])
def test_plan_keeps_a_slot_for_the_sync_run(
    folders: tuple[str, ...], bound: int, plan: IdlePlan
) -> None:
    got = plan_folders(folders, bound)
    assert got == plan
    assert len(got.idle) <= max(0, bound - 1)


SYNCED = FolderSnapshot(uidvalidity=7, uidnext=11, exists=10, highest_modseq=40)


@pytest.mark.parametrize(("seen", "reason"), [
    (FolderSnapshot(7, 11, 10, 40), None),
    (FolderSnapshot(7, 12, 11, 41), "UIDNEXT moved"),
    (FolderSnapshot(8, 11, 10, 40), "UIDVALIDITY changed"),
    (FolderSnapshot(7, 11, 9, 41), "the message count differs"),
    (FolderSnapshot(7, 11, 10, 45), "HIGHESTMODSEQ moved"),
    # What the server does not report is not compared.
    (FolderSnapshot(7, 11, 10, None), None),
])
def test_moved_compares_the_server_with_the_store(
    seen: FolderSnapshot, reason: str | None
) -> None:
    assert moved(SYNCED, seen) == reason


def test_moved_ignores_unknown_stored_values_but_not_a_missing_sync() -> None:
    window_only = FolderSnapshot(7, 11, None, None)  # backfill not done: count not comparable
    assert moved(window_only, FolderSnapshot(7, 11, 500, 3)) is None
    assert moved(window_only, FolderSnapshot(7, 13, 502, 3)) == "UIDNEXT moved"
    assert moved(None, SYNCED) == "the folder has not been synced yet"
    assert moved(FolderSnapshot(None, None, 0), SYNCED) == "the folder has not been synced yet"


def test_health_is_active_only_when_every_folder_idles() -> None:
    health = WatchHealth(["INBOX", "Sent"])
    assert health.overall() == Health(PushState.PENDING)
    assert health.up("INBOX").state is PushState.PENDING
    assert health.up("Sent") == Health(PushState.ACTIVE)
    down = health.down("Sent", "unavailable", "connection reset")
    assert down == Health(PushState.ERROR, "unavailable", "Sent: connection reset")
    assert health.up("Sent") == Health(PushState.ACTIVE)


def test_fingerprint_changes_with_the_sign_in_only() -> None:
    base = sign_in_fingerprint("pw-enc", None, {"username": "a"})
    assert base == sign_in_fingerprint("pw-enc", None, {"username": "a"})
    assert base != sign_in_fingerprint("pw-enc-2", None, {"username": "a"})
    assert base != sign_in_fingerprint("pw-enc", "token", {"username": "a"})
    assert base != sign_in_fingerprint("pw-enc", None, {"username": "b"})
    assert "pw-enc" not in base
