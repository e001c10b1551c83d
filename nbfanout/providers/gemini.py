"""The Gemini API (Google AI Studio) wire format.

``POST {base}/models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``, key in
the ``x-goog-api-key`` header (https://ai.google.dev/api/generate-content), so it never
appears in a URL.

Request rules:

- messages become ``contents`` with roles ``user`` / ``model``; ``system`` becomes
  ``systemInstruction``; images are ``inlineData`` parts (base64), or ``fileData`` parts
  for images given by URL (https://ai.google.dev/gemini-api/docs/vision).
- ``max_tokens`` → ``generationConfig.maxOutputTokens``; ``temperature`` →
  ``generationConfig.temperature`` (omitted when None).
- ``ChatRequest.extra``: keys that are fields of the request itself (``tools``,
  ``toolConfig``, ``safetySettings``, ``cachedContent``, ``systemInstruction``, ``contents``)
  go to the top level; ``generationConfig`` is merged into ``generationConfig``; every
  other key is a generation setting and goes into ``generationConfig``
  (``thinkingConfig={"thinkingBudget": 0}``, ``topP``, ``responseMimeType``...).

Tools go as ``tools=[{"functionDeclarations": [{name, description, parameters}]}]``, or with the
schema as ``parametersJsonSchema`` where it uses JSON Schema beyond Gemini's ``Schema`` subset
(see ``_parameters_field``); a call comes
back as a ``functionCall`` part (``name``, ``args``, and an ``id`` where the API gives one; else we
number them), and its result goes back as a ``functionResponse`` part ``{name, id, response:
{"result": text}}`` in a user turn (https://ai.google.dev/gemini-api/docs/function-calling).

Usage: ``output_tokens`` is ``candidatesTokenCount`` + ``thoughtsTokenCount`` (thinking is
billed as output). ``finish_reason`` is Gemini's ``finishReason`` as sent (``STOP``,
``MAX_TOKENS``, ``SAFETY``, ``RECITATION``...). A prompt blocked outright
(``promptFeedback.blockReason``, no candidates) is a ``content_policy`` ProviderError.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from nbfanout.providers._http import HTTPAdapter, StreamState, deep_merge, join_url, parse_arguments
from nbfanout.providers._sse import ServerSentEvent
from nbfanout.providers.base import ChatRequest, Endpoint, ImagePart, Message, ToolCall

__all__ = ["GeminiAdapter"]

#: Fields of GenerateContentRequest itself; any other ``extra`` key belongs in generationConfig.
_REQUEST_FIELDS = frozenset(
    {"contents", "tools", "toolConfig", "safetySettings", "systemInstruction", "cachedContent", "generationConfig"}
)


def _model_path(model: str) -> str:
    return model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"


def _image_part(image: ImagePart) -> dict[str, Any]:
    if image.data is not None:
        return {"inlineData": {"mimeType": image.mime_type, "data": base64.b64encode(image.data).decode("ascii")}}
    return {"fileData": {"mimeType": image.mime_type, "fileUri": image.url or ""}}


def _content(message: Message, names: Mapping[str, str]) -> dict[str, Any]:
    """One turn; ``names`` maps tool-call ids to tool names, which a functionResponse must repeat."""
    if message.role == "tool":
        reply: dict[str, Any] = {"name": message.name or names.get(message.tool_call_id or "", ""),
                                 "response": {"result": message.content}}
        if message.tool_call_id and not message.tool_call_id.startswith(_OUR_IDS):
            reply["id"] = message.tool_call_id
        return {"role": "user", "parts": [{"functionResponse": reply}]}
    parts = [_image_part(image) for image in message.images]
    if message.content or not (parts or message.tool_calls):
        parts.append({"text": message.content})
    for call in message.tool_calls:
        fc: dict[str, Any] = {"name": call.name, "args": dict(call.arguments)}
        if call.id and not call.id.startswith(_OUR_IDS):
            fc["id"] = call.id
        parts.append({"functionCall": fc})
    return {"role": "model" if message.role == "assistant" else "user", "parts": parts}


_OUR_IDS = "gemini-call-"  # ids we give calls that came without one; not sent back


#: The fields of Gemini's ``Schema``, "a select subset of an OpenAPI 3.0 schema object"
#: (https://ai.google.dev/api/caching#Schema). The API refuses any other field in ``parameters``.
_SCHEMA_FIELDS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties",
    "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example", "anyOf",
    "propertyOrdering", "default", "items", "minimum", "maximum",
})


#: The formats ``Schema.format`` takes (the same page): others are refused in ``parameters``.
_SCHEMA_FORMATS = frozenset({"enum", "date-time", "int32", "int64", "float", "double"})


def _fits_schema(schema: Any) -> bool:
    """Whether ``schema`` and every schema inside it hold only what ``Schema`` can: its fields, one type
    name (not a list of them), string enums, its formats, and one schema for array items."""
    if not isinstance(schema, Mapping):
        return True
    if not set(schema) <= _SCHEMA_FIELDS:
        return False
    if "type" in schema and not isinstance(schema["type"], str):
        return False
    if "enum" in schema and not all(isinstance(v, str) for v in schema["enum"] or ()):
        return False
    if "format" in schema and schema["format"] not in _SCHEMA_FORMATS:
        return False
    items = schema.get("items")
    if isinstance(items, list):  # tuple-form items
        return False
    props = schema.get("properties")
    inner = list(props.values()) if isinstance(props, Mapping) else []
    inner += [items] + list(schema.get("anyOf") or [])
    return all(_fits_schema(s) for s in inner)


def _parameters_field(schema: Mapping[str, Any]) -> str:
    """``parameters`` for a schema Gemini's subset can hold, else ``parametersJsonSchema``: it takes JSON
    Schema as written (``additionalProperties``, ``$ref``/``$defs``, ``oneOf``, ``const``...) and is
    mutually exclusive with ``parameters`` (https://ai.google.dev/api/caching#FunctionDeclaration)."""
    return "parameters" if _fits_schema(schema) else "parametersJsonSchema"


class GeminiAdapter(HTTPAdapter):
    """Gemini models through generateContent, streamed (SSE) or not."""

    wire = "gemini"
    # finishReason values of a filtered answer (https://ai.google.dev/api/generate-content#FinishReason).
    blocked_reasons = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"})
    length_reasons = frozenset({"MAX_TOKENS"})

    def headers(self, endpoint: Endpoint) -> dict[str, str]:
        return {"x-goog-api-key": endpoint.api_key}

    def chat_url(self, endpoint: Endpoint, request: ChatRequest, *, stream: bool) -> tuple[str, dict[str, str]]:
        method = "streamGenerateContent" if stream else "generateContent"
        params = {"alt": "sse"} if stream else {}
        return join_url(endpoint.base_url, f"{_model_path(request.model)}:{method}"), params

    def chat_body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        config: dict[str, Any] = {}
        if request.max_tokens is not None:
            config["maxOutputTokens"] = request.max_tokens
        if request.temperature is not None:
            config["temperature"] = request.temperature
        top: dict[str, Any] = {}
        for key, value in request.extra.items():
            if key == "generationConfig" and isinstance(value, Mapping):
                config = deep_merge(config, value)
            elif key in _REQUEST_FIELDS:
                top[key] = value
            else:
                config = deep_merge(config, {key: value})
        names = {c.id: c.name for m in request.messages for c in m.tool_calls}
        body: dict[str, Any] = {"contents": [_content(m, names) for m in request.messages]}
        if request.tools:
            body["tools"] = [{"functionDeclarations": [
                {"name": t.name, "description": t.description, _parameters_field(t.parameters): dict(t.parameters)}
                for t in request.tools]}]
        if request.system:
            body["systemInstruction"] = {"parts": [{"text": request.system}]}
        if config:
            body["generationConfig"] = config
        return deep_merge(body, top)

    def find_error(self, payload: Any) -> Mapping[str, Any] | None:
        # {"error": {"code": 429, "message": ..., "status": "RESOURCE_EXHAUSTED"}}; without
        # alt=sse the stream body is a JSON array, so the error arrives as [{"error": ...}]
        # (https://github.com/google-gemini/gemini-cli/issues/14831).
        if isinstance(payload, list) and payload and isinstance(payload[0], Mapping):
            payload = payload[0]
        if not isinstance(payload, Mapping):
            return None
        if payload.get("error"):
            return {"error": payload["error"]}
        # A blocked prompt gets no candidates, only promptFeedback.blockReason
        # (https://ai.google.dev/api/generate-content#PromptFeedback); classify_error reads it.
        if not payload.get("candidates") and (payload.get("promptFeedback") or {}).get("blockReason"):
            return payload
        return None

    def read_response(self, payload: Any, state: StreamState) -> None:
        state.parts += self.feed(ServerSentEvent(), payload, state)
        if isinstance(payload, Mapping) and payload.get("candidates"):
            state.complete = True  # a whole response with a candidate is an answer, finishReason or not

    def feed(self, event: ServerSentEvent, payload: Any, state: StreamState) -> Iterable[str]:
        # Each SSE chunk is a whole GenerateContentResponse holding only the new text; the
        # chunk with finishReason ends the answer, usageMetadata is cumulative
        # (https://ai.google.dev/api/generate-content#method:-models.streamgeneratecontent).
        if not isinstance(payload, Mapping):
            return ()
        state.model = payload.get("modelVersion") or state.model
        usage = payload.get("usageMetadata")
        if isinstance(usage, Mapping):
            state.input_tokens = int(usage.get("promptTokenCount") or 0)
            answer, thoughts = usage.get("candidatesTokenCount"), usage.get("thoughtsTokenCount")
            state.output_tokens = int(answer or 0) + int(thoughts or 0)
        candidates = payload.get("candidates") or []
        if not candidates or not isinstance(candidates[0], Mapping):
            return ()
        candidate = candidates[0]
        if candidate.get("finishReason"):
            state.finish_reason = candidate["finishReason"]
            state.complete = True
        parts = (candidate.get("content") or {}).get("parts") or []
        # Parts marked "thought" are thinking summaries, not the answer.
        fragments = [p.get("text") or "" for p in parts if isinstance(p, Mapping) and not p.get("thought")]
        for p in parts:
            call = p.get("functionCall") if isinstance(p, Mapping) else None
            if isinstance(call, Mapping) and call.get("name"):
                call_id = str(call.get("id") or f"{_OUR_IDS}{len(state.tool_calls)}")
                state.tool_calls.append(ToolCall(call_id, str(call["name"]), parse_arguments(call.get("args"))))
        return fragments

    async def list_models(
        self, client: httpx.AsyncClient, endpoint: Endpoint, *, timeout: float | None = None
    ) -> list[str]:
        """Model ids (without ``models/``) from ``GET {base}/models``, following ``nextPageToken``
        (https://ai.google.dev/api/models#method:-models.list)."""
        ids: list[str] = []
        url = join_url(endpoint.base_url, "models")
        params = {"pageSize": "1000"}
        while True:
            payload = await self._get_json(client, endpoint, url, params=params, timeout=timeout)
            models = payload.get("models") if isinstance(payload, Mapping) else None
            if not isinstance(models, list):
                raise self._invalid(endpoint, 200, "the model list has no 'models' array")
            names = [m.get("name") for m in models if isinstance(m, Mapping)]
            ids += [name.removeprefix("models/") for name in names if isinstance(name, str)]
            if not payload.get("nextPageToken"):
                return ids
            params = {"pageSize": "1000", "pageToken": str(payload["nextPageToken"])}
