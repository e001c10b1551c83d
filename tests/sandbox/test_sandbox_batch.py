"""Batch scenarios: loading, the configs they write, their headers, the failover fault, shape-aware lower bounds."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nbfanout.sandbox import ScenarioError, load_scenario, lower_bound_s, parse_scenario, write_config
from sandbox_helpers import chat_request

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BATCH = {
    "batch_token_bucket": "token_bucket",
    "batch_sliding_window": "sliding_window",
    "batch_fixed_window": "fixed_window",
    "batch_per_second": "per_second",
}
BATCH_MODELS = ["bench/rpm-a", "bench/rpm-b", "bench/tpm-a", "bench/tpm-b", "bench/both"]


@pytest.mark.parametrize(("name", "shape"), BATCH.items())
def test_batch_scenarios_write_their_shape_and_no_published_limits(tmp_path: Path, name: str, shape: str) -> None:
    sc = load_scenario(name)
    assert sc.name == name and sc.model_names() == BATCH_MODELS
    cfg = sc.client_config("http://127.0.0.1:9")
    assert cfg["providers"]["bench"]["published_limits"] is False
    assert set(cfg["models"]) == set(BATCH_MODELS)
    assert all(entry["limiter"] == shape for entry in cfg["models"].values())
    assert cfg["models"]["bench/rpm-b"]["concurrency"] == 16
    assert sum("rpm" in e for e in cfg["models"].values()) == 3 and sum("tpm" in e for e in cfg["models"].values()) == 3
    text = write_config(cfg, tmp_path / "nbfanout.toml").read_text()
    assert f'limiter = "{shape}"' in text and "published_limits = false" in text
    assert tomllib.loads(text) == cfg
    for m in sc.providers[0].models:
        lo = m.latency.min_seconds(m.output_tokens[0])
        hi = m.latency.seconds(min(40, m.output_tokens[1]), 1.0)
        assert 0.2 <= lo and hi <= 0.6


@pytest.mark.parametrize(
    ("name", "bound"),
    [
        ("batch_token_bucket", 40.285),  # rpm-a: (500 - 300) * 60 / 300 = 40 s, plus its 0.285 s answer
        ("batch_sliding_window", 60.399),  # a second window for every model; rpm-b's answer is 0.399 s
        ("batch_fixed_window", 60.399),  # worst phase: the start is a window's first instant
        ("batch_per_second", 40.952),  # rpm-a: (500 - 12) * 60 / 720 = 40.667 s, plus 0.285 s
        ("batch_headers", 40.285),
    ],
)
def test_batch_lower_bounds_are_the_ones_their_files_state(name: str, bound: float) -> None:
    sc = load_scenario(name)
    lb = sc.lower_bound(prompt_tokens=12, max_tokens=40, prompts=500)
    assert lb.seconds == pytest.approx(bound, abs=5e-4)
    assert 20 <= lb.seconds <= 70
    assert f"{bound:.3f} s" in sc.description


def test_fixed_window_bound_depends_on_the_phase() -> None:
    sc = load_scenario("batch_fixed_window")
    at = {t: sc.lower_bound(prompt_tokens=12, max_tokens=40, prompts=500, start=t).seconds for t in (1020.0, 1050.0, 1079.0)}
    assert at[1020.0] == pytest.approx(60.399)  # a window's first instant: the worst phase
    assert at[1050.0] == pytest.approx(30.399)
    # the boundary is 1 s away: rpm-b's 16 slots start 48 requests before it, so its last 52 need the window after next
    assert at[1079.0] == pytest.approx(61.399)
    assert "r + 0.399 s" in sc.description


async def test_batch_headers_hides_every_limit_but_states_them_on_every_200(sandbox_app_factory: Callable[..., Any]) -> None:
    sbx = sandbox_app_factory("batch_headers")
    cfg = sbx.config
    assert cfg["models"] == {}
    assert cfg["providers"]["bench"]["published_limits"] is False
    assert not {"rpm", "tpm", "rpd", "concurrency", "limiter"} & set(cfg["providers"]["bench"])
    prompt = "Summarise the attached paper in a line, please."  # 48 characters: 12 tokens
    async with sbx.client() as c:
        r = await c.request(**chat_request(cfg, "bench/both", prompt, max_tokens=40))
        rpm_only = await c.request(**chat_request(cfg, "bench/rpm-a", prompt, max_tokens=40))
        tpm_only = await c.request(**chat_request(cfg, "bench/tpm-a", prompt, max_tokens=40))
    assert r.status_code == rpm_only.status_code == tpm_only.status_code == 200
    h = r.headers
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("330", "329")
    assert (h["x-ratelimit-limit-tokens"], h["x-ratelimit-remaining-tokens"]) == ("17160", str(17160 - 52))
    assert h["x-ratelimit-reset-requests"] == "182ms"  # one request back at 330/60 a second
    assert h["x-ratelimit-reset-tokens"] == "182ms"  # 52 tokens back at 17160/60 a second
    assert rpm_only.headers["x-ratelimit-limit-requests"] == "300" and "x-ratelimit-limit-tokens" not in rpm_only.headers
    assert tpm_only.headers["x-ratelimit-limit-tokens"] == "15600" and "x-ratelimit-limit-requests" not in tpm_only.headers


async def test_failover_first_model_refuses_for_its_first_30_s(sandbox_app_factory: Callable[..., Any]) -> None:
    sbx = sandbox_app_factory("failover")
    cfg = sbx.config
    assert cfg["pools"] == {"failover": {"models": ["relay/primary", "relay/secondary", "relay/tertiary"]}}
    assert cfg["providers"]["relay"]["published_limits"] is False and cfg["models"] == {}
    async with sbx.client() as c:

        async def ask(model: str) -> Any:
            return await c.request(**chat_request(cfg, f"relay/{model}"))

        first = await ask("primary")
        assert first.status_code == 429 and first.headers["retry-after"] == "30"
        assert first.json()["error"]["code"] == "rate_limit_exceeded"
        assert (await ask("secondary")).status_code == 200 and (await ask("tertiary")).status_code == 200
        sbx.clock.advance(12.5)
        later = await ask("primary")
        assert later.status_code == 429 and later.headers["retry-after-ms"] == "17500"
        sbx.clock.advance(17.5)  # exactly 30 s in: the period is half-open
        assert (await ask("primary")).status_code == 200
        await c.post("/_sandbox/reset")  # a reset starts the sandbox's life again
        assert (await ask("primary")).status_code == 429
    m = sbx.stats()["models"]["relay/primary"]
    assert m["rejected"] == {"rate_limit_burst": 1} and m["faults"] == {"rate_limit_burst": 1}


def test_shape_aware_lower_bounds_for_many_prompts() -> None:
    def one(limits: dict[str, Any], **provider: Any) -> Any:
        return parse_scenario(
            {
                "providers": {
                    "p": {
                        "keys": ["sk-sbx-bound-key-0001"],
                        "models": {"m": {"limits": limits, "latency": {"base_ms": 1000}, "output_tokens": [10, 10]}},
                        **provider,
                    }
                }
            }
        )

    def bound(limits: dict[str, Any], prompts: int = 10, start: float | None = None, **provider: Any) -> float:
        return lower_bound_s(one(limits, **provider), prompt_tokens=100, max_tokens=150, prompts=prompts, start=start)

    # rpm 4, ten unit requests, and the last answer's 1 s:
    assert bound({"rpm": 4, "limiter": "token_bucket"}) == pytest.approx((10 - 4) * 60 / 4 + 1)  # 91
    assert bound({"rpm": 4}) == pytest.approx((3 - 1) * 60 + 1)  # sliding: windows of 4, 4, 2: 121
    assert bound({"rpm": 4, "limiter": "fixed_window"}) == pytest.approx(60 + 60 + 1)  # worst phase
    assert bound({"rpm": 4, "limiter": "fixed_window"}, start=1000.0) == pytest.approx(20 + 60 + 1)  # [960, 1020)
    assert bound({"rpm": 240, "limiter": "per_second"}) == pytest.approx((10 - 4) * 60 / 240 + 1)  # 2.5
    assert bound({"rpm": 4, "limiter": "token_bucket"}, prompts=4) == pytest.approx(1.0)  # all fit at once
    # tpm 1000 at 250 tokens a request (100 in + max_tokens 150):
    assert bound({"tpm": 1000, "limiter": "token_bucket"}) == pytest.approx((2500 - 1000) * 60 / 1000 + 1)  # 91
    assert bound({"tpm": 1000}) == pytest.approx(2 * 60 + 1)  # 4 a window
    assert bound({"tpm": 1000, "limiter": "fixed_window"}, start=1000.0) == pytest.approx(20 + 60 + 1)
    assert bound({"tpm": 60000, "limiter": "per_second"}) == pytest.approx((2500 - 1000) * 60 / 60000 + 1)  # 2.5
    assert bound({"tpm": 12000, "limiter": "per_second"}) == float("inf")  # 250 > 200 a second: never fits
    # Usage counted: a request ends up charged 100 + 10, which is the least it can cost.
    assert bound({"tpm": 1000, "limiter": "token_bucket"}, tokens_counted="usage") == pytest.approx((1100 - 1000) * 60 / 1000 + 1)
    assert bound({"tpm": 1000}, tokens_counted="usage") == pytest.approx(60 + 1)  # 9 of 110 a window: one more window
    # Concurrency 2: ten 1 s answers need 5 s whatever the shape.
    assert bound({"concurrency": 2}) == pytest.approx(5.0)
    # prompts = 1 is the bound of one answer per model, as before.
    assert bound({"rpm": 4, "limiter": "token_bucket"}, prompts=1) == pytest.approx(1.0)


def test_lower_bounds_for_a_client_that_keeps_at_most_c_requests_in_flight() -> None:
    models = {name: {"limits": {"rpm": 100}, "latency": {"base_ms": 1000}, "output_tokens": [10, 10]} for name in ("a", "b")}
    sc = parse_scenario({"providers": {"p": {"keys": ["sk-sbx-bound-key-0002"], "models": models}}})

    def bound(prompts: int, concurrency: int | None, **kw: Any) -> float:
        return lower_bound_s(sc, prompt_tokens=10, max_tokens=10, prompts=prompts, concurrency=concurrency, **kw)

    # 150 prompts to each of two models, sliding windows of 100: each model's last 50 may start at 60 s,
    # and their 100 answers of 1 s at 10 in flight take 10 s more.
    assert bound(150, None) == pytest.approx(61.0)
    assert bound(150, 10) == pytest.approx(60 + 100 * 1.0 / 10)
    # within one window the cap alone binds: 2 x 100 answers / 10 in flight
    assert bound(100, 10) == pytest.approx(20.0)
    # a tail counts from when its window opens: a fixed window entered at 30 s opens the next at 60 s, 30 s later
    fixed = parse_scenario({"providers": {"p": {"keys": ["sk-sbx-bound-key-0003"], "limits": {"limiter": "fixed_window"},
                                                "models": models}}})
    assert lower_bound_s(fixed, prompt_tokens=10, max_tokens=10, prompts=150, start=30.0, concurrency=10) == pytest.approx(
        max(30 + 100 * 1.0 / 10, 300 * 1.0 / 10))
    with pytest.raises(ValueError, match="concurrency"):
        bound(10, 0)


def test_limiter_and_tokens_counted_and_during_s_are_validated(tmp_path: Path) -> None:
    bad = tmp_path / "shapes.toml"
    bad.write_text(
        """
[providers.p]
keys = ["sk-sbx-valid-key-0001"]
limits = { rpm = 10, limiter = "leaky" }
tokens_counted = "output"
[providers.p.groups.g]
models = ["m"]
limits = { rpm = 5, limiter = 3 }
[providers.p.models.m]
limits = { tpm = 100, limiter = "token-bucket" }
faults = [{ kind = "rate_limit_burst", during_s = [30, 10] }, { kind = "unavailable", during_s = [0, 5], first_n = 1 }]
[pools.x]
models = ["p/nope"]
"""
    )
    with pytest.raises(ScenarioError) as info:
        load_scenario(bad)
    text = "\n".join(info.value.problems)
    allowed = "['sliding_window', 'token_bucket', 'fixed_window', 'per_second']"
    for fragment in [
        f"{bad}: key 'providers.p.limits.limiter': found 'leaky', expected one of {allowed}",
        f"{bad}: key 'providers.p.groups.g.limits.limiter': found 3, expected one of {allowed}",
        f"{bad}: key 'providers.p.models.\"m\".limits.limiter': found 'token-bucket', expected one of {allowed}",
        f"{bad}: key 'providers.p.tokens_counted': found 'output', expected one of ['max_tokens', 'usage']",
        "key 'providers.p.models.\"m\".faults[0].during_s': found [30, 10], expected [start_s, end_s] with 0 <= start_s < end_s",
        "key 'providers.p.models.\"m\".faults[1]': found ['first_n', 'during_s'], expected exactly one trigger",
        "key 'pools.x.models': found ['p/nope'], expected a non-empty list of this scenario's 'provider/model' names",
    ]:
        assert fragment in text, fragment


def test_fast_writes_a_config_that_says_there_are_no_limits() -> None:
    cfg = load_scenario("fast").client_config("http://127.0.0.1:9")
    assert cfg["models"] == {}
    for entry in cfg["providers"].values():
        assert entry["published_limits"] is False
        assert not {"rpm", "tpm", "rpd", "concurrency", "limiter", "tokens_counted"} & set(entry)


def test_tokens_counted_is_written_where_set() -> None:
    sc = parse_scenario(
        {"providers": {"a": {"style": "anthropic", "keys": ["sk-ant-sbx-usage-0001"], "tokens_counted": "usage", "models": {"c": {}}}}}
    )
    assert sc.client_config("http://h")["providers"]["a"]["tokens_counted"] == "usage"
    assert sc.public_dict()["providers"]["a"]["tokens_counted"] == "usage"


def test_a_running_sandbox_gives_the_bound_for_its_own_clock(sandbox_factory: Callable[..., Any]) -> None:
    sb = sandbox_factory("batch_fixed_window")
    now = sb.state.clock()
    lb = sb.lower_bound(prompt_tokens=12, max_tokens=40, prompts=500, start=now)
    r = (now // 60 + 1) * 60 - now
    if lb.seconds > 60:
        # seconds from the edge, rpm-b's 16 slots start fewer than the 140 requests its first window
        # must take (500 - 360): a third window is needed, one minute more
        assert r < 3.25 and lb.seconds == pytest.approx(r + 60.399)
    else:
        assert lb.seconds == pytest.approx(max(r + 0.399, 12.46875))
    assert sb.lower_bound(prompt_tokens=12, max_tokens=40, prompts=500).seconds == pytest.approx(60.399)
