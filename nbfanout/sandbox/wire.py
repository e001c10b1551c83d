"""What the three wire modules share: the parsed call, a refusal, an error reply, SSE framing.

``Denial`` is a refusal in provider-neutral terms (why, with the limit numbers and the
exact wait); each wire module renders it as its provider's status, headers and body.
``ToolAnswer`` is the one tool call the sandbox answers a tool request with
(``plan_tool_call``); each wire module renders it in its provider's shape.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from nbfanout.sandbox.scenario import ModelSpec, ProviderSpec, ToolCallSpec
from nbfanout.sandbox.text import answer_text, estimate_tokens, judge_verdict, output_token_count, rng

__all__ = [
    "Answer",
    "BadRequest",
    "CallContext",
    "ChatCall",
    "Denial",
    "ErrorReply",
    "TOOL_CALL_TOKENS",
    "ToolAnswer",
    "ToolSpec",
    "Usage",
    "compose_answer",
    "go_duration",
    "plan_tool_call",
    "rejected_parameter",
    "retry_after_header",
    "rfc3339",
    "sse_data",
    "schema_arguments",
    "sse_event",
]

#: Output tokens a tool call costs on top of its arguments' JSON (the call's name and framing).
TOOL_CALL_TOKENS = 4


class BadRequest(Exception):
    """The request body or headers are not what the wire format requires (HTTP 400)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool (function) a request offers the model, whatever wire it came in on."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict, hash=False)  # JSON schema of the arguments


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A chat request as the sandbox needs it, whatever wire it came in on."""

    model: str
    prompt: str  # every text part of the system prompt and messages (tool calls, results, tools' JSON too), joined
    max_tokens: int | None = None
    stream: bool = False
    include_usage: bool = False
    tools: tuple[ToolSpec, ...] = ()
    after_tool_result: bool = False  # the conversation's last message is a tool's result


@dataclass(frozen=True, slots=True)
class ToolAnswer:
    """The tool call the sandbox answers with; ``ident`` is seeded and each wire adds its prefix."""

    name: str
    ident: str  # 24 hex characters
    arguments: Mapping[str, Any] = field(hash=False)

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments)

    @property
    def output_tokens(self) -> int:
        return estimate_tokens(self.arguments_json) + TOOL_CALL_TOKENS

    def fragments(self, size: int = 16) -> list[str]:
        """The arguments' JSON in pieces, as providers stream it (joined, they are exactly the JSON)."""
        text = self.arguments_json
        return [text[i : i + size] for i in range(0, len(text), size)]


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int
    finish: str  # "stop", "length" or "tool_calls"

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class CallContext:
    """Per-request facts every renderer needs."""

    provider: ProviderSpec
    model: str | None
    key_id: str  # masked: "…abcd"
    request_id: str
    created: int  # unix seconds
    wall_now: float  # unix seconds, fractional
    max_tokens: int | None = None

    @property
    def style(self) -> str:
        return self.provider.style

    @property
    def org(self) -> str:
        return self.provider.organization


@dataclass(frozen=True, slots=True)
class Denial:
    """A refused or failed request in provider-neutral terms.

    ``reason`` is the ledger's reason (``rpm``, ``tpm``, ``rpd``, ``concurrency``,
    ``auth``, ``quota_exhausted``, ``not_found``, ``bad_request`` or a fault kind);
    ``kind`` the limit kind a 429 talks about; ``pool_name`` the limit's own name where
    the provider quotes one (OpenRouter's "free-models-per-min").
    """

    reason: str
    kind: str | None = None
    limit: int | None = None
    used: int | None = None
    requested: int | None = None
    retry_after_s: float | None = None
    scope: str | None = None
    pool_name: str | None = None
    upstream: bool = False
    too_large: bool = False
    missing_key: bool = False
    message: str | None = None
    param: str | None = None
    code: str | None = None  # the provider's error code for a bad request ("unsupported_parameter")

    @property
    def is_rate_limit(self) -> bool:
        return self.reason in ("rpm", "tpm", "rpd", "ash", "asd", "concurrency", "rate_limit_burst")


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A rendered error: status, body (JSON-able or text) and headers."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    def content(self) -> bytes:
        return self.body.encode() if isinstance(self.body, str) else json.dumps(self.body).encode()


def go_duration(seconds: float) -> str:
    """A duration as OpenAI and Groq write it (Go's style): "120ms", "7.66s", "6m0s", "1m26.4s"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, secs = divmod(seconds, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    s = f"{secs:.3f}".rstrip("0").rstrip(".") or "0"
    if hours:
        return f"{hours}h{minutes}m{s}s"
    if minutes:
        return f"{minutes}m{s}s"
    return f"{s}s"


def rfc3339(unix: float) -> str:
    """Anthropic's reset timestamps: RFC 3339 in UTC, whole seconds."""
    return datetime.fromtimestamp(math.ceil(unix), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def retry_after_header(seconds: float | None) -> dict[str, str]:
    """``retry-after`` in whole seconds, rounded up so a client that obeys it is never early."""
    if seconds is None or not math.isfinite(seconds):
        return {}
    return {"retry-after": str(max(1, math.ceil(seconds)))}


def sse_data(obj: Any) -> bytes:
    """One SSE event carrying JSON in its data field (OpenAI and Gemini framing)."""
    payload = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def sse_event(event: str, obj: Any) -> bytes:
    """One named SSE event (Anthropic framing: ``event:`` line, then ``data:``)."""
    return f"event: {event}\ndata: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


def text_of_parts(content: Any, invalid: BadRequest) -> str:
    """A message's text: a string, or the ``type: text`` parts of a content list; ``invalid`` otherwise."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise invalid


_SCHEMA_VALUES: dict[str, Any] = {"string": "sandbox", "integer": 1, "number": 1.5, "boolean": True}


def _schema_value(prop: Any) -> Any:
    if not isinstance(prop, Mapping):
        return "sandbox"
    enum = prop.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = prop.get("type")
    if isinstance(kind, list):  # ["string", "null"]
        kind = next((k for k in kind if k != "null"), None)
    kind = str(kind).lower()  # Gemini writes "STRING"
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return _SCHEMA_VALUES.get(kind, "sandbox")


def schema_arguments(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Deterministic arguments for a JSON schema: each required property (all when ``required`` is absent).

    ``enum`` -> its first value; string -> "sandbox", integer -> 1, number -> 1.5,
    boolean -> true, array -> [], object -> {}; no or an unknown type -> "sandbox".
    """
    props = schema.get("properties")
    if not isinstance(props, Mapping):
        return {}
    required = schema.get("required")
    names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else list(props)
    return {name: _schema_value(props.get(name)) for name in names}


def plan_tool_call(call: ChatCall, scripted: ToolCallSpec | None, seed: int, model: str) -> ToolAnswer | None:
    """The call to answer ``call`` with, or None for a text answer (no tools, or a tool result came last).

    The model's scripted ``tool_call`` if the request offers that tool, else the request's
    first tool with ``schema_arguments``; the id is seeded by seed, model and prompt.
    """
    if not call.tools or call.after_tool_result:
        return None
    ident = f"{rng(seed, 'tool_call', model, call.prompt).getrandbits(96):024x}"
    if scripted is not None and any(t.name == scripted.name for t in call.tools):
        return ToolAnswer(scripted.name, ident, dict(scripted.arguments))
    tool = call.tools[0]
    return ToolAnswer(tool.name, ident, schema_arguments(tool.parameters))


@dataclass(frozen=True, slots=True)
class Answer:
    """What a model answers a call with: text, or one tool call (``tool``), and the usage."""

    text: str
    tool: ToolAnswer | None
    usage: Usage


def compose_answer(call: ChatCall, model: ModelSpec, provider_id: str, seed: int) -> Answer:
    """The answer to ``call``, known at arrival: a tool call or text, its length and finish.

    Live routes and batches both answer through this, so a prompt gets the same answer
    either way. A tool call that does not fit ``max_tokens`` becomes a text answer cut
    short (the model runs out of tokens); a grading prompt gets a seeded JSON verdict.
    """
    name = f"{provider_id}/{model.id}"
    input_tokens = estimate_tokens(call.prompt)
    tool = plan_tool_call(call, model.tool_call, seed, name)
    if tool is not None and call.max_tokens is not None and tool.output_tokens > call.max_tokens:
        tool = None
    if tool is not None:
        return Answer("", tool, Usage(input_tokens, tool.output_tokens, "tool_calls"))
    n_out = output_token_count(seed, name, call.prompt, *model.output_tokens)
    finish = "stop"
    if call.max_tokens is not None and n_out > call.max_tokens:
        n_out, finish = call.max_tokens, "length"
    text = answer_text(seed, model.id, call.prompt, n_out)
    verdict = judge_verdict(seed, model.id, call.prompt)
    if verdict is not None:
        text, n_out = verdict, estimate_tokens(verdict)
    return Answer(text, None, Usage(input_tokens, n_out, finish))


def rejected_parameter(model: ModelSpec, body: Mapping[str, Any]) -> BadRequest | None:
    """A parameter the model refuses (a reasoning model's ``temperature``), in OpenAI's words.

    Body: github.com/openai/openai-python/issues/2104 quotes the API's 400 for o3-mini.
    """
    config = body.get("generationConfig")  # Gemini's sampling parameters live there
    sent = set(body) | (set(config) if isinstance(config, dict) else set())
    for param in model.rejects:
        if param in sent:
            return BadRequest(f"Unsupported parameter: '{param}' is not supported with this model.", param=param,
                              code="unsupported_parameter")
    return None
