"""How often and how late a failed change is tried again (the outbox's retries, a sink's redelivery)."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how late a failed event is tried again before it becomes a dead letter."""

    max_attempts: int = 5
    initial: float = 1.0
    maximum: float = 300.0

    def delay(self, attempts: int) -> float:
        """Seconds before attempt ``attempts + 1`` (exponential, with jitter of ±25 %)."""
        base = min(self.maximum, self.initial * 2 ** max(0, attempts - 1))
        return float(base * random.uniform(0.75, 1.25))  # noqa: S311 - jitter, not cryptography
