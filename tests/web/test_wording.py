"""Operator-facing realtime sentences: IMAP's IDLE is described as the connection it is, not as
a provider registration."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from maildesk.push.status import PushStatus
from maildesk.web.wording import realtime_text


def _status(provider: str, state: str, *, error: str | None = None) -> PushStatus:
    return PushStatus(account_id=1, email="a@example.org", provider=provider, state=state,
                      resource="INBOX, Support", subscription_id="worker-1",
                      expiration=datetime(2026, 1, 1, tzinfo=UTC), last_notification_at=None,
                      last_renewal_at=None, failure_count=2, last_error=error, settings={})


@pytest.mark.parametrize(("state", "words"), [
    ("active", "holds an IDLE connection on INBOX, Support"),
    ("pending", "polled every 2 minutes"),
    ("error", "reconnected with growing pauses"),
])
def test_imap_rows_speak_of_the_idle_connection(state: str, words: str) -> None:
    text = realtime_text(_status("imap", state, error="unavailable: connection reset"),
                         "imap", 2)
    assert text.state == state
    assert words in text.detail
    assert "subscription" not in text.detail
    assert "registered" not in text.detail


def test_graph_rows_still_speak_of_the_subscription() -> None:
    assert "subscription is registered" in realtime_text(
        _status("outlook", "active"), "outlook", 2).detail
