"""The OpenAI-compatible wire: chat completions (plain and SSE), models, transcriptions.

Styles speaking it: ``openai``, ``groq``, ``openrouter``, ``together``, ``deepseek``,
``mistral``, ``generic``. Bodies and headers follow what each provider really sends:

- OpenAI 429 bodies and headers: "Rate limit reached for gpt-3.5-turbo in organization
  org-... on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in
  20s." with ``type`` "requests"/"tokens" and ``code`` "rate_limit_exceeded"
  (github.com/OpenBMB/ChatDev/issues/26, github.com/openai/codex/issues/10060);
  ``x-ratelimit-limit-requests`` / ``-remaining-`` / ``-reset-`` (durations like "12ms",
  "6m0s") for requests and tokens (community.openai.com/t/1268905);
  ``insufficient_quota`` 429 (github.com/Pythagora-io/gpt-pilot/issues/340).
- Groq: "Rate limit reached for model `llama-3.3-70b-versatile` in organization `org_…`
  service tier `on_demand` on tokens per minute (TPM): Limit 12000, Used 4437, Requested
  9854. Please try again in 11.455s." (github.com/ago19800/HomeMind/issues/29); 413
  "Request too large ..." when one request exceeds TPM (github.com/elizaOS/eliza/issues/4040);
  its ``x-ratelimit-*-requests`` headers refer to requests per *day* and ``retry-after`` is
  only sent with a 429 (Groq docs quoted in github.com/Pythagora-io/gpt-pilot/issues/862).
- OpenRouter: {"error": {"message": "Rate limit exceeded: free-models-per-day. ...",
  "code": 429, "metadata": {"headers": {"X-RateLimit-Limit": ..., "X-RateLimit-Remaining":
  ..., "X-RateLimit-Reset": <epoch ms>}}}} (github.com/Gitlawb/openclaude/issues/936);
  upstream 429 {"error": {"message": "Provider returned error", "code": 429, "metadata":
  {"raw": "... is temporarily rate-limited upstream. Please retry shortly, or add your own
  key ...", "provider_name": ...}}} (github.com/open-webui/computer/issues/293); 402
  "This request requires more credits, or fewer max_tokens. ..."
  (github.com/astrio-labs/forall/issues/76). Streams open with ": OPENROUTER PROCESSING".
- Tools: ``tools=[{"type": "function", "function": {name, description, parameters}}]``;
  a call comes back as ``message.tool_calls`` (``content: null``, ``finish_reason:
  "tool_calls"``), streamed as ``delta.tool_calls`` fragments by ``index``. 400s for bad
  tools: "Missing required parameter: 'tools[0].function'." (``missing_required_parameter``;
  github.com/bolna-ai/bolna/issues/144), "Invalid 'tools[8].function.name': string does not
  match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'."
  (``invalid_value``; github.com/xinnan-tech/xiaozhi-esp32-server/issues/1466); for
  conversations, "Invalid parameter: messages with role 'tool' must be a response to a
  preceeding message with 'tool_calls'." and "An assistant message with 'tool_calls' must
  be followed by tool messages responding to each 'tool_call_id'. The following
  tool_call_ids did not have response messages: call_..." (param ``messages.[N].role``;
  github.com/sdcb/chats/pull/132).
- Together, DeepSeek, Mistral and generic endpoints use OpenAI's shapes (approximation).
"""

from __future__ import annotations

import email.policy
import io
import json
import math
import re
import wave
from collections.abc import Mapping
from email.parser import BytesParser
from typing import Any

from nbfanout.sandbox.limits import WindowView
from nbfanout.sandbox.scenario import ProviderSpec, mask_key
from nbfanout.sandbox.wire import (
    BadRequest,
    CallContext,
    ChatCall,
    Denial,
    ErrorReply,
    ToolAnswer,
    ToolSpec,
    Usage,
    go_duration,
    retry_after_header,
    sse_data,
    text_of_parts,
)

__all__ = [
    "extract_key",
    "malformed_body",
    "models_list",
    "parse_chat",
    "parse_transcription",
    "rate_headers",
    "render_error",
    "render_success",
    "render_tool_call",
    "stream_done",
    "stream_head",
    "stream_delta",
    "stream_tail",
    "stream_tool_call",
    "transcription_reply",
]

OPENAI_RATE_DOCS = "Visit https://platform.openai.com/account/rate-limits to learn more."
#: The api-version the sandbox's Azure refusals name (what nbfanout sends by default).
AZURE_API_VERSION = "2024-10-21"
GROQ_UPSELL = "Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing"

# Which upstream OpenRouter names when it forwards a model's error (illustrative names).
_UPSTREAMS = {"deepseek": "Chutes", "meta-llama": "DeepInfra", "x-ai": "xAI", "google": "Google AI Studio"}


def extract_key(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """``Authorization: Bearer <key>``, or Azure's ``api-key: <key>``."""
    if headers.get("api-key"):
        return headers["api-key"].strip()
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _text_of(content: Any) -> str:
    invalid = BadRequest(
        "Invalid type for 'messages[].content': expected a string or an array of content parts.", "messages"
    )
    return text_of_parts(content, invalid)


_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]+")


def _json_kind(value: Any) -> str:
    """A JSON value's kind as OpenAI's type errors name it ("an object", "a string", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), "a value")


def _invalid_type(where: str, expected: str, value: Any) -> BadRequest:
    return BadRequest(f"Invalid type for '{where}': expected {expected}, but got {_json_kind(value)} instead.", where, "invalid_type")


def _missing(where: str) -> BadRequest:
    return BadRequest(f"Missing required parameter: '{where}'.", where, "missing_required_parameter")


def _tools(raw: Any) -> tuple[ToolSpec, ...]:
    """``tools`` -> ToolSpecs, refused in OpenAI's words (see the module docstring for sources)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _invalid_type("tools", "an array", raw)
    if not raw:
        raise BadRequest("Invalid 'tools': empty array. Expected an array with minimum length 1, but got an empty array instead.",
                         "tools", "empty_array")
    out = []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _invalid_type(where, "an object", tool)
        if "type" not in tool:
            raise _missing(f"{where}.type")
        if tool["type"] != "function":  # the sandbox plays function tools only
            raise BadRequest(f"Invalid value: {tool['type']!r}. Supported values are: 'function'.", f"{where}.type", "invalid_value")
        fn = tool.get("function")
        if fn is None:
            raise _missing(f"{where}.function")
        if not isinstance(fn, dict):
            raise _invalid_type(f"{where}.function", "an object", fn)
        name = fn.get("name")
        if name is None:
            raise _missing(f"{where}.function.name")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            raise BadRequest(
                f"Invalid '{where}.function.name': string does not match pattern. Expected a string that matches the "
                "pattern '^[a-zA-Z0-9_-]+$'.",
                f"{where}.function.name",
                "invalid_value",
            )
        params = fn.get("parameters", {})
        if not isinstance(params, dict):
            raise _invalid_type(f"{where}.function.parameters", "an object", params)
        description = fn.get("description")
        out.append(ToolSpec(name, description if isinstance(description, str) else "", params))
    return tuple(out)


def _call_texts(message: dict[str, Any]) -> list[str]:
    """The arguments (JSON text) of an assistant message's tool calls."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return []
    fns = [c.get("function") for c in calls if isinstance(c, dict)]
    return [str(fn.get("arguments") or "") for fn in fns if isinstance(fn, dict)]


def _check_tool_turns(messages: list[dict[str, Any]]) -> None:
    """Each tool message answers a call of the assistant message just before it, and each call gets an answer."""
    asked: list[str] = []  # ids of the latest assistant message's calls not answered yet
    asked_at = 0
    for i, m in enumerate(messages):
        if m["role"] == "tool":
            if m.get("tool_call_id") not in asked:
                raise BadRequest(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            asked.remove(m["tool_call_id"])
            continue
        if asked:
            break
        calls = m.get("tool_calls") if m["role"] == "assistant" else None
        asked = [c.get("id") for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
        asked_at = i
    if asked:
        raise BadRequest(
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. "
            f"The following tool_call_ids did not have response messages: {', '.join(map(str, asked))}",
            f"messages.[{asked_at}].role",
        )


def parse_chat(body: Any) -> ChatCall:
    """A /v1/chat/completions body -> ChatCall; BadRequest names the offending parameter."""
    if not isinstance(body, dict):
        raise BadRequest("We could not parse the JSON body of your request.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("[] is too short - 'messages'" if messages == [] else "Missing required parameter: 'messages'.", "messages")
    texts = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m:
            raise BadRequest("Missing required parameter: 'messages[].role'.", "messages")
        texts.append(_text_of(m.get("content")))
        texts += _call_texts(m)
    _check_tool_turns(messages)
    tools = _tools(body.get("tools"))
    if tools:
        texts.append(json.dumps(body["tools"]))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise BadRequest(f"Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, but got {max_tokens!r} instead.", "max_tokens")
    opts = body.get("stream_options") or {}
    return ChatCall(
        model=model,
        prompt="\n".join(texts),
        max_tokens=max_tokens,
        stream=bool(body.get("stream", False)),
        include_usage=bool(isinstance(opts, dict) and opts.get("include_usage")),
        tools=tools,
        after_tool_result=messages[-1]["role"] == "tool",
    )


def parse_transcription(content_type: str, body: bytes) -> dict[str, Any]:
    """A multipart/form-data upload -> {"file": bytes, "filename", "model", "language", "prompt", "response_format"}."""
    if "multipart/form-data" not in content_type:
        raise BadRequest("Expected a multipart/form-data body with a 'file' field.", "file")
    msg = BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n" + body
    )
    fields: dict[str, Any] = {}
    for part in msg.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        data = part.get_payload(decode=True) or b""
        if part.get_filename() is not None or name == "file":
            fields["file"] = data
            fields["filename"] = part.get_filename() or "audio"
        else:
            fields[name] = data.decode("utf-8", "replace")
    if "file" not in fields:
        raise BadRequest("Missing required parameter: 'file'.", "file")
    if not fields.get("model"):
        raise BadRequest("you must provide a model parameter", "model")
    return fields


def _chat_id(ctx: CallContext) -> str:
    prefix = "gen-" if ctx.style == "openrouter" else "chatcmpl-"
    return prefix + ctx.request_id


def _usage(u: Usage) -> dict[str, int]:
    return {"prompt_tokens": u.input_tokens, "completion_tokens": u.output_tokens, "total_tokens": u.total_tokens}


def _upstream(model: str | None) -> str:
    return _UPSTREAMS.get((model or "").split("/")[0], "SandboxUpstream")


def render_success(ctx: CallContext, text: str, usage: Usage) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    return _completion(ctx, {"role": "assistant", "content": text, "refusal": None}, usage)


def _tool_call(answer: ToolAnswer) -> dict[str, Any]:
    return {"id": "call_" + answer.ident, "type": "function", "function": {"name": answer.name, "arguments": answer.arguments_json}}


def render_tool_call(ctx: CallContext, answer: ToolAnswer, usage: Usage) -> dict[str, Any]:
    """A ``chat.completion`` whose message is one tool call (``content: null``, finish ``tool_calls``)."""
    message = {"role": "assistant", "content": None, "tool_calls": [_tool_call(answer)], "refusal": None}
    return _completion(ctx, message, usage)


def _completion(ctx: CallContext, message: dict[str, Any], usage: Usage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": _chat_id(ctx),
        "object": "chat.completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": usage.finish,
            }
        ],
        "usage": _usage(usage),
        "system_fingerprint": "fp_sandbox",
    }
    if ctx.style == "openrouter":
        body["provider"] = _upstream(ctx.model)
    return body


def _chunk(ctx: CallContext, delta: dict[str, Any], finish: str | None, include_usage: bool) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": _chat_id(ctx),
        "object": "chat.completion.chunk",
        "created": ctx.created,
        "model": ctx.model,
        "system_fingerprint": "fp_sandbox",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if include_usage:
        chunk["usage"] = None
    return chunk


def _processing(ctx: CallContext) -> bytes:
    return b": OPENROUTER PROCESSING\n\n" if ctx.style == "openrouter" else b""


def stream_head(ctx: CallContext, call: ChatCall) -> bytes:
    """The first bytes of a stream: the role delta (after OpenRouter's processing comment)."""
    return _processing(ctx) + sse_data(_chunk(ctx, {"role": "assistant", "content": ""}, None, call.include_usage))


def stream_tool_call(ctx: CallContext, call: ChatCall, answer: ToolAnswer, input_tokens: int) -> list[bytes]:
    """A streamed tool call before its tail: the role delta naming the call, then argument fragments."""
    opening = {"index": 0, "id": "call_" + answer.ident, "type": "function", "function": {"name": answer.name, "arguments": ""}}
    head = _processing(ctx) + sse_data(
        _chunk(ctx, {"role": "assistant", "content": None, "tool_calls": [opening]}, None, call.include_usage)
    )
    deltas = [
        sse_data(_chunk(ctx, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, None, call.include_usage))
        for piece in answer.fragments()
    ]
    return [head, *deltas]


def stream_delta(ctx: CallContext, call: ChatCall, text: str) -> bytes:
    return sse_data(_chunk(ctx, {"content": text}, None, call.include_usage))


def stream_tail(ctx: CallContext, call: ChatCall, usage: Usage) -> bytes:
    """The finish chunk, the usage chunk if ``stream_options.include_usage``, then [DONE]."""
    out = sse_data(_chunk(ctx, {}, usage.finish, call.include_usage))
    if call.include_usage:
        out += sse_data(
            {
                "id": _chat_id(ctx),
                "object": "chat.completion.chunk",
                "created": ctx.created,
                "model": ctx.model,
                "system_fingerprint": "fp_sandbox",
                "choices": [],
                "usage": _usage(usage),
            }
        )
    return out + stream_done()


def stream_done() -> bytes:
    return sse_data("[DONE]")


def malformed_body(ctx: CallContext) -> str:
    """A 200 body cut off mid-JSON, as a proxy that drops the connection's tail delivers."""
    return (
        f'{{"id": "{_chat_id(ctx)}", "object": "chat.completion", "created": {ctx.created}, '
        f'"model": "{ctx.model}", "choices": [{{"index": 0, "message": {{"role": "assistant", "content": "The answ'
    )


def malformed_stream(ctx: CallContext, call: ChatCall) -> bytes:
    return stream_head(ctx, call) + f'data: {{"id": "{_chat_id(ctx)}", "choices": [{{"delta": {{"content": "The ans\n\n'.encode()


def models_list(provider: ProviderSpec, created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": m.id, "object": "model", "created": created, "owned_by": provider.id} for m in provider.models],
    }


def audio_duration_s(data: bytes) -> float:
    """Seconds of audio in an upload: a WAV header's frames / rate, else 16,000 bytes a second."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        try:
            with wave.open(io.BytesIO(data)) as w:
                if w.getframerate() > 0:
                    return w.getnframes() / w.getframerate()
        except (wave.Error, EOFError):
            pass
    return len(data) / 16000.0


def transcription_reply(fields: Mapping[str, Any], text: str, duration_s: float) -> tuple[Any, str]:
    """Body and media type for the requested ``response_format`` (json, text, verbose_json, srt, vtt)."""
    fmt = fields.get("response_format") or "json"
    if fmt == "text":
        return text + "\n", "text/plain"
    if fmt == "verbose_json":
        return {
            "task": "transcribe",
            "language": fields.get("language") or "english",
            "duration": round(duration_s, 2),
            "text": text,
            "segments": [],
        }, "application/json"
    if fmt in ("srt", "vtt"):
        end = f"00:00:{min(59, math.ceil(duration_s)):02d}"
        if fmt == "srt":
            return f"1\n00:00:00,000 --> {end},000\n{text}\n\n", "text/plain"
        return f"WEBVTT\n\n00:00:00.000 --> {end}.000\n{text}\n\n", "text/plain"
    if fmt != "json":
        raise BadRequest(f"Invalid value for 'response_format': {fmt!r}.", "response_format")
    return {"text": text}, "application/json"


# --------------------------------------------------------------------------- headers


def rate_headers(ctx: CallContext, views: Mapping[str, WindowView], denial: Denial | None = None) -> dict[str, str]:
    """The style's rate-limit headers for this response (and retry-after on a 429)."""
    h: dict[str, str] = {}
    style = ctx.style
    if style == "openrouter":
        # OpenRouter states its per-key limits only when refusing (in headers and in metadata).
        if denial is not None and denial.is_rate_limit and denial.limit is not None and not denial.upstream:
            h.update(_openrouter_limit_headers(ctx, denial))
        return h
    if style == "azure":
        # Azure states what remains, not the limit or its reset (Azure OpenAI quota docs), and
        # retry-after in whole seconds with retry-after-ms beside it on a 429
        if "rpm" in views:
            h["x-ratelimit-remaining-requests"] = str(views["rpm"].remaining)
        if "tpm" in views:
            h["x-ratelimit-remaining-tokens"] = str(views["tpm"].remaining)
        if denial is not None and denial.retry_after_s is not None and math.isfinite(denial.retry_after_s):
            h["retry-after"] = str(max(1, math.ceil(denial.retry_after_s)))
            h["retry-after-ms"] = str(max(1, math.ceil(denial.retry_after_s * 1000)))
        return h
    # Groq's request headers describe requests per day; everyone else's requests per minute.
    order = ("rpd", "rpm") if style == "groq" else ("rpm", "rpd")
    req = next((views[k] for k in order if k in views), None)
    if req is not None:
        h["x-ratelimit-limit-requests"] = str(req.limit)
        h["x-ratelimit-remaining-requests"] = str(req.remaining)
        h["x-ratelimit-reset-requests"] = go_duration(req.reset_s)
    tok = views.get("tpm")
    if tok is not None:
        h["x-ratelimit-limit-tokens"] = str(tok.limit)
        h["x-ratelimit-remaining-tokens"] = str(tok.remaining)
        h["x-ratelimit-reset-tokens"] = go_duration(tok.reset_s)
    if denial is not None and denial.retry_after_s is not None:
        h.update(retry_after_header(denial.retry_after_s))
        if style == "openai" and denial.retry_after_s is not None and math.isfinite(denial.retry_after_s):
            h["retry-after-ms"] = str(max(1, math.ceil(denial.retry_after_s * 1000)))
    return h


def _openrouter_limit_headers(ctx: CallContext, d: Denial) -> dict[str, str]:
    wait = d.retry_after_s if d.retry_after_s is not None and math.isfinite(d.retry_after_s) else 0.0
    return {
        "X-RateLimit-Limit": str(d.limit),
        "X-RateLimit-Remaining": str(max(0, (d.limit or 0) - (d.used or 0))),
        "X-RateLimit-Reset": str(int((ctx.wall_now + wait) * 1000)),
    }


# --------------------------------------------------------------------------- errors


def _err(message: str, type_: str | None, code: Any, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


_OPENAI_UNITS = {
    "rpm": ("requests per min (RPM)", "requests"),
    "tpm": ("tokens per min (TPM)", "tokens"),
    "rpd": ("requests per day (RPD)", "requests"),
}
_GROQ_UNITS = {
    "rpm": ("requests per minute (RPM)", "requests"),
    "tpm": ("tokens per minute (TPM)", "tokens"),
    "rpd": ("requests per day (RPD)", "requests"),
    # the limits' names on https://console.groq.com/docs/rate-limits in Groq's sentence for the
    # others; the exact wording of Groq's audio refusals is not documented there
    "ash": ("audio seconds per hour (ASH)", "audio_seconds"),
    "asd": ("audio seconds per day (ASD)", "audio_seconds"),
}
_OPENROUTER_SUFFIX = {"rpm": "per-min", "rpd": "per-day", "tpm": "tokens-per-min", "concurrency": "concurrency"}


def _wait_text(d: Denial) -> str:
    return go_duration(d.retry_after_s) if d.retry_after_s is not None and math.isfinite(d.retry_after_s) else "1s"


def _rate_limit_body(ctx: CallContext, d: Denial) -> tuple[int, dict[str, Any]]:
    style, model, org = ctx.style, ctx.model, ctx.org
    kind = d.kind or "rpm"
    if style == "openrouter":
        if d.upstream or kind == "concurrency":
            raw = (
                f"{model} is temporarily rate-limited upstream. Please retry shortly, or add your own key to "
                "accumulate your rate limits: https://openrouter.ai/settings/integrations"
            )
            meta = {"raw": raw, "provider_name": _upstream(model)}
            return 429, {"error": {"message": "Provider returned error", "code": 429, "metadata": meta}, "user_id": "user_sandbox"}
        name = d.pool_name or f"{model}-{_OPENROUTER_SUFFIX.get(kind, kind)}"
        meta = {"headers": _openrouter_limit_headers(ctx, d), "provider_name": None}
        return 429, {"error": {"message": f"Rate limit exceeded: {name}. ", "code": 429, "metadata": meta}, "user_id": "user_sandbox"}
    if kind == "concurrency":
        # OpenAI publishes no concurrency limit; this wording is the sandbox's own.
        msg = (
            f"Too many concurrent requests for {model} in organization {org}: Limit {d.limit}, "
            f"In flight {d.used}. Please try again once a request completes."
        )
        return 429, _err(msg, "requests", "rate_limit_exceeded")
    if style == "azure":
        # Azure's wording for a deployment's token or call rate (seen in Azure OpenAI 429 bodies,
        # e.g. Azure/azure-sdk-for-python issues); code "429", no type
        what = "token rate limit" if kind == "tpm" else "call rate limit"
        wait = d.retry_after_s if d.retry_after_s is not None and math.isfinite(d.retry_after_s) else 1.0
        msg = (
            f"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version {AZURE_API_VERSION} "
            f"have exceeded {what} of your current OpenAI S0 pricing tier. Please retry after "
            f"{max(1, math.ceil(wait))} seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like "
            "to further increase the default rate limit."
        )
        return 429, {"error": {"code": "429", "message": msg}}
    if style == "groq":
        unit, type_ = _GROQ_UNITS.get(kind, _GROQ_UNITS["rpm"])
        where = f"for model `{model}` in organization `{org}` service tier `on_demand` on {unit}"
        if d.too_large:
            msg = f"Request too large {where}: Limit {d.limit}, Requested {d.requested}, please reduce your message size and try again. {GROQ_UPSELL}"
            return 413, _err(msg, type_, "rate_limit_exceeded")
        msg = (
            f"Rate limit reached {where}: Limit {d.limit}, Used {d.used}, Requested {d.requested}. "
            f"Please try again in {_wait_text(d)}. {GROQ_UPSELL}"
        )
        return 429, _err(msg, type_, "rate_limit_exceeded")
    unit, type_ = _OPENAI_UNITS.get(kind, _OPENAI_UNITS["rpm"])
    where = f"for {model} in organization {org} on {unit}"
    if d.too_large:
        msg = (
            f"Request too large {where}: Limit {d.limit}, Requested {d.requested}. The input or output tokens "
            f"must be reduced in order to run successfully. {OPENAI_RATE_DOCS}"
        )
        return 429, _err(msg, type_, "rate_limit_exceeded")
    msg = (
        f"Rate limit reached {where}: Limit {d.limit}, Used {d.used}, Requested {d.requested}. "
        f"Please try again in {_wait_text(d)}. {OPENAI_RATE_DOCS}"
    )
    return 429, _err(msg, type_, "rate_limit_exceeded")


def render_error(ctx: CallContext, d: Denial, key: str | None = None) -> ErrorReply:
    """The provider's own status and body for a refusal; headers are added by ``rate_headers``."""
    style = ctx.style
    status: int
    body: Any
    if d.is_rate_limit:
        status, body = _rate_limit_body(ctx, d)
    elif d.reason in ("auth", "invalid_key"):
        status = 401
        if style == "openrouter":
            body = {"error": {"message": "No auth credentials found" if d.missing_key else "User not found.", "code": 401}}
        elif style == "groq":
            body = {"error": {"message": "Invalid API Key", "type": "invalid_request_error", "code": "invalid_api_key"}}
        elif style == "azure":
            body = {"error": {"code": "401", "message": (
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
                "key for an active subscription and use a correct regional API endpoint for your resource.")}}
        elif d.missing_key:
            body = _err(
                "You didn't provide an API key. You need to provide your API key in an Authorization header using "
                "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
                None,
            )
        else:
            # OpenAI echoes a redacted key; the sandbox shows only the last four characters.
            shown = "*" * 12 + mask_key(key)[1:]
            body = _err(
                f"Incorrect API key provided: {shown}. You can find your API key at https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
    elif d.reason == "permission_denied":
        # OpenAI's 403 for a region it does not serve (its error-codes guide)
        status = 403
        body = _err(d.message or "Country, region, or territory not supported", "request_forbidden",
                    "unsupported_country_region_territory")
    elif d.reason == "quota_exhausted":
        if style == "openrouter":
            status = 402
            asked = ctx.max_tokens or 4096
            body = {
                "error": {
                    "message": (
                        f"This request requires more credits, or fewer max_tokens. You requested up to {asked} tokens, "
                        "but can only afford 0. To increase, visit https://openrouter.ai/settings/credits and upgrade "
                        "to a paid account"
                    ),
                    "code": 402,
                    "metadata": {"provider_name": None},
                },
                "user_id": "user_sandbox",
            }
        else:
            status = 429
            body = _err(
                "You exceeded your current quota, please check your plan and billing details. For more information "
                "on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
                "insufficient_quota",
                "insufficient_quota",
            )
    elif d.reason == "server_error":
        status = 500
        if style == "openrouter":
            body = {"error": {"message": "Internal Server Error", "code": 500}}
        else:
            body = _err("The server had an error while processing your request. Sorry about that!", "server_error", None)
    elif d.reason in ("unavailable", "overloaded"):
        status = 503
        if style == "openrouter":
            body = {"error": {"message": "Service Unavailable", "code": 503}}
        elif d.reason == "overloaded":
            body = _err("The engine is currently overloaded, please try again later.", "server_error", None)
        else:
            body = _err("The server is overloaded or not ready yet.", "server_error", None)
    elif d.reason == "not_found":
        if style == "openrouter":
            status, body = 400, {"error": {"message": f"{d.message} is not a valid model ID", "code": 400}}
        else:
            status = 404
            body = _err(
                f"The model `{d.message}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
    else:  # bad_request
        status = 400
        if style == "openrouter":
            body = {"error": {"message": d.message or "Bad Request", "code": 400}}
        else:
            body = _err(d.message or "Bad Request", "invalid_request_error", d.code, d.param)
    if d.message and d.reason not in ("not_found", "bad_request") and isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            err["message"] = d.message
    return ErrorReply(status, body)
