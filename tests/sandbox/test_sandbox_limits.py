"""Exact enforcement, in process with a fake clock: windows, waits, concurrency, tokens, headers, ledger."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest

from nbfanout.sandbox.ledger import max_in_window
from sandbox_helpers import chat_request

LIMITS: dict[str, Any] = {
    "name": "limits",
    "seed": 1,
    "providers": {
        "openai": {
            "style": "openai",
            "organization": "org-limits",
            "keys": ["sk-sbx-limits-key-aaaa", "sk-sbx-limits-key-bbbb"],
            "models": {
                "rpm5": {"limits": {"rpm": 5, "per_key": True}, "output_tokens": [5, 5]},
                "shared5": {"limits": {"rpm": 5}, "output_tokens": [5, 5]},
                "tpm1000": {"limits": {"tpm": 1000}, "output_tokens": [5, 5]},
                "rpd3": {"limits": {"rpd": 3}, "output_tokens": [5, 5]},
                "conc1": {"limits": {"concurrency": 1}, "latency": {"base_ms": 300}, "output_tokens": [5, 5]},
                "rpm20": {"limits": {"rpm": 20}, "output_tokens": [5, 5]},
            },
        },
        "openrouter": {
            "style": "openrouter",
            "keys": ["sk-or-sbx-limits-cccc"],
            "groups": {"free-models-per-min": {"models": ["a:free", "b:free"], "limits": {"rpm": 4, "per_key": True}}},
            "models": {
                "a:free": {"output_tokens": [5, 5]},
                "b:free": {"output_tokens": [5, 5]},
                "c:free": {"limits": {"concurrency": 1}, "latency": {"base_ms": 300}, "output_tokens": [5, 5]},
            },
        },
        "groq": {
            "style": "groq",
            "organization": "org_limits",
            "keys": ["gsk_sbx_limits_dddd"],
            "key_limits": {"rpm": 30, "tpm": 6000},
            "models": {"llama": {"limits": {"rpd": 1000}, "output_tokens": [5, 5]}},
        },
        "anthropic": {
            "style": "anthropic",
            "organization": "org-limits-anthropic",
            "keys": ["sk-ant-sbx-limits-eeee"],
            "models": {"claude": {"limits": {"rpm": 2, "tpm": 10000}, "output_tokens": [5, 5]}},
        },
        "gemini": {
            "style": "gemini",
            "keys": ["AIzaSbx-limits-ffff"],
            "models": {"flash": {"limits": {"rpm": 2}, "output_tokens": [5, 5]}},
        },
    },
}


@pytest.fixture
def sbx(sandbox_app_factory: Callable[..., Any]) -> Any:
    return sandbox_app_factory(LIMITS, time_scale=0.0)


async def ask(sbx: Any, client: httpx.AsyncClient, name: str, **kw: Any) -> httpx.Response:
    return await client.request(**chat_request(sbx.config, name, **kw))


async def test_rpm_admits_exactly_n_then_refuses_with_exact_wait(sbx: Any) -> None:
    clock = sbx.clock
    async with sbx.client() as c:
        for i in range(5):
            r = await ask(sbx, c, "openai/rpm5")
            assert r.status_code == 200
            assert r.headers["x-ratelimit-remaining-requests"] == str(4 - i)
            clock.advance(1.0)  # admissions at t0, t0+1, ..., t0+4
        clock.advance(0.5)  # now t0 + 5.5
        r = await ask(sbx, c, "openai/rpm5")
        assert r.status_code == 429
        err = r.json()["error"]
        assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
        assert "on requests per min (RPM): Limit 5, Used 5, Requested 1. Please try again in 54.5s." in err["message"]
        assert r.headers["retry-after"] == "55"  # the oldest entry (t0) leaves at t0 + 60
        assert r.headers["retry-after-ms"] == "54500"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["x-ratelimit-reset-requests"] == "58.5s"  # the newest leaves at t0 + 64

        clock.advance(54.499)
        assert (await ask(sbx, c, "openai/rpm5")).status_code == 429
        clock.advance(0.001)  # exactly t0 + 60: the first admission has left the window
        assert (await ask(sbx, c, "openai/rpm5")).status_code == 200
        assert (await ask(sbx, c, "openai/rpm5")).status_code == 429

    m = sbx.stats()["models"]["openai/rpm5"]
    assert m["admitted"] == 6 and m["accepted"] == 6 and m["rejected"] == {"rpm": 3}
    assert m["max_requests_60s"] == 5


async def test_per_key_limits_are_separate_and_shared_limits_are_not(sbx: Any) -> None:
    keys = ["sk-sbx-limits-key-aaaa", "sk-sbx-limits-key-bbbb"]
    async with sbx.client() as c:
        for key in keys:
            codes = [(await ask(sbx, c, "openai/rpm5", key=key)).status_code for _ in range(6)]
            assert codes == [200] * 5 + [429]
        codes = [(await ask(sbx, c, "openai/shared5", key=keys[i % 2])).status_code for i in range(6)]
        assert codes == [200] * 5 + [429]
    stats = sbx.stats()
    assert stats["keys"]["openai:…aaaa"]["max_requests_60s"] == 5 + 3
    assert stats["pools"]["model:openai/rpm5@…aaaa"]["max_requests_60s"] == 5
    assert stats["pools"]["model:openai/shared5"]["max_requests_60s"] == 5


async def test_tpm_counts_input_plus_max_tokens(sbx: Any) -> None:
    prompt = "x" * 400  # 100 input tokens by the sandbox's chars/4 estimate
    async with sbx.client() as c:
        assert (await ask(sbx, c, "openai/tpm1000", prompt=prompt, max_tokens=300)).status_code == 200
        sbx.clock.advance(10)
        ok = await ask(sbx, c, "openai/tpm1000", prompt=prompt, max_tokens=300)
        assert ok.headers["x-ratelimit-remaining-tokens"] == "200"
        r = await ask(sbx, c, "openai/tpm1000", prompt=prompt, max_tokens=300)
        assert r.status_code == 429
        err = r.json()["error"]
        assert err["type"] == "tokens"
        assert "on tokens per min (TPM): Limit 1000, Used 800, Requested 400. Please try again in 50s." in err["message"]
        assert r.headers["retry-after"] == "50"  # the first 400 tokens leave at t0 + 60
        small = await ask(sbx, c, "openai/tpm1000", prompt=prompt, max_tokens=100)
        assert small.status_code == 200  # 200 tokens still fit
        big = await ask(sbx, c, "openai/tpm1000", prompt=prompt, max_tokens=2000)
        assert big.status_code == 429 and "Request too large for tpm1000" in big.json()["error"]["message"]
        assert "retry-after" not in big.headers
    m = sbx.stats()["models"]["openai/tpm1000"]
    assert m["max_tokens_60s"] == 1000 and m["tokens_admitted"] == 1000


async def test_rpd_uses_a_day_window(sbx: Any) -> None:
    async with sbx.client() as c:
        for _ in range(3):
            assert (await ask(sbx, c, "openai/rpd3")).status_code == 200
            sbx.clock.advance(3600)
        r = await ask(sbx, c, "openai/rpd3")
        assert r.status_code == 429
        assert "requests per day (RPD): Limit 3, Used 3, Requested 1. Please try again in 21h0m0s." in r.json()["error"]["message"]
        assert r.headers["retry-after"] == str(86400 - 3 * 3600)
        sbx.clock.advance(86400 - 3 * 3600)
        assert (await ask(sbx, c, "openai/rpd3")).status_code == 200


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("openai/conc1", "Too many concurrent requests for conc1"),
        ("openrouter/c:free", "Provider returned error"),
    ],
)
async def test_concurrency_one_refuses_the_second_at_once(sandbox_app_factory: Callable[..., Any], name: str, message: str) -> None:
    sbx = sandbox_app_factory(LIMITS, time_scale=1.0)  # real 0.3 s latency so the calls overlap
    async with sbx.client() as c:
        first = asyncio.create_task(ask(sbx, c, name))
        await asyncio.sleep(0.05)
        second = await ask(sbx, c, name)
        assert second.status_code == 429
        assert message in second.json()["error"]["message"]
        assert "retry-after" not in second.headers
        assert (await first).status_code == 200
        assert (await ask(sbx, c, name)).status_code == 200  # free again once the first answered
    m = sbx.stats()["models"][name]
    assert m["peak_concurrency"] == 1 and m["rejected"] == {"concurrency": 1} and m["in_flight"] == 0


async def test_group_limit_is_shared_by_its_models_and_named_in_the_429(sbx: Any) -> None:
    async with sbx.client() as c:
        codes = [(await ask(sbx, c, f"openrouter/{m}")).status_code for m in ["a:free", "b:free"] * 2]
        assert codes == [200] * 4
        sbx.clock.advance(20)
        r = await ask(sbx, c, "openrouter/b:free")
    assert r.status_code == 429
    body = r.json()
    assert body["error"]["message"] == "Rate limit exceeded: free-models-per-min. "
    meta = body["error"]["metadata"]["headers"]
    assert meta == {k: r.headers[k] for k in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")}
    assert meta["X-RateLimit-Limit"] == "4" and meta["X-RateLimit-Remaining"] == "0"
    reset_in = int(meta["X-RateLimit-Reset"]) / 1000 - sbx.state.wall()
    assert 39 < reset_in <= 40.1  # first admission leaves at +60, it is now +20
    assert sbx.stats()["pools"]["group:openrouter/free-models-per-min@…cccc"]["max_requests_60s"] == 4


async def test_a_client_hammering_for_five_minutes_gets_exactly_the_limit(sbx: Any) -> None:
    async with sbx.client() as c:
        t_end = sbx.clock.now + 300
        ok = 0
        while sbx.clock.now < t_end:
            ok += (await ask(sbx, c, "openai/rpm20")).status_code == 200
            sbx.clock.advance(0.1)
    m = sbx.stats()["models"]["openai/rpm20"]
    assert ok == m["accepted"] == 100  # 20 in each of five minutes
    assert m["max_requests_60s"] == 20


async def test_obeying_retry_after_is_always_enough(sbx: Any) -> None:
    async with sbx.client() as c:
        for _ in range(30):
            r = await ask(sbx, c, "openai/rpm5")
            if r.status_code == 429:
                sbx.clock.advance(float(r.headers["retry-after-ms"]) / 1000)
                assert (await ask(sbx, c, "openai/rpm5")).status_code == 200
            sbx.clock.advance(0.7)
    assert sbx.stats()["models"]["openai/rpm5"]["max_requests_60s"] == 5


async def test_groq_request_headers_describe_the_day_and_tokens_the_minute(sbx: Any) -> None:
    async with sbx.client() as c:
        r = await ask(sbx, c, "groq/llama", prompt="y" * 4000, max_tokens=1000)  # 2000 tokens
        assert r.headers["x-ratelimit-limit-requests"] == "1000"
        assert r.headers["x-ratelimit-remaining-requests"] == "999"
        assert r.headers["x-ratelimit-limit-tokens"] == "6000"
        assert r.headers["x-ratelimit-remaining-tokens"] == "4000"
        await ask(sbx, c, "groq/llama", prompt="y" * 4000, max_tokens=1000)
        sbx.clock.advance(2.5)
        await ask(sbx, c, "groq/llama", prompt="y" * 4000, max_tokens=1000)
        r = await ask(sbx, c, "groq/llama", prompt="y" * 4000, max_tokens=1000)
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["message"].startswith(
        "Rate limit reached for model `llama` in organization `org_limits` service tier `on_demand` on tokens per "
        "minute (TPM): Limit 6000, Used 6000, Requested 2000. Please try again in 57.5s."
    )
    assert err["type"] == "tokens" and r.headers["retry-after"] == "58"


async def test_anthropic_headers_and_rate_limit_error(sbx: Any) -> None:
    async with sbx.client() as c:
        r = await ask(sbx, c, "anthropic/claude")
        assert r.headers["anthropic-ratelimit-requests-limit"] == "2"
        assert r.headers["anthropic-ratelimit-requests-remaining"] == "1"
        reset = datetime.fromisoformat(r.headers["anthropic-ratelimit-requests-reset"].replace("Z", "+00:00"))
        assert 59 <= reset.timestamp() - sbx.state.wall() <= 61
        assert r.headers["anthropic-ratelimit-tokens-limit"] == "10000"
        await ask(sbx, c, "anthropic/claude")
        r = await ask(sbx, c, "anthropic/claude")
    assert r.status_code == 429 and r.headers["retry-after"] == "60"
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "rate limit for your organization (org-limits-anthropic) of 2 requests per minute" in body["error"]["message"]


async def test_gemini_429_has_quota_failure_and_retry_info_and_no_headers(sbx: Any) -> None:
    async with sbx.client() as c:
        first = await ask(sbx, c, "gemini/flash")
        assert not [h for h in first.headers if "ratelimit" in h]
        await ask(sbx, c, "gemini/flash")
        sbx.clock.advance(22.6)
        r = await ask(sbx, c, "gemini/flash")
    assert r.status_code == 429 and "retry-after" not in r.headers
    err = r.json()["error"]
    assert err["status"] == "RESOURCE_EXHAUSTED" and err["code"] == 429
    details = {d["@type"].rsplit(".", 1)[-1]: d for d in err["details"]}
    assert details["RetryInfo"]["retryDelay"] == "38s"
    violation = details["QuotaFailure"]["violations"][0]
    assert violation["quotaId"] == "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
    assert violation["quotaValue"] == "2" and violation["quotaDimensions"]["model"] == "flash"
    assert "limit: 2, model: flash\nPlease retry in 37.400s." in err["message"]


def test_max_in_window_is_half_open() -> None:
    assert max_in_window([0.0, 59.999, 60.0, 120.0]) == 2
    assert max_in_window([0.0, 59.999, 60.0, 119.0]) == 3
    assert max_in_window([0.0, 1.0, 2.0], [5, 6, 7]) == 18
    assert max_in_window([]) == 0
    assert math.isclose(max_in_window([0.0, 60.0, 120.0]), 1)
