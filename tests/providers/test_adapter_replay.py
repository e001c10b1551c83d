"""Parsing recorded/documented provider responses: text, usage, finish reason, streams, lists."""

from __future__ import annotations

import httpx

from _provider_replay import (
    ANTHROPIC_MESSAGE,
    ANTHROPIC_MODELS,
    ANTHROPIC_STREAM,
    GEMINI_MODELS,
    GEMINI_RESPONSE,
    GEMINI_STREAM,
    OPENAI_COMPLETION,
    OPENAI_MODELS,
    OPENAI_STREAM,
    OPENAI_TRANSCRIPTION,
    SSE,
    chat,
    endpoint,
    sse_body,
)
from nbfanout.providers import AnthropicAdapter, GeminiAdapter, OpenAIAdapter
from nbfanout.providers.base import TranscriptionRequest, Usage

# Rate-limit headers as documented at https://platform.openai.com/docs/guides/rate-limits
OPENAI_RATE_HEADERS = {
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-limit-tokens": "150000",
    "x-ratelimit-remaining-requests": "59",
    "x-ratelimit-remaining-tokens": "149984",
    "x-ratelimit-reset-requests": "1s",
    "x-ratelimit-reset-tokens": "6m0s",
}


async def test_openai_completion(make_client) -> None:
    client, _ = make_client(httpx.Response(200, json=OPENAI_COMPLETION, headers=OPENAI_RATE_HEADERS))
    response = await OpenAIAdapter().complete(client, endpoint(), chat())
    assert response.text == "\n\nHello there, how may I assist you today?"
    assert response.usage == Usage(input_tokens=9, output_tokens=12)
    assert response.finish_reason == "stop"
    assert response.model == "gpt-4o-mini"
    assert response.status == 200
    assert response.raw["id"] == "chatcmpl-123"
    assert response.rate.limit_requests == 60
    assert response.rate.remaining_tokens == 149984


async def test_openai_stream_deltas_and_final_usage_chunk(make_client) -> None:
    client, _ = make_client(httpx.Response(200, headers=SSE, content=sse_body(*OPENAI_STREAM)))
    deltas: list[str] = []
    response = await OpenAIAdapter().complete(client, endpoint(), chat(), stream=True, on_delta=deltas.append)
    assert deltas == ["Hello"]
    assert response.text == "".join(deltas)
    assert response.usage == Usage(9, 12)
    assert response.finish_reason == "stop"
    assert response.model == "gpt-4o-mini"


async def test_openai_stream_with_async_callback_and_keepalive_comments(make_client) -> None:
    body = b": OPENROUTER PROCESSING\n\n" + sse_body(*OPENAI_STREAM)
    client, _ = make_client(httpx.Response(200, headers=SSE, content=body))
    seen: list[str] = []

    async def on_delta(fragment: str) -> None:
        seen.append(fragment)

    response = await OpenAIAdapter().complete(client, endpoint("openrouter"), chat(), stream=True, on_delta=on_delta)
    assert seen == ["Hello"] and response.text == "Hello"


async def test_anthropic_message(make_client) -> None:
    client, _ = make_client(httpx.Response(200, json=ANTHROPIC_MESSAGE))
    response = await AnthropicAdapter().complete(client, endpoint("anthropic"), chat("claude-3-7-sonnet-20250219"))
    assert response.text == "Hi! My name is Claude."
    assert response.usage == Usage(2095, 503)
    assert response.finish_reason == "end_turn"
    assert response.model == "claude-3-7-sonnet-20250219"


async def test_anthropic_cache_tokens_count_as_input(make_client) -> None:
    # usage fields per https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching
    usage = {
        "input_tokens": 21,
        "cache_creation_input_tokens": 188086,
        "cache_read_input_tokens": 0,
        "output_tokens": 393,
    }
    cached = {**ANTHROPIC_MESSAGE, "usage": usage}
    client, _ = make_client(httpx.Response(200, json=cached))
    response = await AnthropicAdapter().complete(client, endpoint("anthropic"), chat("claude-sonnet-4"))
    assert response.usage == Usage(21 + 188086, 393)


async def test_anthropic_stream(make_client) -> None:
    client, _ = make_client(httpx.Response(200, headers=SSE, content=ANTHROPIC_STREAM))
    deltas: list[str] = []
    response = await AnthropicAdapter().complete(
        client, endpoint("anthropic"), chat("claude-3-5-sonnet"), stream=True, on_delta=deltas.append
    )
    assert deltas == ["Hello", "!"]
    assert response.text == "Hello!"
    assert response.usage == Usage(25, 15)  # input from message_start, output from message_delta
    assert response.finish_reason == "end_turn"
    assert response.model == "claude-3-5-sonnet-20241022"


async def test_gemini_response(make_client) -> None:
    client, _ = make_client(httpx.Response(200, json=GEMINI_RESPONSE))
    response = await GeminiAdapter().complete(client, endpoint("gemini"), chat("gemini-2.5-flash"))
    assert response.text == ", hold functionality, sound, high scores, etc."
    assert response.usage == Usage(4, 5947 + 2042)  # thinking tokens are billed as output
    assert response.finish_reason == "STOP"
    assert response.model == "gemini-2.5-flash"


async def test_gemini_stream(make_client) -> None:
    client, _ = make_client(httpx.Response(200, headers=SSE, content=GEMINI_STREAM))
    deltas: list[str] = []
    response = await GeminiAdapter().complete(
        client, endpoint("gemini"), chat("gemini-2.5-flash"), stream=True, on_delta=deltas.append
    )
    assert deltas == [
        "Okay, let's create a Tetris game in Python for the console!",
        ", hold functionality, sound, high scores, etc.",
    ]
    assert response.text == "".join(deltas)
    assert response.usage == Usage(4, 5947 + 2042)
    assert response.finish_reason == "STOP"


async def test_gemini_thought_parts_are_not_answer_text(make_client) -> None:
    # includeThoughts returns summaries as parts with "thought": true
    # (https://ai.google.dev/gemini-api/docs/thinking#summaries)
    content = {"role": "model", "parts": [{"text": "**Planning**", "thought": True}, {"text": "Paris."}]}
    body = {**GEMINI_RESPONSE, "candidates": [{**GEMINI_RESPONSE["candidates"][0], "content": content}]}
    client, _ = make_client(httpx.Response(200, json=body))
    response = await GeminiAdapter().complete(client, endpoint("gemini"), chat("gemini-2.5-pro"))
    assert response.text == "Paris."


async def test_list_models(make_client) -> None:
    client, rec = make_client(
        httpx.Response(200, json=OPENAI_MODELS),
        httpx.Response(200, json=ANTHROPIC_MODELS),
        httpx.Response(200, json=GEMINI_MODELS),
    )
    assert await OpenAIAdapter().list_models(client, endpoint()) == ["model-id-0", "model-id-1"]
    assert await AnthropicAdapter().list_models(client, endpoint("anthropic", "https://api.anthropic.com/v1")) == [
        "claude-3-7-sonnet-20250219"
    ]
    gemini = endpoint("gemini", "https://generativelanguage.googleapis.com/v1beta")
    assert await GeminiAdapter().list_models(client, gemini) == [
        "gemini-2.5-flash",
        "gemini-2.5-pro",
    ]
    assert [r.method for r in rec.requests] == ["GET"] * 3
    assert str(rec.requests[0].url) == "https://api.example.test/v1/models"
    assert rec.requests[1].url.path == "/v1/models" and rec.requests[1].headers["anthropic-version"] == "2023-06-01"
    assert rec.requests[2].url.path == "/v1beta/models" and "key" not in rec.requests[2].url.params


async def test_list_models_follows_pages(make_client) -> None:
    first = {**ANTHROPIC_MODELS, "has_more": True}
    client, rec = make_client(httpx.Response(200, json=first), httpx.Response(200, json=ANTHROPIC_MODELS))
    ids = await AnthropicAdapter().list_models(client, endpoint("anthropic"))
    assert ids == ["claude-3-7-sonnet-20250219"] * 2
    assert rec.requests[1].url.params["after_id"] == "claude-3-7-sonnet-20250219"

    page = {**GEMINI_MODELS, "nextPageToken": "Ch5tb2RlbHMvZ2VtaW5p"}
    client, rec = make_client(httpx.Response(200, json=page), httpx.Response(200, json=GEMINI_MODELS))
    assert len(await GeminiAdapter().list_models(client, endpoint("gemini"))) == 4
    assert rec.requests[1].url.params["pageToken"] == "Ch5tb2RlbHMvZ2VtaW5p"


async def test_transcription_multipart(make_client) -> None:
    client, rec = make_client(httpx.Response(200, json=OPENAI_TRANSCRIPTION))
    audio = TranscriptionRequest(
        model="whisper-large-v3", filename="talk.mp3", data=b"ID3 fake mp3", language="en", prompt="nbfanout"
    )
    response = await OpenAIAdapter().transcribe(client, endpoint("groq", "https://api.groq.com/openai/v1"), audio)
    assert response.text.startswith("Imagine the wildest idea")
    assert response.model == "whisper-large-v3" and response.status == 200 and response.duration_s is None
    sent = rec.requests[0]
    assert str(sent.url) == "https://api.groq.com/openai/v1/audio/transcriptions"
    assert sent.headers["content-type"].startswith("multipart/form-data; boundary=")
    body = sent.content
    for field, value in [("model", b"whisper-large-v3"), ("language", b"en"), ("prompt", b"nbfanout")]:
        assert f'name="{field}"'.encode() + b"\r\n\r\n" + value in body
    assert b'name="file"; filename="talk.mp3"' in body
    assert b"Content-Type: audio/mpeg" in body and b"ID3 fake mp3" in body


async def test_transcription_not_offered_by_other_wires(make_client) -> None:
    import pytest

    from nbfanout.core.errors import ErrorCategory, ProviderError

    client, rec = make_client(httpx.Response(500))
    with pytest.raises(ProviderError) as caught:
        await GeminiAdapter().transcribe(client, endpoint("gemini"), TranscriptionRequest("m", "a.wav", b""))
    assert caught.value.info.category is ErrorCategory.BAD_REQUEST and not rec.requests
