"""The Microsoft simulator served over real HTTP on loopback, as the demo runs it: the lifespan
owns the outbound client that validates subscriptions and delivers notifications."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

import httpx

from maildesk.clock import SystemClock
from maildesk.sim.graph_wire import subscription_time
from maildesk.sim.microsoft import create_microsoft_app
from maildesk.sim.microsoft_state import MicrosoftState
from maildesk.sim.server import serve_app
from tests.sim.test_microsoft_world import CLIENT_ID, CLIENT_SECRET, GRAPH_SCOPE, Receiver

EMAIL = "team@contoso.test"


async def test_served_simulator_validates_and_notifies_over_loopback() -> None:
    clock = SystemClock()
    state = MicrosoftState(clock=clock, rng=random.Random(3), notify_backoff_scale=0.001)
    state.register_app(CLIENT_ID, CLIENT_SECRET)
    state.seed_mailbox(EMAIL, 25)
    refresh = state.grant(EMAIL)
    receiver = Receiver()
    app = create_microsoft_app(state, deliver_notifications=True)
    async with (
        serve_app(receiver.app()) as hooks,
        serve_app(app) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        token = await http.post(
            "/common/oauth2/v2.0/token",
            data={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scope": GRAPH_SCOPE,
                  "grant_type": "refresh_token", "refresh_token": refresh},
        )  # fmt: skip
        auth = {"Authorization": f"Bearer {token.json()['access_token']}"}
        folders = await http.get("/v1.0/me/mailFolders", params={"$top": "100"}, headers=auth)
        names = {f["displayName"] for f in folders.json()["value"]}
        assert {"Inbox", "Projects", "Receipts"} <= names
        delta = await http.get(
            "/v1.0/me/mailFolders/inbox/messages/delta",
            headers={**auth, "Prefer": "odata.maxpagesize=5"},
        )
        assert delta.json()["@odata.nextLink"].startswith(base + "/v1.0/")
        created = await http.post(
            "/v1.0/subscriptions",
            headers=auth,
            json={
                "changeType": "created", "resource": "/me/messages",
                "notificationUrl": f"{hooks}/push", "lifecycleNotificationUrl": f"{hooks}/life",
                "expirationDateTime": subscription_time(clock.now() + timedelta(days=2)),
                "clientState": "cs",
            },
        )  # fmt: skip
        assert created.status_code == 201, created.text
        assert [h.path for h in receiver.validations()] == ["/push", "/life"]
        control = await http.post(f"/_sim/mailboxes/{EMAIL}/messages", json={"subject": "new"})
        new_id = control.json()["id"]
        for _ in range(200):
            if receiver.notifications("/push"):
                break
            await asyncio.sleep(0.01)
        [hit] = receiver.notifications("/push")
        assert hit.json()["value"][0]["resourceData"]["id"] == new_id
        assert hit.json()["value"][0]["clientState"] == "cs"
