"""Rate budgets and admission: RPM, TPM, RPD and concurrency per provider, key and model.

A request is admitted only when every budget that applies to it (its model, model × key,
key, provider, and the run) has room at once, so a provider is never asked for what it
would refuse. Each rate is counted in its provider's shape (``core/shapes.py``), exactly:
a full allowance is usable at once where the shape allows it, and never sooner.

Admission (``BudgetSet.reserve``) is event-driven:

* A waiter whose only obstacle is one budget *claims* it: claimants of a budget are served
  first come, first served, so a large request is not starved by small ones, while a waiter
  blocked elsewhere never holds up others on a budget it could not use anyway.
* Only a claimant at the head of a budget's queue sleeps on a timer, set to the moment the
  shape will have room; the others wait for the head to leave (the baton). Waiters blocked
  by concurrency are woken when a request they wait on finishes. No interval is guessed.
* Every path out of a wait (admitted, cancelled, gave up) passes the baton, so no wake-up
  is lost.
* The run's own in-flight cap is the one budget served by rank before arrival: a map ranks
  each request by its critical path. First come the requests whose window share a later
  request of their model will reuse a minute on (sent late, they push that minute later; under
  a fixed window, they leave the next window more than it holds), then the model with the
  most requests left per slot, so a model whose own concurrency limit makes it the slowest to
  finish is never left short of run slots by models that could finish sooner. Provider budgets stay first come, first served.

A reservation charges one request and an estimate of tokens (input estimate + max output)
and settles to the real usage afterwards: extra input is charged, and where the provider
counts output as used (``tokens_counted = "usage"``, Anthropic) unused output is given back.
A refused request gives everything back: providers do not count what they refused.

Learning: rate-limit headers are the provider's own accounting, so they set unknown limits
and correct each shape's count on every response; a budget that has never seen a response
sends one request first, so the first headers arrive before a burst. Where nothing at all is
known, in flight grows from that one request like TCP's slow start (``Budget.ramp``): one
more each time an answer comes back while the ceiling holds requests back (doubling per round
trip), but at most ``RAMP_PACE`` steps per fastest answer. A refusal needs no work, so it
comes back within that step: a hidden concurrency limit costs one refusal, not one for every
answer that arrived while it was on its way (with refusals 40 ms away and answers every 25 ms,
4 before the pacing). The price is a longer ramp to a high ceiling: 64 in flight after about
10 round trips instead of 6 (1,000 requests at 0.2 s to a server without limits: 4.6 s, not
4.2 s). Limits a 429 body states are adopted; where no limit is known at all the rate adapts
(AIMD) from what was achieved. Learned limits persist in a JSON state file.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from nbfanout.core.clock import Clock, LoopClock
from nbfanout.core.errors import ErrorCategory, ErrorInfo
from nbfanout.core.events import BudgetStats, Cooldown
from nbfanout.core.headers import RateSnapshot
from nbfanout.core.shapes import DEFAULT_LIMITER, FixedWindow, Shape, SlidingWindow, make_shape
from nbfanout.core.state import LearnedLimits, default_state_path
from nbfanout.core.store import SharedStore, SharedUse, Verdict

__all__ = ["Budget", "BudgetSet", "CapacityError", "LearnedLimits", "Reservation", "default_state_path"]

WINDOW_S = 60.0
DAY_S = 86_400.0
RATE_KINDS = ("rpm", "tpm", "rpd", "ash", "asd")
#: Kinds counted in seconds of audio (Groq's ASH / ASD), charged only by transcriptions.
AUDIO_KINDS = frozenset({"ash", "asd"})
#: Where no limit is known, a refusal cuts the achieved rate to this fraction (multiplicative decrease).
AIMD_CUT = 0.5
#: A slow start that reached this many in flight without a concurrency refusal ends: from here
#: on the run's own concurrency (default 16, at most a few hundred) is the only ceiling.
RAMP_END = 512
RAMP_PACE = 8  # slow-start steps per fastest answer, at most
_WAKE_MARGIN_S = 1e-6

LearnedCallback = Callable[[str, str, "float | None", "float | None", str], None]


class CapacityError(Exception):
    """No option can be admitted within the wait allowed: ``wait_s`` (inf: never) and why."""

    def __init__(self, wait_s: float, reason: str, budget: Budget | None = None) -> None:
        super().__init__(reason)
        self.wait_s = wait_s
        self.reason = reason
        self.budget = budget


def _families(snap: RateSnapshot) -> tuple[tuple[int | None, int | None, float | None], ...]:
    """(limit, remaining, reset) for requests, then tokens, as the headers stated them."""
    return ((snap.limit_requests, snap.remaining_requests, snap.reset_requests_s),
            (snap.limit_tokens, snap.remaining_tokens, snap.reset_tokens_s))


@dataclass(frozen=True, slots=True)
class _Block:
    """Why one budget cannot admit a request now: until a time, on a release, or never."""

    budget: Budget
    until: float | None  # absolute time; None: when a request finishes or the head moves on
    why: str


@dataclass(eq=False)
class Budget:
    """The limits of one scope (model, model-key, key, provider or run) and their live counts."""

    scope: str
    name: str
    rpm: float | None = None
    tpm: float | None = None
    rpd: float | None = None
    ash: float | None = None  # audio seconds per hour
    asd: float | None = None  # audio seconds per day
    concurrency: int | None = None
    limiter: str = DEFAULT_LIMITER
    tokens_counted: str = "max_tokens"
    clock: Clock = field(default_factory=LoopClock, repr=False)
    adaptive: bool = False  # no known request limit: learn one from refusals (AIMD)
    shape_known: bool = True  # False: the limiter is the default, and headers may show the real shape
    probe: bool = False  # send one request and read its headers before any burst
    ramp: int | None = None  # concurrency unknown: in-flight ceiling, one more per answer while full
    on_learned: LearnedCallback | None = field(default=None, repr=False)
    on_cooldown: Callable[[Budget, float, str], None] | None = field(default=None, repr=False)
    ranked: bool = False  # claimants served by (rank, arrival), not arrival alone: the run's cap
    shared_id: str | None = None  # its name in a shared store (keys by digest, never by value); None: this process's own

    def __post_init__(self) -> None:
        self.in_flight = 0
        self.cooldown_until = 0.0
        self.cooldown_started = 0.0
        self.cooldown_reason = ""
        self.disabled: tuple[ErrorCategory, str] | None = None
        self._shapes: dict[str, Shape] = {}
        self._requests: deque[float] = deque()  # admission times in the last 60 s, for statistics
        self._taken = {"rpm": 0.0, "tpm": 0.0, "rpd": 0.0}  # running totals, for "sent after" in observe()
        self._claims: list[tuple[tuple[float, int], _Waiter]] = []  # heap of (order, waiter)
        self._watchers: set[_Waiter] = set()
        self._fastest = math.inf  # the shortest answer seen, in seconds: paces the slow start
        self._ramp_grown_at = -math.inf
        self._ramp_credit = 0  # slow-start steps earned by answers, not yet taken
        # shared budgets (core/store.py): what the store says holds this budget, all processes' use,
        # and where to tell the others what this process learned
        self._held: _Block | None = None
        self._hold_timer: asyncio.TimerHandle | None = None
        self.shared_use: SharedUse | None = None
        self.share: Callable[..., None] | None = None
        for kind in RATE_KINDS:
            if getattr(self, kind):
                self._shapes[kind] = make_shape(self.limiter, kind, getattr(self, kind), self._now())

    def _now(self) -> float:
        try:
            return self.clock.now()
        except RuntimeError:  # created outside a loop (config inspection): shapes start "now" = 0
            return 0.0

    # --- reading --------------------------------------------------------------------------
    @staticmethod
    def _amount(kind: str, tokens: float, audio_s: float = 0.0) -> float:
        if kind == "tpm":
            return tokens
        return audio_s if kind in AUDIO_KINDS else 1.0

    def block(self, tokens: float, now: float, audio_s: float = 0.0) -> _Block | None:
        """None when a request of ``tokens`` (and ``audio_s`` seconds of audio) fits this budget now;
        else what it waits for."""
        if self.disabled is not None:
            return _Block(self, math.inf, f"{self.disabled[0].value}: {self.disabled[1]}")
        if self.cooldown_until > now:
            return _Block(self, self.cooldown_until, self.cooldown_reason or "cooling down")
        if self._held is not None and (self._held.until is None or self._held.until > now):
            return self._held
        if self.concurrency is not None and self.in_flight >= self.concurrency:
            return _Block(self, None, f"{self.label}: {self.in_flight}/{self.concurrency} in flight")
        if self.probe and self.in_flight >= 1:
            return _Block(self, None, f"{self.label}: waiting for the first response's rate-limit headers")
        if self.ramp is not None and self.concurrency is None and self.in_flight >= self.ramp:
            next_step = self._ramp_step(now)
            if self.ramp is not None and self.in_flight >= self.ramp:
                return _Block(self, next_step, f"{self.label}: {self.in_flight} in flight while its concurrency "
                                               "limit is unknown (one more per answer)")
        latest: _Block | None = None
        for kind, shape in self._shapes.items():
            amount = self._amount(kind, tokens, audio_s)
            if not amount:
                continue
            wait = shape.wait(amount, now)
            if wait > 0 and (latest is None or (latest.until or 0) < now + wait):
                latest = _Block(self, now + wait, self._limit_text(kind, amount, wait))
        return latest

    @property
    def label(self) -> str:
        """The budget as a wait reason names it: ``model openai/gpt-4.1``, ``key openai …k1a7``, ``this run``."""
        return "this run" if self.scope == "run" else f"{self.scope} {self.name}"

    def _limit_text(self, kind: str, tokens: float, wait: float) -> str:
        limit = getattr(self, kind)
        if math.isinf(wait) and kind in AUDIO_KINDS:
            per = "hour" if kind == "ash" else "day"
            return (f"{tokens:.0f} s of audio exceed the {limit:g} audio seconds per {per} allowed for "
                    f"{self.scope} {self.name}; split the file")
        if math.isinf(wait):
            return (f"~{tokens:.0f} tokens (prompt + max output) exceed the {limit:g} tokens per minute allowed for "
                    f"{self.scope} {self.name}; lower max_tokens or shorten the prompt")
        return f"{self.label}: {kind} {limit:g} ({self.limiter}) full for {wait:.1f}s"

    # --- shared with other processes (core/store.py) ----------------------------------------
    def shapes(self) -> dict[str, Shape]:
        """Each counted limit's shape, by kind."""
        return dict(self._shapes)

    def hold(self, why: str, until: float | None, release_by: float | None = None) -> None:
        """The shared store refused: wait ``until`` then (None: until another process releases a
        request, or at the latest ``release_by`` seconds from now, when its lease runs out)."""
        self.unhold(wake=False)
        self._held = _Block(self, until, why)
        if until is None and release_by is not None:
            self._hold_timer = self.clock.call_later(max(0.0, release_by), self.unhold)

    def unhold(self, wake: bool = True) -> None:
        """What the store said no longer holds (a request was released, or the store is gone): look again."""
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        if self._held is not None:
            self._held = None
            if wake:
                self.changed()

    def adopt_shared(self, metric: str, value: float) -> None:
        """A limit another process learned (it told the store, so it is not told back)."""
        with self._quietly():
            self.set_limit(metric, value, "shared")

    @contextlib.contextmanager
    def _quietly(self) -> Iterator[None]:
        """Apply what the store said without telling the store."""
        share, self.share = self.share, None
        try:
            yield
        finally:
            self.share = share

    def _tell(self, what: str, *args: object) -> None:
        if self.share is not None:
            self.share(self, what, *args)

    def wait_time(self, tokens: float = 0) -> float:
        """Seconds until a request of ``tokens`` fits (0 now; ``inf`` never; 0.0 is never a guess)."""
        now = self.clock.now()
        b = self.block(tokens, now)
        if b is None:
            return 0.0
        return math.inf if b.until is None or math.isinf(b.until) else max(0.0, b.until - now)

    def has_capacity(self, tokens: float = 0) -> bool:
        """Non-blocking probe: would a request of ``tokens`` be admitted now (ignoring queued waiters)?"""
        return self.block(tokens, self.clock.now()) is None

    def too_large(self, tokens: float) -> bool:
        """True when one request of ``tokens`` can never fit this budget's token limit."""
        shape = self._shapes.get("tpm")
        return shape is not None and tokens > shape.capacity

    @property
    def recent_requests(self) -> int:
        """Requests admitted in the last 60 s (how "used" a key is, for least-used-first)."""
        self._trim(self.clock.now())
        return len(self._requests)

    def _trim(self, now: float) -> None:
        while self._requests and self._requests[0] <= now - WINDOW_S:
            self._requests.popleft()

    def window_holds(self, tokens: float) -> float:
        """How many requests of ``tokens`` one window of this budget holds (inf: not counted in windows).

        Under a sliding window a request's share comes back a minute after it was admitted, so a
        batch that needs more than one window finishes a minute after the requests it reuses went.
        Under a fixed window what the current window does not take waits for the next, so a batch
        that leaves more than one window's worth to it finishes a window later.
        """
        holds = math.inf
        for kind, amount in (("rpm", 1.0), ("tpm", tokens)):
            shape = self._shapes.get(kind)
            if isinstance(shape, (SlidingWindow, FixedWindow)) and amount > 0:
                holds = min(holds, max(1.0, shape.limit // amount))
        return holds

    def statistics(self) -> BudgetStats:
        now = self.clock.now()
        self._trim(now)

        joint = self.shared_use

        def used(kind: str, fallback: float) -> float:
            if joint is not None and kind in joint.used:  # every process's use, as the store counts it
                return max(0.0, float(joint.used[kind]))
            shape = self._shapes.get(kind)
            return max(0.0, shape.used(now)) if shape is not None else fallback

        return BudgetStats(
            scope=self.scope,
            name=self.name,
            rpm_limit=self.rpm,
            rpm_used=used("rpm", float(len(self._requests))),
            tpm_limit=self.tpm,
            tpm_used=used("tpm", 0.0),
            rpd_limit=self.rpd,
            rpd_used=int(round(used("rpd", 0.0))),
            concurrency_limit=self.concurrency,
            in_flight=max(self.in_flight, joint.in_flight) if joint is not None else self.in_flight,
            cooldown_s=max(0.0, self.cooldown_until - now),
            disabled=f"{self.disabled[0].value}: {self.disabled[1]}" if self.disabled else None,
            ash_limit=self.ash, ash_used=used("ash", 0.0), asd_limit=self.asd, asd_used=used("asd", 0.0),
            processes=joint.processes if joint is not None else None,
        )

    # --- charging (through a Reservation) -------------------------------------------------
    def _take(self, tokens: float, now: float, audio_s: float = 0.0) -> dict[str, float]:
        stamps = {}
        for kind, shape in self._shapes.items():
            amount = self._amount(kind, tokens, audio_s)
            if amount:
                stamps[kind] = shape.take(amount, now)
        for kind in self._taken:
            self._taken[kind] += self._amount(kind, tokens, audio_s)
        self._requests.append(now)
        self.in_flight += 1
        return stamps

    def _levels(self, now: float) -> dict[str, tuple[Shape, float]]:
        """Each shape's ``level`` now, with the shape it is of (a limit learned later replaces the shape)."""
        levels = {}
        for kind, shape in self._shapes.items():
            level = shape.level(now)
            if level is not None:
                levels[kind] = (shape, level)
        return levels

    def _give_back(self, kind: str, amount: float, stamp: float | None) -> None:
        if kind in self._taken and amount > 0:  # never sent, or not counted: not "sent after" a response either
            self._taken[kind] -= amount
        shape = self._shapes.get(kind)
        if shape is not None and amount > 0 and stamp is not None:
            shape.give_back(amount, stamp, self.clock.now())
            self.changed()

    def _charge(self, kind: str, amount: float, stamp: float | None) -> None:
        shape = self._shapes.get(kind)
        if kind in self._taken:
            self._taken[kind] += amount
        if shape is not None and amount > 0:
            shape.charge(amount, stamp if stamp is not None else self.clock.now(), self.clock.now())

    def _release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self.changed()

    # --- waking ---------------------------------------------------------------------------
    def changed(self) -> None:
        """Capacity may exist now: wake the head claimant and every watcher."""
        head = self._head()
        if head is not None:
            head.wake()
        for w in list(self._watchers):
            w.wake()

    def _order(self, waiter: _Waiter) -> tuple[float, int]:
        """Where ``waiter`` queues here: by arrival, or on a ranked budget by rank first."""
        return (waiter.rank if self.ranked else 0.0, waiter.seq)

    def _ahead(self, head: _Waiter | None, waiter: _Waiter) -> bool:
        """Whether ``head`` is another waiter served before ``waiter`` here."""
        return head is not None and head is not waiter and self._order(head) < self._order(waiter)

    def _head(self) -> _Waiter | None:
        claims = self._claims
        while claims and not claims[0][1].claims_budget(self):
            heapq.heappop(claims)
        return claims[0][1] if claims else None

    # --- learning -------------------------------------------------------------------------
    def set_limit(self, metric: str, value: float | None, source: str) -> None:
        """Adopt a limit (from headers, a 429 body or adaptation); the count so far carries over."""
        old = getattr(self, metric)
        if value is None or value <= 0 or value == old:
            return
        setattr(self, metric, int(value) if metric == "concurrency" else float(value))
        if metric in RATE_KINDS:
            now = self.clock.now()
            prior = self._shapes.get(metric)
            shape = make_shape(self.limiter, metric, value, now)
            if prior is not None:
                used = prior.used(now)
                if used > 0:
                    shape.observe(max(0.0, float(value) - used), None, 0.0, now)
            self._shapes[metric] = shape
        if source != "adaptive":
            self.adaptive = False
            self._tell("limit", metric, value)
        if self.on_learned:
            self.on_learned(f"{self.scope}:{self.name}", metric, old, value, source)
        self.changed()

    def cool_down(self, seconds: float, reason: str = "") -> None:
        until = self.clock.now() + max(0.0, seconds)
        if until > self.cooldown_until:
            if self.cooldown_until <= self.clock.now():
                self.cooldown_started = self.clock.now()
            self.cooldown_until = until
            self.cooldown_reason = reason or f"cooling down {seconds:.1f}s"
            self._tell("cooldown", seconds, self.cooldown_reason)
            if self.on_cooldown is not None:
                self.on_cooldown(self, seconds, self.cooldown_reason)

    def clear_cooldown(self) -> None:
        self.cooldown_until = 0.0
        self._tell("clear_cooldown")
        self.changed()

    def recovered(self, now: float) -> float | None:
        """How long a cooldown lasted, once, when a request is admitted after it ran out; else None."""
        if 0.0 < self.cooldown_until <= now:
            lasted = self.cooldown_until - self.cooldown_started
            self.cooldown_until = 0.0
            return lasted
        return None

    def disable(self, category: ErrorCategory, message: str) -> None:
        self.disabled = (category, message[:160])
        self._tell("disabled", category.value, self.disabled[1])
        self.changed()

    def observe(self, snap: RateSnapshot, sent_after: dict[str, float], *, requests_kind: str = "rpm",
                refused: bool = False, expected: dict[str, tuple[Shape, float]] | None = None) -> None:
        """Headers are the provider's own count: set unknown limits, correct each shape's count.

        ``sent_after`` is what this budget admitted after the request whose headers these are
        (the provider may not have counted it yet). ``requests_kind`` is ``"rpd"`` for providers
        whose request headers count per day (Groq). On a refusal (``refused``) the wait is the one the
        refusal asks for, so an empty window's reset is not turned into a wait of its own.
        ``expected`` is each shape's ``level`` right after that request was taken (see
        ``TokenBucket.observe``).
        """
        now = self.clock.now()
        if not self.shape_known and not refused:
            self._infer_shape(snap)
        self.probe = False
        for kind, (limit, remaining, reset) in zip((requests_kind, "tpm"), _families(snap)):
            if limit and limit != getattr(self, kind):
                self.set_limit(kind, limit, "headers")
            shape = self._shapes.get(kind)
            if remaining is None:
                continue
            if shape is not None:
                taken = (expected or {}).get(kind)
                shape.observe(float(remaining), reset, sent_after.get(kind, 0.0), now,
                              taken[1] if taken is not None and taken[0] is shape else None)
                self._tell("observe", kind, remaining, reset, sent_after.get(kind, 0.0))
            span = DAY_S if kind == "rpd" else WINDOW_S
            if remaining == 0 and reset and not refused and (shape is None or reset > span):
                # a reset no window of this kind can have: honour it as a wait (max_wait_s applies)
                self.cool_down(reset, f"headers say 0 {kind} remain for {reset:.0f}s")
        self.changed()

    def _infer_shape(self, snap: RateSnapshot) -> None:
        """Read the shape from the refill the headers imply: a token bucket resets in proportion to use.

        After a few requests a token bucket is full again in ``used · 60 / limit`` seconds, a sliding
        window only when its newest request is a minute old, a fixed window at its edge (which matches
        ``used · 60 / limit`` only by a rare chance). Every limit the headers state must say so; then
        the budget counts as a token bucket, and a full allowance refills continuously.
        """
        self.shape_known = True  # decided once, from the first response that carries the headers
        votes = []
        for limit, remaining, reset in _families(snap):
            if not limit or remaining is None or reset is None or remaining >= limit:
                continue
            expected = (limit - remaining) * WINDOW_S / limit
            votes.append(abs(reset - expected) <= 0.1 * expected + 0.05)
        if votes and all(votes) and self.limiter != "token_bucket":
            self.limiter = "token_bucket"
            now = self.clock.now()
            for kind, shape in list(self._shapes.items()):
                used = shape.used(now)
                fresh = make_shape("token_bucket", kind, shape.limit, now)
                fresh.observe(max(0.0, shape.limit - used), None, 0.0, now)
                self._shapes[kind] = fresh
            if self.on_learned:
                self.on_learned(f"{self.scope}:{self.name}", "limiter", None, None, "headers: token_bucket")

    def learn_refusal(self, info: ErrorInfo) -> None:
        """A 429 for this scope: adopt a limit the body states; with none known anywhere, cut (AIMD)."""
        hint = info.limit_hint
        if hint is not None and hint.limit and hint.kind in (*RATE_KINDS, "concurrency"):
            if getattr(self, hint.kind) != hint.limit:
                self.set_limit(hint.kind, hint.limit, "429 body")
            shape = self._shapes.get(hint.kind)
            if shape is not None and hint.used is not None and info.retry_after_s is None:
                # a stated wait says when room returns more exactly than a count of unknown ages
                shape.observe(max(0.0, hint.limit - hint.used), None, 0.0, self.clock.now())
            return
        if self.adaptive and info.retry_after_s is None and info.category == ErrorCategory.RATE_LIMIT:
            self._trim(self.clock.now())
            achieved = max(1.0, float(len(self._requests)))
            self.set_limit("rpm", max(1.0, math.floor(min(self.rpm or achieved, achieved) * AIMD_CUT)), "adaptive")
            self.adaptive = True

    def _ramp_step(self, now: float) -> float | None:
        """Take one earned slow-start step if its turn has come; when the next one may be taken (None: none earned)."""
        if self.ramp is None or not self._ramp_credit:
            return None
        gap = self._fastest / RAMP_PACE if math.isfinite(self._fastest) else 0.0
        if now >= self._ramp_grown_at + gap:
            self._ramp_credit -= 1
            self._ramp_grown_at = now
            self.ramp = self.ramp + 1 if self.ramp < RAMP_END else None
        return self._ramp_grown_at + gap if self._ramp_credit else None

    def learn_success(self, latency_s: float | None = None) -> None:
        """An answer came back (after ``latency_s``; None: from the cache): a full slow start takes one
        more; an adapted RPM grows by one (doubles per minute).

        The slow start grows only while it is what holds requests back (its ceiling full, or
        requests queued on it): an idle ceiling says nothing about the concurrency the provider takes.
        Steps are taken at most once per ``1 / RAMP_PACE`` of the fastest answer seen (the rest
        wait their turn, ``_ramp_step``): a refusal, sent before any work, comes back sooner than
        that, so the step past a hidden limit is refused before the next is taken: one refusal,
        not one per answer that arrived while it was on its way.
        """
        if latency_s is not None:
            self._fastest = min(self._fastest, latency_s)
        if self.ramp is not None and self.concurrency is None and (
                self.in_flight >= self.ramp or self._head() is not None or self._watchers):
            self._ramp_credit += 1
            self._ramp_step(self._now())
        if self.adaptive and self.rpm is not None:
            old = self.rpm
            self.set_limit("rpm", old + 1, "adaptive")
            self.adaptive = True

    def __repr__(self) -> str:
        s = self.statistics()
        parts = [f"{self.scope} {self.name!r}", self.limiter]
        if self.rpm:
            parts.append(f"rpm {s.rpm_used:.0f}/{self.rpm:g}")
        if self.tpm:
            parts.append(f"tpm {s.tpm_used:.0f}/{self.tpm:g}")
        if self.rpd:
            parts.append(f"rpd {s.rpd_used}/{self.rpd:g}")
        if self.ash:
            parts.append(f"audio s/h {s.ash_used:.0f}/{self.ash:g}")
        if self.asd:
            parts.append(f"audio s/day {s.asd_used:.0f}/{self.asd:g}")
        parts.append(f"in flight {self.in_flight}" + (f"/{self.concurrency}" if self.concurrency else ""))
        if s.cooldown_s:
            parts.append(f"cooldown {s.cooldown_s:.1f}s")
        if self.disabled:
            parts.append(f"disabled: {s.disabled}")
        waiting = sum(1 for _, w in self._claims if w.claims_budget(self))
        if waiting:
            parts.append(f"{waiting} queued")
        return f"<Budget {', '.join(parts)}>"


class _Waiter:
    """One request waiting for any of its options; its claims and the future that wakes it."""

    __slots__ = ("seq", "rank", "claims", "watching", "future")

    def __init__(self, seq: int, rank: float = 0.0) -> None:
        self.seq = seq
        self.rank = rank  # lower first, on ranked budgets only
        self.claims: set[Budget] = set()
        self.watching: set[Budget] = set()
        self.future: asyncio.Future[None] | None = None

    def claims_budget(self, budget: Budget) -> bool:
        return budget in self.claims

    def wake(self) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_result(None)


@dataclass(frozen=True, slots=True)
class Option:
    """One way to send a request: the budgets that must admit it and its tokens there.

    ``estimate``, when given, is asked again at every look, so a request that waited is charged
    what is known when it goes (estimates improve as answers report their usage).
    """

    budgets: tuple[Budget, ...]
    tokens: float
    estimate: Callable[[], float] | None = field(default=None, compare=False)
    audio_s: float = 0.0  # seconds of audio, for limits counted in them (ASH / ASD)

    def current(self) -> float:
        return self.estimate() if self.estimate is not None else self.tokens


class Reservation:
    """What one admitted request holds: a request and tokens in each budget, until it ends.

    ``settle`` corrects the token charge to the real usage; ``refund`` gives everything back
    (the provider refused it); leaving the context releases the concurrency slots.
    """

    def __init__(self, budgets: BudgetSet, option: Option, index: int, tokens: float) -> None:
        self._set = budgets
        self.option = option
        self.index = index
        self.tokens = tokens
        self._stamps: dict[Budget, dict[str, float]] = {}
        self._marks: dict[Budget, dict[str, float]] = {}
        self._levels: dict[Budget, dict[str, tuple[Shape, float]]] = {}  # each shape's level right after the take
        self._open = False
        self.waited_s = 0.0
        self.rid = uuid.uuid4().hex  # its id in the shared store
        self.store: SharedStore | None = None  # set once the shared store admitted it too

    @property
    def shared(self) -> tuple[Budget, ...]:
        """Its budgets that the shared store keeps (every one but this run's own)."""
        return tuple(b for b in self.option.budgets if b.shared_id is not None)

    def _take(self, now: float) -> None:
        for b in self.option.budgets:
            self._stamps[b] = b._take(self.tokens, now, self.option.audio_s)
            self._marks[b] = dict(b._taken)
            self._levels[b] = b._levels(now)
        self._open = True

    def sent(self) -> None:
        """Its last byte is written: it reaches the provider soon (``TokenBucket.sent``)."""
        now = self._set.clock.now()
        for b, stamps in self._stamps.items():
            for kind, stamp in stamps.items():
                shape = b._shapes.get(kind)
                if shape is not None:
                    shape.sent(stamp, now)

    def expected(self, budget: Budget, refused: bool = False) -> dict[str, tuple[Shape, float]]:
        """``budget``'s levels right after this request was taken: what its headers should show (a
        refused request the provider never took, so its headers show that much more)."""
        levels = self._levels.get(budget, {})
        if not refused:
            return levels
        return {kind: (shape, level + budget._amount(kind, self.tokens, self.option.audio_s))
                for kind, (shape, level) in levels.items()}

    def sent_after(self, budget: Budget) -> dict[str, float]:
        """What ``budget`` admitted after this request (for reading this request's headers)."""
        mark = self._marks.get(budget, {})
        return {k: max(0.0, v - mark.get(k, v)) for k, v in budget._taken.items()}

    def settle(self, input_tokens: int, output_tokens: int, max_output: int, estimated_input: int) -> None:
        """Count the real usage: extra input always; where the provider counts usage, unused input and output back."""
        extras: dict[str, float] = {}
        for b, stamps in self._stamps.items():
            if b.tokens_counted == "usage":  # the provider counts what was used: both ways
                extra = input_tokens - estimated_input - max(0, max_output - output_tokens)
            else:  # it counted its own estimate at admission; only input beyond ours adds to it
                extra = max(0, input_tokens - estimated_input)
            if extra > 0:
                b._charge("tpm", extra, stamps.get("tpm"))
            elif extra < 0:
                b._give_back("tpm", -extra, stamps.get("tpm"))
            if extra and b.shared_id is not None:
                extras[b.shared_id] = float(extra)
        if self.store is not None and extras:
            self.store.adjust(self.rid, tpm=extras)

    def settle_audio(self, seconds: float) -> None:
        """Count the audio the provider reported (``seconds``) instead of the estimate admitted."""
        extra = seconds - self.option.audio_s
        if self.store is not None and extra:
            self.store.adjust(self.rid, audio_s=extra)
        for b, stamps in self._stamps.items():
            for kind in AUDIO_KINDS:
                if extra > 0:
                    b._charge(kind, extra, stamps.get(kind))
                elif extra < 0:
                    b._give_back(kind, -extra, stamps.get(kind))

    def refund(self) -> None:
        """The provider refused the request: it counted none of it, so neither do we."""
        if self.store is not None:
            self.store.adjust(self.rid, refund=True)
        self._refund_here()

    def _refund_here(self) -> None:
        for b, stamps in self._stamps.items():
            b._give_back("rpm", 1.0, stamps.get("rpm"))
            b._give_back("rpd", 1.0, stamps.get("rpd"))
            b._give_back("tpm", self.tokens, stamps.get("tpm"))
            for kind in AUDIO_KINDS:
                b._give_back(kind, self.option.audio_s, stamps.get(kind))
            if b._requests:
                b._requests.pop()

    def release(self) -> None:
        if self._open and self.store is not None:
            self.store.release(self.rid)
        if self._open:
            self._open = False
            now = self._set.clock.now()
            for b in self.option.budgets:
                stamps = self._stamps.get(b, {})
                for kind, stamp in stamps.items():
                    shape = b._shapes.get(kind)
                    if shape is not None:  # a later refund or settlement finds the entry where it now is
                        stamps[kind] = shape.restamp(stamp, now)
                b._release()

    async def __aenter__(self) -> Reservation:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.release()


class _Reserve:
    """``async with budgets.reserve(options) as r``: waits for admission, releases on exit."""

    def __init__(self, budgets: BudgetSet, options: Sequence[Option], max_wait_s: float,
                 on_wait: Callable[[float, str], None] | None, rank: float = 0.0) -> None:
        self._args = (options, max_wait_s, on_wait, rank)
        self._budgets = budgets
        self._reservation: Reservation | None = None

    async def __aenter__(self) -> Reservation:
        self._reservation = await self._budgets.acquire(*self._args)
        return self._reservation

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._reservation is not None:
            self._reservation.release()


class BudgetSet:
    """All budgets of a Fanout; admits a request only when all budgets of one option have room."""

    def __init__(self, clock: Clock | None = None, learned: LearnedLimits | None = None,
                 shared: SharedStore | None = None) -> None:
        self.clock = clock or LoopClock()
        self.learned = learned
        self.shared = shared  # None: every budget is this process's own
        self._budgets: dict[tuple[str, str], Budget] = {}
        self._seq = itertools.count()
        self.listeners: list[LearnedCallback] = []

    def budget(self, scope: str, name: str, *, limiter: str | None = None, tokens_counted: str | None = None,
               adaptive: bool = False, probe: bool = False, ramp: bool = False, shared_as: str | None = None,
               **limits: float | int | None) -> Budget:
        """The budget for (scope, name), created on first use with ``limits`` (learned ones fill gaps).

        ``probe``: with no limit known, one request goes before any other; ``ramp``: with no limit
        known, in flight then grows by slow start (see the module docstring). ``shared_as``: its
        name in a shared store where ``name`` is not the same in every process (a key's digest).
        """
        key = (scope, name)
        if key not in self._budgets:
            known = {k: v for k, v in limits.items() if k in (*RATE_KINDS, "concurrency") and v is not None}
            if self.learned is not None:
                for metric, value in self.learned.get(f"{scope}:{name}").items():
                    known.setdefault(metric, value)
            budget = self._budgets[key] = Budget(
                scope, name, clock=self.clock, limiter=limiter or DEFAULT_LIMITER,
                tokens_counted=tokens_counted or "max_tokens", adaptive=adaptive and "rpm" not in known,
                shape_known=limiter is not None,
                probe=probe and not known, ramp=1 if ramp and not known else None,
                on_learned=self._learned, **known,  # type: ignore[arg-type]
            )
            saved = self.learned.cooldown_left(f"{scope}:{name}") if self.learned is not None else None
            if saved is not None:  # a wait a provider asked for in an earlier run, not over yet
                budget.cool_down(*saved)
            budget.on_cooldown = self._cooled
            if self.shared is not None:
                budget.shared_id = f"{scope}:{shared_as or name}"
                budget.share = self.shared.share
                self.shared.track(budget)
        return self._budgets[key]

    def _cooled(self, budget: Budget, seconds: float, reason: str) -> None:
        if self.learned is not None:
            self.learned.record_cooldown(f"{budget.scope}:{budget.name}", seconds, reason)

    def clear_cooldowns(self, match: Callable[[str, str], bool] | None = None) -> list[str]:
        """End the cooldowns whose (scope, name) ``match`` accepts (all if None): live ones, and saved
        ones too, even for budgets this run has not used yet. Returns "scope name" of each."""
        def accepts(scope: str, name: str) -> bool:
            return match is None or match(scope, name)

        now = self.clock.now()
        cleared = []
        for b in self._budgets.values():
            if accepts(b.scope, b.name) and b.cooldown_until > now:
                b.clear_cooldown()
                cleared.append(f"{b.scope} {b.name}")
        if self.learned is not None:
            saved = [c.scope for c in self.learned.cooldowns() if ":" in c.scope and accepts(*c.scope.split(":", 1))]
            self.learned.clear_cooldowns(lambda s: s in saved)
            cleared += [s.replace(":", " ", 1) for s in saved if s.replace(":", " ", 1) not in cleared]
        return cleared

    def _learned(self, scope: str, metric: str, old: float | None, new: float | None, source: str) -> None:
        if self.learned is not None and new is not None and source != "adaptive":
            self.learned.record(scope, metric, new)
        for listener in self.listeners:
            listener(scope, metric, old, new, source)

    def reserve(self, options: Sequence[Option], *, max_wait_s: float = math.inf,
                on_wait: Callable[[float, str], None] | None = None, rank: float = 0.0) -> _Reserve:
        """``async with budgets.reserve(options) as r``: the first option all of whose budgets admit it.

        Raises CapacityError when no option can ever fit, or only after longer than ``max_wait_s``.
        ``on_wait(seconds, why)`` is called once, when the request first has to wait. ``rank``
        orders this request on ranked budgets (lower first; equal ranks by arrival).
        """
        return _Reserve(self, options, max_wait_s, on_wait, rank)

    async def acquire(self, options: Sequence[Option], max_wait_s: float = math.inf,
                      on_wait: Callable[[float, str], None] | None = None, rank: float = 0.0) -> Reservation:
        """Wait until one option fits, charge it, and return its Reservation (see ``reserve``)."""
        if not options:
            raise CapacityError(math.inf, "no option to send the request to")
        waiter = _Waiter(next(self._seq), rank)
        started = self.clock.now()
        announced = False
        last_wake, repeats = math.nan, 0
        try:
            while True:
                now = self.clock.now()
                reservation, wake_at, why, blocker, woken_by_others = self._evaluate(waiter, options, now)
                if reservation is not None and await self._admitted_by_store(reservation):
                    reservation.waited_s = self.clock.now() - started
                    return reservation
                if reservation is not None:  # the store refused: a budget is held; look again
                    continue
                if not woken_by_others and math.isinf(wake_at):
                    raise CapacityError(math.inf, why, blocker)
                if not woken_by_others and wake_at - now > max_wait_s:
                    raise CapacityError(wake_at - now, why, blocker)
                if not announced and on_wait is not None:
                    on_wait(max(0.0, wake_at - now), why)
                announced = True
                waiter.future = asyncio.get_running_loop().create_future()
                # wake just after the moment, never just before: clocks round, and a provider
                # counting in the same shape must see the time as passed
                repeats = repeats + 1 if wake_at == last_wake else 0
                last_wake = wake_at
                margin = _WAKE_MARGIN_S * 2 ** min(repeats, 20)
                timer = self.clock.call_later(wake_at - now + margin, waiter.wake) if math.isfinite(wake_at) else None
                try:
                    await waiter.future
                finally:
                    if timer is not None:
                        timer.cancel()
                    waiter.future = None
        finally:
            self._leave(waiter)

    async def _admitted_by_store(self, reservation: Reservation) -> bool:
        """Whether the shared store admits what this process admitted (always, without a store).

        Refused, the reservation is undone here and the budget the store named is held (until the
        time it gave, or until a release), so this process's other waiters do not ask again first.
        """
        store = self.shared
        shared = reservation.shared
        if store is None or not store.active or not shared:
            return True
        try:
            verdict = await store.reserve(reservation.rid, list(shared), reservation.tokens, reservation.option.audio_s)
        except BaseException:
            self._undo(reservation)
            raise
        if verdict.admitted:
            if store.active:
                reservation.store = store
            return True
        if verdict.stale:  # a release overtook the refusal: there may be room now, so no hold; look again
            self._undo(reservation)
            return False
        budget = shared[min(max(verdict.budget, 0), len(shared) - 1)]
        self._apply(budget, verdict)
        self._undo(reservation)
        return False

    def _apply(self, budget: Budget, verdict: Verdict) -> None:
        """Hold ``budget`` as the store's refusal says (the others told the store; it is not told back)."""
        wait = verdict.wait_s
        with budget._quietly():
            if verdict.why == "disabled":
                category, _, message = verdict.text.partition("\t")
                try:
                    budget.disable(ErrorCategory(category), message)
                except ValueError:
                    budget.disable(ErrorCategory.AUTH, verdict.text)
            elif verdict.why == "cooldown" and wait is not None:
                budget.cool_down(wait, verdict.text or f"cooling down {wait:.1f}s")
            elif verdict.why == "concurrency":
                budget.hold(f"{budget.label}: {verdict.text}", None, wait)
            else:
                until = self.clock.now() + (wait if wait is not None else math.inf)
                budget.hold(f"{budget.label}: {verdict.text} ({budget.limiter}) full for {wait or 0:.1f}s "
                            "across processes", until)

    @staticmethod
    def _undo(reservation: Reservation) -> None:
        """Give back what this process took for a request the store did not admit."""
        reservation._refund_here()
        reservation.release()

    def _evaluate(self, waiter: _Waiter, options: Sequence[Option], now: float
                  ) -> tuple[Reservation | None, float, str, Budget | None, bool]:
        """Admit the first option that fits now, or update claims and watches and say when to look again.

        Returns (the reservation, or None and: the time worth waking at (inf: none), why, the
        budget that blocks, and whether a release or a budget's queue moving on will wake it).
        """
        wake_at, why, blocker, woken_by_others = math.inf, "", None, False
        claims: set[Budget] = set()
        watching: set[Budget] = set()
        for index, option in enumerate(options):
            blocks: list[_Block] = []
            tokens = option.current()
            for b in option.budgets:
                blk = b.block(tokens, now, option.audio_s)
                if blk is None:
                    if b._ahead(b._head(), waiter):
                        blk = _Block(b, None, f"queued behind earlier requests for {b.label}")
                if blk is not None:
                    blocks.append(blk)
            if not blocks:
                reservation = Reservation(self, option, index, tokens)
                reservation._take(now)
                self._leave(waiter)
                for b in option.budgets:  # the baton: the next claimant may fit what is left
                    if b._claims:
                        b.changed()
                return reservation, math.inf, "", None, False
            never = next((blk for blk in blocks if blk.until is not None and math.isinf(blk.until)), None)
            if never is not None:
                if blocker is None:
                    why, blocker = never.why, never.budget
                continue
            timed = [blk for blk in blocks if blk.until is not None]
            latest = max(timed, key=lambda blk: blk.until or 0.0) if timed else None
            sole = blocks[0].budget if len(blocks) == 1 else None
            if sole is not None:
                claims.add(sole)  # first come, first served on the one budget in the way
            if latest is not None:
                # nothing frees this option before its latest time; only a head claimant keeps a timer
                if sole is not None and sole._ahead(sole._head(), waiter):
                    woken_by_others = True
                elif latest.until is not None and latest.until < wake_at:
                    wake_at, why, blocker = latest.until, latest.why, latest.budget
            else:
                woken_by_others = True
                if sole is None:
                    watching.update(blk.budget for blk in blocks)
                if blocker is None or math.isinf(wake_at):
                    why, blocker = blocks[0].why, blocks[0].budget
        self._update(waiter, claims, watching)
        return None, wake_at, why, blocker, woken_by_others

    def _update(self, waiter: _Waiter, claims: set[Budget], watching: set[Budget]) -> None:
        for b in waiter.claims - claims:
            waiter.claims.discard(b)
            b.changed()  # it was perhaps the head: the next claimant looks now
        for b in claims - waiter.claims:
            waiter.claims.add(b)
            heapq.heappush(b._claims, (b._order(waiter), waiter))
        for b in waiter.watching - watching:
            b._watchers.discard(waiter)
        for b in watching:
            b._watchers.add(waiter)
        waiter.watching = set(watching)

    def _leave(self, waiter: _Waiter) -> None:
        claimed = waiter.claims
        waiter.claims = set()
        for b in waiter.watching:
            b._watchers.discard(waiter)
        waiter.watching = set()
        for b in claimed:
            b.changed()

    def statistics(self) -> tuple[BudgetStats, ...]:
        return tuple(b.statistics() for b in self._budgets.values())

    def cooldowns(self) -> tuple[Cooldown, ...]:
        """Every budget cooling down now, longest wait first."""
        now = self.clock.now()
        live = [Cooldown(b.scope, b.name, b.cooldown_until - now, b.cooldown_reason)
                for b in self._budgets.values() if b.cooldown_until > now]
        if self.learned is not None:  # saved by an earlier run, for budgets this one has not used yet
            known = {f"{b.scope}:{b.name}" for b in self._budgets.values()}
            wall = self.learned.wall()
            live += [Cooldown(*c.scope.split(":", 1), c.until - wall, c.reason)
                     for c in self.learned.cooldowns() if c.scope not in known and ":" in c.scope]
        return tuple(sorted(live, key=lambda c: -c.seconds_left))

    def __iter__(self):  # noqa: ANN204 - the budgets, for status views and tests
        return iter(list(self._budgets.values()))

    def __repr__(self) -> str:
        return f"<BudgetSet {len(self._budgets)} budgets>"
