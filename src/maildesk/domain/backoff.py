"""Retry and backoff policy: pure functions, the caller supplies the randomness."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered exponential backoff ("full jitter" over an exponentially growing cap).

    ``retry_after`` from the provider always wins when it is longer than our own delay.
    """

    base: float = 1.0
    cap: float = 300.0
    factor: float = 2.0

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry)."""
        ceiling = min(self.cap, self.base * self.factor ** max(0, attempt - 1))
        ours = ceiling / 2 + rng.uniform(0, ceiling / 2)
        if retry_after is not None and retry_after > ours:
            return retry_after  # not capped: callers defer rather than sleep through long waits
        return ours
