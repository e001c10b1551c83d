"""The Anthropic Messages wire format.

``POST {base}/messages`` with ``x-api-key`` and ``anthropic-version: 2023-06-01``
(https://docs.anthropic.com/en/api/messages, https://docs.anthropic.com/en/api/versioning).

Request rules:

- ``max_tokens`` is required by the API; when the request leaves it None we send
  ``DEFAULT_MAX_TOKENS`` (4096: the output cap of the smallest Claude model, Claude 3
  Haiku, so every model accepts it).
- ``system`` is the top-level ``system`` string; images are ``{"type": "image", "source":
  {"type": "base64", ...}}`` blocks before the text (https://docs.anthropic.com/en/docs/build-with-claude/vision),
  or ``{"type": "url", "url": ...}`` sources for images given by URL.
- ``temperature`` is omitted when None; ``ChatRequest.extra`` is merged into the top level
  of the body, nested objects key by key (``thinking={"type": "enabled", "budget_tokens": N}``,
  ``top_k``, ``metadata``...), except ``model``, ``messages`` and ``stream``.

Usage: ``input_tokens`` is the whole prompt (``input_tokens`` + cache writes + cache reads,
which Anthropic reports apart), so it means what OpenAI's ``prompt_tokens`` means.
Tools go as ``tools=[{name, description, input_schema}]`` (with ``tool_choice.disable_parallel_tool_use``
unless the model may call several at once); a call comes back as a ``tool_use`` content block
(streamed: ``input_json_delta`` fragments), and its result goes back in a user message as a
``tool_result`` block; consecutive results share one user message, as the API's alternating
turns require (https://docs.anthropic.com/en/docs/build-with-claude/tool-use).

``finish_reason`` is Anthropic's ``stop_reason`` as sent (``end_turn``, ``max_tokens``,
``stop_sequence``, ``tool_use``, ``pause_turn``, ``refusal``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from nbfanout.providers._http import HTTPAdapter, StreamState, deep_merge, join_url, parse_arguments
from nbfanout.providers._sse import ServerSentEvent
from nbfanout.providers.base import ChatRequest, Endpoint, ImagePart, Message, ToolCall

__all__ = ["ANTHROPIC_VERSION", "DEFAULT_MAX_TOKENS", "AnthropicAdapter"]

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096


def _image_block(image: ImagePart) -> dict[str, Any]:
    if image.data is not None:
        data = base64.b64encode(image.data).decode("ascii")
        return {"type": "image", "source": {"type": "base64", "media_type": image.mime_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": image.url or ""}}


def _message(message: Message) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": message.tool_call_id or "", "content": message.content}]}
    if message.tool_calls:
        blocks: list[dict[str, Any]] = [{"type": "text", "text": message.content}] if message.content else []
        blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": dict(c.arguments)} for c in message.tool_calls]
        return {"role": "assistant", "content": blocks}
    if not message.images:
        return {"role": message.role, "content": message.content}
    blocks = [_image_block(image) for image in message.images]
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    return {"role": message.role, "content": blocks}


def _messages(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """Messages in Anthropic's shape, the tool results that follow one another merged into one user turn."""
    out: list[dict[str, Any]] = []
    for m in messages:
        shaped = _message(m)
        if m.role == "tool" and out and out[-1]["role"] == "user" and isinstance(out[-1]["content"], list) \
                and all(b.get("type") == "tool_result" for b in out[-1]["content"]):
            out[-1]["content"].extend(shaped["content"])
        else:
            out.append(shaped)
    return out


_INPUT_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _input_tokens(usage: Mapping[str, Any]) -> int:
    return sum(int(usage.get(key) or 0) for key in _INPUT_KEYS)


class AnthropicAdapter(HTTPAdapter):
    """Claude models through the Messages API, streamed or not."""

    wire = "anthropic"
    blocked_reasons = frozenset({"refusal"})
    length_reasons = frozenset({"max_tokens"})

    def headers(self, endpoint: Endpoint) -> dict[str, str]:
        return {"x-api-key": endpoint.api_key, "anthropic-version": ANTHROPIC_VERSION}

    def chat_url(self, endpoint: Endpoint, request: ChatRequest, *, stream: bool) -> tuple[str, dict[str, str]]:
        return join_url(endpoint.base_url, "messages"), {}

    def chat_body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS}
        if request.system:
            body["system"] = request.system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.tools:
            body["tools"] = [{"name": t.name, "description": t.description, "input_schema": dict(t.parameters)}
                             for t in request.tools]
            if not request.parallel_tools:
                body["tool_choice"] = {"type": "auto", "disable_parallel_tool_use": True}
        body = deep_merge(body, request.extra)
        body.update(model=request.model, messages=_messages(request.messages), stream=stream)
        return body

    def find_error(self, payload: Any) -> Mapping[str, Any] | None:
        # Errors are {"type": "error", "error": {"type": "overloaded_error", "message": ...}},
        # in a body or as an ``event: error`` mid-stream
        # (https://docs.anthropic.com/en/docs/build-with-claude/streaming#error-events).
        if isinstance(payload, Mapping) and payload.get("type") == "error":
            return payload
        return None

    def read_response(self, payload: Any, state: StreamState) -> None:
        if not isinstance(payload, Mapping) or not isinstance(payload.get("content"), list):
            return
        blocks = [b for b in payload["content"] if isinstance(b, Mapping)]
        state.parts += [b.get("text") or "" for b in blocks if b.get("type") == "text"]
        state.tool_calls += [ToolCall(str(b.get("id") or ""), str(b.get("name") or ""), parse_arguments(b.get("input")))
                             for b in blocks if b.get("type") == "tool_use"]
        usage = payload.get("usage") or {}
        state.input_tokens = _input_tokens(usage)
        state.output_tokens = int(usage.get("output_tokens") or 0)
        state.finish_reason = payload.get("stop_reason")
        state.model = payload.get("model") or None
        state.complete = True

    def feed(self, event: ServerSentEvent, payload: Any, state: StreamState) -> Iterable[str]:
        # Event sequence: message_start (usage.input_tokens), content_block_start,
        # content_block_delta (text_delta), content_block_stop, message_delta (stop_reason,
        # cumulative usage.output_tokens), message_stop; ping anywhere
        # (https://docs.anthropic.com/en/docs/build-with-claude/streaming#event-types).
        if not isinstance(payload, Mapping):
            return ()
        kind = payload.get("type")
        if kind == "message_start":
            message = payload.get("message") or {}
            usage = message.get("usage") or {}
            state.model = message.get("model") or None
            state.input_tokens = _input_tokens(usage)
            state.output_tokens = int(usage.get("output_tokens") or 0)
        elif kind == "content_block_start":
            block = payload.get("content_block") or {}
            if block.get("type") == "text":
                return (block.get("text") or "",)
            if block.get("type") == "tool_use":
                state.pending_calls[int(payload.get("index") or 0)] = [str(block.get("id") or ""), str(block.get("name") or ""), ""]
        elif kind == "content_block_delta":
            delta = payload.get("delta") or {}
            if delta.get("type") == "text_delta":
                return (delta.get("text") or "",)
            if delta.get("type") == "input_json_delta":
                call = state.pending_calls.get(int(payload.get("index") or 0))
                if call is not None:
                    call[2] += str(delta.get("partial_json") or "")
        elif kind == "message_delta":
            usage = payload.get("usage") or {}
            if usage.get("output_tokens") is not None:
                state.output_tokens = int(usage["output_tokens"])
            # Newer responses repeat the (cumulative) input counts here, sometimes without the
            # cache fields message_start had: keep the larger total.
            state.input_tokens = max(state.input_tokens, _input_tokens(usage))
            state.finish_reason = (payload.get("delta") or {}).get("stop_reason") or state.finish_reason
        elif kind == "message_stop":
            state.complete = state.done = True
        return ()

    async def list_models(
        self, client: httpx.AsyncClient, endpoint: Endpoint, *, timeout: float | None = None
    ) -> list[str]:
        """Model ids from ``GET {base}/models``, following ``has_more`` / ``last_id`` pages
        (https://docs.anthropic.com/en/api/models-list)."""
        ids: list[str] = []
        url = join_url(endpoint.base_url, "models")
        params = {"limit": "1000"}
        while True:
            payload = await self._get_json(client, endpoint, url, params=params, timeout=timeout)
            data = payload.get("data") if isinstance(payload, Mapping) else None
            if not isinstance(data, list):
                raise self._invalid(endpoint, 200, "the model list has no 'data' array")
            ids += [m["id"] for m in data if isinstance(m, Mapping) and isinstance(m.get("id"), str)]
            if not payload.get("has_more") or not payload.get("last_id"):
                return ids
            params = {"limit": "1000", "after_id": str(payload["last_id"])}
