"""The Anthropic Messages wire: POST /v1/messages, plain and streamed, with Anthropic's errors.

Formats, as Anthropic sends them:

- Errors: ``{"type": "error", "error": {"type": "rate_limit_error", "message": ...},
  "request_id": "req_..."}``; 429 rate_limit_error ("This request would exceed the rate
  limit for your organization (...) of 1,000,000 input tokens per minute. For details,
  refer to: https://docs.anthropic.com/en/api/rate-limits. ..." —
  github.com/stackblitz/bolt.new/issues/8589), 529 overloaded_error "Overloaded", 401
  authentication_error, 500 api_error, and the credit-balance refusal, a 400
  invalid_request_error "Your credit balance is too low to access the Anthropic API.
  Please go to Plans & Billing to upgrade or purchase credits."
  (github.com/anthropics/claude-code/issues/66314).
- Headers: ``anthropic-ratelimit-requests-limit`` / ``-remaining`` / ``-reset`` (RFC 3339)
  and the same for ``tokens``; ``retry-after`` (seconds) on 429s
  (github.com/anthropics/anthropic-sdk-typescript/issues/357).
- Streams: ``message_start``, ``content_block_start``, ``ping``, ``content_block_delta``
  (``text_delta``) ..., ``content_block_stop``, ``message_delta`` (``stop_reason``,
  ``usage.output_tokens``), ``message_stop``, each as an ``event:`` + ``data:`` pair.

- Tools: ``tools=[{name, description, input_schema}]``; a call comes back as a
  ``tool_use`` content block with ``stop_reason: "tool_use"``, streamed as
  ``content_block_start`` (``input: {}``) and ``input_json_delta`` fragments; a result is
  a user message's ``tool_result`` block. 400s, as Anthropic words them: an OpenAI-shaped
  tool gets "tools.0: Input tag 'function' found using 'type' does not match any of the
  expected tags: ..." (github.com/dirac-run/dirac/issues/57); a tool without one gets
  "tools.0.custom.input_schema: Field required" and a schema without ``type``
  "tools.26.custom.input_schema.type: Field required" (github.com/lidge-jun/opencodex/issues/75);
  "messages.48.content.1: unexpected `tool_use_id` found in `tool_result` blocks: toolu_....
  Each `tool_result` block must have a corresponding `tool_use` block in the previous
  message." (github.com/anthropics/claude-code/issues/13460) and "messages.125: `tool_use`
  ids were found without `tool_result` blocks immediately after: toolu_.... Each
  `tool_use` block must have a corresponding `tool_result` block in the next message."
  (github.com/anthropics/claude-code/issues/7929).

The sandbox keeps one token budget (input + max_tokens); it reports it in the
``tokens`` headers and does not split input and output token limits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from nbfanout.sandbox.limits import WindowView
from nbfanout.sandbox.scenario import ProviderSpec
from nbfanout.sandbox.wire import (
    BadRequest,
    CallContext,
    ChatCall,
    Denial,
    ErrorReply,
    ToolAnswer,
    ToolSpec,
    Usage,
    retry_after_header,
    rfc3339,
    sse_event,
)

__all__ = [
    "extract_key",
    "malformed_body",
    "models_list",
    "parse_chat",
    "rate_headers",
    "render_error",
    "render_success",
    "render_tool_call",
    "stream_delta",
    "stream_head",
    "stream_tail",
    "stream_tool_call",
]

RATE_DOCS = "https://docs.anthropic.com/en/api/rate-limits"
SALES = "https://www.anthropic.com/contact-sales"


def extract_key(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """``x-api-key: <key>``, or ``Authorization: Bearer <key>`` (what recent anthropic SDKs send)."""
    if headers.get("x-api-key"):
        return headers["x-api-key"]
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def check_version(headers: Mapping[str, str]) -> None:
    """Anthropic refuses calls without an ``anthropic-version`` header."""
    if not headers.get("anthropic-version"):
        raise BadRequest("anthropic-version: header is required")


def _block_text(block: Any) -> str:
    """A content block's text: text, a tool call's input JSON, or a tool result's content."""
    if not isinstance(block, dict):
        return ""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "tool_use":
        return json.dumps(block.get("input", {}))
    if kind == "tool_result":
        return _text_of(block.get("content"))
    return ""


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_block_text(b) for b in content)
    raise BadRequest("messages.0.content: Input should be a valid list")


def _blocks(message: Mapping[str, Any], kind: str) -> list[tuple[int, dict[str, Any]]]:
    """(index, block) for a message's content blocks of ``kind``."""
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [(j, b) for j, b in enumerate(content) if isinstance(b, dict) and b.get("type") == kind]


def _check_tool_turns(messages: list[dict[str, Any]]) -> None:
    """Each tool_result answers a tool_use of the message before it; each tool_use is answered in the next one."""
    for i, m in enumerate(messages):
        before = {str(b.get("id")) for _, b in _blocks(messages[i - 1], "tool_use")} if i else set()
        for j, block in _blocks(m, "tool_result"):
            if str(block.get("tool_use_id")) not in before:
                raise BadRequest(
                    f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding `tool_use` "
                    "block in the previous message."
                )
        if i + 1 < len(messages):
            answered = {str(b.get("tool_use_id")) for _, b in _blocks(messages[i + 1], "tool_result")}
            missing = [str(b.get("id")) for _, b in _blocks(m, "tool_use") if str(b.get("id")) not in answered]
            if missing:
                raise BadRequest(
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block in "
                    "the next message."
                )


_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")


def _tools(raw: Any) -> tuple[ToolSpec, ...]:
    """``tools`` -> ToolSpecs, refused in Anthropic's words (see the module docstring for sources)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise BadRequest("tools: Input should be a valid list")
    out = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise BadRequest(f"tools.{i}: Input should be a valid dictionary")
        kind = tool.get("type", "custom")
        if kind != "custom":  # the sandbox plays client tools only; Anthropic lists its server tools' tags too
            raise BadRequest(
                f"tools.{i}: Input tag '{kind}' found using 'type' does not match any of the expected tags: "
                "'bash_20250124', 'custom', 'text_editor_20250124'"
            )
        where = f"tools.{i}.custom"
        for key in ("name", "input_schema"):
            if key not in tool:
                raise BadRequest(f"{where}.{key}: Field required")
        name, schema = tool["name"], tool["input_schema"]
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            raise BadRequest(f"{where}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
        if not isinstance(schema, dict):
            raise BadRequest(f"{where}.input_schema: Input should be a valid dictionary")
        if "type" not in schema:
            raise BadRequest(f"{where}.input_schema.type: Field required")
        description = tool.get("description")
        out.append(ToolSpec(name, description if isinstance(description, str) else "", schema))
    return tuple(out)


def parse_chat(body: Any) -> ChatCall:
    """A /v1/messages body -> ChatCall (``max_tokens`` is required, as Anthropic requires it)."""
    if not isinstance(body, dict):
        raise BadRequest("There was an error parsing the body of your request.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: Field required")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest("max_tokens: Field required" if max_tokens is None else "max_tokens: Input should be greater than or equal to 1")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: Field required" if messages is None else "messages: at least one message is required")
    texts = [_text_of(body.get("system"))] if body.get("system") else []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise BadRequest("messages.0.role: Input should be 'user' or 'assistant'")
        texts.append(_text_of(m.get("content")))
    _check_tool_turns(messages)
    tools = _tools(body.get("tools"))
    if tools:
        texts.append(json.dumps(body["tools"]))
    last = messages[-1]
    return ChatCall(
        model=model,
        prompt="\n".join(texts),
        max_tokens=max_tokens,
        stream=bool(body.get("stream", False)),
        tools=tools,
        after_tool_result=last["role"] == "user" and bool(_blocks(last, "tool_result")),
    )


def _stop(usage: Usage) -> str:
    return {"length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}.get(usage.finish, "end_turn")


def _msg_id(ctx: CallContext) -> str:
    return "msg_sbx" + ctx.request_id


def render_success(ctx: CallContext, text: str, usage: Usage) -> dict[str, Any]:
    """A ``message`` object."""
    return _message(ctx, {"type": "text", "text": text}, usage)


def _tool_use(answer: ToolAnswer, arguments: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": "toolu_" + answer.ident, "name": answer.name, "input": dict(arguments)}


def render_tool_call(ctx: CallContext, answer: ToolAnswer, usage: Usage) -> dict[str, Any]:
    """A ``message`` whose content is one ``tool_use`` block (``stop_reason: "tool_use"``)."""
    return _message(ctx, _tool_use(answer, answer.arguments), usage)


def _message(ctx: CallContext, block: dict[str, Any], usage: Usage) -> dict[str, Any]:
    return {
        "id": _msg_id(ctx),
        "type": "message",
        "role": "assistant",
        "model": ctx.model,
        "content": [block],
        "stop_reason": _stop(usage),
        "stop_sequence": None,
        "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
    }


def stream_head(ctx: CallContext, call: ChatCall, input_tokens: int) -> bytes:
    return _stream_start(ctx, input_tokens, {"type": "text", "text": ""})


def stream_tool_call(ctx: CallContext, call: ChatCall, answer: ToolAnswer, input_tokens: int) -> list[bytes]:
    """A streamed tool call before its tail: the ``tool_use`` block's start, then ``input_json_delta`` fragments."""
    head = _stream_start(ctx, input_tokens, _tool_use(answer, {}))
    deltas = [
        sse_event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": piece}},
        )
        for piece in answer.fragments()
    ]
    return [head, *deltas]


def _stream_start(ctx: CallContext, input_tokens: int, block: dict[str, Any]) -> bytes:
    start = {
        "type": "message_start",
        "message": {
            "id": _msg_id(ctx),
            "type": "message",
            "role": "assistant",
            "model": ctx.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        },
    }
    return (
        sse_event("message_start", start)
        + sse_event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
        + sse_event("ping", {"type": "ping"})
    )


def stream_delta(ctx: CallContext, call: ChatCall, text: str) -> bytes:
    return sse_event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})


def stream_tail(ctx: CallContext, call: ChatCall, usage: Usage) -> bytes:
    return (
        sse_event("content_block_stop", {"type": "content_block_stop", "index": 0})
        + sse_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": _stop(usage), "stop_sequence": None},
                "usage": {"output_tokens": usage.output_tokens},
            },
        )
        + sse_event("message_stop", {"type": "message_stop"})
    )


def malformed_body(ctx: CallContext) -> str:
    return f'{{"id": "{_msg_id(ctx)}", "type": "message", "role": "assistant", "content": [{{"type": "text", "text": "The answ'


def malformed_stream(ctx: CallContext, call: ChatCall) -> bytes:
    return stream_head(ctx, call, 0) + b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_de\n\n'


def models_list(provider: ProviderSpec, created: int) -> dict[str, Any]:
    data = [
        {"type": "model", "id": m.id, "display_name": m.id, "created_at": rfc3339(created)} for m in provider.models
    ]
    return {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


def rate_headers(ctx: CallContext, views: Mapping[str, WindowView], denial: Denial | None = None) -> dict[str, str]:
    h: dict[str, str] = {"request-id": "req_sbx" + ctx.request_id, "anthropic-organization-id": ctx.org}
    for kind, name in (("rpm", "requests"), ("tpm", "tokens")):
        v = views.get(kind)
        if v is not None:
            h[f"anthropic-ratelimit-{name}-limit"] = str(v.limit)
            h[f"anthropic-ratelimit-{name}-remaining"] = str(v.remaining)
            h[f"anthropic-ratelimit-{name}-reset"] = rfc3339(ctx.wall_now + v.reset_s)
    if denial is not None and denial.retry_after_s is not None:
        h.update(retry_after_header(denial.retry_after_s))
    return h


def _err(ctx: CallContext, type_: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_sbx" + ctx.request_id}


def render_error(ctx: CallContext, d: Denial, key: str | None = None) -> ErrorReply:
    if d.is_rate_limit:
        kind = d.kind or "rpm"
        if kind == "concurrency":
            msg = (
                "Number of concurrent connections has exceeded your rate limit. Please try again later or contact "
                f"sales at {SALES} to discuss your options for a rate limit increase."
            )
        else:
            unit = {"rpm": "requests per minute", "tpm": "tokens per minute", "rpd": "requests per day"}.get(kind, kind)
            msg = (
                f"This request would exceed the rate limit for your organization ({ctx.org}) of "
                f"{d.limit:,} {unit}. For details, refer to: {RATE_DOCS}. You can see the response headers for "
                "current usage. Please reduce the prompt length or the maximum tokens requested, or try again later. "
                f"You may also contact sales at {SALES} to discuss your options for a rate limit increase."
            )
        reply = ErrorReply(429, _err(ctx, "rate_limit_error", d.message or msg))
    elif d.reason in ("auth", "invalid_key"):
        msg = "x-api-key header is required" if d.missing_key else "invalid x-api-key"
        reply = ErrorReply(401, _err(ctx, "authentication_error", d.message or msg))
    elif d.reason == "permission_denied":  # Anthropic's errors page, 403 permission_error
        msg = "Your API key does not have permission to use the specified resource."
        reply = ErrorReply(403, _err(ctx, "permission_error", d.message or msg))
    elif d.reason == "quota_exhausted":
        msg = "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."
        reply = ErrorReply(400, _err(ctx, "invalid_request_error", d.message or msg))
    elif d.reason == "overloaded":
        reply = ErrorReply(529, _err(ctx, "overloaded_error", d.message or "Overloaded"))
    elif d.reason == "unavailable":
        reply = ErrorReply(503, _err(ctx, "api_error", d.message or "Service Unavailable"))
    elif d.reason == "server_error":
        reply = ErrorReply(500, _err(ctx, "api_error", d.message or "Internal server error"))
    elif d.reason == "not_found":
        reply = ErrorReply(404, _err(ctx, "not_found_error", f"model: {d.message}"))
    else:
        reply = ErrorReply(400, _err(ctx, "invalid_request_error", d.message or "Bad Request"))
    return reply

