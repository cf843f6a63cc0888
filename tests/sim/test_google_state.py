"""The simulator's in-memory model: mailboxes, history, seeding, OAuth state, faults."""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest

from maildesk.clock import ManualClock
from maildesk.errors import InputError, NotFound
from maildesk.sim.auth_codes import pkce_challenge
from maildesk.sim.faults import FaultInjector, FaultRule, drop_fields
from maildesk.sim.gmail_mime import parse_headers
from maildesk.sim.gmail_objects import HISTORY_TYPES
from maildesk.sim.gmail_state import GoogleState
from maildesk.sim.mailbox import MAX_HISTORY_SCAN, Mailbox
from maildesk.sim.oauth_state import OAuthError
from maildesk.sim.wire import SimRequest, SimResponse, google_error

EMAIL = "alice@example.com"
FULL = "https://mail.google.com/"


def make_state(seed: int = 7, clock: ManualClock | None = None) -> GoogleState:
    return GoogleState(clock=clock or ManualClock(), rng=random.Random(seed))


def add(
    state: GoogleState,
    subject: str = "hello",
    *,
    sender: str = "Bob <bob@example.com>",
    text: str | None = None,
    html: str | None = None,
    labels: Sequence[str] = ("INBOX", "UNREAD"),
    internal_date: int | datetime | None = None,
    message_id_header: str | None = None,
) -> str:
    return state.add_message(
        EMAIL,
        subject=subject,
        sender=sender,
        to=EMAIL,
        text=f"text of {subject}" if text is None else text,
        html=f"<p>{subject}</p>" if html is None else html,
        labels=labels,
        internal_date=internal_date,
        message_id_header=message_id_header,
    )


def all_history(
    box: Mailbox,
    start: int,
    *,
    types: Sequence[str] = (),
    label_id: str | None = None,
    max_results: int = 100,
) -> list[dict[str, Any]]:
    """Every history record after ``start``, following page tokens."""
    records: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page, token = box.history_page(
            start, types=types, label_id=label_id, page_token=token, max_results=max_results
        )
        records += [r.to_json(types or HISTORY_TYPES) for r in page]
        if token is None:
            return records


# -- messages and labels ---------------------------------------------------------------------


def test_message_ids_are_16_hex_digits_unique_and_grow_with_the_date() -> None:
    state = make_state()
    state.ensure_mailbox(EMAIL)
    ids = [add(state, f"m{i}", internal_date=1_700_000_000_000 + i * 1000) for i in range(200)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
    assert len(set(ids)) == 200
    assert ids == sorted(ids)  # like Gmail's, later messages get larger ids


def test_raw_message_is_rfc5322_with_text_and_html_alternatives() -> None:
    state = make_state()
    state.ensure_mailbox(EMAIL)
    when = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    mid = add(
        state,
        "Héllo “quoted” wörld",
        sender='"Smith, J." <j@example.org>',
        text="Grüße\nline two",
        html="<p>Grüße</p>",
        internal_date=when,
        message_id_header="<fixed@example.org>",
    )
    message = state.mailbox(EMAIL).get(mid)
    parsed = BytesParser(policy=policy.default).parsebytes(message.raw())
    assert isinstance(parsed, EmailMessage)
    assert parsed["Subject"] == "Héllo “quoted” wörld"
    assert parsed["From"].addresses[0].display_name == "Smith, J."
    assert parsed["To"] == EMAIL
    assert parsed["Message-ID"] == "<fixed@example.org>"
    assert parsed["Date"].datetime == when
    assert parsed.get_content_type() == "multipart/alternative"
    plain, html = parsed.get_body(("plain",)), parsed.get_body(("html",))
    assert plain is not None
    assert plain.get_content().replace("\r\n", "\n").strip() == "Grüße\nline two"
    assert html is not None
    assert html.get_content().strip() == "<p>Grüße</p>"
    assert message.internal_date == int(when.timestamp() * 1000)
    # format=metadata reads stored headers; they must equal what the bytes say.
    assert message.headers() == parse_headers(message.raw())
    assert message.snippet == "Grüße line two"
    assert abs(message.size_estimate - len(message.raw())) < 0.5 * len(message.raw())


def test_raw_bytes_are_deterministic() -> None:
    first, second = make_state(), make_state()
    for state in (first, second):
        state.ensure_mailbox(EMAIL)
    a, b = add(first, internal_date=1), add(second, internal_date=1)
    assert a == b
    assert first.mailbox(EMAIL).get(a).raw() == second.mailbox(EMAIL).get(b).raw()


def test_unknown_labels_mailboxes_and_messages_are_typed_errors() -> None:
    state = make_state()
    state.ensure_mailbox(EMAIL)
    with pytest.raises(InputError, match="Invalid label: NOPE"):
        add(state, labels=["NOPE"])
    mid = add(state)
    with pytest.raises(InputError):
        state.modify_labels(EMAIL, mid, add=["INBOX"], remove=["INBOX"])
    with pytest.raises(NotFound):
        state.delete_message(EMAIL, "0" * 16)
    with pytest.raises(NotFound):
        state.add_message("nobody@example.com", subject="", sender="a@b.c", to="", text="", html="")


def test_user_labels_get_label_n_ids_and_names_are_unique() -> None:
    state = make_state()
    state.ensure_mailbox(EMAIL)
    first = state.create_label(EMAIL, "Customers")
    second = state.create_label(EMAIL, "Travel")
    assert (first, second) == ("Label_1", "Label_2")
    assert state.create_label(EMAIL, "Customers") == first
    types = {la.id: la.type for la in state.mailbox(EMAIL).labels.values()}
    assert types["INBOX"] == "system"
    assert types["Label_2"] == "user"


# -- history ---------------------------------------------------------------------------------


def test_every_change_appends_one_record_of_the_right_type() -> None:
    state = make_state()
    box = state.ensure_mailbox(EMAIL)
    start = box.history_id
    mid = add(state)
    state.modify_labels(EMAIL, mid, add=["STARRED"], remove=["UNREAD"])
    state.modify_labels(EMAIL, mid, add=["STARRED"])  # no change: no record
    state.trash_message(EMAIL, mid)
    state.delete_message(EMAIL, mid)
    records = all_history(box, start)
    message = {"id": mid, "threadId": mid}
    assert [set(r) - {"id", "messages"} for r in records] == [
        {"messagesAdded"},
        {"labelsAdded", "labelsRemoved"},
        {"labelsAdded", "labelsRemoved"},
        {"messagesDeleted"},
    ]
    assert records[0]["messagesAdded"] == [
        {"message": {**message, "labelIds": ["INBOX", "UNREAD"]}}
    ]
    assert records[1]["labelsAdded"] == [
        {"message": {**message, "labelIds": ["INBOX", "STARRED"]}, "labelIds": ["STARRED"]}
    ]
    assert records[1]["labelsRemoved"] == [
        {"message": {**message, "labelIds": ["INBOX", "STARRED"]}, "labelIds": ["UNREAD"]}
    ]
    # Moving to Bin is TRASH added + INBOX removed; deleting is messagesDeleted.
    assert records[2]["labelsAdded"][0]["labelIds"] == ["TRASH"]
    assert records[2]["labelsRemoved"][0]["labelIds"] == ["INBOX"]
    assert records[3]["messagesDeleted"] == [
        {"message": {**message, "labelIds": ["STARRED", "TRASH"]}}
    ]
    ids = [int(str(r["id"])) for r in records]
    assert ids == sorted(ids)
    assert len(set(ids)) == 4
    assert ids[-1] == box.history_id


def test_history_ids_grow_with_random_gaps() -> None:
    state = make_state()
    box = state.ensure_mailbox(EMAIL)
    start = box.history_id
    for i in range(50):
        add(state, f"m{i}")
    ids = [int(str(r["id"])) for r in all_history(box, start)]
    gaps = {b - a for a, b in zip([start, *ids], ids, strict=False)}
    assert min(gaps) >= 1
    assert len(gaps) > 5


def test_history_pages_filters_and_tokens() -> None:
    state = make_state()
    box = state.ensure_mailbox(EMAIL)
    start = box.history_id
    ids = [add(state, f"m{i}") for i in range(7)]
    state.trash_message(EMAIL, ids[0])
    state.modify_labels(EMAIL, ids[1], add=["STARRED"])
    state.delete_message(EMAIL, ids[2])
    paged = all_history(box, start, max_results=2)
    assert paged == all_history(box, start)
    assert len(paged) == 10
    added = all_history(box, start, types=["messageAdded"])
    assert len(added) == 7
    assert all("messagesAdded" in r for r in added)
    # Type filtering also strips the other kinds from a record that has several.
    removed = all_history(box, start, types=["labelRemoved"])
    assert [set(r) for r in removed] == [{"id", "messages", "labelsRemoved"}]
    starred = all_history(box, start, label_id="STARRED")
    assert [r["messages"] for r in starred] == [[{"id": ids[1], "threadId": ids[1]}]]
    # Starting at the newest id gives nothing; starting mid-way gives the rest.
    assert all_history(box, box.history_id) == []
    middle = int(str(paged[4]["id"]))
    assert all_history(box, middle) == paged[5:]


def test_filtered_history_scans_a_bounded_window_per_page() -> None:
    state = make_state()
    box = state.ensure_mailbox(EMAIL)
    start = box.history_id
    for i in range(MAX_HISTORY_SCAN * 3):
        add(state, f"m{i}", internal_date=i)
    page, token = box.history_page(
        start, types=["messageDeleted"], label_id=None, page_token=None, max_results=100
    )
    # Nothing matches, yet one page stops after a bounded scan and hands back a token.
    assert page == []
    assert token is not None
    pages = 1
    while token is not None:
        page, token = box.history_page(
            start, types=["messageDeleted"], label_id=None, page_token=token, max_results=100
        )
        assert page == []
        pages += 1
    assert pages == 3


def test_expired_history_is_not_found_below_the_minimum() -> None:
    state = make_state()
    box = state.ensure_mailbox(EMAIL)
    start = box.history_id
    add(state)
    minimum = state.expire_history(EMAIL)
    assert minimum == box.history_id == box.min_history_id
    with pytest.raises(NotFound):
        box.history_page(start, types=(), label_id=None, page_token=None, max_results=10)
    later = add(state)
    records = all_history(box, minimum)
    assert [r["messages"] for r in records] == [[{"id": later, "threadId": later}]]


def test_listeners_hear_every_change_with_its_history_id() -> None:
    state = make_state()
    box = state.ensure_mailbox(EMAIL)
    heard: list[tuple[str, int]] = []
    unsubscribe = state.subscribe(lambda email, hid: heard.append((email, hid)))
    mid = add(state)
    state.trash_message(EMAIL, mid)
    unsubscribe()
    add(state)
    assert [e for e, _ in heard] == [EMAIL, EMAIL]
    assert heard[-1][1] == box.get(mid).history_id


# -- listing -----------------------------------------------------------------------------------


def list_all(box: Mailbox, labels: list[str], include: bool, size: int) -> list[str]:
    found: list[str] = []
    token: str | None = None
    while True:
        page, token, _ = box.list_page(
            labels, include_spam_trash=include, page_token=token, max_results=size
        )
        found += [m.id for m in page]
        if token is None:
            return found


def test_listing_is_newest_first_and_filters_labels_spam_and_trash() -> None:
    state = make_state()
    state.seed_mailbox(EMAIL, 400)
    box = state.mailbox(EMAIL)
    messages = sorted(box.all_messages(), key=lambda m: m.key, reverse=True)
    visible = [m.id for m in messages if not m.label_ids & {"SPAM", "TRASH"}]
    assert list_all(box, [], False, 37) == visible
    assert list_all(box, [], True, 500) == [m.id for m in messages]
    unread_inbox = [m.id for m in messages if {"INBOX", "UNREAD"} <= m.label_ids]
    assert list_all(box, ["INBOX", "UNREAD"], False, 10) == unread_inbox
    trash = [m.id for m in messages if "TRASH" in m.label_ids]
    assert trash
    assert list_all(box, ["TRASH"], False, 10) == trash
    assert list_all(box, ["Label_999"], False, 10) == []


def test_listing_pages_stay_consistent_while_new_mail_arrives() -> None:
    state = make_state()
    state.seed_mailbox(EMAIL, 120)
    box = state.mailbox(EMAIL)
    before = list_all(box, ["INBOX"], False, 1000)
    page, token, _ = box.list_page(
        ["INBOX"], include_spam_trash=False, page_token=None, max_results=30
    )
    add(state, "newer than everything")
    seen = [m.id for m in page]
    while token is not None:
        page, token, _ = box.list_page(
            ["INBOX"], include_spam_trash=False, page_token=token, max_results=30
        )
        seen += [m.id for m in page]
    assert seen == before


def test_bad_page_tokens_are_input_errors() -> None:
    state = make_state()
    box = state.ensure_mailbox(EMAIL)
    with pytest.raises(InputError):
        box.list_page([], include_spam_trash=False, page_token="garbage", max_results=5)
    with pytest.raises(InputError):
        box.history_page(box.history_id, types=(), label_id=None, page_token="x", max_results=5)


def _best_time(action: Callable[[], None], repeat: int = 30) -> float:
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - began)
    return best


def test_page_cost_does_not_grow_with_the_mailbox() -> None:
    small, large = make_state(1), make_state(2)
    small.seed_mailbox(EMAIL, 300)
    large.seed_mailbox(EMAIL, 20_000)

    def deep_page(state: GoogleState) -> Callable[[], None]:
        box = state.mailbox(EMAIL)
        oldest_visible = sorted(box.all_messages(), key=lambda m: m.key)[250]
        token = f"{oldest_visible.internal_date}.{oldest_visible.id}"
        start = box.history_id - 1  # only the newest record is after this

        def run() -> None:
            box.list_page(["INBOX"], include_spam_trash=False, page_token=token, max_results=50)
            box.history_page(start, types=(), label_id=None, page_token=None, max_results=50)

        return run

    ratio = _best_time(deep_page(large)) / _best_time(deep_page(small))
    # An O(mailbox) implementation is ~60x slower on the large one.
    assert ratio < 8


# -- seeding -----------------------------------------------------------------------------------


def test_seeding_is_deterministic_under_the_seed() -> None:
    one, two, other = make_state(5), make_state(5), make_state(6)
    for state in (one, two, other):
        state.seed_mailbox(EMAIL, 300, days=30)
    assert one.snapshot(EMAIL) == two.snapshot(EMAIL)
    assert one.snapshot(EMAIL)["messages"] != other.snapshot(EMAIL)["messages"]
    box_one, box_two = one.mailbox(EMAIL), two.mailbox(EMAIL)
    some = sorted(one.snapshot(EMAIL)["messages"])[:5]
    assert [box_one.get(i).raw() for i in some] == [box_two.get(i).raw() for i in some]


def test_seeded_mailbox_is_a_realistic_mix() -> None:
    clock = ManualClock()
    state = make_state(3, clock)
    ids = state.seed_mailbox(EMAIL, 3000, days=90)
    box = state.mailbox(EMAIL)
    assert len(ids) == len(set(ids)) == box.messages_total == 3000
    counts = Counter(label for m in box.all_messages() for label in m.label_ids)
    share = {label: n / 3000 for label, n in counts.items()}
    assert share["INBOX"] > 0.6
    assert 0.05 < share["SENT"] < 0.25
    assert 0.005 < share["TRASH"] < 0.06
    assert 0.005 < share["SPAM"] < 0.06
    assert 0.1 < share["UNREAD"] < 0.5
    assert sum(n for label, n in counts.items() if label.startswith("Label_")) > 100
    assert box.threads_total < 2900  # some replies joined earlier threads
    now_ms = int(clock.now().timestamp() * 1000)
    dates = [m.internal_date for m in box.all_messages()]
    assert now_ms - 90 * 86_400_000 <= min(dates)
    assert max(dates) <= now_ms
    assert max(dates) - min(dates) > 80 * 86_400_000  # spread over the period
    senders = {m.headers()[1][1] for m in box.all_messages()}
    assert len(senders) > 30
    sent = next(m for m in box.all_messages() if "SENT" in m.label_ids)
    assert dict(sent.headers())["From"] == EMAIL


def test_seeding_twenty_thousand_messages_is_fast() -> None:
    state = make_state()
    began = time.perf_counter()
    state.seed_mailbox(EMAIL, 20_000)
    assert time.perf_counter() - began < 10
    assert state.mailbox(EMAIL).messages_total == 20_000


# -- sending -----------------------------------------------------------------------------------


def test_send_stores_sent_and_delivers_to_simulated_recipients() -> None:
    state = make_state()
    state.ensure_mailbox(EMAIL)
    state.ensure_mailbox("bob@example.com")
    raw = b"To: Bob <bob@example.com>, carol@elsewhere.test\r\nSubject: hi\r\n\r\nHello Bob\r\n"
    sent = state.send_message(EMAIL, raw)
    assert sent.label_ids == {"SENT"}
    headers = dict(parse_headers(sent.raw()))
    assert headers["From"] == EMAIL
    assert headers["Message-ID"].startswith("<")
    assert sent.snippet == "Hello Bob"
    bob = state.snapshot("bob@example.com")["messages"]
    assert list(bob.values()) == [["INBOX", "UNREAD"]]
    with pytest.raises(InputError):
        state.send_message(EMAIL, raw, thread_id="ffffffffffffffff")


# -- OAuth -------------------------------------------------------------------------------------


def test_access_tokens_expire_and_die_with_their_grant() -> None:
    clock = ManualClock()
    state = make_state(clock=clock)
    refresh = state.create_grant(EMAIL, [FULL])
    token = state.issue_access_token(refresh)
    assert state.oauth.authenticate(token) is not None
    clock.advance(3599)
    assert state.oauth.authenticate(token) is None
    fresh = state.issue_access_token(refresh)
    assert state.expire_access_tokens(EMAIL) == 1
    assert state.oauth.authenticate(fresh) is None
    live = state.issue_access_token(refresh)
    state.revoke_grant(refresh)
    assert state.oauth.authenticate(live) is None
    with pytest.raises(NotFound):
        state.issue_access_token(refresh)


def test_refresh_checks_the_grant_and_the_client_it_belongs_to() -> None:
    state = make_state()
    mine, other = state.create_client("mine", "s1"), state.create_client("other", "s2")
    refresh = state.create_grant(EMAIL, [FULL], client_id="mine")
    assert state.oauth.refresh(mine, refresh).email == EMAIL
    with pytest.raises(OAuthError) as wrong_client:
        state.oauth.refresh(other, refresh)
    assert wrong_client.value.status == 400
    with pytest.raises(OAuthError) as bad_secret:
        state.oauth.check_client("mine", "wrong")
    assert (bad_secret.value.status, bad_secret.value.error) == (401, "invalid_client")
    state.revoke_grant(refresh)
    with pytest.raises(OAuthError) as revoked:
        state.oauth.refresh(mine, refresh)
    assert revoked.value.error == "invalid_grant"


def test_pkce_s256_matches_rfc7636_example() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


# -- faults ------------------------------------------------------------------------------------


async def test_fault_rules_match_wear_out_and_rewrite_answers() -> None:
    faults = FaultInjector()
    faults.add(FaultRule(path=r"/history$", method="GET", status=429, retry_after=2.5, count=1))
    faults.add(FaultRule(path=r"/history$", drop_fields=("historyId",)))

    async def real(_: SimRequest) -> SimResponse:
        return SimResponse(payload={"historyId": "9", "history": [{"id": "8", "historyId": "x"}]})

    request = SimRequest("GET", "/gmail/v1/users/me/history")
    limited = await faults.run(request, real, global_latency=True)
    assert limited.status == 429
    assert limited.headers["Retry-After"] == "3"
    assert limited.payload["error"]["errors"][0]["reason"] == "rateLimitExceeded"
    trimmed = await faults.run(request, real, global_latency=True)
    assert trimmed.payload == {"history": [{"id": "8"}]}
    other = await faults.run(
        SimRequest("POST", "/gmail/v1/users/me/watch"), real, global_latency=True
    )
    assert other.payload["historyId"] == "9"
    assert [r.count for r in faults.rules] == [0, None]


def test_fault_rules_reject_bad_input() -> None:
    with pytest.raises(InputError):
        FaultRule(path="(unclosed")
    with pytest.raises(InputError):
        FaultRule.from_json({"path": "x", "sttaus": 500})
    assert drop_fields([{"a": 1, "b": {"a": 2, "c": 3}}], frozenset({"a"})) == [{"b": {"c": 3}}]


def test_quota_reasons_use_the_usage_limits_domain() -> None:
    answer = google_error(403, reason="userRateLimitExceeded")
    assert answer.payload["error"]["status"] == "PERMISSION_DENIED"
    assert answer.payload["error"]["errors"] == [
        {
            "domain": "usageLimits",
            "reason": "userRateLimitExceeded",
            "message": "User Rate Limit Exceeded",
        }
    ]
