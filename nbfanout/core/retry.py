"""Retry policy: which categories are retried, how long to wait, and when to give up.

Shaped like stamina: you say what is retryable (``on=``), attempts and total time are both
bounded, and the provider's own wait (retry-after, "try again in", retryDelay) always wins
over our backoff. Backoff is exponential with full jitter, capped; where waiting too little
would only hammer a provider (a refusal with no wait named) or give up inside a short outage (a
dropped connection, a 5xx), the jitter is equal: at least half of each step is always waited.
With the defaults (6 attempts from 0.5 s) the five waits after dropped connections or 5xx
answers add up to at least 7.75 s, so a provider or network that is down for a few seconds is
ridden out instead of failing every request sent meanwhile; ``max_attempts`` stays the bound.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from nbfanout.core.errors import RETRYABLE, ErrorCategory, ErrorInfo

__all__ = ["RetryPolicy"]

#: Faults of a provider or network that may be down for a few seconds.
_OUTAGE = frozenset({ErrorCategory.NETWORK, ErrorCategory.SERVER_ERROR})
#: Failures after which a short wait would only hammer or give up too soon: at least half of each step.
_EQUAL_JITTER = frozenset({ErrorCategory.RATE_LIMIT, ErrorCategory.OVERLOADED, *_OUTAGE})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try again and how long to wait first.

    ``jitter=False`` gives the deterministic upper bound of each backoff (for tests).
    """

    on: frozenset[ErrorCategory] = RETRYABLE
    max_attempts: int = 6
    timeout_s: float = 120.0  # per request
    deadline_s: float | None = None  # for the whole request, all attempts and waits included
    base_s: float = 0.5
    max_backoff_s: float = 30.0
    max_wait_s: float = 600.0  # a provider asking for longer (a daily quota) ends the request instead
    jitter: bool = True
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_s <= 0 or self.max_backoff_s <= 0:
            raise ValueError("base_s and max_backoff_s must be positive")

    def backoff(self, attempt: int) -> float:
        """Our own wait after failed attempt number ``attempt`` (1-based): full jitter, capped."""
        ceiling = min(self.max_backoff_s, self.base_s * 2 ** (attempt - 1))
        return self.rng.uniform(0.0, ceiling) if self.jitter else ceiling

    def wait_after(self, attempt: int, info: ErrorInfo) -> tuple[float, str]:
        """How long to wait after this failure, and why ("provider asked" or "backoff").

        A refusal (rate limit, overload) that names no wait means the capacity is in use right
        now: waiting less than half the backoff would only hammer it, so those get equal jitter.
        """
        if info.retry_after_s is not None and info.retry_after_s >= 0:
            return float(info.retry_after_s), "provider asked"
        wait = self.backoff(attempt)
        if info.category in _EQUAL_JITTER:
            ceiling = min(self.max_backoff_s, self.base_s * 2 ** (attempt - 1))
            wait = ceiling / 2 + wait / 2 if self.jitter else ceiling
        return wait, "backoff"

    def retryable(self, info: ErrorInfo) -> bool:
        return info.category in self.on

    def decide(self, attempt: int, info: ErrorInfo, elapsed_s: float) -> tuple[bool, float, str]:
        """(retry?, wait seconds, reason) after failed attempt ``attempt`` at ``elapsed_s`` into the request."""
        if not self.retryable(info):
            return False, 0.0, f"{info.category.value} is not retried"
        if attempt >= self.max_attempts:
            return False, 0.0, f"gave up after {attempt} attempts"
        wait, reason = self.wait_after(attempt, info)
        if wait > self.max_wait_s:
            return False, wait, f"the provider asks to wait {wait:.0f}s, longer than max_wait_s={self.max_wait_s:.0f}s"
        if self.deadline_s is not None and elapsed_s + wait >= self.deadline_s:
            return False, wait, f"waiting {wait:.1f}s would pass the {self.deadline_s:.0f}s deadline"
        return True, wait, reason
