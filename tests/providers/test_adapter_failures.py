"""Every way a call can fail becomes a ProviderError with the right category, and nothing leaks."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from _provider_replay import (
    ANTHROPIC_STREAM_ERROR,
    GEMINI_ARRAY_ERROR,
    JSON,
    KEY,
    OPENAI_COMPLETION,
    OPENAI_STREAM,
    OPENROUTER_200_ERROR,
    OPENROUTER_MIDSTREAM_ERROR,
    SSE,
    ChunkStream,
    chat,
    endpoint,
    sse_body,
)
from nbfanout.core.errors import ErrorCategory, ProviderError
from nbfanout.providers import AnthropicAdapter, GeminiAdapter, OpenAIAdapter

C = ErrorCategory


async def fail(coro) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await coro
    return caught.value


# ---- errors inside a 200 ------------------------------------------------------------------


async def test_openrouter_error_in_200_body(make_client) -> None:
    client, _ = make_client(httpx.Response(200, json=OPENROUTER_200_ERROR))
    error = await fail(OpenAIAdapter().complete(client, endpoint("openrouter"), chat("deepseek/deepseek-r1-0528:free")))
    assert error.info.category is C.RATE_LIMIT and error.info.retryable
    assert error.info.provider == "openrouter"


async def test_openrouter_error_mid_stream_after_text(make_client) -> None:
    first_chunks = [c for c in OPENAI_STREAM[:2]]
    body = sse_body(*first_chunks, OPENROUTER_MIDSTREAM_ERROR)
    client, _ = make_client(httpx.Response(200, headers=SSE, content=body))
    deltas: list[str] = []
    error = await fail(
        OpenAIAdapter().complete(client, endpoint("openrouter"), chat(), stream=True, on_delta=deltas.append)
    )
    assert deltas == ["Hello"]  # what arrived before the error was still delivered
    assert error.info.category is C.SERVER_ERROR and error.info.retryable
    assert "Provider disconnected unexpectedly" in error.info.message


async def test_stream_request_answered_with_plain_json_error(make_client) -> None:
    client, _ = make_client(httpx.Response(200, headers=JSON, json=OPENROUTER_200_ERROR))
    error = await fail(OpenAIAdapter().complete(client, endpoint("openrouter"), chat(), stream=True))
    assert error.info.category is C.RATE_LIMIT


async def test_anthropic_error_event_mid_stream(make_client) -> None:
    client, _ = make_client(httpx.Response(200, headers=SSE, content=ANTHROPIC_STREAM_ERROR))
    error = await fail(AnthropicAdapter().complete(client, endpoint("anthropic"), chat("claude-sonnet-4"), stream=True))
    assert error.info.category is C.OVERLOADED and error.info.retryable


async def test_gemini_array_wrapped_error(make_client) -> None:
    for status in (429, 200):
        client, _ = make_client(httpx.Response(status, headers=JSON, content=GEMINI_ARRAY_ERROR))
        error = await fail(GeminiAdapter().complete(client, endpoint("gemini"), chat("gemini-2.5-pro")))
        assert error.info.category is C.RATE_LIMIT, status
        assert error.info.status == status  # the status the server sent


# ---- bodies that are not answers ------------------------------------------------------------


async def test_malformed_json_body(make_client) -> None:
    client, _ = make_client(httpx.Response(200, headers=JSON, content=b'{"id": "chatcmpl-123", "choices": [{"mess'))
    error = await fail(OpenAIAdapter().complete(client, endpoint(), chat()))
    assert error.info.category is C.SERVER_ERROR and error.info.retryable
    assert error.info.status == 200
    assert "not valid JSON" in error.info.message


async def test_malformed_stream_event(make_client) -> None:
    client, _ = make_client(httpx.Response(200, headers=SSE, content=sse_body(OPENAI_STREAM[0], "{not json")))
    error = await fail(OpenAIAdapter().complete(client, endpoint(), chat(), stream=True))
    assert error.info.category is C.SERVER_ERROR and "stream event was not valid JSON" in error.info.message


async def test_empty_choices(make_client) -> None:
    client, _ = make_client(httpx.Response(200, json={**OPENAI_COMPLETION, "choices": []}))
    error = await fail(OpenAIAdapter().complete(client, endpoint(), chat()))
    assert error.info.category is C.SERVER_ERROR and error.info.retryable
    assert "no answer" in error.info.message


async def test_filtered_answer_with_no_text_is_content_policy(make_client) -> None:
    choice = {"index": 0, "message": {"role": "assistant", "content": None}, "finish_reason": "content_filter"}
    client, _ = make_client(httpx.Response(200, json={**OPENAI_COMPLETION, "choices": [choice]}))
    error = await fail(OpenAIAdapter().complete(client, endpoint(), chat()))
    assert error.info.category is C.CONTENT_POLICY and not error.info.retryable


@pytest.mark.parametrize("stream", [False, True])
async def test_gemini_blocked_prompt(make_client, stream: bool) -> None:
    # A blocked prompt has no candidates, only promptFeedback.blockReason
    # (https://ai.google.dev/api/generate-content#PromptFeedback).
    blocked = {
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12},
        "modelVersion": "gemini-2.5-flash",
    }
    if stream:
        answer = httpx.Response(200, headers=SSE, content=sse_body(blocked))
    else:
        answer = httpx.Response(200, json=blocked)
    client, _ = make_client(answer)
    error = await fail(GeminiAdapter().complete(client, endpoint("gemini"), chat("gemini-2.5-flash"), stream=stream))
    assert error.info.category is C.CONTENT_POLICY and not error.info.retryable
    assert error.info.provider_code == "PROHIBITED_CONTENT"


async def test_stream_that_ends_without_its_final_event(make_client) -> None:
    # The connection closes cleanly after one text chunk: no finish_reason, no [DONE].
    client, _ = make_client(httpx.Response(200, headers=SSE, content=sse_body(*OPENAI_STREAM[:2])))
    deltas: list[str] = []
    error = await fail(OpenAIAdapter().complete(client, endpoint(), chat(), stream=True, on_delta=deltas.append))
    assert deltas == ["Hello"]
    assert error.info.category is C.NETWORK and error.info.retryable
    assert error.info.status is None


# ---- no response: timeouts and network --------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_read_timeout(make_client, stream: bool) -> None:
    client, _ = make_client(httpx.ReadTimeout("The read operation timed out"))
    error = await fail(AnthropicAdapter().complete(client, endpoint("anthropic"), chat("claude"), stream=stream))
    assert error.info.category is C.TIMEOUT and error.info.retryable and error.info.status is None
    assert isinstance(error.__cause__, httpx.ReadTimeout)


async def test_connect_error(make_client) -> None:
    client, _ = make_client(httpx.ConnectError("[Errno 111] Connection refused"))
    error = await fail(GeminiAdapter().complete(client, endpoint("gemini"), chat("gemini-2.5-flash")))
    assert error.info.category is C.NETWORK and error.info.retryable
    assert isinstance(error.__cause__, httpx.ConnectError)


async def test_connection_dropped_mid_stream(make_client) -> None:
    chunks = [sse_body(OPENAI_STREAM[0]), sse_body(OPENAI_STREAM[1])]
    dropped = httpx.RemoteProtocolError("peer closed connection without sending complete message body")
    body = ChunkStream(chunks, then=dropped)
    client, _ = make_client(httpx.Response(200, headers=SSE, stream=body))
    deltas: list[str] = []
    error = await fail(OpenAIAdapter().complete(client, endpoint(), chat(), stream=True, on_delta=deltas.append))
    assert deltas == ["Hello"]
    assert error.info.category is C.NETWORK
    assert "RemoteProtocolError" in error.info.message
    assert isinstance(error.__cause__, httpx.RemoteProtocolError)
    assert body.closed


async def test_read_timeout_between_stream_chunks(make_client) -> None:
    body = ChunkStream([sse_body(OPENAI_STREAM[1])], then=httpx.ReadTimeout("The read operation timed out"))
    client, _ = make_client(httpx.Response(200, headers=SSE, stream=body))
    error = await fail(OpenAIAdapter().complete(client, endpoint(), chat(), stream=True))
    assert error.info.category is C.TIMEOUT and body.closed


# ---- cancellation -------------------------------------------------------------------------


async def test_cancellation_propagates_and_closes_the_stream(make_client) -> None:
    body = ChunkStream([sse_body(OPENAI_STREAM[1])], hang=True)
    client, _ = make_client(httpx.Response(200, headers=SSE, stream=body))
    first = asyncio.Event()
    task = asyncio.ensure_future(
        OpenAIAdapter().complete(client, endpoint(), chat(), stream=True, on_delta=lambda _: first.set())
    )
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert body.closed


async def test_callback_errors_propagate_untouched_and_close_the_stream(make_client) -> None:
    body = ChunkStream([sse_body(*OPENAI_STREAM)])
    client, _ = make_client(httpx.Response(200, headers=SSE, stream=body))

    def on_delta(fragment: str) -> None:
        raise KeyError(fragment)

    with pytest.raises(KeyError, match="Hello"):
        await OpenAIAdapter().complete(client, endpoint(), chat(), stream=True, on_delta=on_delta)
    assert body.closed


# ---- error statuses and key hygiene ---------------------------------------------------------


async def test_error_status_is_classified_with_headers(make_client) -> None:
    # Anthropic's 429 body (https://docs.anthropic.com/en/api/errors) with its retry-after header
    message = "Number of request tokens has exceeded your per-minute rate limit"
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": message}}
    client, _ = make_client(httpx.Response(429, json=body, headers={"retry-after": "17"}))
    error = await fail(AnthropicAdapter().complete(client, endpoint("anthropic"), chat("claude"), stream=True))
    assert error.info.category is C.RATE_LIMIT and error.info.status == 429
    assert error.info.retry_after_s == 17


async def test_key_never_appears_in_errors(make_client) -> None:
    # OpenAI's invalid-key body (https://platform.openai.com/docs/guides/error-codes) masks the
    # key; an OpenAI-compatible server that echoes it whole must not leak it through us.
    body = {
        "error": {
            "message": f"Incorrect API key provided: {KEY}.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    client, _ = make_client(httpx.Response(401, json=body))
    ep = endpoint("local")
    error = await fail(OpenAIAdapter().complete(client, ep, chat()))
    assert error.info.category is C.AUTH
    for text in (str(error), repr(error), error.info.message, repr(error.info), repr(ep)):
        assert KEY not in text
    assert KEY[-4:] in error.info.message
