"""Scripted stand-ins for provider-client tests: an httpx MockTransport handler and a token
source."""

from __future__ import annotations

import httpx


class Script:
    """Answers from a list (the last answer repeats) and records every request. An exception
    in the list is raised instead of answering, like a transport failure."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


class Tokens:
    """A scripted TokenSource: hands out tok-1, then tok-2 after a forced refresh, and so on.
    ``calls`` records each call's ``force_refresh``."""

    def __init__(self) -> None:
        self.calls: list[bool] = []
        self.generation = 1

    async def __call__(self, *, force_refresh: bool = False) -> str:
        self.calls.append(force_refresh)
        if force_refresh:
            self.generation += 1
        return f"tok-{self.generation}"
