"""A harness whose Google simulator delivers Gmail push through Pub/Sub to our webhook, with
polling effectively off (a poll interval of days): what arrives, arrived through push."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from maildesk.clock import ManualClock
from maildesk.push.manager import gmail_push_settings
from maildesk.sim.gmail_state import GoogleState
from tests.support.harness import MAILDESK, Harness

PUSH_URL = f"{MAILDESK}/maildesk/push/gmail"  # also the OIDC audience
SIGNER = "gmail-push@proj.iam.gserviceaccount.com"
TOPIC = "projects/proj/topics/gmail"
DAYS = 10 * 86400
# What an administrator enters for this Pub/Sub setup (``PushManager.enable``'s settings).
PUSH_SETTINGS = gmail_push_settings(project="proj", topic=TOPIC, audience=PUSH_URL,
                                    signers=[SIGNER])


@pytest.fixture
async def pushing(db_url: str, clock: ManualClock, tmp_path: Path) -> AsyncIterator[Harness]:
    google = GoogleState(clock=clock, rng=random.Random(5))
    async with Harness.open(db_url=db_url, clock=clock, data_dir=tmp_path, google=google,
                            poll_interval=DAYS, safety_poll_interval=DAYS) as h:
        google.pubsub.add_subscription(TOPIC, PUSH_URL, audience=PUSH_URL,
                                       service_account=SIGNER)
        google.pubsub.backoff_scale = 0.001
        yield h
