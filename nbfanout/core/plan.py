"""Plans: what a run would do with nothing sent — model and key per request, tokens, cost, time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nbfanout.config import Config
from nbfanout.core.request import default_max_tokens
from nbfanout.core.shapes import DEFAULT_LIMITER
from nbfanout.core.tokens import estimate_request_tokens
from nbfanout.providers.base import Message

__all__ = ["Plan", "PlanRow", "build_plan", "requests_lower_bound"]


@dataclass(frozen=True, slots=True)
class PlanRow:
    requested: str
    model: str
    provider: str
    key_id: str | None
    missing_key_vars: tuple[str, ...]
    prompt_tokens: int
    max_output_tokens: int
    context_window: int | None
    fits: bool
    projected_cost: float | None


@dataclass(frozen=True, slots=True)
class Plan:
    """What a run would do, with nothing sent."""

    rows: tuple[PlanRow, ...]
    lower_bound_s: float
    projected_cost: float

    def __repr__(self) -> str:
        return f"<Plan {len(self.rows)} requests, ≥{self.lower_bound_s:.1f}s by limits, ≈${self.projected_cost:.4f}>"

    def _repr_html_(self) -> str:
        from nbfanout.render import plan_html  # lazy: the core never imports UI code

        return plan_html(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        from nbfanout.render import plan_text

        p.text(repr(self) if cycle else plan_text(self))


def requests_lower_bound(n: int, rpm: float, limiter: str | None) -> float:
    """Seconds before the ``n``-th of ``n`` requests can start under ``rpm`` counted in ``limiter``'s shape."""
    limiter = limiter or DEFAULT_LIMITER
    if limiter == "token_bucket":
        return max(0.0, n - rpm) * 60.0 / rpm
    if limiter == "per_second":
        return max(0.0, n - max(1.0, rpm / 60.0)) * 60.0 / rpm
    return max(0, math.ceil(n / rpm) - 1) * 60.0  # sliding window; a fixed window at its worst phase


def build_plan(config: Config, prompts: Sequence[str], names: Sequence[str], *, system: str | None,
               max_tokens: int | None) -> Plan:
    """One row per prompt × model: the key it would use, its tokens, whether it fits, its cost; and the time."""
    rows: list[PlanRow] = []
    per_key: dict[str, int] = {}
    for prompt in prompts:
        for name in names:
            spec = config.models[name]
            provider = config.providers[spec.provider]
            out_budget = max_tokens or default_max_tokens(spec.max_output_tokens)
            prompt_tokens, _ = estimate_request_tokens([Message("user", prompt)], system=system, encoding=spec.tokenizer)
            key = min(provider.keys, key=lambda k: per_key.get(f"{provider.id} {k.id}", 0)) if provider.keys else None
            if key is not None:
                per_key[f"{provider.id} {key.id}"] = per_key.get(f"{provider.id} {key.id}", 0) + 1
            rows.append(PlanRow(
                requested=name, model=name, provider=provider.id, key_id=key.id if key else None,
                missing_key_vars=() if key else provider.key_vars, prompt_tokens=prompt_tokens,
                max_output_tokens=out_budget, context_window=spec.context_window,
                fits=spec.context_window is None or prompt_tokens + out_budget <= spec.context_window,
                projected_cost=spec.cost(prompt_tokens, out_budget),
            ))
    return Plan(tuple(rows), _lower_bound(config, rows), sum(r.projected_cost or 0.0 for r in rows))


def _lower_bound(config: Config, rows: Sequence[PlanRow]) -> float:
    """Seconds the known request limits force, ignoring latency, per budget and its shape."""
    counts: dict[tuple[str, float, str | None], int] = {}
    for r in rows:
        spec = config.models[r.model]
        provider = config.providers[spec.provider]
        shape = spec.limits.limiter or provider.limits.limiter
        for scope, rpm in ((f"model {spec.name}", spec.limits.rpm), (f"provider {provider.id}", provider.limits.rpm)):
            if rpm:
                counts[(scope, rpm, shape)] = counts.get((scope, rpm, shape), 0) + 1
    return max((requests_lower_bound(n, rpm, shape) for (_, rpm, shape), n in counts.items()), default=0.0)
