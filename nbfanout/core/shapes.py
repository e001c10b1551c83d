"""Limiter shapes: the ways providers count a per-minute (or per-day) limit, each exact.

Every shape answers the same questions on the injected clock: how long until ``amount``
fits (0 now, ``inf`` never), take it, give some back, charge more, and accept the
provider's own count from its headers. Definitions (``L`` the limit, ``S`` its span:
60 s for rpm / tpm, 86,400 s for rpd):

* ``token_bucket``: capacity ``L``, starts full, refills continuously at ``L/S`` per second.
  Anthropic documents its limits this way (platform.claude.com/docs/en/api/rate-limits:
  "your capacity is continuously replenished up to your maximum limit"). It admits the
  same sequences as ``aiolimiter.AsyncLimiter(L, S)``; the tests use that as the oracle.
* ``sliding_window``: at most ``L`` in any ``S`` seconds: an amount taken at ``u`` counts
  while ``now - u < S``.
* ``fixed_window``: at most ``L`` per window ``[k·S, (k+1)·S)``; a provider's reset header
  moves the window edges to where the provider has them.
* ``per_second``: OpenAI's note that a per-minute limit "may be enforced over shorter
  periods (e.g. 60,000 requests/minute may be enforced as 1,000 requests/second)"
  (developers.openai.com/api/docs/guides/rate-limits): a token bucket holding one
  second's worth, ``L/60`` (for requests at least one), refilled at ``L/60`` per second.
  Only rpm / tpm are quantized.

Why ``sliding_window`` is the default for an endpoint whose shape is unknown: a sequence
with at most ``L`` in every ``S``-second window is also accepted by a token bucket of
capacity ``L`` (any interval of length ``T`` then holds at most ``L·ceil(T/S) ≤ L + L·T/S``)
and by a fixed window of ``L`` (each window is one of the sliding windows). So it is exact
for sliding-window providers and is never refused by token-bucket or fixed-window ones.
Only a provider that quantizes per second needs to be told (``limiter = "per_second"``).

Why not aiolimiter as the engine: ``AsyncLimiter`` is the token bucket, but admission
here must reserve across several budgets at once, give unused tokens back, say how long
until a request fits, serve waiters first come first served (aiolimiter serves the
smallest waiting amount first) and run on an injected clock, none of which its public API
offers; we use it as the reference the token bucket is tested against instead.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterator
from typing import Protocol

__all__ = ["DEFAULT_LIMITER", "LIMITERS", "Shape", "make_shape"]

LIMITERS = ("token_bucket", "sliding_window", "fixed_window", "per_second")
DEFAULT_LIMITER = "sliding_window"
_EPS = 1e-9


class Shape(Protocol):
    """One counted limit (requests or tokens) in one shape."""

    limit: float
    span: float

    @property
    def capacity(self) -> float: ...  # the largest single amount that can ever fit

    def wait(self, amount: float, now: float) -> float: ...

    def take(self, amount: float, now: float) -> float: ...  # returns a handle: the time taken

    def give_back(self, amount: float, taken_at: float, now: float) -> None: ...

    def charge(self, amount: float, taken_at: float, now: float) -> None: ...

    def used(self, now: float) -> float: ...

    def restamp(self, taken_at: float, now: float) -> float: ...  # the answer came: returns the new handle

    def sent(self, taken_at: float, now: float) -> None: ...  # its last byte is written

    def level(self, now: float) -> float | None: ...  # our count as the provider's headers show theirs (None: not comparable)

    def observe(self, remaining: float, reset_s: float | None, newer: float, now: float,
                expected: float | None = None) -> None: ...  # expected: level() right after the request was taken

    def rephase(self, reset_s: float, now: float) -> None: ...  # the provider's window ends reset_s from now


class TokenBucket:
    """Capacity ``capacity`` (default ``limit``), refilled at ``limit/span`` per second.

    The provider takes a request from its bucket on arrival, up to ``ARRIVAL_S`` after we
    admit it. Until then its bucket still holds that amount, so it fills up (and stops
    refilling) sooner than ours: counted here, the next request could be refused there. So
    our level never refills past ``capacity`` less what may not have arrived yet: what was
    taken in the last ``ARRIVAL_S``, or, once its last byte is written (``sent``), in the
    ``SENT_S`` since. A burst from a full bucket pays that once, refilling that much later; a
    bucket kept below full, as a rate-bound batch keeps it, pays nothing.
    """

    #: The most admission-to-arrival delay assumed: a burst's first requests open new connections
    #: (a TCP and TLS handshake each), and a busy client sends them after its own queue.
    ARRIVAL_S = 0.5
    #: ... and from its last byte written to the provider's count: one way across a continent
    #: (tens of ms) and the provider's gateway. The handshakes and our own queue are behind it.
    SENT_S = 0.1

    __slots__ = ("limit", "span", "_capacity", "_rate", "_level", "_t", "_recent", "_pending", "_corrected", "_observed")

    def __init__(self, limit: float, span: float, now: float, capacity: float | None = None) -> None:
        self.limit, self.span = float(limit), float(span)
        self._capacity = float(capacity if capacity is not None else limit)
        self._rate = self.limit / self.span
        self._level = self._capacity  # tokens available; may go negative after a charge (debt)
        self._t = now
        # [taken at, amount, may not have arrived until] of recent takes, by that deadline
        self._recent: deque[list[float]] = deque()
        self._pending = 0.0  # their sum
        self._corrected = 0.0  # how much the provider's headers have lowered our level in all (observe)
        self._observed = False  # whether a provider's count has set our level yet

    @property
    def capacity(self) -> float:
        return self._capacity

    def _segments(self) -> Iterator[tuple[float, float]]:
        """(until, ceiling): the level's ceiling up to each recent take's arrival deadline, then capacity."""
        pending = self._pending
        for _, amount, until in self._recent:
            yield until, self._capacity - pending
            pending -= amount
        yield math.inf, self._capacity

    def _grow(self, level: float, seconds: float, ceiling: float) -> float:
        return level if level >= ceiling else min(ceiling, level + seconds * self._rate)

    def _refill(self, now: float) -> None:
        if now <= self._t:
            return
        level, t = self._level, self._t
        for until, ceiling in self._segments():
            end = min(until, now)
            if end > t:
                level, t = self._grow(level, end - t, ceiling), end
            if until >= now:
                break
        self._level, self._t = level, now
        recent = self._recent
        while recent and recent[0][2] <= now:
            self._pending -= recent.popleft()[1]

    def available(self, now: float) -> float:
        self._refill(now)
        return self._level

    def wait(self, amount: float, now: float) -> float:
        if amount > self._capacity + _EPS:
            return math.inf
        level = self.available(now)
        t = now
        for until, ceiling in self._segments():
            if ceiling >= amount - _EPS:  # every later ceiling is higher still: plain refill from here
                break
            level, t = self._grow(level, until - t, ceiling), until
        deficit = amount - level
        return t - now + (deficit / self._rate if deficit > _EPS else 0.0)

    def take(self, amount: float, now: float) -> float:
        self._refill(now)
        self._level -= amount
        if self._capacity >= 2 * amount:  # a bucket that holds one request at a time has no burst to land late
            self._recent.append([now, amount, now + self.ARRIVAL_S])  # the latest deadline yet: stays sorted
            self._pending += amount
        return now

    def _forget(self, taken_at: float, amount: float) -> None:
        """Take up to ``amount`` of a recent entry taken at ``taken_at`` off the ceiling (entries taken at
        the same instant are alike: any one not yet forgotten will do)."""
        for e in reversed(self._recent):
            if e[0] == taken_at and e[1] > 0:
                cut = min(amount, e[1])
                e[1] -= cut
                self._pending -= cut
                return

    def give_back(self, amount: float, taken_at: float, now: float) -> None:
        self._refill(now)
        self._forget(taken_at, amount)
        self._level = min(self._capacity - self._pending, self._level + amount)

    def charge(self, amount: float, taken_at: float, now: float) -> None:
        self._refill(now)
        self._level -= amount

    def used(self, now: float) -> float:
        return self._capacity - self.available(now)

    def sent(self, taken_at: float, now: float) -> None:
        """The request taken at ``taken_at`` has its last byte written: it arrives within ``SENT_S``."""
        recent = self._recent
        for i in range(len(recent) - 1, -1, -1):
            e = recent[i]
            if e[0] == taken_at and e[1] > 0 and e[2] > now + self.SENT_S:
                del recent[i]
                e[2] = now + self.SENT_S
                bisect.insort(recent, e, key=lambda x: x[2])
                return

    def restamp(self, taken_at: float, now: float) -> float:
        """An answer proves its request arrived: it no longer holds the ceiling down. The handle returned
        matches no entry, so a later settlement cannot forget another request's."""
        self._refill(now)
        self._forget(taken_at, math.inf)
        return math.nan

    def level(self, now: float) -> float | None:
        """Our level as if no correction from headers had been made: ``observe`` compares it with the
        provider's and corrects only what the corrections made since have not."""
        return self.available(now) + self._corrected

    def observe(self, remaining: float, reset_s: float | None, newer: float, now: float,
                expected: float | None = None) -> None:
        """Correct our level by what the provider's count says we missed.

        ``expected`` is our level right after we took the request whose headers these are
        (``level``); the provider's level right after it took that request is ``remaining``
        (floored to whole units; the time to full, ``reset_s``, gives the fraction). A provider
        that took it ``d`` seconds later has refilled ``d`` more meanwhile, and so have we by
        the time we took the next one: same count, shifted. So only a provider level below
        ``expected`` says something we did not count (another client, a charge larger than our
        estimate, a request that took the provider off full later than it took us): we lower
        ours by that much, less what we lowered it by since that request was taken (the requests
        in flight with it report the same shortfall, which must count once). Setting our level
        to ``remaining`` less what we sent since would drop the refill of every answer's latency
        instead (0.3-0.5 s behind on ``batch_token_bucket``).

        Without ``expected`` (a request taken before this shape existed, as when its limit was
        just learned), the provider's level less what we sent since is the least it can hold:
        the first such reading sets our level there, later ones only raise it to theirs.
        """
        self._refill(now)
        provider = float(remaining)
        if reset_s is not None and math.isfinite(reset_s):
            provider = min(max(provider, self._capacity - reset_s * self._rate), provider + 1.0)
        if expected is None:
            level = remaining - newer if not self._observed else max(self._level, remaining - newer)
        else:
            level = self._level - max(0.0, expected - self._corrected - provider)
        level = min(self._capacity - self._pending, level)
        self._corrected += self._level - level
        self._level = level
        self._observed = True

    def rephase(self, reset_s: float, now: float) -> None:
        """No edges to move: this shape has none."""

    def __repr__(self) -> str:
        return f"<TokenBucket {self._level:.1f}/{self._capacity:g}, +{self._rate:g}/s>"


class _Window:
    """What the window shapes share: headers correct their counts in ``observe``, not by level."""

    __slots__ = ()

    def sent(self, taken_at: float, now: float) -> None:
        """Nothing to do: a window counts a request by its answer or its window, not its arrival."""

    def level(self, now: float) -> float | None:
        """Not comparable: the headers' count of a window is corrected in ``observe``."""
        return None


class SlidingWindow(_Window):
    """At most ``limit`` in any ``span`` seconds: a log of (time, amount)."""

    __slots__ = ("limit", "span", "_log", "_total", "_slice")

    #: Windows longer than a minute keep one entry per slice of span / SLICES, dated at its newest
    #: request: a day's log holds at most 1,440 entries, not one per request, and each entry
    #: expires no sooner than its newest request would (a minute late at most, never early).
    SLICES = 1440

    def __init__(self, limit: float, span: float, now: float) -> None:
        self.limit, self.span = float(limit), float(span)
        self._log: deque[list[float]] = deque()  # [time, amount], oldest first
        self._total = 0.0
        self._slice = span / self.SLICES if span > 60.0 else 0.0

    @property
    def capacity(self) -> float:
        return self.limit

    def _prune(self, now: float) -> None:
        log = self._log
        while log and now - log[0][0] >= self.span:
            self._total -= log.popleft()[1]

    def wait(self, amount: float, now: float) -> float:
        if amount > self.limit + _EPS:
            return math.inf
        self._prune(now)
        need = self._total + amount - self.limit
        if need <= _EPS:
            return 0.0
        freed = 0.0
        for t, a in self._log:
            freed += a
            if freed >= need - _EPS:
                return max(0.0, t + self.span - now)
        return math.inf  # unreachable: the whole log frees more than ``need``

    def take(self, amount: float, now: float) -> float:
        self._prune(now)
        last = self._log[-1] if self._log else None
        if last is not None and self._slice and now - self._slice < last[0] <= now:
            last[0] = now  # the slice's newest request dates it
            last[1] += amount
        elif last is not None and last[0] > now:  # a synthetic entry from observe() is not "oldest"
            self._insert(now, amount)
        else:
            self._log.append([now, amount])
        self._total += amount
        return now

    def _insert(self, t: float, amount: float) -> None:
        items = list(self._log)
        i = next((k for k, e in enumerate(items) if e[0] > t), len(items))
        items.insert(i, [t, amount])
        self._log = deque(items)

    def _entry(self, taken_at: float) -> list[float] | None:
        for e in reversed(self._log):
            if e[0] == taken_at:
                return e
        return None

    def give_back(self, amount: float, taken_at: float, now: float) -> None:
        self._prune(now)
        e = self._entry(taken_at)
        if e is not None:
            back = min(amount, e[1])
            e[1] -= back
            self._total -= back

    def charge(self, amount: float, taken_at: float, now: float) -> None:
        self._prune(now)
        e = self._entry(taken_at)
        if e is None:  # already out of the window: the provider counts it now
            self.take(amount, now)
            return
        e[1] += amount
        self._total += amount

    def used(self, now: float) -> float:
        self._prune(now)
        return self._total

    def restamp(self, taken_at: float, now: float) -> float:
        """Count the entry from when the answer came: the provider stamped it on arrival, after we sent it,
        so an entry dated at sending would expire here before it expires there."""
        e = self._entry(taken_at)
        if e is None or now <= taken_at:
            return taken_at
        amount = e[1]
        self._log.remove(e)
        self._total -= amount
        return self.take(amount, now)

    def observe(self, remaining: float, reset_s: float | None, newer: float, now: float,
                expected: float | None = None) -> None:
        """Keep our count between the provider's (``limit - remaining``) and that plus what we sent since.

        Headers are read while later requests are in flight, which the provider may or may not have
        counted yet; moving only when our count leaves that range never counts one twice.

        A surplus is taken from our oldest entries (the provider lets go of those first).
        """
        self._prune(now)
        low = max(0.0, self.limit - remaining)  # what it counts, if it has counted all we sent since
        high = low + newer  # ... and if it has counted none of that yet
        if self._total > high + _EPS:  # it has let go of what we still hold: the oldest entries first
            surplus = self._total - high
            for e in self._log:
                cut = min(surplus, e[1])
                e[1] -= cut
                surplus -= cut
                if surplus <= _EPS:
                    break
            self._total = high
        elif self._total < low - _EPS and not self._log:
            # use we never saw (another client, or requests sent before this limit was known): it
            # expires when the provider says the window resets. With entries of our own we add
            # nothing: entries re-stamped at the answer already outlast the provider's, and piling
            # a difference onto one entry would hold it for a whole extra window.
            expires = now + (reset_s if reset_s is not None else self.span)
            self._insert(min(now, expires - self.span), low - self._total)
            self._total = low

    def rephase(self, reset_s: float, now: float) -> None:
        """No edges to move: this shape has none."""

    def __repr__(self) -> str:
        return f"<SlidingWindow {self._total:g}/{self.limit:g} per {self.span:g}s>"


class FixedWindow(_Window):
    """At most ``limit`` per window ``[k·span + phase, (k+1)·span + phase)``.

    The provider counts a request when it arrives, a little after we admit it: one admitted in
    the last ``EDGE_S`` of a window may land in the next. So it counts in both (the next window
    starts with it), and an edge never lets the next window be overfilled.
    """

    EDGE_S = 1.0  # the most admission-to-arrival delay assumed: network plus a busy client's queue

    __slots__ = ("limit", "span", "_phase", "_index", "_used", "_carry")

    def __init__(self, limit: float, span: float, now: float) -> None:
        self.limit, self.span = float(limit), float(span)
        self._phase = 0.0
        self._index = math.floor(now / span)
        self._used = 0.0
        self._carry = 0.0  # admitted near this window's end: counted in the next one too

    @property
    def capacity(self) -> float:
        return self.limit

    def _roll(self, now: float) -> None:
        index = math.floor((now - self._phase) / self.span)
        if index != self._index:
            carried = self._carry if index == self._index + 1 else 0.0
            self._index, self._used, self._carry = index, carried, 0.0

    def _end(self) -> float:
        return (self._index + 1) * self.span + self._phase

    def _near_end(self, at: float) -> bool:
        """Whether ``at`` lies in the last EDGE_S of its own window."""
        end = (math.floor((at - self._phase) / self.span) + 1) * self.span + self._phase
        return end - at < self.EDGE_S

    def wait(self, amount: float, now: float) -> float:
        if amount > self.limit + _EPS:
            return math.inf
        self._roll(now)
        return 0.0 if self._used + amount <= self.limit + _EPS else max(0.0, self._end() - now)

    def take(self, amount: float, now: float) -> float:
        self._roll(now)
        self._used += amount
        if self._near_end(now):
            self._carry += amount
        return now

    def _same_window(self, taken_at: float) -> bool:
        return math.floor((taken_at - self._phase) / self.span) == self._index

    def _carried_here(self, taken_at: float) -> bool:
        """Taken near the end of the window before this one, so counted in this one too."""
        return math.floor((taken_at - self._phase) / self.span) == self._index - 1 and self._near_end(taken_at)

    def give_back(self, amount: float, taken_at: float, now: float) -> None:
        self._roll(now)
        if self._same_window(taken_at):
            self._used = max(0.0, self._used - amount)
            if self._near_end(taken_at):
                self._carry = max(0.0, self._carry - amount)
        elif self._carried_here(taken_at):
            self._used = max(0.0, self._used - amount)

    def charge(self, amount: float, taken_at: float, now: float) -> None:
        self._roll(now)
        self._used += amount
        if self._same_window(taken_at) and self._near_end(taken_at):
            self._carry += amount

    def used(self, now: float) -> float:
        self._roll(now)
        return self._used

    def restamp(self, taken_at: float, now: float) -> float:
        """Nothing to move: a request admitted near an edge already counts in both windows (``take``),
        and one admitted earlier has arrived before the edge; headers (``observe``) correct the rest."""
        return taken_at

    def rephase(self, reset_s: float, now: float) -> None:
        """Put the window edges where the provider has them: its window ends ``reset_s`` from now."""
        if 0 < reset_s <= self.span:
            end = now + reset_s
            self._phase = end - math.floor(end / self.span) * self.span
            self._index = math.floor((now - self._phase) / self.span)

    def observe(self, remaining: float, reset_s: float | None, newer: float, now: float,
                expected: float | None = None) -> None:
        """Adopt the provider's window edge (from its reset) and its count."""
        if reset_s is not None:
            self.rephase(reset_s, now)
        self._roll(now)
        low = max(0.0, self.limit - remaining)
        self._used = min(self._used, low + newer) if self._used else low

    def __repr__(self) -> str:
        return f"<FixedWindow {self._used:g}/{self.limit:g} per {self.span:g}s>"


#: Seconds each limit kind counts over: per minute, per day, and Groq's audio seconds per hour
#: (ASH) and per day (ASD), https://console.groq.com/docs/rate-limits.
SPANS: dict[str, float] = {"rpm": 60.0, "tpm": 60.0, "rpd": 86_400.0, "ash": 3_600.0, "asd": 86_400.0}


def make_shape(limiter: str, kind: str, limit: float, now: float) -> Shape:
    """The shape ``limiter`` for a limit of ``kind`` (rpm, tpm, rpd; ash, asd: audio seconds per hour / day)."""
    span = SPANS[kind]
    if limiter == "token_bucket":
        return TokenBucket(limit, span, now)
    if limiter == "per_second":
        if span != 60.0:
            return TokenBucket(limit, span, now)
        # one second's worth, but never less than one request: a 20 RPM limit admits one every 3 s
        return TokenBucket(limit, span, now, capacity=max(limit / 60.0, 1.0) if kind == "rpm" else limit / 60.0)
    if limiter == "fixed_window":
        return FixedWindow(limit, span, now)
    if limiter == "sliding_window":
        return SlidingWindow(limit, span, now)
    raise ValueError(f"unknown limiter {limiter!r}; expected one of {', '.join(LIMITERS)}")
