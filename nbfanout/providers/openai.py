"""The OpenAI-compatible wire format: OpenAI, Groq, Together, OpenRouter, Mistral, DeepSeek, any /v1 server.

``base_url`` ends in ``/v1``; calls are ``POST {base}/chat/completions``,
``POST {base}/audio/transcriptions`` and ``GET {base}/models`` with a Bearer key
(https://platform.openai.com/docs/api-reference/chat/create).

Request rules:

- ``max_tokens`` is sent as ``max_completion_tokens`` for OpenAI's reasoning models, whose
  ids start with ``o1``, ``o3``, ``o4`` or ``gpt-5``: the API rejects ``max_tokens`` there
  ("not compatible with o1 series models", chat/create reference). Only a bare id (no
  ``/``) qualifies: ``openai/o3`` is an aggregator's id (OpenRouter, Together), and those
  document ``max_tokens`` and translate it themselves.
- ``temperature`` is omitted when None.
- ``ChatRequest.extra`` is merged into the top level of the body, nested objects merged
  key by key (``reasoning_effort="high"``, OpenRouter's ``reasoning={"effort": "high"}``,
  ``response_format``, ``seed``...). Extra wins over what the adapter sets, except
  ``model``, ``messages`` and ``stream``.
- Streams set ``stream_options.include_usage`` so the last chunk carries token usage.
- Tools go as ``tools=[{"type": "function", "function": {name, description, parameters}}]``
  with ``parallel_tool_calls: false`` unless the model may call several at once; a call comes
  back in ``message.tool_calls`` (streamed: ``delta.tool_calls`` fragments by ``index``) with
  its arguments as a JSON string; a tool's result is a ``{"role": "tool", "tool_call_id"}``
  message (https://platform.openai.com/docs/guides/function-calling).

``finish_reason`` is the provider's own value (``stop``, ``length``, ``content_filter``,
``tool_calls``; OpenRouter adds ``error``).
"""

from __future__ import annotations

import base64
import json
import mimetypes
import re
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from nbfanout.providers._http import HTTPAdapter, StreamState, deep_merge, join_url, parse_arguments
from nbfanout.providers._sse import ServerSentEvent
from nbfanout.providers.base import (
    ChatRequest,
    Endpoint,
    ImagePart,
    Message,
    Tool,
    ToolCall,
    TranscriptionRequest,
    TranscriptionResponse,
)

__all__ = ["OpenAIAdapter", "uses_max_completion_tokens"]

_REASONING_MODEL = re.compile(r"^(o1|o3|o4|gpt-5)(\b|[-.])")


def uses_max_completion_tokens(model: str) -> bool:
    """Whether ``model`` (a provider's own id) needs ``max_completion_tokens`` instead of ``max_tokens``."""
    return "/" not in model and bool(_REASONING_MODEL.match(model))


def _image_url(image: ImagePart) -> str:
    # Images go inline as data: URLs (https://platform.openai.com/docs/guides/images-vision);
    # OpenRouter takes the same shape (https://openrouter.ai/docs/features/multimodal/images).
    if image.data is not None:
        return f"data:{image.mime_type};base64,{base64.b64encode(image.data).decode('ascii')}"
    return image.url or ""


def _message(message: Message) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id or "", "content": message.content}
    if message.tool_calls:
        return {"role": "assistant", "content": message.content or None, "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(dict(c.arguments))}}
            for c in message.tool_calls]}
    if not message.images:
        return {"role": message.role, "content": message.content}
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}] if message.content else []
    parts += [{"type": "image_url", "image_url": {"url": _image_url(image)}} for image in message.images]
    return {"role": message.role, "content": parts}


def _tool(tool: Tool) -> dict[str, Any]:
    return {"type": "function", "function": {"name": tool.name, "description": tool.description,
                                             "parameters": dict(tool.parameters)}}


def _content_text(content: Any) -> str:
    # Most servers send a string; some OpenAI-compatible ones send a list of text parts.
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, Mapping))
    return ""


class OpenAIAdapter(HTTPAdapter):
    """Chat completions, streaming, transcription and model listing for OpenAI-compatible servers."""

    wire = "openai"
    blocked_reasons = frozenset({"content_filter"})
    length_reasons = frozenset({"length"})

    def headers(self, endpoint: Endpoint) -> dict[str, str]:
        return {"Authorization": f"Bearer {endpoint.api_key}"}

    def chat_url(self, endpoint: Endpoint, request: ChatRequest, *, stream: bool) -> tuple[str, dict[str, str]]:
        return join_url(endpoint.base_url, "chat/completions"), {}

    def chat_body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        messages = [{"role": "system", "content": request.system}] if request.system else []
        messages += [_message(m) for m in request.messages]
        body: dict[str, Any] = {}
        if request.max_tokens is not None:
            key = "max_completion_tokens" if uses_max_completion_tokens(request.model) else "max_tokens"
            body[key] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.tools:
            body["tools"] = [_tool(t) for t in request.tools]
            if not request.parallel_tools:
                body["parallel_tool_calls"] = False
        if stream:
            # The final chunk then carries usage, with empty choices (chat/create reference,
            # stream_options.include_usage).
            body["stream_options"] = {"include_usage": True}
        body = deep_merge(body, request.extra)
        body.update(model=request.model, messages=messages, stream=stream)
        return body

    def find_error(self, payload: Any) -> Mapping[str, Any] | None:
        if not isinstance(payload, Mapping):
            return None
        # OpenRouter answers 200 with {"error": {"code", "message"}} when the model fails after
        # the request was accepted, in the body or as an SSE data event
        # (https://openrouter.ai/docs/api-reference/errors).
        if payload.get("error"):
            return {"error": payload["error"]}
        for choice in payload.get("choices") or ():
            if isinstance(choice, Mapping) and choice.get("finish_reason") == "error":
                return {"error": {"message": "the provider ended the completion with finish_reason 'error'"}}
        return None

    def read_response(self, payload: Any, state: StreamState) -> None:
        if not isinstance(payload, Mapping):
            return
        self._read_usage(payload, state)
        state.model = payload.get("model") or None
        choices = payload.get("choices") or []
        if not choices or not isinstance(choices[0], Mapping):
            return  # no choices: the caller reports "no answer in the response"
        choice = choices[0]
        message = choice.get("message") or {}
        state.parts.append(_content_text(message.get("content")))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {} if isinstance(call, Mapping) else {}
            if isinstance(function, Mapping) and function.get("name"):
                state.tool_calls.append(ToolCall(str(call.get("id") or ""), str(function["name"]),
                                                 parse_arguments(function.get("arguments"))))
        state.finish_reason = choice.get("finish_reason")
        state.complete = True

    def feed(self, event: ServerSentEvent, payload: Any, state: StreamState) -> Iterable[str]:
        if not isinstance(payload, Mapping):
            return ()
        self._read_usage(payload, state)
        state.model = state.model or payload.get("model") or None
        fragments = []
        for choice in payload.get("choices") or ():
            if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            fragments.append(_content_text(delta.get("content")))
            for part in delta.get("tool_calls") or ():
                if not isinstance(part, Mapping):
                    continue
                call = state.pending_calls.setdefault(int(part.get("index") or 0), ["", "", ""])
                function = part.get("function") or {}
                call[0] = str(part.get("id") or call[0])
                call[1] = str(function.get("name") or call[1])
                call[2] += str(function.get("arguments") or "")
            if choice.get("finish_reason"):
                state.finish_reason = choice["finish_reason"]
                state.complete = True
        return fragments

    @staticmethod
    def _read_usage(payload: Mapping[str, Any], state: StreamState) -> None:
        # Groq has also reported stream usage under "x_groq" in the last chunk
        # (https://helicone.ai/changelog/20250326-groq-streaming notes both formats).
        usage = payload.get("usage") or (payload.get("x_groq") or {}).get("usage")
        if isinstance(usage, Mapping):
            state.input_tokens = int(usage.get("prompt_tokens") or 0)
            state.output_tokens = int(usage.get("completion_tokens") or 0)

    async def transcribe(
        self,
        client: httpx.AsyncClient,
        endpoint: Endpoint,
        request: TranscriptionRequest,
        *,
        timeout: float | None = None,
    ) -> TranscriptionResponse:
        """Multipart upload to ``{base}/audio/transcriptions`` (OpenAI, Groq, Together all take it).

        Fields per https://platform.openai.com/docs/api-reference/audio/createTranscription;
        the default ``json`` response is ``{"text": ...}``, and ``duration`` is read when present.
        """
        mime = mimetypes.guess_type(request.filename)[0] or "application/octet-stream"
        fields = {"model": request.model}
        if request.language:
            fields["language"] = request.language
        if request.prompt:
            fields["prompt"] = request.prompt
        response = await self._send(
            client,
            endpoint,
            "POST",
            join_url(endpoint.base_url, "audio/transcriptions"),
            data=fields,
            files={"file": (request.filename, request.data, mime)},
            timeout=timeout,
        )
        payload = self._json(endpoint, response)
        self._raise_for_body_error(endpoint, response, payload)
        if not isinstance(payload, Mapping) or not isinstance(payload.get("text"), str):
            raise self._invalid(endpoint, response.status_code, "the transcription response has no text")
        duration = payload.get("duration")
        return TranscriptionResponse(
            text=payload["text"],
            model=request.model,
            status=response.status_code,
            rate=self._rate(endpoint, response),
            duration_s=float(duration) if isinstance(duration, (int, float)) else None,
        )

    async def list_models(
        self, client: httpx.AsyncClient, endpoint: Endpoint, *, timeout: float | None = None
    ) -> list[str]:
        """Model ids from ``GET {base}/models`` (https://platform.openai.com/docs/api-reference/models/list)."""
        payload = await self._get_json(client, endpoint, join_url(endpoint.base_url, "models"), timeout=timeout)
        data = payload.get("data") if isinstance(payload, Mapping) else None
        if not isinstance(data, list):
            raise self._invalid(endpoint, 200, "the model list has no 'data' array")
        return [m["id"] for m in data if isinstance(m, Mapping) and isinstance(m.get("id"), str)]
