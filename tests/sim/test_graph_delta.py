"""Delta queries of the Microsoft simulator: paging, delta links, removals, 410, duplicates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from maildesk.clock import ManualClock
from tests.sim.test_microsoft_world import EMAIL, MsWorld, graph_error, ms_world

DELTA = "/me/mailFolders/inbox/messages/delta"


@pytest.fixture
async def world(clock: ManualClock) -> AsyncIterator[MsWorld]:
    async with ms_world(clock) as w:
        yield w


async def follow(
    world: MsWorld, url: str | None = None, size: int | None = None
) -> tuple[list[list[dict[str, Any]]], str]:
    """Every page of one round (from ``url`` or from scratch); (pages, deltaLink)."""
    headers = {**world.auth, "Prefer": 'IdType="ImmutableId"'}
    if size is not None:
        headers["Prefer"] += f", odata.maxpagesize={size}"
    target = url or f"http://sim/v1.0{DELTA}?$select=id,subject,isRead,parentFolderId"
    pages: list[list[dict[str, Any]]] = []
    while True:
        response = await world.http.get(target, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["value"])
        if "@odata.deltaLink" in body:
            assert "@odata.nextLink" not in body
            return pages, body["@odata.deltaLink"]
        target = body["@odata.nextLink"]
        assert target.startswith("http://sim/v1.0/me/mailFolders/inbox/messages/delta?$skiptoken=")


def ids(pages: list[list[dict[str, Any]]]) -> list[str]:
    return [item["id"] for page in pages for item in page]


async def test_round_from_scratch_pages_newest_first_then_delta_link(world: MsWorld) -> None:
    now = world.clock.now()
    added = [world.add(f"m{i}", received_at=now - timedelta(minutes=10 - i)) for i in range(7)]
    world.add("elsewhere", folder="archive")
    pages, delta_link = await follow(world, size=3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert ids(pages) == added[::-1]
    assert "$deltatoken=" in delta_link
    assert delta_link.startswith("http://sim/v1.0/")
    item = pages[0][0]
    assert set(item) == {"@odata.type", "@odata.etag", "id", "subject", "isRead",
                         "parentFolderId"}  # fmt: skip
    # Nothing changed: the next round is empty and hands out a new delta link.
    empty, _ = await follow(world, delta_link)
    assert empty == [[]]


async def test_default_page_size_is_100(world: MsWorld) -> None:
    world.state.seed_mailbox(EMAIL, 0)
    for i in range(130):
        world.add(f"m{i}")
    pages, _ = await follow(world)
    assert [len(p) for p in pages] == [100, 30]


async def test_incremental_round_reports_changes_and_removals(world: MsWorld) -> None:
    keep, read, gone, moved = (world.add(s) for s in ("keep", "read", "gone", "moved"))
    _, delta_link = await follow(world)
    new = world.add("new")
    world.state.update_message(EMAIL, read, is_read=True)
    world.state.delete_message(EMAIL, gone)
    world.state.move_message(EMAIL, moved, "archive")
    pages, next_delta = await follow(world, delta_link, size=2)
    items = {item["id"]: item for page in pages for item in page}
    assert keep not in items
    assert items[new]["subject"] == "new"
    assert items[read]["isRead"] is True
    assert items[gone] == {"@odata.type": "#microsoft.graph.message", "id": gone,
                           "@removed": {"reason": "deleted"}}  # fmt: skip
    assert items[moved]["@removed"] == {"reason": "changed"}
    # The archive folder sees the moved message arrive.
    archive = world.state.mailbox(EMAIL).folder("archive").id
    archive_round = await world.get(f"/me/mailFolders/{archive}/messages/delta")
    assert [m["id"] for m in archive_round.json()["value"]] == [moved]
    # Moving back in shows up as the item again.
    world.state.move_message(EMAIL, moved, "inbox")
    pages, _ = await follow(world, next_delta)
    assert ids(pages) == [moved]
    assert "@removed" not in pages[0][0]


async def test_changes_during_a_round_come_again_in_the_next(world: MsWorld) -> None:
    for i in range(4):
        world.add(f"m{i}")
    first = await world.get(DELTA, headers={"Prefer": "odata.maxpagesize=2"})
    late = world.add("arrived while paging")
    pages, delta_link = await follow(world, first.json()["@odata.nextLink"], size=2)
    assert late not in [first_item["id"] for first_item in first.json()["value"]] + ids(pages)
    again, _ = await follow(world, delta_link)
    assert late in ids(again)


async def test_expired_delta_token_answers_410_then_a_fresh_round_works(world: MsWorld) -> None:
    world.add()
    _, delta_link = await follow(world)
    world.state.expire_delta(EMAIL, "inbox")
    gone = await world.http.get(delta_link, headers=world.auth)
    assert gone.status_code == 410
    assert graph_error(gone) == "SyncStateNotFound"
    pages, _ = await follow(world)
    assert len(ids(pages)) == 1
    # The code can be resyncRequired instead.
    _, delta_link = await follow(world)
    world.state.expire_delta(EMAIL, code="resyncRequired")
    resync = await world.http.get(delta_link, headers=world.auth)
    assert (resync.status_code, graph_error(resync)) == (410, "resyncRequired")


async def test_skip_tokens_die_with_the_folder_too(world: MsWorld) -> None:
    for i in range(3):
        world.add(f"m{i}")
    first = await world.get(DELTA, headers={"Prefer": "odata.maxpagesize=1"})
    world.state.expire_delta(EMAIL)
    dead = await world.http.get(first.json()["@odata.nextLink"], headers=world.auth)
    assert dead.status_code == 410


async def test_duplicate_fault_repeats_items(world: MsWorld) -> None:
    message_id = world.add()
    world.state.delta_faults.duplicate = 1
    pages, _ = await follow(world)
    assert ids(pages) == [message_id, message_id]
    pages, _ = await follow(world)
    assert ids(pages) == [message_id]


async def test_tokens_of_another_folder_or_garbage_are_refused(world: MsWorld) -> None:
    world.add()
    _, delta_link = await follow(world)
    wrong = delta_link.replace("/inbox/", "/archive/")
    assert (await world.http.get(wrong, headers=world.auth)).status_code == 400
    garbage = await world.get(DELTA, params={"$deltatoken": "%%%not-a-token"})
    assert garbage.status_code == 400
