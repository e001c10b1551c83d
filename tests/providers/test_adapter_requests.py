"""What each adapter puts on the wire: URL, headers, body (images, limits, extra passthrough)."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from _provider_replay import (
    ANTHROPIC_MESSAGE,
    ANTHROPIC_STREAM,
    GEMINI_RESPONSE,
    GEMINI_STREAM,
    KEY,
    OPENAI_COMPLETION,
    OPENAI_STREAM,
    SSE,
    chat,
    endpoint,
    sse_body,
)
from nbfanout.core.errors import UsageError
from nbfanout.providers import AnthropicAdapter, GeminiAdapter, OpenAIAdapter, adapter_for
from nbfanout.providers.base import ChatRequest, Endpoint, ImagePart, Message, Tool
from nbfanout.providers.openai import uses_max_completion_tokens

PNG = b"\x89PNG\r\n\x1a\n fake image bytes"
PNG_B64 = base64.b64encode(PNG).decode()


DOG = ImagePart(url="https://example.test/dog.jpg", mime_type="image/jpeg")


def with_image(model: str) -> ChatRequest:
    return ChatRequest(
        model=model,
        system="Describe images tersely.",
        messages=(
            Message("user", "What is in this picture?", images=(ImagePart(data=PNG, mime_type="image/png"),)),
            Message("assistant", "A cat."),
            Message("user", "And this one?", images=(DOG,)),
        ),
    )


def test_adapter_for_each_wire() -> None:
    assert isinstance(adapter_for("openai"), OpenAIAdapter)
    assert isinstance(adapter_for("anthropic"), AnthropicAdapter)
    assert isinstance(adapter_for("gemini"), GeminiAdapter)
    with pytest.raises(UsageError, match="unknown wire format 'cohere'"):
        adapter_for("cohere")


def test_public_names_are_sorted() -> None:
    import nbfanout.providers as providers

    assert providers.__all__ == sorted(providers.__all__)


# ---- OpenAI-compatible --------------------------------------------------------------------


async def test_openai_request_with_images(make_client) -> None:
    client, rec = make_client(httpx.Response(200, json=OPENAI_COMPLETION))
    attribution = {"HTTP-Referer": "https://nbfanout.test", "X-Title": "nbfanout"}
    openrouter = Endpoint("openrouter", "https://openrouter.ai/api/v1", KEY, headers=attribution)
    await OpenAIAdapter().complete(client, openrouter, with_image("openai/gpt-4o"))
    request = rec.requests[0]
    assert request.method == "POST"
    assert str(request.url) == "https://openrouter.ai/api/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["http-referer"] == "https://nbfanout.test"
    assert request.headers["x-title"] == "nbfanout"
    body = json.loads(request.content)
    assert body == {
        "model": "openai/gpt-4o",
        "stream": False,
        "messages": [
            {"role": "system", "content": "Describe images tersely."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                ],
            },
            {"role": "assistant", "content": "A cat."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "And this one?"},
                    {"type": "image_url", "image_url": {"url": "https://example.test/dog.jpg"}},
                ],
            },
        ],
    }


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("o1", True),
        ("o1-mini", True),
        ("o3", True),
        ("o3-pro-2025-06-10", True),
        ("o4-mini", True),
        ("gpt-5", True),
        ("gpt-5-mini", True),
        ("gpt-5.1", True),
        ("gpt-4.1", False),
        ("gpt-4o", False),
        ("openai/o3", False),  # an aggregator id: OpenRouter documents max_tokens
        ("o1x", False),
        ("llama-3.3-70b-versatile", False),
    ],
)
def test_max_completion_tokens_rule(model: str, expected: bool) -> None:
    assert uses_max_completion_tokens(model) is expected


async def test_openai_limits_temperature_and_extra(make_client) -> None:
    client, rec = make_client(httpx.Response(200, json=OPENAI_COMPLETION))
    adapter = OpenAIAdapter()
    await adapter.complete(client, endpoint(), chat("o4-mini", max_tokens=500, extra={"reasoning_effort": "high"}))
    assert rec.last_json["max_completion_tokens"] == 500
    assert "max_tokens" not in rec.last_json and "temperature" not in rec.last_json
    assert rec.last_json["reasoning_effort"] == "high"

    await adapter.complete(
        client,
        endpoint("openrouter"),
        chat("deepseek/deepseek-r1-0528", max_tokens=64, temperature=0.2, extra={"reasoning": {"effort": "high"}}),
    )
    assert rec.last_json["max_tokens"] == 64
    assert rec.last_json["temperature"] == 0.2
    assert rec.last_json["reasoning"] == {"effort": "high"}

    # extra cannot replace the conversation or the stream flag
    await adapter.complete(client, endpoint(), chat(extra={"messages": [], "stream": True, "seed": 7}))
    assert rec.last_json["messages"] == [{"role": "user", "content": "Say hello."}]
    assert rec.last_json["stream"] is False and rec.last_json["seed"] == 7


async def test_openai_stream_asks_for_usage(make_client) -> None:
    client, rec = make_client(httpx.Response(200, headers=SSE, content=sse_body(*OPENAI_STREAM)))
    await OpenAIAdapter().complete(
        client, endpoint(), chat(extra={"stream_options": {"continuous_usage_stats": True}}), stream=True
    )
    assert rec.last_json["stream"] is True
    # extra's nested object is merged into ours, not put in its place
    assert rec.last_json["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}


# ---- Anthropic ----------------------------------------------------------------------------


async def test_anthropic_request_with_images(make_client) -> None:
    client, rec = make_client(httpx.Response(200, json=ANTHROPIC_MESSAGE))
    await AnthropicAdapter().complete(
        client, endpoint("anthropic", "https://api.anthropic.com/v1"), with_image("claude-sonnet-4-20250514")
    )
    request = rec.requests[0]
    assert str(request.url) == "https://api.anthropic.com/v1/messages"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert json.loads(request.content) == {
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 4096,
        "stream": False,
        "system": "Describe images tersely.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
                    {"type": "text", "text": "What is in this picture?"},
                ],
            },
            {"role": "assistant", "content": "A cat."},
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "url", "url": "https://example.test/dog.jpg"}},
                    {"type": "text", "text": "And this one?"},
                ],
            },
        ],
    }


async def test_anthropic_limits_and_extra(make_client) -> None:
    client, rec = make_client(httpx.Response(200, headers=SSE, content=ANTHROPIC_STREAM))
    thinking = {"thinking": {"type": "enabled", "budget_tokens": 2048}}
    request = chat("claude-opus-4-1", max_tokens=8000, temperature=1.0, extra=thinking)
    await AnthropicAdapter().complete(client, endpoint("anthropic"), request, stream=True)
    body = rec.last_json
    assert body["max_tokens"] == 8000 and body["temperature"] == 1.0 and body["stream"] is True
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert "system" not in body


# ---- Gemini -------------------------------------------------------------------------------

GEMINI_BASE = "https://generativelanguage.googleapis.com/v1beta"


async def test_gemini_request_with_images(make_client) -> None:
    client, rec = make_client(httpx.Response(200, json=GEMINI_RESPONSE))
    await GeminiAdapter().complete(client, endpoint("gemini", GEMINI_BASE), with_image("gemini-2.5-flash"))
    request = rec.requests[0]
    assert str(request.url) == f"{GEMINI_BASE}/models/gemini-2.5-flash:generateContent"
    assert request.headers["x-goog-api-key"] == KEY
    assert KEY not in str(request.url)
    assert json.loads(request.content) == {
        "systemInstruction": {"parts": [{"text": "Describe images tersely."}]},
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"inlineData": {"mimeType": "image/png", "data": PNG_B64}},
                    {"text": "What is in this picture?"},
                ],
            },
            {"role": "model", "parts": [{"text": "A cat."}]},
            {
                "role": "user",
                "parts": [
                    {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.test/dog.jpg"}},
                    {"text": "And this one?"},
                ],
            },
        ],
    }


async def test_gemini_stream_url_generation_config_and_extra(make_client) -> None:
    client, rec = make_client(httpx.Response(200, headers=SSE, content=GEMINI_STREAM))
    extra = {
        "thinkingConfig": {"thinkingBudget": 0},
        "generationConfig": {"topP": 0.9},
        "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
    }
    request = chat("models/gemini-2.5-pro", max_tokens=256, temperature=0.0, extra=extra)
    await GeminiAdapter().complete(client, endpoint("gemini", GEMINI_BASE), request, stream=True)
    sent = rec.requests[0]
    assert str(sent.url) == f"{GEMINI_BASE}/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    body = rec.last_json
    assert body["generationConfig"] == {
        "maxOutputTokens": 256,
        "temperature": 0.0,
        "thinkingConfig": {"thinkingBudget": 0},
        "topP": 0.9,
    }
    assert body["safetySettings"] == extra["safetySettings"]
    assert "systemInstruction" not in body


@pytest.mark.parametrize(("schema", "field"), [
    ({"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris"]}}, "required": ["city"]}, "parameters"),
    ({"type": "object", "properties": {"when": {"type": "string", "format": "date-time"}}}, "parameters"),
    ({"type": "object", "additionalProperties": False, "properties": {"city": {"type": "string"}}}, "parametersJsonSchema"),
    ({"type": "object", "properties": {"note": {"type": ["string", "null"]}}}, "parametersJsonSchema"),
    ({"type": "object", "properties": {"level": {"type": "integer", "enum": [1, 2, 3]}}}, "parametersJsonSchema"),
    ({"type": "object", "properties": {"site": {"type": "string", "format": "uri"}}}, "parametersJsonSchema"),
    ({"type": "object", "properties": {"pair": {"type": "array", "items": [{"type": "string"}, {"type": "number"}]}}},
     "parametersJsonSchema"),
])
async def test_gemini_sends_a_schema_its_subset_cannot_hold_as_json_schema(make_client, schema, field) -> None:
    """Gemini's ``parameters`` is its OpenAPI subset (string type names, string enums, a few formats);
    anything else goes as ``parametersJsonSchema``, which takes JSON Schema as written."""
    client, rec = make_client(httpx.Response(200, json=GEMINI_RESPONSE))
    request = ChatRequest(model="gemini-2.5-flash", messages=(Message("user", "Weather?"),),
                          tools=(Tool("get_weather", "The weather.", schema),))
    await GeminiAdapter().complete(client, endpoint("gemini", GEMINI_BASE), request)
    (declaration,) = json.loads(rec.requests[0].content)["tools"][0]["functionDeclarations"]
    assert set(declaration) == {"name", "description", field} and declaration[field] == schema
