"""The adapters against the sandbox over real loopback HTTP.

``fast_sandbox`` (no limits, no latency) for answers and streams on every wire;
``storm_sandbox`` for every fault kind of ``nbfanout/sandbox/scenarios/storm.toml``, each
reached through the model or key the scenario attaches it to.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from nbfanout.core.errors import ErrorCategory, ErrorInfo, ProviderError
from nbfanout.providers import adapter_for
from nbfanout.providers.base import (
    Adapter,
    ChatRequest,
    ChatResponse,
    Endpoint,
    ImagePart,
    Message,
    TranscriptionRequest,
)
from nbfanout.sandbox import Sandbox
from nbfanout.sandbox.scenario import Fault, ProviderSpec

C = ErrorCategory

#: Every chat provider of the fast scenario: all three wires, an OpenRouter-style provider
#: and a generic OpenAI-compatible one.
FAST_PROVIDERS = ["openai", "anthropic", "gemini", "openrouter", "local"]


@pytest_asyncio.fixture(loop_scope="function")  # same loop as the test (fixtures default to the session loop)
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as http:
        yield http


def provider_spec(sb: Sandbox, provider: str) -> ProviderSpec:
    return next(p for p in sb.scenario.providers if p.id == provider)


def key_of(sb: Sandbox, provider: str, kind: str = "good") -> str:
    """A key of ``provider`` in the sandbox's scenario: ``good``, ``invalid`` or ``quota_exhausted``."""
    for key in provider_spec(sb, provider).keys:
        flags = {"invalid": key.invalid, "quota_exhausted": key.quota_exhausted}
        if (kind == "good" and not any(flags.values())) or flags.get(kind):
            return key.key
    raise LookupError(f"{provider} has no {kind} key")


def chat_model(sb: Sandbox, provider: str) -> str:
    return next(m.id for m in provider_spec(sb, provider).models if m.kind == "chat")


def with_fault(sb: Sandbox, provider: str, kind: str) -> tuple[str, Fault]:
    """The model of ``provider`` that the scenario gives a ``kind`` fault, and that fault rule."""
    for model in provider_spec(sb, provider).models:
        for fault in model.faults:
            if fault.kind == kind:
                return model.id, fault
    raise LookupError(f"{provider} has no {kind} fault in scenario {sb.scenario.name!r}")


def target(sb: Sandbox, provider: str, kind: str = "good") -> tuple[Adapter, Endpoint]:
    settings = sb.config["providers"][provider]
    return adapter_for(settings["kind"]), Endpoint(provider, settings["base_url"], key_of(sb, provider, kind))


def ask(model: str, *, max_tokens: int = 300, **kwargs) -> ChatRequest:
    return ChatRequest(
        model=model, messages=(Message("user", "Name three uses of a paperclip."),), max_tokens=max_tokens, **kwargs
    )


async def failure(coro) -> ErrorInfo:
    with pytest.raises(ProviderError) as caught:
        await coro
    return caught.value.info


async def failures_until(expected: set[ErrorCategory], call, attempts: int) -> dict[ErrorCategory, ErrorInfo]:
    """Repeat ``call()`` until every expected category has been raised at least once."""
    seen: dict[ErrorCategory, ErrorInfo] = {}
    for _ in range(attempts):
        try:
            await call()
        except ProviderError as exc:
            seen.setdefault(exc.info.category, exc.info)
        if expected <= seen.keys():
            break
    return seen


# ---- answers and streams ----------------------------------------------------------------------


@pytest.mark.parametrize("provider", FAST_PROVIDERS)
async def test_answer_has_text_and_usage(fast_sandbox: Sandbox, client, provider: str) -> None:
    adapter, endpoint = target(fast_sandbox, provider)
    model = chat_model(fast_sandbox, provider)
    response = await adapter.complete(client, endpoint, ask(model, system="Answer in one line."))
    assert isinstance(response, ChatResponse)
    assert response.status == 200 and response.text.strip()
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.finish_reason in {"stop", "end_turn", "STOP"}
    assert response.model == model


@pytest.mark.parametrize("provider", FAST_PROVIDERS)
async def test_stream_deltas_add_up_to_the_answer(fast_sandbox: Sandbox, client, provider: str) -> None:
    adapter, endpoint = target(fast_sandbox, provider)
    model = chat_model(fast_sandbox, provider)
    deltas: list[str] = []
    streamed = await adapter.complete(client, endpoint, ask(model), stream=True, on_delta=deltas.append)
    assert len(deltas) > 1
    assert "".join(deltas) == streamed.text
    assert streamed.usage.input_tokens > 0 and streamed.usage.output_tokens > 0
    whole = await adapter.complete(client, endpoint, ask(model))
    assert streamed.text == whole.text and streamed.usage == whole.usage  # the sandbox is deterministic
    assert streamed.finish_reason == whole.finish_reason


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
async def test_images_are_accepted(fast_sandbox: Sandbox, client, provider: str) -> None:
    adapter, endpoint = target(fast_sandbox, provider)
    photo = ImagePart(data=b"\x89PNG\r\n\x1a\n" + bytes(64), mime_type="image/png")
    request = ChatRequest(
        model=chat_model(fast_sandbox, provider), messages=(Message("user", "What is in this image?", images=(photo,)),)
    )
    assert (await adapter.complete(client, endpoint, request)).text


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini", "local"])
async def test_list_models_validates_the_key(fast_sandbox: Sandbox, client, provider: str) -> None:
    adapter, endpoint = target(fast_sandbox, provider)
    expected = [m.id for m in provider_spec(fast_sandbox, provider).models]
    assert await adapter.list_models(client, endpoint) == expected


async def test_transcription(fast_sandbox: Sandbox, client) -> None:
    adapter, endpoint = target(fast_sandbox, "openai")
    model = next(m.id for m in provider_spec(fast_sandbox, "openai").models if m.kind == "transcription")
    audio = TranscriptionRequest(model, "meeting.mp3", b"ID3" + bytes(4000), language="en")
    response = await adapter.transcribe(client, endpoint, audio)
    assert response.status == 200 and "meeting.mp3" in response.text and response.model == model


async def test_rate_headers_are_read(storm_sandbox: Sandbox, client) -> None:
    storm_sandbox.reset()
    adapter, endpoint = target(storm_sandbox, "anthropic")
    model, fault = with_fault(storm_sandbox, "anthropic", "rate_limit_burst")
    for _ in range(fault.first_n or 0):
        await failure(adapter.complete(client, endpoint, ask(model)))
    rpm = next(m for m in provider_spec(storm_sandbox, "anthropic").models if m.id == model).limits.rpm
    for stream in (False, True):
        response = await adapter.complete(client, endpoint, ask(model), stream=stream)
        assert response.rate.limit_requests == rpm  # anthropic-ratelimit-requests-limit
        assert response.rate.remaining_requests is not None and response.rate.remaining_requests < rpm


async def test_cancelling_a_stream_closes_it_at_the_server(sandbox_factory, client) -> None:
    sb = sandbox_factory("seed15")  # real (scaled) latencies, so the stream is still running when cancelled
    sb.reset()
    adapter, endpoint = target(sb, "openai")
    first = asyncio.Event()
    request = ask(chat_model(sb, "openai"), max_tokens=2000)
    task = asyncio.ensure_future(
        adapter.complete(client, endpoint, request, stream=True, on_delta=lambda _: first.set())
    )
    await asyncio.wait_for(first.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):  # the server notices the closed connection at its next write
        if "client_closed" in str(stats := sb.stats()):
            break
        await asyncio.sleep(0.1)
    assert "client_closed" in str(stats)


# ---- every fault kind of the storm scenario (models and keys read from storm.toml) -----------------


async def test_storm_rate_limit_burst_and_server_error(storm_sandbox: Sandbox, client) -> None:
    storm_sandbox.reset()
    adapter, endpoint = target(storm_sandbox, "openai")
    model, burst = with_fault(storm_sandbox, "openai", "rate_limit_burst")
    assert with_fault(storm_sandbox, "openai", "server_error")[0] == model
    seen = await failures_until(
        {C.RATE_LIMIT, C.SERVER_ERROR}, lambda: adapter.complete(client, endpoint, ask(model)), 25
    )
    assert seen.keys() == {C.RATE_LIMIT, C.SERVER_ERROR}
    assert seen[C.RATE_LIMIT].status == 429 and seen[C.RATE_LIMIT].retry_after_s == pytest.approx(burst.retry_after_s)
    assert seen[C.SERVER_ERROR].status == 500 and seen[C.SERVER_ERROR].retryable


@pytest.mark.parametrize("stream", [False, True])
async def test_storm_drop_then_malformed(storm_sandbox: Sandbox, client, stream: bool) -> None:
    storm_sandbox.reset()
    adapter, endpoint = target(storm_sandbox, "openai")
    model, drop = with_fault(storm_sandbox, "openai", "drop")
    malformed_model, malformed_rule = with_fault(storm_sandbox, "openai", "malformed")
    assert malformed_model == model and drop.first_n == 1 and malformed_rule.every_nth
    call = lambda: adapter.complete(client, endpoint, ask(model), stream=stream)  # noqa: E731
    dropped = await failure(call())
    assert dropped.category is C.NETWORK and dropped.retryable and dropped.status is None
    for _ in range(malformed_rule.every_nth - 2):
        await call()
    malformed = await failure(call())
    assert malformed.category is C.SERVER_ERROR and malformed.retryable
    assert "not valid JSON" in malformed.message


async def test_storm_transcription_unavailable(storm_sandbox: Sandbox, client) -> None:
    storm_sandbox.reset()
    adapter, endpoint = target(storm_sandbox, "openai")
    model, fault = with_fault(storm_sandbox, "openai", "unavailable")
    audio = TranscriptionRequest(model, "clip.wav", b"RIFF" + bytes(2000))
    seen = await failures_until({C.OVERLOADED}, lambda: adapter.transcribe(client, endpoint, audio), 19)
    assert seen.keys() == {C.OVERLOADED}
    assert seen[C.OVERLOADED].status == 503 and seen[C.OVERLOADED].retry_after_s == pytest.approx(fault.retry_after_s)


@pytest.mark.parametrize(
    ("provider", "kind", "category", "status"),
    [
        ("openai", "invalid", C.AUTH, 401),
        ("openai", "quota_exhausted", C.QUOTA_EXHAUSTED, 429),  # insufficient_quota
        ("openrouter", "quota_exhausted", C.QUOTA_EXHAUSTED, 402),
        ("together", "invalid", C.AUTH, 401),
        ("anthropic", "invalid", C.AUTH, 401),
        ("anthropic", "quota_exhausted", C.QUOTA_EXHAUSTED, 400),  # credit balance too low
        ("gemini", "invalid", C.AUTH, None),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_storm_refused_keys(
    storm_sandbox: Sandbox, client, provider: str, kind: str, category: ErrorCategory, status: int | None, stream: bool
) -> None:
    adapter, endpoint = target(storm_sandbox, provider, kind)
    info = await failure(adapter.complete(client, endpoint, ask(chat_model(storm_sandbox, provider)), stream=stream))
    assert info.category is category and not info.retryable
    assert status is None or info.status == status
    assert endpoint.api_key not in info.message and endpoint.api_key not in repr(info)
    if kind == "invalid":  # the cheap key check `nbfanout doctor` makes sees the same refusal
        assert (await failure(adapter.list_models(client, endpoint))).category is C.AUTH


async def test_storm_groq_rate_limit_every_nth(storm_sandbox: Sandbox, client) -> None:
    storm_sandbox.reset()
    adapter, endpoint = target(storm_sandbox, "groq")
    model, fault = with_fault(storm_sandbox, "groq", "rate_limit_burst")
    for _ in range(fault.every_nth - 1):
        await adapter.complete(client, endpoint, ask(model))
    info = await failure(adapter.complete(client, endpoint, ask(model), stream=True))
    assert info.category is C.RATE_LIMIT and info.status == 429 and info.retry_after_s


async def test_storm_slow_answer_times_out(storm_sandbox: Sandbox, client) -> None:
    storm_sandbox.reset()
    adapter, endpoint = target(storm_sandbox, "openrouter")
    model, fault = with_fault(storm_sandbox, "openrouter", "slow")
    assert fault.first_n == 1 and fault.delay_s > 2
    info = await failure(adapter.complete(client, endpoint, ask(model), timeout=1.0))
    assert info.category is C.TIMEOUT and info.retryable and info.status is None
    assert (await adapter.complete(client, endpoint, ask(model), timeout=10)).text


async def test_storm_concurrency_limit_of_a_free_model(storm_sandbox: Sandbox, client) -> None:
    storm_sandbox.reset()
    adapter, endpoint = target(storm_sandbox, "openrouter")
    model = next(m.id for m in provider_spec(storm_sandbox, "openrouter").models if m.limits.concurrency == 1)
    calls = (adapter.complete(client, endpoint, ask(model)) for _ in range(2))
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, ProviderError)]
    assert len(errors) == 1 and errors[0].info.category is C.RATE_LIMIT and errors[0].info.status == 429


async def test_storm_invalid_key_fault(storm_sandbox: Sandbox, client) -> None:
    storm_sandbox.reset()
    adapter, endpoint = target(storm_sandbox, "together")
    model, fault = with_fault(storm_sandbox, "together", "invalid_key")
    info = await failure(adapter.complete(client, endpoint, ask(model)))
    assert info.category is C.AUTH and info.status == 401
    assert (await adapter.complete(client, endpoint, ask(model))).text  # first_n = 1: the key works again


async def test_storm_quota_overloaded_and_server_error_on_anthropic(storm_sandbox: Sandbox, client) -> None:
    storm_sandbox.reset()
    adapter, endpoint = target(storm_sandbox, "anthropic")
    model, quota_rule = with_fault(storm_sandbox, "anthropic", "quota_exhausted")
    assert quota_rule.first_n == 1
    for kind in ("overloaded", "server_error"):
        assert with_fault(storm_sandbox, "anthropic", kind)[0] == model
    quota = await failure(adapter.complete(client, endpoint, ask(model)))
    assert quota.category is C.QUOTA_EXHAUSTED and not quota.retryable
    seen = await failures_until(
        {C.OVERLOADED, C.SERVER_ERROR}, lambda: adapter.complete(client, endpoint, ask(model), stream=True), 30
    )
    assert seen.keys() == {C.OVERLOADED, C.SERVER_ERROR}
    assert seen[C.OVERLOADED].status == 529 and seen[C.SERVER_ERROR].status == 500


async def test_storm_anthropic_rate_limit_burst(storm_sandbox: Sandbox, client) -> None:
    storm_sandbox.reset()
    adapter, endpoint = target(storm_sandbox, "anthropic")
    model, fault = with_fault(storm_sandbox, "anthropic", "rate_limit_burst")
    info = await failure(adapter.complete(client, endpoint, ask(model), stream=True))
    assert info.category is C.RATE_LIMIT and info.status == 429
    assert info.retry_after_s == pytest.approx(fault.retry_after_s)


async def test_storm_gemini_unavailable_and_rate_limit(storm_sandbox: Sandbox, client) -> None:
    storm_sandbox.reset()
    adapter, endpoint = target(storm_sandbox, "gemini")
    flash, _ = with_fault(storm_sandbox, "gemini", "unavailable")
    seen = await failures_until({C.OVERLOADED}, lambda: adapter.complete(client, endpoint, ask(flash)), 10)
    assert seen.keys() == {C.OVERLOADED} and seen[C.OVERLOADED].status == 503
    pro, _ = with_fault(storm_sandbox, "gemini", "rate_limit_burst")
    seen = await failures_until({C.RATE_LIMIT}, lambda: adapter.complete(client, endpoint, ask(pro), stream=True), 8)
    assert seen.keys() == {C.RATE_LIMIT} and seen[C.RATE_LIMIT].status == 429
    assert seen[C.RATE_LIMIT].retry_after_s is not None
