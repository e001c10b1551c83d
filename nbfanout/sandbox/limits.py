"""Exact limit enforcement: rolling windows for RPM / TPM / RPD, a counter for concurrency.

Window type: a *sliding log*. Each pool remembers every admission (time, amount) of the
last 60 s (RPM, TPM) or 86400 s (RPD). A request is admitted when, for every limit of
every pool it touches, ``sum(amounts with now - t < span) + requested <= limit``; its
entries are then added to all pools at once. So "at most N in any 60 s window" holds
exactly, and the ledger's window maxima (same half-open definition) can be checked
against the limit. A rejected request adds nothing. ``retry_after`` is the exact time
until the oldest entries expire far enough for the request to fit; reset headers give
the time until the window is empty again (the provider's "resets to its initial state").

Concurrency counts requests in flight (admitted, not yet answered); a request beyond the
limit is refused at once, as OpenRouter does for free models, with no retry-after.

Token amounts for TPM are estimated at admission: input characters / 4 plus
``max_tokens`` (what OpenAI counts against TPM) or the model's largest output length.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from nbfanout.sandbox.scenario import Limits, ProviderSpec, Scenario

__all__ = ["Limiter", "Pool", "PoolId", "Rejection", "WindowView", "SPANS"]

#: Window length in seconds per windowed limit kind.
SPANS: dict[str, float] = {"rpm": 60.0, "tpm": 60.0, "rpd": 86400.0}


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
    """Why a request was not admitted: which limit, its numbers, and the exact wait."""

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


class _Window:
    """Admissions (time, amount) in the last ``span`` seconds; a sliding log."""

    __slots__ = ("span", "entries", "total")

    def __init__(self, span: float) -> None:
        self.span = span
        self.entries: deque[tuple[float, int]] = deque()
        self.total = 0

    def prune(self, now: float) -> None:
        # An entry counts while now - t < span (half-open), the ledger's definition too.
        while self.entries and now - self.entries[0][0] >= self.span:
            self.total -= self.entries.popleft()[1]

    def wait_for(self, amount: int, limit: int, now: float) -> float:
        """Seconds until ``amount`` more fits under ``limit`` (0 if it fits now)."""
        need = self.total + amount - limit
        if need <= 0:
            return 0.0
        freed = 0
        for t, a in self.entries:
            freed += a
            if freed >= need:
                return max(0.0, t + self.span - now)
        return math.inf

    def add(self, now: float, amount: int) -> None:
        self.entries.append((now, amount))
        self.total += amount

    def reset_in(self, now: float) -> float:
        return max(0.0, self.entries[-1][0] + self.span - now) if self.entries else 0.0


class Pool:
    """One budget (a provider, key, group or model scope) with its windows and in-flight count."""

    def __init__(self, pid: PoolId, limits: Limits) -> None:
        self.id = pid
        self.limits = limits
        self.windows = {k: _Window(SPANS[k]) for k, _ in limits.items() if k in SPANS}
        self.in_flight = 0

    def __repr__(self) -> str:
        used = {k: w.total for k, w in self.windows.items()}
        return f"Pool({self.id.label}, limits={dict(self.limits.items())}, used={used}, in_flight={self.in_flight})"

    def check(self, now: float, tokens: int) -> list[Rejection]:
        """Every limit of this pool the request would break (empty: it fits)."""
        out = []
        conc = self.limits.concurrency
        if conc is not None and self.in_flight + 1 > conc:
            out.append(Rejection("concurrency", conc, self.in_flight, 1, None, self.id))
        for kind, w in self.windows.items():
            w.prune(now)
            limit = getattr(self.limits, kind)
            amount = tokens if kind == "tpm" else 1
            if w.total + amount > limit:
                wait = w.wait_for(amount, limit, now)
                too_large = amount > limit
                out.append(
                    Rejection(kind, limit, w.total, amount, None if too_large else wait, self.id, too_large=too_large)
                )
        return out

    def admit(self, now: float, tokens: int) -> None:
        for kind, w in self.windows.items():
            w.add(now, tokens if kind == "tpm" else 1)

    def views(self, now: float) -> list[WindowView]:
        out = []
        for kind, w in self.windows.items():
            w.prune(now)
            limit = getattr(self.limits, kind)
            out.append(WindowView(kind, limit, max(0, limit - w.total), w.reset_in(now), self.id))
        return out

    def reset(self) -> None:
        self.windows = {k: _Window(SPANS[k]) for k in self.windows}
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
    def try_admit(pools: list[Pool], now: float, tokens: int) -> Rejection | None:
        """Admit into all pools, or return the rejection with the longest wait (no pool changes).

        The longest wait is reported because only after it do all the broken limits fit;
        a concurrency rejection (no wait known) is reported only when nothing else broke.
        """
        problems = [r for pool in pools for r in pool.check(now, tokens)]
        if problems:
            def rank(r: Rejection) -> tuple[int, float]:
                if r.too_large:
                    return (3, 0.0)
                if r.retry_after_s is None:
                    return (0, 0.0)
                return (1 if math.isfinite(r.retry_after_s) else 2, r.retry_after_s)

            return max(problems, key=rank)
        for pool in pools:
            pool.admit(now, tokens)
        return None

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
