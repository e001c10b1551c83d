"""Bad input is refused before anything is sent, and a failure inside one request ends only that request."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from nbfanout import Fanout, UsageError

pytestmark = pytest.mark.looptime

MODELS = ["openai/gpt-4o-mini", "openai/gpt-4.1-nano"]


def fast(factory: Any) -> Any:
    return factory("fast", time_scale=None, clock=lambda: asyncio.get_running_loop().time())


@pytest.mark.parametrize(("text", "message"), [
    ("bad \udcff byte", r"prompt 40 holds a lone surrogate \('\\udcff'\) at character 4.*encode\('utf-8', 'replace'\)"),
    ("nul \x00 here", r"prompt 40 holds a NUL character at character 4"),
    ("   ", r"prompt 40 is empty"),
])
async def test_one_unsendable_prompt_in_a_map_is_refused_before_anything_is_sent(sandbox_app_factory, text, message):
    """Seen: a lone surrogate in prompt 40 of 50 raised UnicodeEncodeError after 74 answers had arrived, all lost."""
    app = fast(sandbox_app_factory)
    fx = Fanout(app.config, transport=app.transport(), learn=False)
    prompts = [f"Question {i}" for i in range(50)]
    prompts[40] = text
    with pytest.raises(UsageError, match=message):
        await fx.map(prompts, models=MODELS, max_tokens=20)
    assert app.stats()["totals"]["requests"] == 0


async def test_a_lone_surrogate_in_a_system_prompt_or_a_message_is_refused_too(sandbox_app_factory):
    app = fast(sandbox_app_factory)
    fx = Fanout(app.config, transport=app.transport(), learn=False)
    with pytest.raises(UsageError, match="the system prompt holds a lone surrogate"):
        await fx.run("Hi", MODELS, system="be \ud800 brief")
    with pytest.raises(UsageError, match="message 0 of the conversation holds a lone surrogate"):
        await fx.run([{"role": "user", "content": "\udcff"}, {"role": "assistant", "content": "What?"},
                      {"role": "user", "content": "Go on."}], MODELS)
    assert app.stats()["totals"]["requests"] == 0


class _BrokenFor(httpx.AsyncBaseTransport):
    """A transport that fails with an exception nobody expects, for one model's requests only."""

    def __init__(self, inner: httpx.AsyncBaseTransport, model_id: str) -> None:
        self.inner, self.model_id = inner, model_id

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.model_id.encode() in request.content:
            raise RuntimeError("something nobody planned for")
        return await self.inner.handle_async_request(request)


async def test_an_unexpected_exception_in_one_request_keeps_every_other_answer(sandbox_app_factory):
    app = fast(sandbox_app_factory)
    fx = Fanout(app.config, transport=_BrokenFor(app.transport(), "gpt-4.1-nano"), learn=False)
    batch = await fx.map([f"Question {i}" for i in range(10)], models=MODELS, max_tokens=20)
    by_model = {m: [r for r in batch.results if r.requested == m] for m in MODELS}
    assert all(r.ok for r in by_model["openai/gpt-4o-mini"])  # the other model's ten answers are all there
    broken = by_model["openai/gpt-4.1-nano"]
    assert len(broken) == 10 and not any(r.ok for r in broken)
    assert all(r.category == "bad_request" and "RuntimeError: something nobody planned for" in r.error.message
               for r in broken)
    assert fx.last_result is batch


@pytest.mark.parametrize(("prompt", "options", "message"), [
    ("hi", {"max_tokens": 0}, r"max_tokens must be a whole number of at least 1, got 0"),
    ("hi", {"max_tokens": -5}, r"max_tokens .* got -5"),
    ("hi", {"max_tokens": "big"}, r"max_tokens .* got 'big'"),
    ("hi", {"temperature": 99}, r"temperature must be a number from 0 to 2, got 99"),
    ("hi", {"timeout": -1}, r"timeout must be a number of seconds above 0, got -1"),
    ("hi", {"timeout": 0}, r"timeout .* got 0"),
    (123, {}, r"must be text \(a str\), got int 123|prompt must be a string"),
    (None, {}, r"prompt must be a string|prompt must be text \(a str\), got NoneType"),
])
async def test_invalid_request_options_are_refused_before_anything_is_sent(sandbox_app_factory, prompt, options, message):
    """Seen: --timeout -1 made six instant attempts, max_tokens 0 meant "default", temperature 99 was sent."""
    app = fast(sandbox_app_factory)
    fx = Fanout(app.config, transport=app.transport(), learn=False)
    with pytest.raises(UsageError, match=message):
        await fx.run(prompt, MODELS, **options)
    with pytest.raises(UsageError, match=message):
        await fx.map([prompt, "fine"] if prompt is not None else [None], models=MODELS, **options)
    assert app.stats()["totals"]["requests"] == 0
