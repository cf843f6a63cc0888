"""Shared wiring for the Microsoft simulator tests (no tests here): a state with one app and
one Graph grant, the simulator app over ASGI, and a webhook receiver the simulator's outbound
client reaches over ``httpx.ASGITransport``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from maildesk.clock import ManualClock
from maildesk.sim.microsoft import create_microsoft_app
from maildesk.sim.microsoft_state import MicrosoftState

EMAIL = "alice@contoso.test"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
CLIENT_SECRET = "sim~secret"
GRAPH_SCOPE = (
    "https://graph.microsoft.com/Mail.ReadWrite https://graph.microsoft.com/Mail.Send "
    "offline_access"
)
NOTIFY_URL = "http://maildesk/push/graph"
LIFECYCLE_URL = "http://maildesk/push/graph/lifecycle"


@dataclass
class Hit:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """MailDesk's side: answers validation requests per ``validation`` (by path) and
    notifications with ``answers`` in turn, then ``default``; ``hang`` delays answers."""

    hits: list[Hit] = field(default_factory=list)
    validation: dict[str, str] = field(default_factory=dict)  # path -> "ok"|"json"|"wrong"|"500"
    answers: list[int] = field(default_factory=list)
    default: int = 202
    hang: float = 0.0

    def app(self) -> Starlette:
        async def endpoint(request: Request) -> Response:
            body = await request.body()
            query = parse_qs(urlsplit(str(request.url)).query)
            self.hits.append(Hit(request.url.path, query, dict(request.headers), body))
            if "validationToken" in request.query_params:
                token = request.query_params["validationToken"]
                mode = self.validation.get(request.url.path, "ok")
                if mode == "json":
                    return Response(json.dumps(token), media_type="application/json")
                if mode == "wrong":
                    return Response("not-the-token", media_type="text/plain")
                if mode == "500":
                    return Response("boom", status_code=500, media_type="text/plain")
                return Response(token, media_type="text/plain")
            if self.hang:
                await asyncio.sleep(self.hang)
            return Response(status_code=self.answers.pop(0) if self.answers else self.default)

        return Starlette(routes=[Route("/{path:path}", endpoint, methods=["POST"])])

    def notifications(self, path: str = "/push/graph") -> list[Hit]:
        return [h for h in self.hits if h.path == path and "validationToken" not in h.query]

    def validations(self) -> list[Hit]:
        return [h for h in self.hits if "validationToken" in h.query]


@dataclass
class MsWorld:
    state: MicrosoftState
    clock: ManualClock
    http: httpx.AsyncClient
    receiver: Receiver
    refresh_token: str
    access_token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.auth, **kwargs.pop("headers", {})}
        return await self.http.get("/v1.0" + path, headers=headers, **kwargs)

    async def send(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return await self.http.request(method, "/v1.0" + path, json=body, headers=self.auth)

    async def refresh(self, refresh_token: str | None = None, **form: str) -> httpx.Response:
        data = {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token or self.refresh_token,
            "scope": GRAPH_SCOPE,
            **form,
        }
        return await self.http.post("/common/oauth2/v2.0/token", data=data)

    def add(self, subject: str = "hi", **kwargs: Any) -> str:
        fields: dict[str, Any] = {"sender": "Bob <bob@fabrikam.test>", "text": "hello", **kwargs}
        return self.state.add_message(EMAIL, subject=subject, **fields)


@contextlib.asynccontextmanager
async def ms_world(
    clock: ManualClock, *, notify: bool = False, scale: float = 0.001
) -> AsyncIterator[MsWorld]:
    """The world; with ``notify`` the notification deliverer runs over the receiver."""
    state = MicrosoftState(clock=clock, rng=random.Random(7), notify_backoff_scale=scale)
    state.register_app(CLIENT_ID, CLIENT_SECRET)
    state.create_mailbox(EMAIL, display_name="Alice Example")
    refresh = state.grant(EMAIL)
    receiver = Receiver()
    async with contextlib.AsyncExitStack() as stack:
        outbound = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=receiver.app()))
        )
        app = create_microsoft_app(state, outbound=outbound)
        http = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")
        )
        if notify:
            await stack.enter_async_context(state.notifier.running(outbound))
        yield MsWorld(state, clock, http, receiver, refresh, state.issue_access_token(refresh))


def graph_error(response: httpx.Response) -> str:
    """The code of a Graph error body, checking its shape."""
    error = response.json()["error"]
    assert set(error) == {"code", "message", "innerError"}
    assert set(error["innerError"]) >= {"date", "request-id"}
    return str(error["code"])
