"""Fixtures of the provider-client tests (``clock`` comes from ``tests/conftest.py``)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from maildesk.clock import ManualClock
from maildesk.providers.http import ProviderHttp

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
async def make_http(clock: ManualClock) -> AsyncIterator[Callable[..., ProviderHttp]]:
    """``make_http(handler, **options)``: a ProviderHttp over ``httpx.MockTransport(handler)``
    on the test's manual clock, with seeded jitter. Its clients are closed after the test."""
    clients: list[httpx.AsyncClient] = []

    def make(handler: Handler, **options: Any) -> ProviderHttp:
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        clients.append(client)
        return ProviderHttp(client, clock=clock, rng=random.Random(7), **options)

    yield make
    for client in clients:
        await client.aclose()
