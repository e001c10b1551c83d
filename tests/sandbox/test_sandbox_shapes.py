"""Limiter shapes, in process with a fake clock: each shape against its own definition, computed here.

The oracles below are written from the definitions in nbfanout/sandbox/limits.py, not
from its code: the sliding log and the fixed window directly, the token bucket and the
per-second bucket as ``aiolimiter.AsyncLimiter`` (``(L, 60)`` and ``(L/60, 1)``) driven
by the same fake clock.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from aiolimiter import AsyncLimiter

from nbfanout.sandbox import parse_scenario
from nbfanout.sandbox.limits import FixedWindow, Pool, PoolId, SlidingLog, TokenBucket
from nbfanout.sandbox.scenario import LIMITERS, Limits
from sandbox_helpers import chat_request

SHAPES = ("sliding_window", "token_bucket", "fixed_window", "per_second")


def scenario(*, tokens_counted: str | None = None) -> dict[str, Any]:
    """One provider, one model per shape and kind: rpm 4 (per_second: 240, i.e. 4 a second), tpm 1000 (60000)."""
    models: dict[str, Any] = {}
    for shape in SHAPES:
        rpm, tpm = (240, 60000) if shape == "per_second" else (4, 1000)
        models[f"{shape}-rpm"] = {"limits": {"rpm": rpm, "limiter": shape}, "output_tokens": [5, 5]}
        models[f"{shape}-tpm"] = {"limits": {"tpm": tpm, "limiter": shape}, "output_tokens": [5, 5]}
    provider: dict[str, Any] = {"style": "openai", "keys": ["sk-sbx-shapes-key-0001"], "models": models}
    if tokens_counted is not None:
        provider["tokens_counted"] = tokens_counted
    return {"name": "shapes", "seed": 3, "providers": {"openai": provider}}


class _Loop:
    """Just enough of an event loop for aiolimiter: its time is the fake clock's."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.time = clock

    def is_closed(self) -> bool:
        return False


class BucketOracle:
    """aiolimiter.AsyncLimiter(capacity, period) on the fake clock; admit = has_capacity, then take."""

    def __init__(self, capacity: float, period: float, clock: Callable[[], float]) -> None:
        self.limiter = AsyncLimiter(capacity, period)
        self.limiter._event_loop = _Loop(clock)  # type: ignore[attr-defined]
        self.clock = clock
        self.capacity = capacity

    def admit(self, amount: int) -> bool:
        if amount > self.capacity or not self.limiter.has_capacity(amount):
            return False
        self.limiter._level += amount  # what acquire() does once it has capacity
        return True


class SlidingOracle:
    """Admit a at t iff the amounts admitted at u with t - u < S, plus a, are at most L."""

    def __init__(self, limit: int, span: float, clock: Callable[[], float]) -> None:
        self.limit, self.span, self.clock = limit, span, clock
        self.log: list[tuple[float, int]] = []

    def admit(self, amount: int) -> bool:
        t = self.clock()
        if sum(a for u, a in self.log if t - u < self.span) + amount > self.limit:
            return False
        self.log.append((t, amount))
        return True


class FixedOracle:
    """Admit a at t iff the amount used in window floor(t / S), plus a, is at most L."""

    def __init__(self, limit: int, span: float, clock: Callable[[], float]) -> None:
        self.limit, self.span, self.clock = limit, span, clock
        self.used: dict[int, int] = {}

    def admit(self, amount: int) -> bool:
        k = math.floor(self.clock() / self.span)
        if self.used.get(k, 0) + amount > self.limit:
            return False
        self.used[k] = self.used.get(k, 0) + amount
        return True


def oracle(shape: str, limit: int, clock: Callable[[], float]) -> Any:
    if shape == "sliding_window":
        return SlidingOracle(limit, 60.0, clock)
    if shape == "fixed_window":
        return FixedOracle(limit, 60.0, clock)
    if shape == "token_bucket":
        return BucketOracle(limit, 60.0, clock)
    return BucketOracle(limit / 60, 1.0, clock)


async def ask(sbx: Any, client: httpx.AsyncClient, model: str, prompt: str = "Say hello", max_tokens: int = 8) -> httpx.Response:
    return await client.request(**chat_request(sbx.config, f"openai/{model}", prompt, max_tokens=max_tokens))


def test_every_shape_is_a_valid_limiter_value() -> None:
    assert set(LIMITERS) == set(SHAPES) and LIMITERS[0] == "sliding_window"


@pytest.mark.parametrize("shape", SHAPES)
async def test_request_admissions_follow_the_shape_definition(sandbox_app_factory: Callable[..., Any], shape: str) -> None:
    sbx = sandbox_app_factory(scenario())
    clock = sbx.clock
    limit = 240 if shape == "per_second" else 4
    ref = oracle(shape, limit, clock)
    rnd = random.Random(f"rpm-{shape}")
    gap = 0.4 if shape == "per_second" else 12.0  # about two requests per refill, so both outcomes occur
    got, want = [], []
    async with sbx.client() as c:
        for _ in range(150):
            clock.advance(rnd.uniform(0.0, gap))
            got.append((await ask(sbx, c, f"{shape}-rpm")).status_code == 200)
            want.append(ref.admit(1))
    assert got == want
    assert 20 < sum(got) < 140  # the limit really bound, and really let requests through
    pool = sbx.stats()["pools"][f"model:openai/{shape}-rpm"]
    assert pool["limiter"] == shape and pool["admitted"] == sum(want)


@pytest.mark.parametrize("shape", SHAPES)
async def test_token_admissions_follow_the_shape_definition(sandbox_app_factory: Callable[..., Any], shape: str) -> None:
    sbx = sandbox_app_factory(scenario())
    clock = sbx.clock
    limit = 60000 if shape == "per_second" else 1000
    ref = oracle(shape, limit, clock)
    rnd = random.Random(f"tpm-{shape}")
    unit = 100  # input tokens of the prompt below
    got, want = [], []
    async with sbx.client() as c:
        for i in range(150):
            clock.advance(rnd.uniform(0.0, 0.8 if shape == "per_second" else 20.0))
            max_tokens = rnd.choice([50, 150, 300, 500])
            if i % 37 == 36:
                max_tokens = 1200  # too large for every shape here (per_second: above 1000 a second)
            r = await ask(sbx, c, f"{shape}-tpm", prompt="t" * (4 * unit), max_tokens=max_tokens)
            got.append(r.status_code == 200)
            want.append(ref.admit(unit + max_tokens))
    assert got == want
    assert 20 < sum(got) < 140
    m = sbx.stats()["models"][f"openai/{shape}-tpm"]
    assert m["rejected"].get("tpm", 0) == len(got) - sum(got)


def pool_of(shape: str, **limits: int) -> Pool:
    return Pool(PoolId("model", "p", "m"), Limits(limiter=shape, **limits))


@pytest.mark.parametrize("shape", SHAPES)
def test_retry_after_is_the_least_wait(shape: str) -> None:
    """For random histories: at now + retry_after the request fits, a microsecond earlier it does not."""
    rnd = random.Random(shape)
    rpm, tpm = (240, 60000) if shape == "per_second" else (4, 1000)
    checked = 0
    for trial in range(60):
        pool = pool_of(shape, rpm=rpm, tpm=tpm)
        now = 1000.0 + rnd.uniform(0, 120)
        for _ in range(rnd.randint(1, 12)):
            now += rnd.uniform(0, 0.3 if shape == "per_second" else 10)
            tokens = rnd.randint(1, 900)
            if not pool.check(now, tokens):
                pool.admit(now, tokens)
        tokens = rnd.randint(1, 900)
        rejections = pool.check(now, tokens)
        if not rejections:
            continue
        wait = max(r.retry_after_s for r in rejections if r.retry_after_s is not None)
        assert wait > 1e-6
        # Earlier time first: a sliding log forgets what has expired (the sandbox clock never runs back).
        assert pool.check(now + wait - 1e-6, tokens), (trial, wait)
        assert pool.check(now + wait, tokens) == [], (trial, wait)
        checked += 1
    assert checked > 20


def test_retry_after_closed_forms() -> None:
    # token bucket rpm 4: 4 taken at t, then the next fits after 1 / (4/60) = 15 s.
    tb = pool_of("token_bucket", rpm=4)
    for _ in range(4):
        tb.admit(1000.0, 1)
    assert tb.check(1003.0, 1)[0].retry_after_s == pytest.approx(12.0)
    # per_second rpm 240: capacity 4, refill 4 a second; 4 taken: a quarter second for one more.
    ps = pool_of("per_second", rpm=240)
    for _ in range(4):
        ps.admit(1000.0, 1)
    assert ps.check(1000.1, 1)[0].retry_after_s == pytest.approx(0.15)
    # fixed window: 4 used in [960, 1020); the next fits when it ends.
    fw = pool_of("fixed_window", rpm=4)
    for t in (1000.0, 1001.0, 1002.0, 1003.0):
        fw.admit(t, 1)
    assert fw.check(1010.0, 1)[0].retry_after_s == pytest.approx(10.0)
    assert fw.check(1020.0, 1) == []
    # sliding window: the oldest admission leaves 60 s after it was made.
    sw = pool_of("sliding_window", rpm=4)
    for t in (1000.0, 1001.0, 1002.0, 1003.0):
        sw.admit(t, 1)
    assert sw.check(1010.0, 1)[0].retry_after_s == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("shape", "first", "second"),
    [
        # (remaining, reset header) after one request at t0 = 1000, then after another at t0 + 7.5 s
        ("token_bucket", ("3", "15s"), ("2", "22.5s")),  # refill 1/15 a second: 3 + 0.5 left, then 2.5
        ("sliding_window", ("3", "1m0s"), ("2", "1m0s")),  # the newest leaves 60 s after it came
        ("fixed_window", ("3", "20s"), ("2", "12.5s")),  # the window [960, 1020) ends at 1020
        ("per_second", ("3", "250ms"), ("3", "250ms")),  # capacity 4, refill 4 a second: full again
    ],
)
async def test_request_headers_show_remaining_and_reset(
    sandbox_app_factory: Callable[..., Any], shape: str, first: tuple[str, str], second: tuple[str, str]
) -> None:
    sbx = sandbox_app_factory(scenario())
    async with sbx.client() as c:
        r1 = await ask(sbx, c, f"{shape}-rpm")
        sbx.clock.advance(7.5)
        r2 = await ask(sbx, c, f"{shape}-rpm")
    for r, (remaining, reset) in ((r1, first), (r2, second)):
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-requests"] == ("240" if shape == "per_second" else "4")
        assert (r.headers["x-ratelimit-remaining-requests"], r.headers["x-ratelimit-reset-requests"]) == (remaining, reset)


@pytest.mark.parametrize(
    ("shape", "remaining", "reset"),
    [
        ("token_bucket", "600", "24s"),  # 400 of 1000 taken, refilling 1000/60 a second
        ("sliding_window", "600", "1m0s"),
        ("fixed_window", "600", "20s"),
        ("per_second", "600", "400ms"),  # 400 of 1000 a second taken, refilling 1000 a second
    ],
)
async def test_token_headers_show_remaining_and_reset(
    sandbox_app_factory: Callable[..., Any], shape: str, remaining: str, reset: str
) -> None:
    sbx = sandbox_app_factory(scenario())
    async with sbx.client() as c:
        r = await ask(sbx, c, f"{shape}-tpm", prompt="t" * 400, max_tokens=300)  # 100 + 300 tokens
    assert r.status_code == 200
    assert r.headers["x-ratelimit-limit-tokens"] == ("60000" if shape == "per_second" else "1000")
    assert (r.headers["x-ratelimit-remaining-tokens"], r.headers["x-ratelimit-reset-tokens"]) == (remaining, reset)


async def test_a_refusal_states_the_exact_wait_for_each_shape(sandbox_app_factory: Callable[..., Any]) -> None:
    sbx = sandbox_app_factory(scenario())
    async with sbx.client() as c:
        for shape in SHAPES:
            for _ in range(4):
                assert (await ask(sbx, c, f"{shape}-rpm")).status_code == 200
        sbx.clock.advance(0.05)
        waits = {}
        for shape in SHAPES:
            r = await ask(sbx, c, f"{shape}-rpm")
            assert r.status_code == 429 and r.json()["error"]["type"] == "requests"
            waits[shape] = int(r.headers["retry-after-ms"]) / 1000
    # t0 = 1000: bucket refills one in 15 s; per_second one in 0.25 s; the window ends at 1020; the log at 1060.
    expected = {"token_bucket": 14.95, "per_second": 0.2, "fixed_window": 19.95, "sliding_window": 59.95}
    assert waits == pytest.approx(expected, abs=0.0011)  # the header is whole milliseconds, rounded up


@pytest.mark.parametrize("shape", SHAPES)
async def test_usage_counting_gives_unused_tokens_back(sandbox_app_factory: Callable[..., Any], shape: str) -> None:
    """400 tokens charged at admission (100 in + max_tokens 300), 105 once the 5-token answer is done."""
    counted = sandbox_app_factory(scenario(tokens_counted="usage"))
    plain = sandbox_app_factory(scenario())
    remaining = {}
    for name, sbx in (("usage", counted), ("max_tokens", plain)):
        async with sbx.client() as c:
            assert (await ask(sbx, c, f"{shape}-tpm", prompt="t" * 400, max_tokens=300)).status_code == 200
            r = await ask(sbx, c, f"{shape}-tpm", prompt="t" * 400, max_tokens=300)
            assert r.status_code == 200
            remaining[name] = int(r.headers["x-ratelimit-remaining-tokens"])
    cap = 1000
    assert remaining == {"usage": cap - 105 - 400, "max_tokens": cap - 400 - 400}
    m = counted.stats()["models"][f"openai/{shape}-tpm"]
    assert m["tokens_admitted"] == 800 and m["tokens_charged"] == 210
    assert plain.stats()["models"][f"openai/{shape}-tpm"]["tokens_charged"] == 800


async def test_usage_counting_settles_streams_too(sandbox_app_factory: Callable[..., Any]) -> None:
    sbx = sandbox_app_factory(scenario(tokens_counted="usage"))
    async with sbx.client() as c:
        r = await c.request(**chat_request(sbx.config, "openai/token_bucket-tpm", "t" * 400, max_tokens=300, stream=True))
        assert r.status_code == 200 and "[DONE]" in r.text
        nxt = await ask(sbx, c, "token_bucket-tpm", prompt="t" * 400, max_tokens=300)
    assert nxt.headers["x-ratelimit-remaining-tokens"] == str(1000 - 105 - 400)


async def test_usage_counting_lets_more_through_and_keeps_the_bound(sandbox_app_factory: Callable[..., Any]) -> None:
    sbx = sandbox_app_factory(scenario(tokens_counted="usage"))
    async with sbx.client() as c:
        codes = [(await ask(sbx, c, "sliding_window-tpm", prompt="t" * 400, max_tokens=300)).status_code for _ in range(8)]
    # Each settles to 105 before the next arrives: 400 must fit, so 6 settled (630) + 400 > 1000 stops the 7th.
    assert codes == [200] * 6 + [429] * 2
    m = sbx.stats()["models"]["openai/sliding_window-tpm"]
    assert m["max_tokens_60s"] == 6 * 105 <= 1000


def test_settlement_only_touches_what_is_still_counted() -> None:
    log = SlidingLog(1000, 60.0)
    h = log.add(1000.0, 400)
    log.refund(h, 295, 1010.0)
    assert log.total == 105 and log.remaining(1010.0) == 895
    late = log.add(1020.0, 400)
    log.refund(late, 300, 1080.0)  # exactly 60 s later: it has left the window, nothing to give back
    assert log.remaining(1080.0) == 1000
    fixed = FixedWindow(1000, 60.0)
    assert fixed.reset_in(1000.0) == 20.0  # nothing used yet, but the header still shows the boundary
    h = fixed.add(1000.0, 400)
    fixed.refund(h, 100, 1019.0)
    assert fixed.remaining(1019.0) == 700
    fixed.refund(h, 100, 1021.0)  # the window [960, 1020) is over: its count is gone anyway
    assert fixed.remaining(1021.0) == 1000 and fixed.remaining(1019.5) == 700
    bucket = TokenBucket(1000, 1000.0, 1000 / 60)
    bucket.add(1000.0, 400)
    bucket.refund(None, 500, 1000.0)  # more than was taken: capped at the capacity
    assert bucket.remaining(1000.0) == 1000


@pytest.mark.parametrize("shape", SHAPES)
async def test_too_large_is_refused_at_once_without_a_wait(sandbox_app_factory: Callable[..., Any], shape: str) -> None:
    sbx = sandbox_app_factory(scenario())
    # per_second: 60000 TPM is 1000 a second, so 1100 tokens never fit although they are far below 60000.
    async with sbx.client() as c:
        r = await ask(sbx, c, f"{shape}-tpm", prompt="t" * 400, max_tokens=1000)
        ok = await ask(sbx, c, f"{shape}-tpm", prompt="t" * 400, max_tokens=300)
    assert r.status_code == 429 and "Request too large" in r.json()["error"]["message"]
    assert "retry-after" not in r.headers
    assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining-tokens"] == "600"  # nothing was charged


async def test_a_token_bucket_may_admit_more_than_l_in_60_s_and_the_ledger_says_which_shape(
    sandbox_app_factory: Callable[..., Any],
) -> None:
    sbx = sandbox_app_factory(scenario())
    async with sbx.client() as c:
        t_end = sbx.clock.now + 300
        while sbx.clock.now < t_end:
            await ask(sbx, c, "token_bucket-rpm")
            await ask(sbx, c, "fixed_window-rpm")
            sbx.clock.advance(0.25)
    stats = sbx.stats()
    tb = stats["pools"]["model:openai/token_bucket-rpm"]
    fw = stats["pools"]["model:openai/fixed_window-rpm"]
    assert tb["limiter"] == "token_bucket" and stats["limits"]["model:openai/token_bucket-rpm"]["limiter"] == "token_bucket"
    # Bucket: 4 at once, then one every 15 s (at +15, ..., +285): in the first minute 4 + 3.
    assert tb["admitted"] == 4 + 19 and tb["max_requests_60s"] == 7
    # Fixed: 4 per window; the windows [960, 1020) ... [1260, 1320) touch the run: 4 at its start, then 4 each.
    assert fw["limiter"] == "fixed_window" and fw["admitted"] == 4 * 6 and fw["max_requests_60s"] == 8


def test_limiter_is_inherited_from_the_provider_and_overridden_per_table() -> None:
    sc = parse_scenario(
        {
            "providers": {
                "p": {
                    "keys": [{"key": "sk-sbx-inherit-0001", "limits": {"rpm": 9}}],
                    "limits": {"tpm": 100000, "limiter": "token_bucket"},
                    "key_limits": {"rpm": 50},
                    "groups": {"g": {"models": ["a"], "limits": {"rpm": 7, "limiter": "fixed_window"}}},
                    "models": {"a": {"limits": {"rpm": 5}}, "b": {"limits": {"rpm": 5, "limiter": "per_second"}}, "c": {}},
                },
                "q": {"keys": ["sk-sbx-inherit-0002"], "models": {"d": {"limits": {"rpm": 5}}}},
            }
        }
    )
    p, q = sc.providers
    assert p.limits.shape == p.key_limits.shape == p.keys[0].limits.shape == "token_bucket"
    assert p.model("a").limits.shape == "token_bucket" and p.model("b").limits.shape == "per_second"  # type: ignore[union-attr]
    assert p.groups[0].limits.shape == "fixed_window"
    assert q.model("d").limits.limiter is None and q.model("d").limits.shape == "sliding_window"  # type: ignore[union-attr]
    cfg = sc.client_config("http://127.0.0.1:9")
    assert cfg["providers"]["p"]["limiter"] == "token_bucket" and cfg["providers"]["p"]["tpm"] == 100000
    assert cfg["models"]["p/a"] == {"rpm": 5, "limiter": "token_bucket"}
    assert cfg["models"]["p/b"] == {"rpm": 5, "limiter": "per_second"}
    assert cfg["models"]["q/d"] == {"rpm": 5}  # no shape named: nothing written, the client keeps its default
    assert "limiter" not in cfg["providers"]["q"] and "tokens_counted" not in cfg["providers"]["q"]
    assert all(entry["published_limits"] is False for entry in cfg["providers"].values())
    assert sc.public_dict()["providers"]["p"]["models"]["b"]["limits"]["limiter"] == "per_second"


def test_a_fixed_windows_first_edge_admits_only_what_the_pools_concurrency_can_start() -> None:
    """Half a second before an edge, 10 slots with 1-s answers start 10 requests, not the window's 100."""
    from nbfanout.sandbox import parse_scenario

    sc = parse_scenario({"name": "edge", "seed": 1, "providers": {"p": {"style": "openai", "keys": ["sk-sbx-edge-0001"],
                         "models": {"m": {"limits": {"rpm": 100, "concurrency": 10, "limiter": "fixed_window"},
                                          "latency": {"base_ms": 1000, "jitter": 0.0}, "output_tokens": [1, 1]}}}}})
    near_edge = sc.lower_bound(["p/m"], 10, max_tokens=1, prompts=150, start=59.5)
    # 10 before the edge, 100 in the next window, the last 40 only in the one after: at 60.5 s at the earliest
    # (without the cap: 100 + 50 fit the two windows, and the slots' 15 s of work set the bound)
    assert near_edge.seconds >= 60.5
