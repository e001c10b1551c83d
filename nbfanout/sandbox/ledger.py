"""The sandbox's accounts: what was asked, admitted, answered and refused, per key, model and pool.

Every entity (the totals, each provider, each key, each ``provider/model``, each limit
pool) keeps::

    requests          every request that reached a model route
    admitted          requests that passed the limits (they count against RPM/TPM/RPD)
    accepted          requests answered successfully (a "slow" answer included)
    rejected          {reason: count}: rpm, tpm, rpd, concurrency, auth, quota_exhausted,
                      not_found, bad_request, a fault kind (rate_limit_burst,
                      server_error, unavailable, overloaded, drop, malformed, invalid_key),
                      or client_closed (a stream the client abandoned)
    faults            {kind: count} of injected faults (including "slow")
    in_flight, peak_concurrency
    tokens_admitted   estimated tokens counted at admission (input + max_tokens)
    tokens_charged    the same after settlement: with ``tokens_counted = "usage"`` each
                      answered request's charge is reduced to input + actual output
    max_requests_60s, max_tokens_60s
                      the most requests / tokens (as charged, after settlement) admitted
                      in any 60-second window, computed exactly from admission
                      timestamps: the largest count over sets whose timestamps satisfy
                      last - first < 60 s (the sliding window's own half-open definition;
                      other shapes allow more, e.g. a token bucket up to 2L in 60 s, so
                      check those against their own definition)

Entities are keyed ``providers[id]``, ``keys["provider:…abcd"]``,
``models["provider/model"]`` and ``pools[label]`` (e.g. ``"model:openai/gpt-4.1@…abcd"``,
``"group:openrouter/free-models-per-min@…abcd"``). GET /_sandbox/stats adds ``limits``
(each pool's configured limits, ``limiter`` shape and live in-flight count), a
``limiter`` entry in each ``pools[label]`` account, ``scenario``, ``time_scale`` and
``clock``. Keys appear only by their last four characters.

Batch requests (``batches.py``) never enter these accounts or any limit window: providers
give batches their own quota. ``batches[provider]`` counts them apart: ``batches`` created,
``failed_validation`` (of those), ``requests`` submitted and ``models`` {model: requests};
GET /_sandbox/stats adds each provider's live view from the batch book: ``live`` (batches
kept), ``status`` {phase: batches} in OpenAI's words (validating, in_progress, finalizing,
completed, failed, expired, cancelling, cancelled), ``results`` {processing, succeeded,
errored, expired, canceled: requests} at the current clock, and ``files`` (OpenAI files kept).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Ledger", "LedgerCharge", "max_in_window"]

WINDOW_S = 60.0


def max_in_window(times: list[float], amounts: list[int] | None = None, span: float = WINDOW_S) -> int:
    """Largest sum of ``amounts`` (1 each if None) over entries with t_last - t_first < span."""
    best = cur = 0
    lo = 0
    for hi, t in enumerate(times):
        cur += amounts[hi] if amounts is not None else 1
        while t - times[lo] >= span:
            cur -= amounts[lo] if amounts is not None else 1
            lo += 1
        best = max(best, cur)
    return best


@dataclass(frozen=True, slots=True)
class LedgerCharge:
    """Where one admission's tokens were recorded (account, index), in which ledger generation."""

    generation: int
    places: tuple[tuple[_Account, int], ...]


@dataclass(slots=True)
class _Account:
    """Running counts for one entity; ``snapshot()`` turns it into plain data."""

    requests: int = 0
    admitted: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    peak_concurrency: int = 0
    tokens_admitted: int = 0
    times: list[float] = field(default_factory=list)
    amounts: list[int] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "admitted": self.admitted,
            "accepted": self.accepted,
            "rejected": dict(sorted(self.rejected.items())),
            "rejected_total": sum(self.rejected.values()),
            "faults": dict(sorted(self.faults.items())),
            "in_flight": self.in_flight,
            "peak_concurrency": self.peak_concurrency,
            "tokens_admitted": self.tokens_admitted,
            "tokens_charged": sum(self.amounts),
            "max_requests_60s": max_in_window(self.times),
            "max_tokens_60s": max_in_window(self.times, self.amounts),
        }


class Ledger:
    """Accounts per entity; the app calls it at each step of a request's life."""

    def __init__(self) -> None:
        self._accounts: dict[tuple[str, str], _Account] = {}
        self._batches: dict[str, Counter[str]] = {}  # provider -> batches, requests, "model:<id>"
        #: Bumped by reset(); a request that entered before a reset does not leave after it.
        self.generation = 0

    def __repr__(self) -> str:
        total = self._accounts.get(("totals", ""), _Account())
        return f"Ledger(requests={total.requests}, accepted={total.accepted}, in_flight={total.in_flight})"

    def _acc(self, kind: str, name: str) -> _Account:
        acc = self._accounts.get((kind, name))
        if acc is None:
            acc = self._accounts[(kind, name)] = _Account()
        return acc

    def _all(self, entities: list[tuple[str, str]]) -> list[_Account]:
        return [self._acc("totals", "")] + [self._acc(k, n) for k, n in entities]

    @staticmethod
    def entities(
        provider: str, model: str | None, key_id: str | None, pools: tuple[str, ...] = ()
    ) -> list[tuple[str, str]]:
        """The accounts one request touches."""
        out = [("providers", provider)]
        if key_id is not None:
            out.append(("keys", f"{provider}:{key_id}"))
        if model is not None:
            out.append(("models", f"{provider}/{model}"))
        out += [("pools", p) for p in pools]
        return out

    def request(self, entities: list[tuple[str, str]]) -> None:
        for a in self._all(entities):
            a.requests += 1

    def reject(self, entities: list[tuple[str, str]], reason: str, *, fault: str | None = None) -> None:
        for a in self._all(entities):
            a.rejected[reason] += 1
            if fault is not None:
                a.faults[fault] += 1

    def fault(self, entities: list[tuple[str, str]], kind: str) -> None:
        """A fault that did not refuse the request (``slow``)."""
        for a in self._all(entities):
            a.faults[kind] += 1

    def admit(self, entities: list[tuple[str, str]], now: float, tokens: int) -> LedgerCharge:
        """Count an admission; the handle lets ``settle`` reduce its tokens later."""
        places = []
        for a in self._all(entities):
            a.admitted += 1
            a.tokens_admitted += tokens
            a.times.append(now)
            a.amounts.append(tokens)
            places.append((a, len(a.amounts) - 1))
        return LedgerCharge(self.generation, tuple(places))

    def settle(self, charge: LedgerCharge, back: int) -> None:
        """Give ``back`` tokens of an admission back (tokens_counted = "usage"), unless a reset forgot it."""
        if charge.generation != self.generation or back <= 0:
            return
        for acc, i in charge.places:
            acc.amounts[i] -= min(back, acc.amounts[i])

    def enter(self, entities: list[tuple[str, str]]) -> None:
        for a in self._all(entities):
            a.in_flight += 1
            a.peak_concurrency = max(a.peak_concurrency, a.in_flight)

    def leave(self, entities: list[tuple[str, str]]) -> None:
        for a in self._all(entities):
            a.in_flight -= 1

    def accept(self, entities: list[tuple[str, str]]) -> None:
        for a in self._all(entities):
            a.accepted += 1

    def batch(self, provider: str, models: Counter[str], *, failed: bool = False) -> None:
        """A batch was created with ``models`` {model: requests}; kept apart from the live accounts."""
        acc = self._batches.setdefault(provider, Counter())
        acc["batches"] += 1
        acc["failed_validation"] += int(failed)
        acc["requests"] += sum(models.values())
        for model, n in models.items():
            acc[f"model:{model}"] += n

    def in_flight(self, kind: str, name: str) -> int:
        acc = self._accounts.get((kind, name))
        return acc.in_flight if acc is not None else 0

    def reset(self) -> None:
        self._accounts.clear()
        self._batches.clear()
        self.generation += 1

    def snapshot(self) -> dict[str, Any]:
        """The whole ledger as JSON-ready data (GET /_sandbox/stats)."""
        out: dict[str, Any] = {"totals": self._acc("totals", "").snapshot()}
        for kind in ("providers", "keys", "models", "pools"):
            out[kind] = {name: acc.snapshot() for (k, name), acc in sorted(self._accounts.items()) if k == kind}
        out["batches"] = {
            provider: {
                "batches": acc["batches"],
                "failed_validation": acc["failed_validation"],
                "requests": acc["requests"],
                "models": {k[6:]: v for k, v in sorted(acc.items()) if k.startswith("model:")},
            }
            for provider, acc in sorted(self._batches.items())
        }
        return out
