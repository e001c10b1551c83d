"""Exact limit enforcement: RPM / TPM / RPD (and audio seconds per hour / day) in one of four
shapes, a counter for concurrency.

Each pool (provider, key, group or model scope) counts its rpm, tpm and rpd in the shape
its limits table names (``L`` the limit, ``S`` its span: 60 s for rpm / tpm, 86400 s for
rpd; ``t`` the sandbox clock in seconds)::

    sliding_window  admit a at t iff sum(amounts admitted at u with t - u < S) + a <= L
                    (a sliding log; the default, and the ledger's own window definition)
    token_bucket    capacity L, starts full, refills continuously at L/S per second up to
                    L; admit a iff available >= a, then available -= a
                    (exactly aiolimiter's AsyncLimiter(L, S); its level is L - available)
    fixed_window    windows [k*S, (k+1)*S), k = floor(t / S); admit a iff the amount used in
                    t's window + a <= L; counting restarts at every boundary
    per_second      rpm / tpm only: a token bucket of capacity L/60 (rpm: at least 1) refilled at L/60 per
                    second (OpenAI: 60,000 a minute "may be enforced as 1,000 requests/second");
                    its rpd is token_bucket(L, 86400)

A request is admitted when every limit of every pool it touches admits it; it is then
charged to all of them at once, and a refused request is charged nowhere. An amount
larger than a shape's capacity (``L``, or ``L/60`` for per_second) is ``too_large``: no
wait helps. ``retry_after`` is the least time after which the request fits that limit
(computed in closed form, then nudged by float ulps until the shape's own test admits it
at ``now + retry_after``). Headers show per limit ``remaining`` (the most that could be
admitted now, floored) and ``reset`` (the time until the limit is whole again: until the
newest entry leaves a sliding log, until the bucket is full; for a fixed window, until the
current window ends, which also tells a client where the window boundaries lie).

Settlement (``tokens_counted = "usage"``): when an answer completes, the request's TPM
charge is reduced to input + actual output tokens in every pool it was charged to: a
sliding log's entry keeps its timestamp and shrinks, a bucket gets the difference back
(capped at its capacity), a fixed window gives it back if that window is still current.

Concurrency counts requests in flight (admitted, not yet answered); a request beyond the
limit is refused at once, as OpenRouter does for free models, with no retry-after.

Token amounts for TPM are estimated at admission: input characters / 4 plus
``max_tokens`` (what OpenAI counts against TPM) or the model's largest output length.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from nbfanout.sandbox.scenario import Limits, ProviderSpec, Scenario

__all__ = [
    "Charge",
    "FixedWindow",
    "Limiter",
    "Meter",
    "Pool",
    "PoolId",
    "Rejection",
    "SPANS",
    "SlidingLog",
    "TokenBucket",
    "WindowView",
    "make_meter",
]

#: Window length in seconds per windowed limit kind.
SPANS: dict[str, float] = {"rpm": 60.0, "tpm": 60.0, "rpd": 86400.0, "ash": 3600.0, "asd": 86400.0}

#: Headers floor "remaining"; a bucket refilled to 2.9999999999 by float rounding shows 3.
_SHOW_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class PoolId:
    """Which budget: scope ("provider", "key", "group", "model"), provider, name, key (masked)."""

    scope: str
    provider: str
    name: str
    key_id: str | None = None

    @property
    def label(self) -> str:
        base = f"{self.scope}:{self.provider}" + (f"/{self.name}" if self.name else "")
        return base + (f"@{self.key_id}" if self.key_id else "")


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request was not admitted: which limit, its numbers, and the exact wait.

    ``used`` is ``limit - remaining`` (for a sliding log, the sum in its window).
    """

    kind: str  # rpm | tpm | rpd | concurrency
    limit: int
    used: int
    requested: int
    retry_after_s: float | None  # None: no time would help (concurrency, or too large)
    pool: PoolId
    too_large: bool = False


@dataclass(frozen=True, slots=True)
class WindowView:
    """One limit as a provider's headers show it: limit, remaining, seconds to full reset."""

    kind: str
    limit: int
    remaining: int
    reset_s: float
    pool: PoolId


def _exact_wait(now: float, wait: float, fits: Callable[[float], bool]) -> float:
    """``wait`` grown by the fewest float steps for which ``fits(now + wait)`` holds.

    The closed-form wait can land an ulp short of the boundary after ``now + wait`` is
    rounded; a client that obeys ``retry_after`` exactly must never be refused for that.
    """
    step = max(math.ulp(now + wait), math.ulp(wait))
    for _ in range(200):
        if fits(now + wait):
            return wait
        wait += step
        step *= 2
    return wait


class Meter(Protocol):
    """One windowed limit (rpm, tpm or rpd of one pool) in one shape."""

    shape: str
    limit: int
    capacity: float  # the largest single amount that can ever be admitted

    def fits(self, amount: int, now: float) -> bool: ...

    def wait_for(self, amount: int, now: float) -> float: ...  # 0 if it fits now, inf if never

    def add(self, now: float, amount: int) -> object: ...  # charge it; a handle for refund

    def refund(self, handle: object, amount: int, now: float) -> None: ...  # give back part of a charge

    def remaining(self, now: float) -> int: ...

    def used(self, now: float) -> int: ...  # limit - remaining (a sliding log: its window's sum)

    def reset_in(self, now: float) -> float: ...


class _Entry:
    """One admission in a sliding log; its amount may shrink when the request settles."""

    __slots__ = ("amount", "t")

    def __init__(self, t: float, amount: int) -> None:
        self.t, self.amount = t, amount


class SlidingLog:
    """Admissions (time, amount) in the last ``span`` seconds; at most ``limit`` in any window."""

    __slots__ = ("capacity", "entries", "limit", "span", "total")
    shape = "sliding_window"

    def __init__(self, limit: int, span: float) -> None:
        self.limit = limit
        self.capacity = float(limit)
        self.span = span
        self.entries: deque[_Entry] = deque()
        self.total = 0

    def __repr__(self) -> str:
        return f"SlidingLog({self.total}/{self.limit} in {self.span:g}s, {len(self.entries)} entries)"

    def prune(self, now: float) -> None:
        # An entry counts while now - t < span (half-open), the ledger's definition too.
        while self.entries and now - self.entries[0].t >= self.span:
            self.total -= self.entries.popleft().amount

    def fits(self, amount: int, now: float) -> bool:
        self.prune(now)
        return self.total + amount <= self.limit

    def wait_for(self, amount: int, now: float) -> float:
        self.prune(now)
        need = self.total + amount - self.limit
        if need <= 0:
            return 0.0
        if amount > self.limit:
            return math.inf
        freed = 0
        for e in self.entries:
            freed += e.amount
            if freed >= need:
                t, span = e.t, self.span
                return _exact_wait(now, max(0.0, t + span - now), lambda x, t=t, span=span: x - t >= span)
        return math.inf

    def add(self, now: float, amount: int) -> object:
        entry = _Entry(now, amount)
        self.entries.append(entry)
        self.total += amount
        return entry

    def refund(self, handle: object, amount: int, now: float) -> None:
        assert isinstance(handle, _Entry)
        amount = min(amount, handle.amount)
        if now - handle.t < self.span:  # still in the log (an expired one counts for nothing)
            handle.amount -= amount
            self.total -= amount

    def remaining(self, now: float) -> int:
        self.prune(now)
        return max(0, self.limit - self.total)

    def used(self, now: float) -> int:
        self.prune(now)
        return self.total

    def reset_in(self, now: float) -> float:
        self.prune(now)
        return max(0.0, self.entries[-1].t + self.span - now) if self.entries else 0.0


class TokenBucket:
    """Capacity ``capacity``, refilled continuously at ``rate`` per second; starts full.

    The state changes only when something is charged or given back, so the answer to
    "does ``a`` fit at ``t``" is one pure function between charges.
    """

    __slots__ = ("_available", "_t", "capacity", "limit", "rate", "shape")

    def __init__(self, limit: int, capacity: float, rate: float, shape: str = "token_bucket") -> None:
        self.shape = shape
        self.limit = limit
        self.capacity = capacity
        self.rate = rate
        self._available = capacity
        self._t = -math.inf

    def __repr__(self) -> str:
        return f"TokenBucket({self.shape}, limit={self.limit}, capacity={self.capacity:g}, available={self._available:g})"

    def available(self, now: float) -> float:
        if self._available >= self.capacity:
            return self.capacity
        return min(self.capacity, self._available + (now - self._t) * self.rate)

    def fits(self, amount: int, now: float) -> bool:
        return self.available(now) >= amount

    def wait_for(self, amount: int, now: float) -> float:
        if amount > self.capacity:
            return math.inf
        deficit = amount - self.available(now)
        if deficit <= 0:
            return 0.0
        return _exact_wait(now, deficit / self.rate, lambda x: self.available(x) >= amount)

    def add(self, now: float, amount: int) -> object:
        self._available = self.available(now) - amount
        self._t = now
        return None

    def refund(self, handle: object, amount: int, now: float) -> None:
        self._available = min(self.capacity, self.available(now) + amount)
        self._t = now

    def remaining(self, now: float) -> int:
        return max(0, math.floor(self.available(now) + _SHOW_EPS))

    def used(self, now: float) -> int:
        return self.limit - self.remaining(now)

    def reset_in(self, now: float) -> float:
        return max(0.0, (self.capacity - self.available(now)) / self.rate)


class FixedWindow:
    """At most ``limit`` per window ``[k*span, (k+1)*span)`` of the sandbox clock."""

    __slots__ = ("_k", "_used", "capacity", "limit", "span")
    shape = "fixed_window"

    def __init__(self, limit: int, span: float) -> None:
        self.limit = limit
        self.capacity = float(limit)
        self.span = span
        self._k = -math.inf
        self._used = 0

    def __repr__(self) -> str:
        return f"FixedWindow({self._used}/{self.limit} in window {self._k}, span={self.span:g}s)"

    def window(self, t: float) -> float:
        return float(math.floor(t / self.span))

    def used_at(self, t: float) -> int:
        return self._used if self.window(t) == self._k else 0

    def fits(self, amount: int, now: float) -> bool:
        return self.used_at(now) + amount <= self.limit

    def wait_for(self, amount: int, now: float) -> float:
        if amount > self.limit:
            return math.inf
        if self.fits(amount, now):
            return 0.0
        k = self.window(now)
        return _exact_wait(now, max(0.0, (k + 1) * self.span - now), lambda x: self.window(x) > k)

    def add(self, now: float, amount: int) -> object:
        k = self.window(now)
        if k != self._k:
            self._k, self._used = k, 0
        self._used += amount
        return k

    def refund(self, handle: object, amount: int, now: float) -> None:
        if handle == self._k and self.window(now) == self._k:  # only while that window is current
            self._used -= min(amount, self._used)

    def remaining(self, now: float) -> int:
        return max(0, self.limit - self.used_at(now))

    def used(self, now: float) -> int:
        return self.used_at(now)

    def reset_in(self, now: float) -> float:
        # Until the window ends, used or not: the header tells a client where the boundaries are.
        return max(0.0, (self.window(now) + 1) * self.span - now)


def make_meter(shape: str, kind: str, limit: int) -> Meter:
    """The meter for ``limit`` of ``kind`` (rpm, tpm, rpd) in ``shape``."""
    span = SPANS[kind]
    if shape == "sliding_window":
        return SlidingLog(limit, span)
    if shape == "fixed_window":
        return FixedWindow(limit, span)
    if shape == "per_second" and span == 60.0:
        # one second's worth; for requests never less than one (20 RPM admits one every 3 s)
        capacity = max(limit / 60.0, 1.0) if kind == "rpm" else limit / 60.0
        return TokenBucket(limit, capacity, limit / 60.0, shape)
    if shape in ("token_bucket", "per_second"):
        return TokenBucket(limit, float(limit), limit / span, shape)
    raise ValueError(f"unknown limiter shape {shape!r}")


@dataclass(frozen=True, slots=True)
class Charge:
    """What one admitted request was charged: its TPM amount and each pool's handle for it."""

    tokens: int
    tpm: tuple[tuple[Meter, object], ...] = ()


class Pool:
    """One budget (a provider, key, group or model scope) with its meters and in-flight count."""

    def __init__(self, pid: PoolId, limits: Limits) -> None:
        self.id = pid
        self.limits = limits
        self.windows = self._meters()
        self.in_flight = 0

    def _meters(self) -> dict[str, Meter]:
        return {k: make_meter(self.limits.shape, k, v) for k, v in self.limits.items() if k in SPANS}

    @property
    def shape(self) -> str:
        return self.limits.shape

    def __repr__(self) -> str:
        return (
            f"Pool({self.id.label}, {self.shape}, limits={dict(self.limits.items())}, "
            f"windows={list(self.windows.values())}, in_flight={self.in_flight})"
        )

    @staticmethod
    def amount(kind: str, tokens: int, audio_s: int) -> int:
        """What a request takes of a limit: its tokens (tpm), its seconds of audio (ash, asd), else 1."""
        if kind == "tpm":
            return tokens
        return audio_s if kind in ("ash", "asd") else 1

    def check(self, now: float, tokens: int, audio_s: int = 0) -> list[Rejection]:
        """Every limit of this pool the request would break (empty: it fits)."""
        out = []
        conc = self.limits.concurrency
        if conc is not None and self.in_flight + 1 > conc:
            out.append(Rejection("concurrency", conc, self.in_flight, 1, None, self.id))
        for kind, m in self.windows.items():
            amount = self.amount(kind, tokens, audio_s)
            if kind in ("ash", "asd") and not amount:
                continue
            if not m.fits(amount, now):
                too_large = amount > m.capacity
                wait = None if too_large else m.wait_for(amount, now)
                out.append(Rejection(kind, m.limit, m.used(now), amount, wait, self.id, too_large=too_large))
        return out

    def admit(self, now: float, tokens: int, audio_s: int = 0) -> tuple[Meter, object] | None:
        """Charge every meter; returns the TPM meter and its handle (for settlement), if any."""
        tpm = None
        for kind, m in self.windows.items():
            amount = self.amount(kind, tokens, audio_s)
            if kind in ("ash", "asd") and not amount:
                continue
            handle = m.add(now, amount)
            if kind == "tpm":
                tpm = (m, handle)
        return tpm

    def views(self, now: float) -> list[WindowView]:
        return [WindowView(kind, m.limit, m.remaining(now), m.reset_in(now), self.id) for kind, m in self.windows.items()]

    def reset(self) -> None:
        self.windows = self._meters()
        self.in_flight = 0


class Limiter:
    """All pools of a scenario; admits a request into every pool it touches, or none."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.pools: dict[PoolId, Pool] = {}

    def __repr__(self) -> str:
        return f"Limiter({len(self.pools)} pools, in_flight={sum(p.in_flight for p in self.pools.values())})"

    def _pool(self, pid: PoolId, limits: Limits) -> Pool:
        pool = self.pools.get(pid)
        if pool is None:
            pool = self.pools[pid] = Pool(pid, limits)
        return pool

    def pools_for(self, provider: ProviderSpec, model_id: str, key_id: str) -> list[Pool]:
        """The pools a request to ``model_id`` with key ``key_id`` counts against, narrowest first."""
        out = []
        model = provider.model(model_id)
        if model is not None and not model.limits.empty:
            lim = model.limits
            out.append(self._pool(PoolId("model", provider.id, model_id, key_id if lim.per_key else None), lim))
        for g in provider.groups_of(model_id):
            if not g.limits.empty:
                out.append(self._pool(PoolId("group", provider.id, g.name, key_id if g.limits.per_key else None), g.limits))
        keyspec = next((k for k in provider.keys if k.key_id == key_id), None)
        if keyspec is not None and not keyspec.limits.empty:
            out.append(self._pool(PoolId("key", provider.id, "own", key_id), keyspec.limits))
        if not provider.key_limits.empty:
            out.append(self._pool(PoolId("key", provider.id, "", key_id), provider.key_limits))
        if not provider.limits.empty:
            out.append(self._pool(PoolId("provider", provider.id, ""), provider.limits))
        return out

    @staticmethod
    def try_admit(pools: list[Pool], now: float, tokens: int, audio_s: int = 0) -> Rejection | Charge:
        """Admit into all pools (the Charge), or return the rejection with the longest wait (no pool changes).

        The longest wait is reported because only after it do all the broken limits fit;
        a concurrency rejection (no wait known) is reported only when nothing else broke.
        """
        problems = [r for pool in pools for r in pool.check(now, tokens, audio_s)]
        if problems:
            def rank(r: Rejection) -> tuple[int, float]:
                if r.too_large:
                    return (3, 0.0)
                if r.retry_after_s is None:
                    return (0, 0.0)
                return (1 if math.isfinite(r.retry_after_s) else 2, r.retry_after_s)

            return max(problems, key=rank)
        handles = [h for pool in pools if (h := pool.admit(now, tokens, audio_s)) is not None]
        return Charge(tokens, tuple(handles))

    @staticmethod
    def settle(charge: Charge, tokens: int, now: float) -> int:
        """Reduce a charge's TPM to ``tokens`` in every pool it reached; returns the tokens given back."""
        back = charge.tokens - tokens
        if back <= 0:
            return 0
        for meter, handle in charge.tpm:
            meter.refund(handle, back, now)
        return back

    @staticmethod
    def enter(pools: list[Pool]) -> None:
        for pool in pools:
            pool.in_flight += 1

    @staticmethod
    def leave(pools: list[Pool]) -> None:
        for pool in pools:
            pool.in_flight -= 1

    @staticmethod
    def views(pools: list[Pool], now: float) -> dict[str, WindowView]:
        """Per limit kind, the tightest window (least remaining, then smallest limit) across pools."""
        best: dict[str, WindowView] = {}
        for pool in pools:
            for v in pool.views(now):
                cur = best.get(v.kind)
                if cur is None or (v.remaining, v.limit) < (cur.remaining, cur.limit):
                    best[v.kind] = v
        return best

    def reset(self) -> None:
        self.pools.clear()
