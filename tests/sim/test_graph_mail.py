"""Graph mail endpoints of the Microsoft simulator over HTTP: profile, folders, messages,
bodies, changes through the API, sendMail, errors and injected faults."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from maildesk.clock import ManualClock
from tests.sim.test_microsoft_world import EMAIL, MsWorld, graph_error, ms_world

SELECT = (
    "id,conversationId,internetMessageId,subject,bodyPreview,isRead,flag,receivedDateTime,from,"
    "toRecipients,parentFolderId"
)


@pytest.fixture
async def world(clock: ManualClock) -> AsyncIterator[MsWorld]:
    async with ms_world(clock) as w:
        yield w


async def test_me_and_users_forms(world: MsWorld) -> None:
    me = (await world.get("/me")).json()
    mailbox = world.state.mailbox(EMAIL)
    assert (me["id"], me["displayName"], me["mail"], me["userPrincipalName"]) == (
        mailbox.user_id,
        "Alice Example",
        EMAIL,
        EMAIL,
    )
    by_id = await world.get(f"/users/{mailbox.user_id}")
    assert by_id.json()["id"] == mailbox.user_id
    other = await world.get("/users/bob@fabrikam.test/mailFolders")
    assert other.status_code == 403
    assert graph_error(other) == "ErrorAccessDenied"
    mailbox.profile_mail = None
    assert (await world.get("/me")).json()["mail"] is None


async def test_folders_page_with_next_links_and_nest(world: MsWorld) -> None:
    projects = world.state.add_folder(EMAIL, "Projects")
    apollo = world.state.add_folder(EMAIL, "Apollo", parent=projects)
    first = await world.get("/me/mailFolders", params={"$top": "4"})
    body = first.json()
    assert len(body["value"]) == 4
    next_link = body["@odata.nextLink"]
    assert next_link.startswith("http://sim/v1.0/me/mailFolders?")
    rest = (await world.http.get(next_link, headers=world.auth)).json()
    assert "@odata.nextLink" not in rest
    names = [f["displayName"] for f in body["value"] + rest["value"]]
    assert names == [
        "Inbox", "Sent Items", "Drafts", "Deleted Items", "Junk Email", "Archive", "Projects"
    ]  # fmt: skip
    folder = next(f for f in rest["value"] if f["id"] == projects)
    assert set(folder) >= {
        "id", "displayName", "parentFolderId", "childFolderCount", "unreadItemCount",
        "totalItemCount", "isHidden",
    }  # fmt: skip
    assert folder["childFolderCount"] == 1
    children = (await world.get(f"/me/mailFolders/{projects}/childFolders")).json()["value"]
    assert [(c["id"], c["parentFolderId"]) for c in children] == [(apollo, projects)]


async def test_well_known_names_and_missing_folders(world: MsWorld) -> None:
    world.add(is_read=False)
    world.add(is_read=True)
    inbox = (await world.get("/me/mailFolders/inbox")).json()
    assert (inbox["displayName"], inbox["totalItemCount"], inbox["unreadItemCount"]) == (
        "Inbox",
        2,
        1,
    )
    assert (await world.get("/me/mailFolders('Inbox')")).json()["id"] == inbox["id"]
    world.state.create_mailbox("lean@contoso.test", well_known=("inbox", "sentitems"))
    lean = world.state.grant("lean@contoso.test")
    token = world.state.issue_access_token(lean)
    missing = await world.http.get(
        "/v1.0/me/mailFolders/archive", headers={"Authorization": f"Bearer {token}"}
    )
    assert missing.status_code == 404
    assert graph_error(missing) == "ErrorFolderNotFound"


async def test_messages_newest_first_with_top_select_and_paging(world: MsWorld) -> None:
    now = world.clock.now()
    ids = [world.add(f"m{i}", received_at=now - timedelta(hours=10 - i)) for i in range(5)]
    params = {"$orderby": "receivedDateTime desc", "$top": "3", "$select": SELECT}
    page = (await world.get("/me/mailFolders/inbox/messages", params=params)).json()
    assert [m["id"] for m in page["value"]] == ids[::-1][:3]
    item = page["value"][0]
    assert set(item) == {"@odata.etag", *SELECT.split(",")}
    assert item["from"] == {"emailAddress": {"name": "Bob", "address": "bob@fabrikam.test"}}
    assert item["toRecipients"] == [{"emailAddress": {"name": EMAIL, "address": EMAIL}}]
    assert item["flag"] == {"flagStatus": "notFlagged"}
    assert item["receivedDateTime"].endswith("Z")
    more = (await world.http.get(page["@odata.nextLink"], headers=world.auth)).json()
    assert [m["id"] for m in more["value"]] == ids[::-1][3:]
    assert "@odata.nextLink" not in more


async def test_message_body_prefers_html_or_text(world: MsWorld) -> None:
    message_id = world.add(html="<p>Hello <b>there</b></p>", text="")
    html = await world.get(
        f"/me/messages/{message_id}",
        params={"$select": "body"},
        headers={"Prefer": 'outlook.body-content-type="html"'},
    )
    assert html.json()["body"] == {"contentType": "html", "content": "<p>Hello <b>there</b></p>"}
    assert html.headers["Preference-Applied"] == 'outlook.body-content-type="html"'
    text = await world.get(
        f"/me/messages/{message_id}", headers={"Prefer": 'outlook.body-content-type="text"'}
    )
    assert text.json()["body"]["contentType"] == "text"
    assert "there" in text.json()["body"]["content"]
    gone = await world.get("/me/messages/AAkALgnope")
    assert gone.status_code == 404
    assert graph_error(gone) == "ErrorItemNotFound"


async def test_patch_move_delete_and_ids_survive_moves(world: MsWorld) -> None:
    message_id = world.add()
    patched = await world.send("PATCH", f"/me/messages/{message_id}",
                               {"isRead": True, "flag": {"flagStatus": "flagged"}})  # fmt: skip
    assert (patched.json()["isRead"], patched.json()["flag"]["flagStatus"]) == (True, "flagged")
    moved = await world.send("POST", f"/me/messages/{message_id}/move",
                             {"destinationId": "archive"})  # fmt: skip
    assert moved.status_code == 201
    archive = world.state.mailbox(EMAIL).folder("archive").id
    assert (moved.json()["id"], moved.json()["parentFolderId"]) == (message_id, archive)
    assert (await world.send("DELETE", f"/me/messages/{message_id}")).status_code == 204
    assert (await world.get(f"/me/messages/{message_id}")).status_code == 404


async def test_send_mail_saves_to_sent_items_and_delivers_locally(world: MsWorld) -> None:
    world.state.create_mailbox("carol@contoso.test")
    message = {
        "subject": "Hello Carol",
        "body": {"contentType": "text", "content": "Hi!"},
        "toRecipients": [{"emailAddress": {"address": "carol@contoso.test"}}],
    }
    answer = await world.send("POST", "/me/sendMail", {"message": message, "saveToSentItems": True})
    assert answer.status_code == 202
    sent = (await world.get("/me/mailFolders/sentitems/messages")).json()["value"]
    assert [m["subject"] for m in sent] == ["Hello Carol"]
    carol = world.state.snapshot("carol@contoso.test")["messages"]
    assert [m["subject"] for m in carol.values()] == ["Hello Carol"]


async def test_missing_scope_and_bad_tokens(world: MsWorld) -> None:
    read_only = world.state.grant(EMAIL, scopes=["https://graph.microsoft.com/Mail.Read"])
    token = world.state.issue_access_token(read_only)
    headers = {"Authorization": f"Bearer {token}"}
    assert (await world.http.get("/v1.0/me/mailFolders", headers=headers)).status_code == 200
    message_id = world.add()
    refused = await world.http.patch(
        f"/v1.0/me/messages/{message_id}", json={"isRead": True}, headers=headers
    )
    assert refused.status_code == 403
    assert graph_error(refused) == "ErrorAccessDenied"
    assert (await world.http.get("/v1.0/me")).status_code == 401
    world.state.expire_access_tokens(EMAIL)
    expired = await world.get("/me")
    assert expired.status_code == 401
    assert "expired" in expired.json()["error"]["message"]


async def test_429_with_retry_after_for_the_next_calls_then_normal(world: MsWorld) -> None:
    world.state.add_fault(path=r"/messages$", status=429, retry_after=7, count=2)
    for _ in range(2):
        limited = await world.get("/me/mailFolders/inbox/messages")
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "7"
        assert graph_error(limited) == "TooManyRequests"
    assert (await world.get("/me/mailFolders")).status_code == 200
    assert (await world.get("/me/mailFolders/inbox/messages")).status_code == 200
    world.state.add_fault(path="/me$", status=503, count=1)
    unavailable = await world.get("/me")
    assert (unavailable.status_code, graph_error(unavailable)) == (503, "ServiceUnavailable")


async def test_control_api_drives_the_mailbox(world: MsWorld) -> None:
    added = await world.http.post(
        f"/_sim/mailboxes/{EMAIL}/messages",
        json={"subject": "via control", "sender": "Dan <dan@x.test>", "is_read": True},
    )
    message_id = added.json()["id"]
    moved = await world.http.post(
        f"/_sim/mailboxes/{EMAIL}/messages/{message_id}/move", json={"folder": "junkemail"}
    )
    assert moved.status_code == 200
    state = (await world.http.get(f"/_sim/mailboxes/{EMAIL}/state")).json()
    junk = world.state.mailbox(EMAIL).folder("junkemail").id
    assert state["messages"][message_id]["folder"] == junk
    assert (await world.http.delete(f"/_sim/mailboxes/{EMAIL}/messages/nope")).status_code == 404
    revoked = await world.http.post("/_sim/grants/revoke", json={"email": EMAIL, "code": "70008"})
    assert revoked.json() == {"revoked": 1}
    assert (await world.refresh()).json()["error_codes"] == [70008]
    seeded = await world.http.post(f"/_sim/mailboxes/{EMAIL}/seed", json={"count": 40})
    assert seeded.json() == {"added": 40}


async def test_fault_control_api_lists_adds_and_clears_every_fault(world: MsWorld) -> None:
    rule = {"path": "/me$", "status": 503, "count": 1}
    added = await world.http.post("/_sim/faults", json={"rules": [rule], "latency_ms": 5})
    assert added.status_code == 200
    assert added.json()["latency_ms"] == 5.0
    assert [(r["path"], r["status"], r["count"]) for r in added.json()["rules"]] == [
        ("/me$", 503, 1)
    ]
    assert (await world.http.post("/_sim/delta-faults", json={"duplicate": 2})).json() == {
        "duplicate": 2
    }
    assert (await world.http.get("/_sim/faults")).json()["delta_duplicate"] == 2
    notify = await world.http.post("/_sim/notify-faults", json={"drop": 3, "duplicate": 2})
    assert (notify.json()["drop"], notify.json()["duplicate"]) == (3, 2)
    assert (await world.get("/me")).status_code == 503
    bad = await world.http.post("/_sim/faults", json={"rules": [{"path": "x", "stauts": 1}]})
    assert bad.status_code == 400
    assert (await world.http.delete("/_sim/notify-faults")).status_code == 204
    assert (await world.http.get("/_sim/notify-faults")).json() == {
        "drop": 0, "duplicate": 1, "delay_ms": 0.0, "wrong_client_state": 0, "reorder": 0
    }  # fmt: skip
    await world.http.post("/_sim/notify-faults", json={"reorder": 1})
    assert (await world.http.delete("/_sim/faults")).status_code == 204
    assert (await world.http.get("/_sim/faults")).json() == {
        "rules": [], "latency_ms": 0.0, "delta_duplicate": 0
    }  # fmt: skip
    # Clearing the faults clears the notification faults too.
    assert (await world.http.get("/_sim/notify-faults")).json()["reorder"] == 0
