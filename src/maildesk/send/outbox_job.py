"""The periodic ``outbox`` job: what is due in the outbox, and housekeeping.

Every run: due retries and attempts that crashed mid-send are sent, owed IMAP Sent copies are
appended, an unsent row whose local entry is gone is settled (the provider has the message
after all: marked sent; else the entry is put back — provider sweeps themselves never touch
local entries), and sent rows whose local entry was replaced more
than a week ago are forgotten. The work per run is bounded and found through indexes, so its
cost grows with what is due, not with the size of the outbox.
"""

from __future__ import annotations

from datetime import timedelta

from maildesk.send.delivery import Delivery
from maildesk.store import outbox as outbox_store

# How often the job looks (retries are due at their own time; this is the latency on top).
INTERVAL = 15.0
BATCH = 50
SENT_KEPT = timedelta(days=7)


async def run(delivery: Delivery) -> str:
    """One run of the job; the detail line for the job log."""
    counts = await delivery.run_due(BATCH)
    async with delivery.db.transaction() as conn:
        pruned = await outbox_store.prune_sent(conn, delivery.clock.now() - SENT_KEPT)
    return (f"attempted {counts['attempted']}, sent {counts['sent']}, copies {counts['copies']}, "
            f"restored {counts['restored']}, pruned {pruned}")
