"""What Gmail puts on the wire for a push: which changes a watch lets through, and the body.

Pure functions over the simulator's objects, used by ``maildesk.sim.pubsub``.
"""

from __future__ import annotations

import base64
import json

from maildesk.errors import InputError
from maildesk.sim.gmail_objects import HistoryRecord, Watch
from maildesk.sim.mailbox import Mailbox
from maildesk.sim.pubsub_types import PublishRecord, rfc3339


def push_body(record: PublishRecord, subscription: str, attempt: int) -> bytes:
    """The JSON a push POSTs: the PubsubMessage (both spellings of its fields) and envelope."""
    data = json.dumps({"emailAddress": record.email, "historyId": record.history_id})
    published = rfc3339(record.published_at)
    message = {
        "attributes": {},
        "data": base64.b64encode(data.encode()).decode(),
        "messageId": record.message_id,
        "message_id": record.message_id,
        "publishTime": published,
        "publish_time": published,
    }
    envelope = {"message": message, "subscription": subscription, "deliveryAttempt": attempt}
    return json.dumps(envelope).encode()


def change_record(mailbox: Mailbox, history_id: int) -> HistoryRecord | None:
    """The record the change just appended (None if history no longer has it)."""
    try:
        page, _ = mailbox.history_page(
            history_id - 1, types=(), label_id=None, page_token=None, max_results=1
        )
    except InputError:  # NotFound too: history expired under the change
        return None
    return page[0] if page and page[0].id == history_id else None


def watch_wants(watch: Watch, record: HistoryRecord) -> bool:
    """The watch's label filter: include notifies when the message carried one of the labels
    before or after the change; exclude when it carried none of them either time."""
    if not watch.label_ids:
        return True
    touched = set(record.label_ids) | set(record.labels_removed)
    hit = not touched.isdisjoint(watch.label_ids)
    return hit if watch.label_filter_behavior.lower() == "include" else not hit
