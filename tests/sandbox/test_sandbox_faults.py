"""Every fault kind gives each provider style's real status and body; storm is survivable."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from nbfanout.sandbox import Sandbox, load_scenario
from nbfanout.sandbox.scenario import FAULT_KINDS
from sandbox_helpers import answer_of, chat_request

STYLES = ["openai", "groq", "openrouter", "together", "anthropic", "gemini"]
KEYS = {
    "openai": "sk-sbx-faults-oa-0001",
    "groq": "gsk_sbx_faults_gq_0002",
    "openrouter": "sk-or-sbx-faults-0003",
    "together": "sbx-faults-together-0004",
    "anthropic": "sk-ant-sbx-faults-0005",
    "gemini": "AIzaSbx-faults-gm-0006",
}


def fault_scenario() -> dict[str, Any]:
    """One provider per style; one model per fault kind, failing on its first request only."""
    providers = {}
    for style in STYLES:
        models = {}
        for kind in FAULT_KINDS:
            fault: dict[str, Any] = {"kind": kind, "first_n": 1}
            if kind == "slow":
                fault["delay_s"] = 0.3
            if kind == "rate_limit_burst":
                fault["retry_after_s"] = 2.5
            models[f"m-{kind}"] = {"limits": {"rpm": 100}, "output_tokens": [10, 10], "faults": [fault]}
        providers[style] = {"style": style, "organization": f"org-{style}", "keys": [KEYS[style]], "models": models}
    return {"name": "faults", "seed": 5, "providers": providers}


def error_of(r: httpx.Response) -> Any:
    body = r.json()
    return body["error"]


# (status, check on the body) per style and fault kind.
def expected(style: str, kind: str) -> tuple[int, Callable[[httpx.Response], bool]]:
    openai_like = style in ("openai", "groq", "together")
    if kind == "rate_limit_burst":
        if style == "anthropic":
            return 429, lambda r: error_of(r)["type"] == "rate_limit_error" and r.headers["retry-after"] == "3"
        if style == "gemini":
            return 429, lambda r: error_of(r)["status"] == "RESOURCE_EXHAUSTED" and any(
                d.get("retryDelay") == "3s" for d in error_of(r)["details"]
            )
        if style == "openrouter":
            return 429, lambda r: error_of(r)["message"].startswith("Rate limit exceeded:") and error_of(r)["code"] == 429
        return 429, lambda r: error_of(r)["code"] == "rate_limit_exceeded" and r.headers["retry-after"] == "3" and (
            "Limit 100, Used 100, Requested 1" in error_of(r)["message"]
        )
    if kind == "server_error":
        if style == "anthropic":
            return 500, lambda r: error_of(r)["type"] == "api_error"
        if style == "gemini":
            return 500, lambda r: error_of(r)["status"] == "INTERNAL"
        if style == "openrouter":
            return 500, lambda r: error_of(r)["code"] == 500
        return 500, lambda r: error_of(r)["type"] == "server_error"
    if kind in ("unavailable", "overloaded"):
        if style == "anthropic":
            if kind == "overloaded":
                return 529, lambda r: error_of(r) == {"type": "overloaded_error", "message": "Overloaded"}
            return 503, lambda r: error_of(r)["type"] == "api_error"
        if style == "gemini":
            return 503, lambda r: error_of(r)["status"] == "UNAVAILABLE"
        if style == "openrouter":
            return 503, lambda r: error_of(r)["code"] == 503
        return 503, lambda r: error_of(r)["type"] == "server_error"
    if kind == "invalid_key":
        if style == "anthropic":
            return 401, lambda r: error_of(r)["type"] == "authentication_error"
        if style == "gemini":
            return 400, lambda r: error_of(r)["details"][0]["reason"] == "API_KEY_INVALID"
        if style == "openrouter":
            return 401, lambda r: error_of(r)["code"] == 401
        return 401, lambda r: error_of(r)["code"] == "invalid_api_key"
    if kind == "permission_denied":
        if style == "anthropic":
            return 403, lambda r: error_of(r)["type"] == "permission_error"
        if style == "gemini":
            return 403, lambda r: error_of(r)["status"] == "PERMISSION_DENIED"
        return 403, lambda r: error_of(r)["code"] == "unsupported_country_region_territory"
    if kind == "quota_exhausted":
        if style == "anthropic":
            return 400, lambda r: "credit balance is too low" in error_of(r)["message"]
        if style == "gemini":
            return 429, lambda r: error_of(r)["status"] == "RESOURCE_EXHAUSTED" and "limit: 0" in error_of(r)["message"]
        if style == "openrouter":
            return 402, lambda r: error_of(r)["code"] == 402 and "requires more credits" in error_of(r)["message"]
        assert openai_like
        return 429, lambda r: error_of(r)["code"] == "insufficient_quota" and error_of(r)["type"] == "insufficient_quota"
    raise AssertionError(kind)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("kind", [k for k in FAULT_KINDS if k not in ("slow", "drop", "malformed", "empty_answer",
                                                                      "content_filter")])
async def test_refusing_fault_has_the_providers_status_and_body(
    sandbox_app_factory: Callable[..., Any], style: str, kind: str
) -> None:
    sbx = sandbox_app_factory(fault_scenario(), time_scale=0.0)
    status, check = expected(style, kind)
    name = f"{style}/m-{kind}"
    async with sbx.client() as c:
        r = await c.request(**chat_request(sbx.config, name))
        assert r.status_code == status, r.text
        assert check(r), r.text
        again = await c.request(**chat_request(sbx.config, name))
        assert again.status_code == 200  # first_n = 1: the next request is healthy
    m = sbx.stats()["models"][name]
    assert m["rejected"] == {kind: 1} and m["faults"] == {kind: 1} and m["accepted"] == 1


@pytest.mark.parametrize("style", STYLES)
async def test_malformed_is_a_200_with_broken_json(sandbox_app_factory: Callable[..., Any], style: str) -> None:
    sbx = sandbox_app_factory(fault_scenario(), time_scale=0.0)
    async with sbx.client() as c:
        r = await c.request(**chat_request(sbx.config, f"{style}/m-malformed"))
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        with pytest.raises(json.JSONDecodeError):
            r.json()
        streamed = await c.request(**chat_request(sbx.config, f"{style}/m-malformed", stream=True))
        assert streamed.status_code == 200  # malformed fired once; this stream is whole
        assert "[m-malformed]" in streamed.text


@pytest.mark.parametrize("style", STYLES)
async def test_drop_in_process_raises_what_a_client_would_see(sandbox_app_factory: Callable[..., Any], style: str) -> None:
    sbx = sandbox_app_factory(fault_scenario(), time_scale=0.0)
    async with sbx.client() as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.request(**chat_request(sbx.config, f"{style}/m-drop"))
        assert (await c.request(**chat_request(sbx.config, f"{style}/m-drop"))).status_code == 200
    m = sbx.stats()["models"][f"{style}/m-drop"]
    assert m["rejected"] == {"drop": 1} and m["admitted"] == 2 and m["in_flight"] == 0


async def test_slow_answers_late_but_answers(sandbox_app_factory: Callable[..., Any]) -> None:
    sbx = sandbox_app_factory(fault_scenario(), time_scale=1.0)
    async with sbx.client() as c:
        t0 = time.monotonic()
        r = await c.request(**chat_request(sbx.config, "openai/m-slow"))
        assert r.status_code == 200 and time.monotonic() - t0 >= 0.3
    assert sbx.stats()["models"]["openai/m-slow"]["faults"] == {"slow": 1}


def test_drop_over_real_http_is_a_disconnect_without_response(storm_sandbox: Sandbox) -> None:
    storm_sandbox.reset()
    req = chat_request(storm_sandbox.config, "openai/gpt-4.1-nano")
    with pytest.raises(httpx.RemoteProtocolError, match="without sending"):
        httpx.request(**req, timeout=10)
    assert httpx.request(**req, timeout=10).status_code == 200


def test_slow_over_real_http_trips_a_client_timeout(storm_sandbox: Sandbox) -> None:
    storm_sandbox.reset()
    req = chat_request(storm_sandbox.config, "openrouter/deepseek/deepseek-chat-v3-0324")
    with pytest.raises(httpx.ReadTimeout):
        httpx.request(**req, timeout=0.5)
    assert httpx.request(**req, timeout=10).status_code == 200  # the retry is answered normally


@pytest.mark.parametrize("style", STYLES)
async def test_empty_answer_is_a_200_with_no_text(sandbox_app_factory: Callable[..., Any], style: str) -> None:
    sbx = sandbox_app_factory(fault_scenario(), time_scale=0.0)
    name = f"{style}/m-empty_answer"
    async with sbx.client() as c:
        request = chat_request(sbx.config, name, key=KEYS[style])
        first = await c.request(**request)
        second = await c.request(**request)
    wire = {"anthropic": "anthropic", "gemini": "gemini"}.get(style, "openai")
    assert first.status_code == second.status_code == 200
    assert answer_of(wire, first.json()) == ""
    assert answer_of(wire, second.json()) != ""  # first_n = 1: only the first comes back empty


def test_storm_has_every_fault_kind_on_every_wire() -> None:
    sc = load_scenario("storm")
    kinds = {f.kind for p in sc.providers for m in p.models for f in (*p.faults, *m.faults)}
    # storm keeps the kinds benchmarks/RESULTS.md measured; the two added since (a 403 and a filtered
    # answer) go through every wire in tests/core/test_faults.py
    assert kinds == set(FAULT_KINDS) - {"permission_denied", "content_filter"}
    assert {p.wire for p in sc.providers} == {"openai", "anthropic", "gemini"}
    assert {"openai", "groq", "openrouter", "together", "anthropic", "gemini"} <= {p.style for p in sc.providers}
    assert any(k.invalid for p in sc.providers for k in p.keys)
    assert any(k.quota_exhausted for p in sc.providers for k in p.keys)


def refuses_key(r: httpx.Response) -> bool:
    """A refusal about the key itself (bad key, no credit): another key may work."""
    markers = ("insufficient_quota", "credit balance", "limit: 0", "API_KEY_INVALID", "requires more credits")
    return r.status_code in (401, 402) or any(m in r.text for m in markers)


async def test_a_good_client_answers_every_storm_model(sandbox_app_factory: Callable[..., Any]) -> None:
    """Retry what is retryable, rotate keys away from 401 / quota refusals: everything answers."""
    sbx = sandbox_app_factory("storm", time_scale=0.0)
    cfg = sbx.config
    answers: dict[str, str] = {}
    async with sbx.client() as c:
        for name in sbx.state.scenario.model_names():
            provider = name.split("/")[0]
            entry = cfg["providers"][provider]
            keys = entry["api_key"] if isinstance(entry["api_key"], list) else [entry["api_key"]]
            kind = entry["kind"]
            k = 0
            for _ in range(12):
                if name.endswith("whisper-1") or name.endswith("whisper-large-v3"):
                    r = await c.post(
                        f"{entry['base_url']}/audio/transcriptions",
                        headers={"Authorization": f"Bearer {keys[k]}"},
                        files={"file": ("a.wav", b"RIFF0000", "audio/wav")},
                        data={"model": name.split("/", 1)[1]},
                    )
                else:
                    try:
                        r = await c.request(**chat_request(cfg, name, key=keys[k]))
                    except httpx.RemoteProtocolError:
                        continue
                if r.status_code == 200:
                    try:
                        body = r.json()
                    except json.JSONDecodeError:
                        continue
                    answers[name] = body["text"] if "text" in body else answer_of(kind, body)
                    break
                if refuses_key(r):
                    k = (k + 1) % len(keys)
    assert sorted(answers) == sorted(sbx.state.scenario.model_names())


@pytest.mark.parametrize("style", STYLES)
async def test_content_filter_is_a_200_with_no_text_and_the_providers_filtered_finish(
        sandbox_app_factory: Callable[..., Any], style: str) -> None:
    sbx = sandbox_app_factory(fault_scenario(), time_scale=0.0)
    async with sbx.client() as c:
        r = await c.request(**chat_request(sbx.config, f"{style}/m-content_filter"))
    assert r.status_code == 200, r.text
    body = r.json()
    if style == "anthropic":
        assert body["stop_reason"] == "refusal" and not any(b.get("text") for b in body["content"])
    elif style == "gemini":
        candidate = body["candidates"][0]
        assert candidate["finishReason"] == "SAFETY" and not any(p.get("text") for p in candidate["content"]["parts"])
    else:
        choice = body["choices"][0]
        assert choice["finish_reason"] == "content_filter" and not choice["message"]["content"]
