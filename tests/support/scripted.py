"""A scripted httpx MockTransport handler for provider-client tests."""

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
