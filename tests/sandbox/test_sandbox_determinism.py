"""Same seed, same answer: text, length and usage derive from seed + model + prompt only."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from nbfanout.sandbox import Sandbox, load_scenario
from nbfanout.sandbox.text import answer_text, chunk_text
from sandbox_helpers import answer_of, chat_request

MODELS = ["openai/gpt-4.1", "gemini/gemini-2.5-flash", "openrouter/x-ai/grok-3-mini-beta"]
PROMPT = "Explain rate limits to a new colleague."


async def answers(sbx: Any) -> dict[str, tuple[str, Any]]:
    out = {}
    async with sbx.client() as c:
        for name in MODELS:
            r = await c.request(**chat_request(sbx.config, name, PROMPT, max_tokens=2000))
            kind = sbx.config["providers"][name.split("/")[0]]["kind"]
            body = r.json()
            out[name] = (answer_of(kind, body), body.get("usage") or body.get("usageMetadata"))
    return out


async def test_same_seed_same_answers_in_separate_sandboxes(sandbox_app_factory: Callable[..., Any]) -> None:
    first = await answers(sandbox_app_factory("seed15"))
    second = await answers(sandbox_app_factory("seed15"))
    assert first == second
    for name, (text, _) in first.items():
        assert text.startswith(f"[{name.split('/', 1)[1]}]")
        assert '"Explain rate limits":' in text


async def test_other_seed_other_answers(sandbox_app_factory: Callable[..., Any]) -> None:
    other = dataclasses.replace(load_scenario("seed15"), seed=16)
    assert await answers(sandbox_app_factory("seed15")) != await answers(sandbox_app_factory(other))


async def test_real_http_agrees_with_in_process(fresh_sandbox: Sandbox, sandbox_app_factory: Callable[..., Any]) -> None:
    name = "openrouter/x-ai/grok-3-mini-beta"
    async with httpx.AsyncClient(timeout=30) as real:
        over_http = await real.request(**chat_request(fresh_sandbox.config, name, PROMPT, max_tokens=40))
    local = sandbox_app_factory("seed15")
    async with local.client() as c:
        in_process = await c.request(**chat_request(local.config, name, PROMPT, max_tokens=40))
    assert over_http.json()["choices"] == in_process.json()["choices"]


async def test_usage_matches_text_and_streams_match_bodies(sandbox_app_factory: Callable[..., Any]) -> None:
    sbx = sandbox_app_factory("seed15")
    async with sbx.client() as c:
        plain = (await c.request(**chat_request(sbx.config, "gemini/gemini-2.5-flash", PROMPT, max_tokens=30))).json()
        sse = await c.request(**chat_request(sbx.config, "gemini/gemini-2.5-flash", PROMPT, max_tokens=30, stream=True))
    text = answer_of("gemini", plain)
    assert plain["usageMetadata"]["candidatesTokenCount"] == len(text.split()) == 30
    assert plain["candidates"][0]["finishReason"] == "MAX_TOKENS"
    chunks = [json.loads(line[6:]) for line in sse.text.splitlines() if line.startswith("data: ")]
    assert "".join(p["text"] for ch in chunks for p in ch["candidates"][0]["content"]["parts"]) == text
    assert chunks[-1]["usageMetadata"] == plain["usageMetadata"]


@pytest.mark.parametrize("n", [1, 2, 5, 57])
def test_answer_text_has_exactly_n_tokens_and_chunks_rejoin(n: int) -> None:
    text = answer_text(15, "m", "Some prompt words here", n)
    assert len(text.split()) == n
    assert "".join(chunk_text(text)) == text
    assert answer_text(15, "m", "Some prompt words here", n) == text
