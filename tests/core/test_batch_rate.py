"""A long batch (500 prompts × 5 models) under tight RPM and TPM, in virtual time.

It must reach at least 95 % of the aggregate rate the limits allow and never be refused
for a known limit: the sandbox ledger's 60-second-window maxima stay within every limit.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from nbfanout import Fanout

N_PROMPTS = int(os.environ.get("NBFANOUT_BATCH_PROMPTS", "500"))
PROMPT_TOKENS = 12  # the sandbox counts ceil(chars / 4) of the 52-character prompts below
MAX_TOKENS = 40
LIMITS = {  # model: (rpm, tpm) — two bound by requests, two by tokens, one by both
    "rpm-a": (60, None),
    "rpm-b": (90, None),
    "tpm-a": (None, 2600),
    "tpm-b": (None, 3500),
    "both": (50, 2600),
}
SCENARIO = {
    "name": "tight",
    "seed": 11,
    "providers": {
        "bench": {
            "style": "openai",
            "keys": ["sk-sbx-bench-0001"],
            "models": {
                name: {
                    "limits": {k: v for k, v in (("rpm", rpm), ("tpm", tpm)) if v},
                    "latency": {"base_ms": 300, "per_output_token_ms": 2, "jitter": 0.2},
                    "output_tokens": [20, 40],
                }
                for name, (rpm, tpm) in LIMITS.items()
            },
        }
    },
}


def allowed_per_minute(rpm: int | None, tpm: int | None) -> float:
    by_tokens = tpm / (PROMPT_TOKENS + MAX_TOKENS) if tpm else float("inf")
    return min(rpm or float("inf"), by_tokens)



@pytest.mark.looptime
async def test_500_prompts_by_5_models_run_at_95_percent_of_the_limits_without_refusals(sandbox_app_factory):
    app = sandbox_app_factory(SCENARIO, time_scale=None, clock=lambda: asyncio.get_running_loop().time())
    # 128 in flight: at a sliding window's edge every model bursts at once (rpm-b alone sends 90)
    fx = Fanout(app.config, transport=app.transport(), learn=False, concurrency=128)
    prompts = [f"Question {i:03d}: what is the square of {i:04d} then?" for i in range(N_PROMPTS)]
    assert {len(p) // 4 + (len(p) % 4 > 0) for p in prompts} == {PROMPT_TOKENS}
    loop = asyncio.get_running_loop()
    starts: dict[str, list[float]] = {m: [] for m in LIMITS}
    fx.subscribe(lambda e: starts[e.model.split("/", 1)[1]].append(loop.time()) if e.kind == "request_started" else None)
    batch = await fx.map(prompts, [f"bench/{m}" for m in LIMITS], max_tokens=MAX_TOKENS)
    assert all(r.ok for r in batch.results)

    stats = app.stats()
    refused = {k: v for k, v in stats["totals"]["rejected"].items() if k in {"rpm", "tpm", "rpd", "concurrency"}}
    assert refused == {}
    report = []
    for name, (rpm, tpm) in LIMITS.items():
        ledger = stats["models"][f"bench/{name}"]
        if rpm:
            assert ledger["max_requests_60s"] <= rpm
        if tpm:
            assert ledger["max_tokens_60s"] <= tpm
        times = starts[name]
        span_min = (times[-1] - times[0]) / 60
        achieved = (len(times) - 1) / span_min
        share = achieved / allowed_per_minute(rpm, tpm)
        report.append((name, round(achieved, 1), round(share, 3)))
    print("\nachieved requests/minute and share of what the limits allow:", report)  # shown with -s
    assert all(share >= 0.95 for _, _, share in report), report


SLIDING = {  # three models, each needing a second sliding window; one capped at 2 in flight
    "name": "sliding-critical-path",
    "seed": 12,
    "providers": {
        "bench": {
            "style": "openai",
            "keys": ["sk-sbx-bench-0002"],
            "limits": {"limiter": "sliding_window"},
            "models": {
                name: {
                    "limits": {"rpm": 20, **extra},
                    "latency": {"base_ms": 1000, "per_output_token_ms": 0, "jitter": 0.0},
                    "output_tokens": [20, 20],
                }
                for name, extra in (("a", {}), ("b", {"concurrency": 2}), ("c", {}))
            },
        }
    },
}


@pytest.mark.looptime
async def test_under_sliding_windows_the_requests_a_later_window_reuses_go_first(sandbox_app_factory):
    """30 prompts × 3 models at rpm 20 (sliding) and 4 in flight: each model's 10 last requests
    reuse the shares of its 10 first, a minute after those went. Sent first, those 30 take 7.5 s
    of the run's 4 slots, so the tails start by 67.5 s and end by 69 s; interleaved with the
    requests nothing reuses, they take the first window's whole 15 s and end at 74 s."""
    app = sandbox_app_factory(SLIDING, time_scale=None, clock=lambda: asyncio.get_running_loop().time())
    fx = Fanout(app.config, transport=app.transport(), learn=False, concurrency=4)
    prompts = [f"Question {i:03d}: what is the square of {i:04d} then?" for i in range(30)]
    models = ["bench/a", "bench/b", "bench/c"]
    batch = await fx.map(prompts, models, max_tokens=20)
    assert all(r.ok for r in batch.results)
    assert {k: v for k, v in app.stats()["totals"]["rejected"].items() if k in {"rpm", "concurrency"}} == {}
    bound = app.state.scenario.lower_bound(models, 12, 20, prompts=30, concurrency=4).seconds
    assert 67.5 <= bound <= batch.elapsed_s <= 69.5, (bound, batch.elapsed_s)
