"""Rate budgets: RPM, TPM, RPD and concurrency per provider, per key and per model.

A request is admitted only when every budget that applies to it (its provider, its key,
its model) has room, so the provider never has to refuse it. Request and token rates are
aiolimiter leaky buckets sized so that no 60-second window ever holds more than the limit:
a bucket of capacity ``b`` draining at ``r`` per second admits at most ``b + 60·r`` in any
60 s, so we drain at ``(limit - b) / 60``, with ``b`` a small burst (2 % of the limit, at
least one request, and at least the largest request seen for tokens). That holds against
providers that count in sliding windows as well as those that refill token buckets.

Budgets learn: rate-limit headers (remaining / reset) put a budget on cooldown until the
reset; limits stated in headers or 429 bodies replace configured ones; and a budget with
no known limit adapts on its own: a 429 halves its request rate (from what it actually
achieved), successes raise it slowly. Learned limits persist in a JSON state file.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aiolimiter import AsyncLimiter

from nbfanout.core.clock import Clock, LoopClock
from nbfanout.core.errors import ErrorCategory, ErrorInfo
from nbfanout.core.events import BudgetStats
from nbfanout.core.headers import RateSnapshot

__all__ = ["Budget", "BudgetSet", "LearnedLimits", "default_state_path"]

WINDOW_S = 60.0
DAY_S = 86_400.0
BURST_FRACTION = 0.02


class _Rate:
    """One leaky bucket bounded so any 60 s window stays within ``limit`` (see module docstring)."""

    def __init__(self, limit: float, period: float = WINDOW_S, burst: float | None = None) -> None:
        self.limit = float(limit)
        self.period = period
        self.burst = min(self.limit, max(1.0, burst if burst is not None else math.floor(self.limit * BURST_FRACTION)))
        drain = (self.limit - self.burst) / period if self.limit > self.burst else self.limit / (period * 1.001)
        # AsyncLimiter(max_rate, time_period): capacity max_rate, draining max_rate/time_period per second
        self.bucket = AsyncLimiter(self.burst, self.burst / drain)

    def fits(self, amount: float) -> bool:
        return amount <= self.burst

    def has_capacity(self, amount: float) -> bool:
        return self.bucket.has_capacity(min(amount, self.burst))

    def wait(self, amount: float) -> float:
        """Seconds until ``amount`` fits (0 when it fits now)."""
        amount = min(amount, self.burst)
        if self.bucket.has_capacity(amount):
            return 0.0
        # aiolimiter exposes no time-to-capacity; its level and drain rate give it exactly
        excess = self.bucket._level + amount - self.bucket.max_rate  # noqa: SLF001
        return max(1e-3, excess / self.bucket._rate_per_sec)  # noqa: SLF001

    async def acquire(self, amount: float) -> None:
        await self.bucket.acquire(min(amount, self.burst))

    def grown(self, amount: float, used: float, now: float) -> _Rate:
        """A bucket whose burst holds ``amount`` (≤ limit), starting as full as the last window was.

        Carrying over what was admitted in the last 60 s (``used``) keeps the window bound: the new
        bucket can only add ``burst + drain·60 − used`` on top of what is already in the window.
        """
        new = _Rate(self.limit, self.period, burst=max(self.burst, min(amount, self.limit)))
        new.bucket._level = used  # noqa: SLF001 - aiolimiter has no setter for its level
        new.bucket._last_check = now  # noqa: SLF001
        return new


@dataclass
class Budget:
    """The limits of one scope (a provider, a key or a model) and what has been used of them."""

    scope: str  # "provider", "key" or "model"
    name: str
    rpm: float | None = None
    tpm: float | None = None
    rpd: float | None = None
    concurrency: int | None = None
    clock: Clock = field(default_factory=LoopClock, repr=False)
    adaptive: bool = False  # no published limit: learn one from 429s (AIMD)
    on_learned: Callable[[str, str, float | None, float | None, str], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.in_flight = 0
        self.cooldown_until = 0.0
        self.disabled: str | None = None
        self._requests: deque[float] = deque()
        self._tokens: deque[tuple[float, float]] = deque()
        self._day: deque[float] = deque()
        self._rpm_bucket = _Rate(self.rpm) if self.rpm else None
        self._tpm_bucket = _Rate(self.tpm) if self.tpm else None
        self._successes_since_cut = 0

    # --- reading ------------------------------------------------------------------------
    def _trim(self, now: float) -> None:
        while self._requests and self._requests[0] <= now - WINDOW_S:
            self._requests.popleft()
        while self._tokens and self._tokens[0][0] <= now - WINDOW_S:
            self._tokens.popleft()
        while self._day and self._day[0] <= now - DAY_S:
            self._day.popleft()

    def wait_time(self, tokens: float) -> float:
        """0 when a request of ``tokens`` could be admitted now, else a lower bound on the wait."""
        now = self.clock.now()
        self._trim(now)
        if self.disabled:
            return math.inf
        waits = [max(0.0, self.cooldown_until - now)]
        if self.concurrency is not None and self.in_flight >= self.concurrency:
            waits.append(0.05)  # frees when a request finishes; re-checked on release
        if self.rpd is not None and len(self._day) >= self.rpd:
            waits.append(self._day[0] + DAY_S - now)
        if self._rpm_bucket is not None:
            waits.append(self._rpm_bucket.wait(1))
        if self._tpm_bucket is not None and tokens:
            if tokens > self._tpm_bucket.limit:
                return math.inf  # can never fit: see too_large()
            if not self._tpm_bucket.fits(tokens):
                used = sum(a for _, a in self._tokens)
                self._tpm_bucket = self._tpm_bucket.grown(tokens, used, now)
            waits.append(self._tpm_bucket.wait(tokens))
        return max(waits)

    def too_large(self, tokens: float) -> bool:
        """True when one request of ``tokens`` exceeds this budget's whole per-minute token limit."""
        return self.tpm is not None and tokens > self.tpm

    @property
    def recent_requests(self) -> int:
        """Requests admitted in the last 60 s (how "used" a key is, for least-used-first)."""
        self._trim(self.clock.now())
        return len(self._requests)

    def has_capacity(self, tokens: float = 0) -> bool:
        """Non-blocking probe: would a request of ``tokens`` be admitted now?"""
        return self.wait_time(tokens) == 0.0

    def statistics(self) -> BudgetStats:
        now = self.clock.now()
        self._trim(now)
        return BudgetStats(
            scope=self.scope,
            name=self.name,
            rpm_limit=self.rpm,
            rpm_used=float(len(self._requests)),
            tpm_limit=self.tpm,
            tpm_used=float(sum(a for _, a in self._tokens)),
            rpd_limit=self.rpd,
            rpd_used=len(self._day),
            concurrency_limit=self.concurrency,
            in_flight=self.in_flight,
            cooldown_s=max(0.0, self.cooldown_until - now),
            disabled=self.disabled,
        )

    # --- admitting ----------------------------------------------------------------------
    async def take(self, tokens: float) -> None:
        """Charge one request of ``tokens``; call only after ``has_capacity`` said yes (no waiting then)."""
        now = self.clock.now()
        if self._rpm_bucket is not None:
            await self._rpm_bucket.acquire(1)
        if self._tpm_bucket is not None and tokens:
            await self._tpm_bucket.acquire(tokens)
        self._requests.append(now)
        self._day.append(now)
        if tokens:
            self._tokens.append((now, float(tokens)))
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    def charge_extra(self, tokens: float) -> None:
        """Reconcile: the response used more tokens than estimated; count the difference."""
        if tokens <= 0:
            return
        self._tokens.append((self.clock.now(), float(tokens)))
        if self._tpm_bucket is not None:
            # may overfill the bucket: later requests then simply wait longer for it to drain
            self._tpm_bucket.bucket.has_capacity(0)  # drains up to now first
            self._tpm_bucket.bucket._level += tokens  # noqa: SLF001

    # --- learning -----------------------------------------------------------------------
    def set_limit(self, metric: str, value: float | None, source: str) -> None:
        old = getattr(self, metric)
        if value is None or value == old or value <= 0:
            return
        setattr(self, metric, int(value) if metric == "concurrency" else float(value))
        if metric == "rpm":
            self._rpm_bucket = _Rate(value)
            self._rpm_bucket.bucket._level = self._rpm_bucket.burst  # noqa: SLF001 - start full: we just learned we were over
            self._rpm_bucket.bucket._last_check = self.clock.now()  # noqa: SLF001
        elif metric == "tpm":
            self._tpm_bucket = _Rate(value)
        if self.on_learned:
            self.on_learned(f"{self.scope}:{self.name}", metric, old, value, source)

    def cool_down(self, seconds: float) -> None:
        self.cooldown_until = max(self.cooldown_until, self.clock.now() + max(0.0, seconds))

    def learn_from_headers(self, snap: RateSnapshot) -> None:
        """Headers are the provider's own accounting: adopt its limits, pause when it says 0 remain."""
        if snap.limit_requests and (self.rpm is None or snap.limit_requests < self.rpm):
            self.set_limit("rpm", snap.limit_requests, "headers")
        if snap.limit_tokens and (self.tpm is None or snap.limit_tokens < self.tpm):
            self.set_limit("tpm", snap.limit_tokens, "headers")
        if snap.remaining_requests == 0 and snap.reset_requests_s:
            self.cool_down(snap.reset_requests_s)
        if snap.remaining_tokens == 0 and snap.reset_tokens_s:
            self.cool_down(snap.reset_tokens_s)

    def learn_from_429(self, info: ErrorInfo) -> None:
        """A refusal: take any limit the body states; without one, cut the rate (multiplicative decrease)."""
        hint = info.limit_hint
        if hint is not None and hint.limit and hint.kind in ("rpm", "tpm", "rpd", "concurrency"):
            if getattr(self, hint.kind) is None or hint.limit < getattr(self, hint.kind):
                self.set_limit(hint.kind, hint.limit, "429 body")
            return
        if self.adaptive and info.category == ErrorCategory.RATE_LIMIT:
            self._trim(self.clock.now())
            achieved = max(1.0, float(len(self._requests)))
            target = max(1.0, math.floor(min(self.rpm or achieved, achieved) * 0.5))
            self._successes_since_cut = 0
            self.set_limit("rpm", target, "adaptive")

    def learn_from_success(self) -> None:
        """Additive increase for adaptive budgets: +1 RPM after each ``rpm`` successes."""
        if not self.adaptive or self.rpm is None:
            return
        self._successes_since_cut += 1
        if self._successes_since_cut >= self.rpm:
            self._successes_since_cut = 0
            old = self.rpm
            self.rpm = old + 1
            self._rpm_bucket = _Rate(self.rpm)
            if self.on_learned:
                self.on_learned(f"{self.scope}:{self.name}", "rpm", old, self.rpm, "adaptive")

    def __repr__(self) -> str:
        s = self.statistics()
        parts = [f"{self.scope} {self.name!r}"]
        if self.rpm:
            parts.append(f"rpm {s.rpm_used:.0f}/{self.rpm:g}")
        if self.tpm:
            parts.append(f"tpm {s.tpm_used:.0f}/{self.tpm:g}")
        if self.rpd:
            parts.append(f"rpd {s.rpd_used}/{self.rpd:g}")
        parts.append(f"in flight {self.in_flight}" + (f"/{self.concurrency}" if self.concurrency else ""))
        if s.cooldown_s:
            parts.append(f"cooldown {s.cooldown_s:.1f}s")
        if self.disabled:
            parts.append(f"disabled: {self.disabled}")
        return f"<Budget {', '.join(parts)}>"


class BudgetSet:
    """All budgets of a run; admits a request only when all of its budgets have room at once."""

    def __init__(self, clock: Clock | None = None, learned: LearnedLimits | None = None) -> None:
        self.clock = clock or LoopClock()
        self.learned = learned
        self._budgets: dict[tuple[str, str], Budget] = {}
        self.listeners: list[Callable[[str, str, float | None, float | None, str], None]] = []

    def budget(self, scope: str, name: str, **limits: float | int | None) -> Budget:
        """The budget for (scope, name), created on first use with ``limits`` (learned ones win)."""
        key = (scope, name)
        if key not in self._budgets:
            known = {k: v for k, v in limits.items() if k in ("rpm", "tpm", "rpd", "concurrency") and v is not None}
            if self.learned is not None:
                for metric, value in self.learned.get(f"{scope}:{name}").items():
                    if metric not in known or value < known[metric]:
                        known[metric] = value
            adaptive = bool(limits.get("adaptive")) and "rpm" not in known
            self._budgets[key] = Budget(
                scope, name, clock=self.clock, adaptive=adaptive, on_learned=self._learned, **known  # type: ignore[arg-type]
            )
        return self._budgets[key]

    def _learned(self, scope: str, metric: str, old: float | None, new: float | None, source: str) -> None:
        if self.learned is not None and new is not None and source != "adaptive":
            self.learned.record(scope, metric, new)
        for listener in self.listeners:
            listener(scope, metric, old, new, source)

    def wait_time(self, budgets: Iterable[Budget], tokens: float) -> float:
        return max((b.wait_time(tokens) for b in budgets), default=0.0)

    async def take(self, budgets: Iterable[Budget], tokens: float) -> None:
        """Charge every budget; the caller has just checked ``wait_time(...) == 0`` without awaiting."""
        for b in budgets:
            await b.take(tokens)

    def statistics(self) -> tuple[BudgetStats, ...]:
        return tuple(b.statistics() for b in self._budgets.values())

    def __repr__(self) -> str:
        return f"<BudgetSet {len(self._budgets)} budgets>"


def default_state_path() -> Path:
    """Where learned limits persist: $NBFANOUT_STATE, else the user's cache directory."""
    if os.environ.get("NBFANOUT_STATE"):
        return Path(os.environ["NBFANOUT_STATE"])
    base = os.environ.get("XDG_CACHE_HOME") or (
        os.path.join(os.environ["LOCALAPPDATA"]) if os.name == "nt" and "LOCALAPPDATA" in os.environ else os.path.expanduser("~/.cache")
    )
    return Path(base) / "nbfanout" / "learned_limits.json"


class LearnedLimits:
    """Limits learned from providers, saved as JSON so the next run starts from them."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_state_path()
        self._data: dict[str, dict[str, dict[str, float]]] = {}
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(raw, dict):
                self._data = {k: v for k, v in raw.items() if isinstance(v, dict)}
        except (OSError, ValueError):
            self._data = {}

    def get(self, scope: str) -> dict[str, float]:
        return {m: float(v["value"]) for m, v in self._data.get(scope, {}).items() if isinstance(v, dict) and "value" in v}

    def record(self, scope: str, metric: str, value: float) -> None:
        self._data.setdefault(scope, {})[metric] = {"value": value, "learned_at": time.time()}

    def save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._data, indent=1, sort_keys=True), encoding="utf-8")
            tmp.replace(self.path)
        except OSError:
            pass  # a read-only home must not fail a run; the limits are simply learned again

    def __repr__(self) -> str:
        return f"<LearnedLimits {self.path} {sum(len(v) for v in self._data.values())} limits>"
