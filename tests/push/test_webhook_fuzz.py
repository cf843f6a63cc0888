"""Hypothesis fuzzing of the Gmail and Outlook push webhooks (see tests/push/webhook_fuzz.py),
on SQLite and PostgreSQL. The benchmark entry point runs the same with ≥ 10,000 cases.

The two fuzz tests are not given a fixed seed: each run draws a fresh one (so the suite keeps
exploring new cases run after run, as an unseeded hypothesis test does) and names it when a
property breaks, so any failure can be replayed with ``run_fuzz(..., seed=)``."""

from __future__ import annotations

import secrets

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from maildesk.app import create_app
from maildesk.domain.accounts import ProviderKind
from maildesk.store import push as push_store
from tests.push.test_gmail_webhook import AUDIENCE, EMAIL, SIGNER, StaticKeys, _configure
from tests.push.webhook_fuzz import FuzzTarget, run_fuzz
from tests.support.fake_graph_push import OutlookRig, outlook_rig
from tests.support.harness import Harness

EXAMPLES = 150


@pytest.fixture(scope="module")
def google_key() -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


async def test_gmail_webhook_survives_fuzzing(harness: Harness, google_key: RSAPrivateKey) -> None:
    account_id = await harness.add_gmail(EMAIL)
    await _configure(harness, account_id)
    harness.services.gmail_webhook._keys = StaticKeys({"k1": google_key.public_key()})
    target = FuzzTarget(google_key, AUDIENCE, SIGNER, EMAIL, harness.clock.now().timestamp(),
                        subscription_id="none", client_state="")
    app = create_app(harness.services)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://maildesk") as client:
        report = await run_fuzz(client, target, examples=EXAMPLES, which="gmail")
    assert report.problems == [], f"replay with seed {report.seed}"
    assert report.cases >= EXAMPLES
    # The fuzzing reached past the token check, not only the cheap rejections.
    assert report.statuses.get(202, 0) > 0, report.statuses
    assert report.statuses.get(403, 0) > 0, report.statuses


async def _outlook_target(rig: OutlookRig, email: str) -> tuple[int, str, FuzzTarget]:
    """A connected Outlook mailbox with a live subscription: (account id, subscription id,
    the fuzz target that knows its subscription and clientState)."""
    account_id = await rig.add_outlook(email)
    row = await rig.push.enable(account_id, ProviderKind.OUTLOOK, {})
    assert row.sub.subscription_id is not None
    client_state = await rig.push.client_state(account_id)
    assert client_state is not None
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    target = FuzzTarget(key, "", "", "", rig.h.clock.now().timestamp(),
                        subscription_id=row.sub.subscription_id, client_state=client_state)
    return account_id, row.sub.subscription_id, target


async def test_outlook_webhooks_survive_fuzzing(harness: Harness) -> None:
    async with outlook_rig(harness) as rig:
        account_id, subscription_id, target = await _outlook_target(rig, "fuzz@contoso.example")
        report = await run_fuzz(rig.client, target, examples=EXAMPLES, which="outlook")
        assert report.problems == [], f"replay with seed {report.seed}"
        assert report.cases >= EXAMPLES
        assert report.statuses.get(202, 0) > 0, report.statuses
        assert report.statuses.get(400, 0) > 0, report.statuses
        # Whatever was thrown at it, the subscription is still ours and intact.
        async with harness.services.db.read() as conn:
            rows = await push_store.for_account(conn, account_id)
        assert [r.sub.subscription_id for r in rows] == [subscription_id]




REPLAY_EXAMPLES = 40


async def test_a_seed_replays_the_same_cases(harness: Harness) -> None:
    async with outlook_rig(harness) as rig:
        _, _, target = await _outlook_target(rig, "replay@contoso.example")
        seed = secrets.randbelow(2**32)
        runs = [await run_fuzz(rig.client, target, examples=REPLAY_EXAMPLES, which="outlook",
                               seed=s) for s in (seed, seed, seed + 1)]
        unseeded = await run_fuzz(rig.client, target, examples=REPLAY_EXAMPLES, which="outlook")
    first, replay, other = runs
    assert [r.seed for r in runs] == [seed, seed, seed + 1]
    assert first.cases >= REPLAY_EXAMPLES
    assert replay.trail == first.trail, f"seed {seed} did not replay its cases"
    assert other.trail != first.trail, "another seed draws other cases"
    # An unseeded run draws its own seed and records it, so it can be replayed too.
    assert unseeded.seed is not None
    assert unseeded.trail != first.trail
