"""The one clock that limits, retries and rotation read: the running event loop's time.

Waiting requests are woken by this clock's timers (``call_later``). Tests inject time by
running on a loop whose time is fast-forwarded (the ``looptime`` pytest plugin): budgets, retries and rotation then
run in virtual time, deterministically and without really sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "LoopClock"]


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> asyncio.TimerHandle: ...


class LoopClock:
    """Seconds on the running loop's monotonic clock; sleeping is ``asyncio.sleep``."""

    def now(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:  # read from sync code (statistics between runs): the loops' own clock
            return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def call_later(self, delay: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        """Run ``callback`` after ``delay`` seconds of this clock (how waiters wake exactly on time)."""
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)

    def __repr__(self) -> str:
        return "LoopClock()"
