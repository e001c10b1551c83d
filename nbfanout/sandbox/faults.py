"""Which fault, if any, hits a request: deterministic from the scenario seed and request order.

Each rule keeps its own counter (per model for model rules, per provider for provider
rules) and its own seeded random stream, and every rule of the phase is evaluated on
every request, so ``every_nth = 4`` means the 4th, 8th, ... request whatever other
rules did. The first rule that fires (provider rules before model rules) wins.
``during_s`` rules read the sandbox clock: they fire for requests arriving in that
period after the book was made or last reset.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable

from nbfanout.sandbox.scenario import Fault, ModelSpec, ProviderSpec, Scenario
from nbfanout.sandbox.text import rng

__all__ = ["FaultBook"]


class FaultBook:
    """Counters and random streams for every fault rule of a scenario."""

    def __init__(self, scenario: Scenario, clock: Callable[[], float] | None = None) -> None:
        self.scenario = scenario
        self.clock = clock or time.monotonic
        self.origin = self.clock()  # where during_s periods are counted from
        self._counts: Counter[tuple[str, str, int]] = Counter()
        self._rngs: dict[tuple[str, str, int], random.Random] = {}

    def __repr__(self) -> str:
        return f"FaultBook({self.scenario.name!r}, evaluations={sum(self._counts.values())}, age={self.age():.3f}s)"

    def reset(self) -> None:
        self._counts.clear()
        self._rngs.clear()
        self.origin = self.clock()

    def age(self) -> float:
        """Seconds on the sandbox clock since the book was made or reset."""
        return self.clock() - self.origin

    def period_left(self, fault: Fault) -> float | None:
        """For a ``during_s`` rule, the seconds until its period ends (None for other rules)."""
        if fault.during_s is None:
            return None
        return max(0.0, fault.during_s[1] - self.age())

    def _fires(self, rule_id: tuple[str, str, int], fault: Fault) -> bool:
        self._counts[rule_id] += 1
        n = self._counts[rule_id]
        if fault.during_s is not None:
            lo, hi = fault.during_s
            return lo <= self.age() < hi
        if fault.probability is not None:
            r = self._rngs.get(rule_id)
            if r is None:
                r = self._rngs[rule_id] = rng(self.scenario.seed, "fault", *rule_id)
            return r.random() < fault.probability
        if fault.every_nth is not None:
            return n % fault.every_nth == 0
        if fault.first_n is not None:
            return n <= fault.first_n
        return False

    def pick(self, provider: ProviderSpec, model: ModelSpec, phase: str) -> Fault | None:
        """The fault for this request in ``phase`` ("pre" or "post"), or None."""
        fired: Fault | None = None
        rules = [((provider.id, "", i), f) for i, f in enumerate(provider.faults)]
        rules += [((provider.id, model.id, i), f) for i, f in enumerate(model.faults)]
        for rule_id, fault in rules:
            if fault.phase != phase:
                continue
            if self._fires(rule_id, fault) and fired is None:
                fired = fault
        return fired

    @staticmethod
    def busy_rules(model: ModelSpec) -> tuple[Fault, ...]:
        """The ``while_busy`` rules of a model (checked after admission, after their queue time)."""
        return tuple(f for f in model.faults if f.phase == "busy")
