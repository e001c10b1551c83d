"""The findings of issue 8, end to end against the sandbox in virtual time (looptime).

Each test is a case that failed before the admission rewrite: a full allowance usable at
once, limits learned from headers with at most one refusal, no hidden pacing where the
server has no limits, and one refusal with a stated wait costing only that wait.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nbfanout import Fanout

pytestmark = pytest.mark.looptime

PROMPTS = [f"Question {i:03d}: what is the square of {i:04d} then?" for i in range(120)]


def virtual(factory: Any, scenario: Any) -> Any:
    return factory(scenario, time_scale=None, clock=lambda: asyncio.get_running_loop().time())


def refusals(app: Any) -> dict[str, int]:
    rejected = app.stats()["totals"]["rejected"]
    return {k: v for k, v in rejected.items() if k in {"rpm", "tpm", "rpd", "concurrency"}}


def one_model(limits: dict[str, Any], faults: list[dict[str, Any]] | None = None, **provider: Any) -> dict[str, Any]:
    return {
        "name": "one", "seed": 5,
        "providers": {"local": {"style": "openai", "keys": ["sk-sbx-one-0001"], **provider, "models": {"m": {
            "limits": limits, "latency": {"base_ms": 200}, "output_tokens": [20, 30], "faults": faults or []}}}},
    }


async def test_a_token_bucket_whose_tpm_allows_the_whole_batch_sends_it_at_once(sandbox_app_factory):
    """Seen: 40 requests that the TPM allowed at once took 134 s; 0.2 s was possible."""
    app = virtual(sandbox_app_factory, one_model({"tpm": 40 * 60, "concurrency": 16, "limiter": "token_bucket"}))
    fx = Fanout(app.config, transport=app.transport(), learn=False, concurrency=64)
    peak = 0

    def on(e: Any) -> None:
        nonlocal peak
        if e.kind == "request_started":
            peak = max(peak, e.in_flight)

    fx.subscribe(on)
    t0 = asyncio.get_running_loop().time()
    batch = await fx.map(PROMPTS[:40], ["local/m"], max_tokens=40)
    elapsed = asyncio.get_running_loop().time() - t0
    assert all(r.ok for r in batch.results) and refusals(app) == {}
    assert peak == 16  # the model's concurrency limit is what runs, not 2
    assert elapsed < 0.2 * 40 / 16 + 0.5  # 3 rounds of 16 at 0.2 s, not minutes


async def test_limits_stated_only_in_headers_cost_at_most_one_refusal_per_kind(sandbox_app_factory):
    """Seen: with limits unknown to the client but in every response's headers, 55 refusals of 120."""
    app = virtual(sandbox_app_factory, one_model({"rpm": 30, "tpm": 3000, "hidden": ["rpm", "tpm"]}))
    fx = Fanout(app.config, transport=app.transport(), learn=False, concurrency=64)
    batch = await fx.map(PROMPTS[:60], ["local/m"], max_tokens=40)
    assert all(r.ok for r in batch.results)
    assert all(n <= 1 for n in refusals(app).values()), refusals(app)
    learned = {s.scope: (s.rpm_limit, s.tpm_limit) for s in fx.statistics() if s.scope == "model-key"}
    assert learned == {"model-key": (30, 3000)}


async def test_a_server_without_limits_is_not_paced_by_the_catalog(sandbox_app_factory):
    """Seen: the `fast` scenario's written config carried tier-1 limits: 10 in flight of 64, 190 waits."""
    # gpt-4o-mini has published tier-1 limits in the catalog; this server enforces none
    scenario = {"name": "nolimits", "seed": 2, "providers": {"openai": {"style": "openai", "keys": ["sk-sbx-free-0001"],
                "models": {"gpt-4o-mini": {"latency": {"base_ms": 200}, "output_tokens": [5, 10]}}}}}
    app = virtual(sandbox_app_factory, scenario)
    model = "openai/gpt-4o-mini"
    fx = Fanout(app.config, transport=app.transport(), learn=False, concurrency=64)
    kinds: list[str] = []
    peak = 0

    def on(e: Any) -> None:
        nonlocal peak
        kinds.append(e.kind)
        if e.kind == "request_started":
            peak = max(peak, e.in_flight)

    fx.subscribe(on)
    batch = await fx.map([f"p{i}" for i in range(200)], [model], concurrency=64)
    assert all(r.ok for r in batch.results)
    assert peak == 64
    assert kinds.count("no_models_available") <= 200 - 64  # waits are for the run's own 64, none for a budget
    assert all(s.rpm_limit is None and s.tpm_limit is None for s in fx.statistics())


async def test_one_refusal_with_retry_after_one_second_costs_about_one_second(sandbox_app_factory):
    """Seen: 30 prompts, one 429 with retry-after: 1, took 81 s (the key cut to 8 RPM, climbing back by one)."""
    app = virtual(sandbox_app_factory, one_model({}, faults=[{"kind": "rate_limit_burst", "first_n": 1, "retry_after_s": 1}]))
    fx = Fanout(app.config, transport=app.transport(), learn=False, concurrency=16)
    t0 = asyncio.get_running_loop().time()
    batch = await fx.map(PROMPTS[:30], ["local/m"], max_tokens=40)
    elapsed = asyncio.get_running_loop().time() - t0
    assert all(r.ok for r in batch.results)
    assert elapsed < 3.0, elapsed
    retried = [a for r in batch.results for a in r.attempts if a.outcome == "rate_limit"]
    assert len(retried) == 1 and retried[0].wait_s == pytest.approx(1.0, abs=0.3)  # the wait that really happened
