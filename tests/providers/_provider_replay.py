"""Shared pieces of the adapter tests: httpx transports that replay recorded provider traffic.

Nothing of ours is mocked: the adapters run unchanged against ``httpx.MockTransport``,
which only stands in for the network and hands back sourced provider payloads.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from nbfanout.providers.base import ChatRequest, Endpoint, Message

KEY = "sk-test-0123456789abcdefWXYZ"


def endpoint(provider: str = "openai", base_url: str = "https://api.example.test/v1", key: str = KEY) -> Endpoint:
    return Endpoint(provider=provider, base_url=base_url, api_key=key)


def chat(model: str = "gpt-4o-mini", text: str = "Say hello.", **kwargs: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=(Message("user", text),), **kwargs)


def sse_body(*payloads: str | dict[str, Any], events: tuple[str | None, ...] = ()) -> bytes:
    """An SSE body: one ``data:`` event per payload, with optional ``event:`` names."""
    out = []
    for i, payload in enumerate(payloads):
        data = payload if isinstance(payload, str) else json.dumps(payload)
        name = events[i] if i < len(events) else None
        out.append((f"event: {name}\n" if name else "") + f"data: {data}\n\n")
    return "".join(out).encode()


SSE = {"content-type": "text/event-stream"}
JSON = {"content-type": "application/json"}


@dataclass
class Recorder:
    """A MockTransport handler that records each request and answers from a queue."""

    answers: list[Callable[[httpx.Request], httpx.Response] | httpx.Response | Exception]
    requests: list[httpx.Request] = field(default_factory=list)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer

    @property
    def last_json(self) -> Any:
        return json.loads(self.requests[-1].content)


class ChunkStream(httpx.AsyncByteStream):
    """A response body sent chunk by chunk; optionally fails or hangs after the chunks."""

    def __init__(self, chunks: list[bytes], *, then: Exception | None = None, hang: bool = False) -> None:
        self.chunks = chunks
        self.then = then
        self.hang = hang
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        import asyncio

        for chunk in self.chunks:
            yield chunk
        if self.then is not None:
            raise self.then
        if self.hang:
            await asyncio.Event().wait()

    async def aclose(self) -> None:
        self.closed = True


# ---- Recorded / documented provider payloads --------------------------------------------

#: Chat completion object, from https://platform.openai.com/docs/api-reference/chat/object
OPENAI_COMPLETION = {
    "id": "chatcmpl-123",
    "object": "chat.completion",
    "created": 1677652288,
    "model": "gpt-4o-mini",
    "system_fingerprint": "fp_44709d6fcb",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "\n\nHello there, how may I assist you today?"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
}

#: Streamed chunks, from https://platform.openai.com/docs/api-reference/chat/streaming, then
#: the usage chunk that ``stream_options.include_usage`` adds ("choices will always be an
#: empty array", same reference), then the [DONE] sentinel.
OPENAI_STREAM = (
    '{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini", "system_fingerprint": "fp_44709d6fcb", "choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}',
    '{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini", "system_fingerprint": "fp_44709d6fcb", "choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]}',
    '{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini", "system_fingerprint": "fp_44709d6fcb", "choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}',
    '{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini", "system_fingerprint": "fp_44709d6fcb", "choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}',
    "[DONE]",
)

#: OpenRouter's mid-stream error event, verbatim from "Handling Errors During Streaming",
#: https://openrouter.ai/docs/api-reference/streaming
OPENROUTER_MIDSTREAM_ERROR = (
    '{"id":"cmpl-abc123","object":"chat.completion.chunk","created":1234567890,"model":"gpt-3.5-turbo",'
    '"provider":"openai","error":{"code":"server_error","message":"Provider disconnected unexpectedly"},'
    '"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}'
)

#: OpenRouter's error envelope sent with HTTP 200 once the model has started
#: (shape: https://openrouter.ai/docs/api-reference/errors; "Provider returned error" with the
#: upstream message in metadata.raw is OpenRouter's wording for upstream failures).
OPENROUTER_200_ERROR = {
    "error": {
        "message": "Provider returned error",
        "code": 429,
        "metadata": {
            "raw": "deepseek/deepseek-r1-0528:free is temporarily rate-limited upstream. Please retry shortly, "
            "or add your own key to accumulate your rate limits: https://openrouter.ai/settings/integrations",
            "provider_name": "Chutes",
        },
    }
}

#: Messages API response, from https://docs.anthropic.com/en/api/messages (example response)
ANTHROPIC_MESSAGE = {
    "content": [{"text": "Hi! My name is Claude.", "type": "text"}],
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "model": "claude-3-7-sonnet-20250219",
    "role": "assistant",
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "type": "message",
    "usage": {"input_tokens": 2095, "output_tokens": 503},
}

#: The basic streaming example, from
#: https://docs.anthropic.com/en/docs/build-with-claude/streaming#basic-streaming-request
ANTHROPIC_STREAM = b"""event: message_start
data: {"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant", "content": [], "model": "claude-3-5-sonnet-20241022", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}

event: content_block_start
data: {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}

event: content_block_stop
data: {"type": "content_block_stop", "index": 0}

event: message_delta
data: {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence":null}, "usage": {"output_tokens": 15}}

event: message_stop
data: {"type": "message_stop"}

"""

#: Error event inside a 200 stream, from
#: https://docs.anthropic.com/en/docs/build-with-claude/streaming#error-events
ANTHROPIC_STREAM_ERROR = b"""event: error
data: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}

"""

#: First (text shortened) and last chunk of a recorded gemini-2.5-flash
#: ``streamGenerateContent?alt=sse`` response
#: (github.com/junjihashimoto/louter, test-data/gemini/streaming_long/response.json).
GEMINI_STREAM = (
    b'data: {"candidates": [{"content": {"parts": [{"text": "Okay, let\'s create a Tetris game in Python for the console!"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 4,"candidatesTokenCount": 49,"totalTokenCount": 2095,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 4}],"thoughtsTokenCount": 2042},"modelVersion": "gemini-2.5-flash","responseId": "IZI2acSKMoWl0-kPmYj2yQc"}\r\n\r\n'
    b'data: {"candidates": [{"content": {"parts": [{"text": ", hold functionality, sound, high scores, etc."}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 4,"candidatesTokenCount": 5947,"totalTokenCount": 7993,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 4}],"thoughtsTokenCount": 2042},"modelVersion": "gemini-2.5-flash","responseId": "IZI2acSKMoWl0-kPmYj2yQc"}\r\n\r\n'
)

#: A whole GenerateContentResponse: the last recorded chunk above, which has every field a
#: non-streamed response has (https://ai.google.dev/api/generate-content#generatecontentresponse).
GEMINI_RESPONSE = {
    "candidates": [
        {
            "content": {"parts": [{"text": ", hold functionality, sound, high scores, etc."}], "role": "model"},
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 4,
        "candidatesTokenCount": 5947,
        "totalTokenCount": 7993,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 4}],
        "thoughtsTokenCount": 2042,
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "IZI2acSKMoWl0-kPmYj2yQc",
}

#: A 429 wrapped in a JSON array, as streamGenerateContent returns it without alt=sse,
#: verbatim from https://github.com/google-gemini/gemini-cli/issues/14831
GEMINI_ARRAY_ERROR = b"""[{
  "error": {
    "code": 429,
    "message": "Resource exhausted. Please try again later. Please refer to https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details.",
    "errors": [
      {
        "message": "Resource exhausted. Please try again later. Please refer to https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details.",
        "domain": "global",
        "reason": "rateLimitExceeded"
      }
    ],
    "status": "RESOURCE_EXHAUSTED"
  }
}
]"""

#: The model list shapes: https://platform.openai.com/docs/api-reference/models/list,
#: https://docs.anthropic.com/en/api/models-list, https://ai.google.dev/api/models#method:-models.list
OPENAI_MODELS = {
    "object": "list",
    "data": [
        {"id": "model-id-0", "object": "model", "created": 1686935002, "owned_by": "organization-owner"},
        {"id": "model-id-1", "object": "model", "created": 1686935002, "owned_by": "organization-owner"},
    ],
}
ANTHROPIC_MODELS = {
    "data": [
        {
            "created_at": "2025-02-19T00:00:00Z",
            "display_name": "Claude 3.7 Sonnet",
            "id": "claude-3-7-sonnet-20250219",
            "type": "model",
        }
    ],
    "first_id": "claude-3-7-sonnet-20250219",
    "has_more": False,
    "last_id": "claude-3-7-sonnet-20250219",
}
GEMINI_MODELS = {
    "models": [
        {"name": "models/gemini-2.5-flash", "displayName": "Gemini 2.5 Flash"},
        {"name": "models/gemini-2.5-pro", "displayName": "Gemini 2.5 Pro"},
    ]
}

#: Transcription response (json format), from
#: https://platform.openai.com/docs/api-reference/audio/json-object
OPENAI_TRANSCRIPTION = {
    "text": "Imagine the wildest idea that you've ever had, and you're curious about how it might scale to something that's a 100, a 1,000 times bigger. This is a place where you can get to do that."
}
