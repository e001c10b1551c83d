"""The official openai and anthropic SDKs talk to the sandbox unchanged (wire faithfulness)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest

from nbfanout.sandbox import Sandbox

SDK_SCENARIO: dict[str, Any] = {
    "name": "sdk",
    "seed": 3,
    "providers": {
        "openai": {
            "style": "openai",
            "organization": "org-sdktest",
            "keys": ["sk-sbx-sdk-openai-0001", {"key": "sk-sbx-sdk-openai-quota-0002", "quota_exhausted": True}],
            "models": {
                "gpt-4o-mini": {"output_tokens": [20, 40], "latency": {"base_ms": 20, "per_output_token_ms": 1}},
                "tiny-rpm": {"limits": {"rpm": 1}, "output_tokens": [5, 10]},
                "whisper-1": {"kind": "transcription"},
            },
        },
        "anthropic": {
            "style": "anthropic",
            "organization": "org-sdktest-anthropic",
            "keys": ["sk-ant-sbx-sdk-0003"],
            "models": {
                "claude-haiku-4-5": {"output_tokens": [20, 40], "latency": {"base_ms": 20, "per_output_token_ms": 1}},
                "claude-tiny-rpm": {"limits": {"rpm": 1, "tpm": 100000}},
                "claude-busy": {"faults": [{"kind": "overloaded", "every_nth": 1}]},
            },
        },
    },
}

OPENAI_KEY = "sk-sbx-sdk-openai-0001"
ANTHROPIC_KEY = "sk-ant-sbx-sdk-0003"
MESSAGES = [{"role": "user", "content": "Name three prime numbers."}]


@pytest.fixture(scope="module")
def sdk_sandbox(sandbox_factory: Callable[..., Sandbox]) -> Sandbox:
    return sandbox_factory(SDK_SCENARIO)


@pytest.fixture
def sb(sdk_sandbox: Sandbox) -> Sandbox:
    sdk_sandbox.reset()
    return sdk_sandbox


def oai(sb: Sandbox, key: str = OPENAI_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=sb.base_url("openai"), api_key=key, max_retries=0, timeout=20)


def ant(sb: Sandbox, key: str = ANTHROPIC_KEY) -> anthropic.Anthropic:
    # The anthropic SDK appends /v1/messages itself.
    return anthropic.Anthropic(base_url=f"{sb.url}/anthropic", api_key=key, max_retries=0, timeout=20)


def test_openai_sdk_completion_and_stream_agree(sb: Sandbox) -> None:
    client = oai(sb)
    done = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=200)
    text = done.choices[0].message.content
    assert text is not None and text.startswith('[gpt-4o-mini] On "Name three prime"')
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None and done.usage.completion_tokens == len(text.split())
    assert done.object == "chat.completion" and done.model == "gpt-4o-mini"

    pieces, usage = [], None
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=200, stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == text
    assert usage is not None and usage.completion_tokens == done.usage.completion_tokens


def test_openai_sdk_rate_limit_error_carries_retry_after(sb: Sandbox) -> None:
    client = oai(sb)
    client.chat.completions.create(model="tiny-rpm", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="tiny-rpm", messages=MESSAGES)
    err = info.value
    assert err.status_code == 429 and err.code == "rate_limit_exceeded"
    assert "Rate limit reached for tiny-rpm in organization org-sdktest on requests per min (RPM): Limit 1, Used 1, Requested 1." in err.message
    retry_after = int(err.response.headers["retry-after"])
    assert 58 <= retry_after <= 60
    assert 57_000 <= int(err.response.headers["retry-after-ms"]) <= 60_000
    assert err.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_openai_sdk_quota_and_auth_errors(sb: Sandbox) -> None:
    with pytest.raises(openai.RateLimitError) as quota:
        oai(sb, "sk-sbx-sdk-openai-quota-0002").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert quota.value.code == "insufficient_quota"
    with pytest.raises(openai.AuthenticationError) as auth:
        oai(sb, "sk-wrong-key-9999").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert auth.value.code == "invalid_api_key"
    assert "9999" in auth.value.message and "sk-wrong" not in auth.value.message
    with pytest.raises(openai.NotFoundError):
        oai(sb).chat.completions.create(model="gpt-9", messages=MESSAGES)


def test_openai_sdk_models_and_transcription(sb: Sandbox) -> None:
    client = oai(sb)
    assert {m.id for m in client.models.list()} == {"gpt-4o-mini", "tiny-rpm", "whisper-1"}
    result = client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", b"RIFF" + bytes(3200), "audio/wav"))
    assert result.text.startswith("Sandbox transcript of clip.wav (3204 bytes")
    assert sb.stats()["models"]["openai/whisper-1"]["accepted"] == 1


def test_anthropic_sdk_message_and_stream_agree(sb: Sandbox) -> None:
    client = ant(sb)
    msg = client.messages.create(model="claude-haiku-4-5", max_tokens=300, messages=MESSAGES)
    text = msg.content[0].text  # type: ignore[union-attr]
    assert text.startswith("[claude-haiku-4-5]")
    assert msg.stop_reason == "end_turn" and msg.usage.output_tokens == len(text.split())

    with client.messages.stream(model="claude-haiku-4-5", max_tokens=300, messages=MESSAGES) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text
    assert final.usage.output_tokens == msg.usage.output_tokens and final.stop_reason == "end_turn"


def test_anthropic_sdk_rate_limit_overload_and_auth(sb: Sandbox) -> None:
    client = ant(sb)
    client.messages.create(model="claude-tiny-rpm", max_tokens=50, messages=MESSAGES)
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model="claude-tiny-rpm", max_tokens=50, messages=MESSAGES)
    err = info.value
    assert err.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert "of 1 requests per minute" in err.message
    assert 58 <= int(err.response.headers["retry-after"]) <= 60
    assert err.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert err.response.headers["anthropic-ratelimit-requests-reset"].endswith("Z")

    with pytest.raises(anthropic.OverloadedError) as busy:
        client.messages.create(model="claude-busy", max_tokens=50, messages=MESSAGES)
    assert busy.value.status_code == 529

    with pytest.raises(anthropic.AuthenticationError):
        ant(sb, "sk-ant-wrong-0000").messages.create(model="claude-haiku-4-5", max_tokens=50, messages=MESSAGES)
