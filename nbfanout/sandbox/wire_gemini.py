"""The Gemini wire: models/{model}:generateContent and :streamGenerateContent (SSE or JSON array).

Formats, as the Gemini API sends them:

- 429 ``{"error": {"code": 429, "message": "You exceeded your current quota, ... * Quota
  exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests,
  limit: 10, model: gemini-2.5-flash\\nPlease retry in 37.1s.", "status":
  "RESOURCE_EXHAUSTED", "details": [Help, QuotaFailure{violations: [{quotaMetric, quotaId:
  "GenerateRequestsPerMinutePerProjectPerModel-FreeTier", quotaDimensions, quotaValue}]},
  RetryInfo{retryDelay: "37s"}]}}`` (github.com/googleapis/python-genai/issues/2044,
  github.com/continuedev/continue/issues/9570).
- 400 INVALID_ARGUMENT "API key not valid. Please pass a valid API key." with an
  ``ErrorInfo`` detail, reason ``API_KEY_INVALID`` (github.com/vivet/GoogleApi/issues/375).
- 503 UNAVAILABLE "The model is overloaded. Please try again later.", 500 INTERNAL.
- No rate-limit headers at all: a client learns Gemini's limits only from 429 bodies.
- Tools: ``tools=[{"functionDeclarations": [{name, description, parameters}]}]``; a call
  comes back as a ``functionCall`` part (finishReason STOP), a result goes in as a
  ``functionResponse`` part. 400 INVALID_ARGUMENT for fields the API does not know, e.g.
  an OpenAI-shaped tool or JSON Schema keywords outside its Schema: "Invalid JSON payload
  received. Unknown name \"$schema\" at 'tools[0].function_declarations[0].parameters':
  Cannot find field." (github.com/openswarm-ai/openswarm/issues/24,
  github.com/zed-industries/zed/issues/44875); "* GenerateContentRequest.tools[0]
  .function_declarations[34].name: Invalid function name. Must start with a letter or an
  underscore. ..." (github.com/google-gemini/gemini-cli/issues/6704); "*
  GenerateContentRequest.contents[2].parts[0].function_response.name: Name cannot be
  empty.", one line per nameless response (github.com/router-for-me/CLIProxyAPI/issues/2104,
  github.com/langflow-ai/langflow/issues/9437).
"""

from __future__ import annotations

import json
import math
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
    sse_data,
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

HELP = {
    "@type": "type.googleapis.com/google.rpc.Help",
    "links": [{"description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}],
}
_QUOTAS = {
    "rpm": ("generate_content_free_tier_requests", "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"),
    "rpd": ("generate_content_free_tier_requests", "GenerateRequestsPerDayPerProjectPerModel-FreeTier"),
    "tpm": ("generate_content_free_tier_input_token_count", "GenerateContentInputTokensPerModelPerMinute-FreeTier"),
}


def extract_key(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """``x-goog-api-key`` header, or ``?key=`` in the query string."""
    return headers.get("x-goog-api-key") or query.get("key") or None


def split_target(rest: str) -> tuple[str, str]:
    """``gemini-2.5-flash:generateContent`` -> (model, method)."""
    model, sep, method = rest.rpartition(":")
    if not sep or not model:
        raise BadRequest(f"Invalid resource name: models/{rest}")
    return model, method


def _parts(obj: Any) -> list[dict[str, Any]]:
    parts = obj.get("parts") if isinstance(obj, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _response_of(part: dict[str, Any]) -> Any:
    return part.get("functionResponse", part.get("function_response"))


def _part_text(part: dict[str, Any]) -> str:
    """A part's text: its text, a function call's args or a function response, as JSON."""
    call = part.get("functionCall", part.get("function_call"))
    if isinstance(call, dict):
        return json.dumps(call.get("args", {}))
    reply = _response_of(part)
    if isinstance(reply, dict):
        return json.dumps(reply.get("response", {}))
    return str(part.get("text", ""))


def _parts_text(obj: Any) -> str:
    return " ".join(_part_text(p) for p in _parts(obj))


def _check_responses(contents: list[Any]) -> None:
    """Every functionResponse must name its function; Gemini lists each one that does not."""
    nameless = [
        f"* GenerateContentRequest.contents[{i}].parts[{j}].function_response.name: Name cannot be empty.\n"
        for i, content in enumerate(contents)
        for j, part in enumerate(_parts(content))
        if isinstance(_response_of(part), dict) and not _response_of(part).get("name")
    ]
    if nameless:
        raise BadRequest("".join(nameless))


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


# The fields Gemini's Tool, FunctionDeclaration and Schema messages have (snake_case; camelCase is accepted too).
_TOOL_FIELDS = frozenset({"function_declarations", "google_search", "google_search_retrieval", "code_execution", "url_context"})
_DECLARATION_FIELDS = frozenset(
    {"name", "description", "parameters", "parameters_json_schema", "response", "response_json_schema", "behavior"}
)
_SCHEMA_FIELDS = frozenset(
    {
        "type", "format", "title", "description", "nullable", "enum", "max_items", "min_items", "properties",
        "required", "min_properties", "max_properties", "min_length", "max_length", "pattern", "example", "any_of",
        "property_ordering", "default", "items", "minimum", "maximum",
    }
)
_FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")


def _unknown(obj: dict[str, Any], allowed: frozenset[str], at: str) -> list[str]:
    return [
        f"Invalid JSON payload received. Unknown name \"{key}\" at '{at}': Cannot find field."
        for key in obj
        if _snake(key) not in allowed
    ]


def _schema_problems(schema: Any, at: str) -> list[str]:
    """Unknown fields in a Schema and the schemas inside it (Gemini's Schema is not full JSON Schema)."""
    if not isinstance(schema, dict):
        return []
    problems = _unknown(schema, _SCHEMA_FIELDS, at)
    props = schema.get("properties")
    if isinstance(props, dict):
        for k, sub in enumerate(props.values()):
            problems += _schema_problems(sub, f"{at}.properties[{k}].value")
    problems += _schema_problems(schema.get("items"), f"{at}.items")
    any_of = schema.get("anyOf", schema.get("any_of"))
    if isinstance(any_of, list):
        for k, sub in enumerate(any_of):
            problems += _schema_problems(sub, f"{at}.any_of[{k}]")
    return problems


def _tools(raw: Any) -> tuple[ToolSpec, ...]:
    """``tools`` -> ToolSpecs of their function declarations, refused in Gemini's words (module docstring)."""
    if raw is None:
        return ()
    tool_type = "type.googleapis.com/google.ai.generativelanguage.v1beta.Tool"
    if not isinstance(raw, list):  # the proto parser's wording for a value of the wrong kind (approximation)
        raise BadRequest(f"Invalid value at 'tools' ({tool_type})")
    out: list[ToolSpec] = []
    unknown: list[str] = []  # the JSON parser's complaints, reported before any validation
    invalid: list[str] = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise BadRequest(f"Invalid value at 'tools[{i}]' ({tool_type})")
        unknown += _unknown(tool, _TOOL_FIELDS, f"tools[{i}]")
        declarations = tool.get("functionDeclarations", tool.get("function_declarations")) or []
        for k, decl in enumerate(declarations if isinstance(declarations, list) else []):
            at = f"tools[{i}].function_declarations[{k}]"
            if not isinstance(decl, dict):
                continue
            unknown += _unknown(decl, _DECLARATION_FIELDS, at) + _schema_problems(decl.get("parameters"), f"{at}.parameters")
            name = decl.get("name")
            if not name:
                invalid.append(f"* GenerateContentRequest.{at}.name: Name cannot be empty.\n")
            elif not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name):
                invalid.append(
                    f"* GenerateContentRequest.{at}.name: Invalid function name. Must start with a letter or an underscore. "
                    "Must be alphameric (a-z, A-Z, 0-9), underscores (_), dots (.) or dashes (-), with a maximum length of 64.\n"
                )
            else:
                params = decl.get("parameters", decl.get("parametersJsonSchema", decl.get("parameters_json_schema")))
                description = decl.get("description")
                out.append(ToolSpec(name, description if isinstance(description, str) else "", params if isinstance(params, dict) else {}))
    if unknown or invalid:
        raise BadRequest("\n".join(unknown) if unknown else "".join(invalid))
    return tuple(out)


def parse_chat(body: Any, model: str, stream: bool) -> ChatCall:
    """A generateContent body -> ChatCall."""
    if not isinstance(body, dict):
        raise BadRequest("Invalid JSON payload received.")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise BadRequest("* GenerateContentRequest.contents: contents is not specified\n")
    texts = []
    system = body.get("systemInstruction") or body.get("system_instruction")
    if system:
        texts.append(_parts_text(system))
    texts += [_parts_text(c) for c in contents]
    tools = _tools(body.get("tools"))
    _check_responses(contents)
    if tools:
        texts.append(json.dumps(body["tools"]))
    config = body.get("generationConfig") or body.get("generation_config") or {}
    max_tokens = config.get("maxOutputTokens", config.get("max_output_tokens")) if isinstance(config, dict) else None
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise BadRequest("* GenerateContentRequest.generation_config.max_output_tokens: must be positive\n")
    last = _parts(contents[-1])
    return ChatCall(
        model=model,
        prompt="\n".join(texts),
        max_tokens=max_tokens,
        stream=stream,
        tools=tools,
        after_tool_result=any(isinstance(_response_of(p), dict) for p in last),
    )


def _finish(usage: Usage) -> str:
    return {"length": "MAX_TOKENS", "content_filter": "SAFETY"}.get(usage.finish, "STOP")


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "promptTokenCount": usage.input_tokens,
        "candidatesTokenCount": usage.output_tokens,
        "totalTokenCount": usage.total_tokens,
    }


def render_success(ctx: CallContext, text: str, usage: Usage) -> dict[str, Any]:
    """A ``GenerateContentResponse``."""
    return {
        "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": _finish(usage), "index": 0}],
        "usageMetadata": _usage(usage),
        "modelVersion": ctx.model,
        "responseId": ctx.request_id,
    }


def _function_call(answer: ToolAnswer) -> dict[str, Any]:
    return {"functionCall": {"name": answer.name, "args": dict(answer.arguments)}}


def render_tool_call(ctx: CallContext, answer: ToolAnswer, usage: Usage) -> dict[str, Any]:
    """A ``GenerateContentResponse`` whose one part is a ``functionCall`` (finishReason STOP)."""
    return {
        "candidates": [{"content": {"parts": [_function_call(answer)], "role": "model"}, "finishReason": _finish(usage), "index": 0}],
        "usageMetadata": _usage(usage),
        "modelVersion": ctx.model,
        "responseId": ctx.request_id,
    }


def _chunk(ctx: CallContext, text: str, usage: Usage | None, finish: str | None, part: dict[str, Any] | None = None) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"parts": [part or {"text": text}], "role": "model"}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    out: dict[str, Any] = {"candidates": [cand], "modelVersion": ctx.model, "responseId": ctx.request_id}
    if usage is not None:
        out["usageMetadata"] = _usage(usage)
    return out


def stream_head(ctx: CallContext, call: ChatCall) -> bytes:
    return b""


def stream_delta(ctx: CallContext, call: ChatCall, text: str) -> bytes:
    return sse_data(_chunk(ctx, text, None, None))


def stream_tool_call(ctx: CallContext, call: ChatCall, answer: ToolAnswer, input_tokens: int) -> list[bytes]:
    """A streamed tool call before its tail: Gemini sends the whole ``functionCall`` in one chunk."""
    return [b"", sse_data(_chunk(ctx, "", None, None, _function_call(answer)))]


def stream_tail(ctx: CallContext, call: ChatCall, usage: Usage) -> bytes:
    return sse_data(_chunk(ctx, "", usage, _finish(usage)))


def array_body(ctx: CallContext, pieces: list[str], usage: Usage, answer: ToolAnswer | None = None) -> str:
    """streamGenerateContent without ``alt=sse``: a JSON array of chunks (the text's pieces, or the one call)."""
    chunks = [_chunk(ctx, "", None, None, _function_call(answer))] if answer else [_chunk(ctx, p, None, None) for p in pieces]
    return json.dumps(chunks + [_chunk(ctx, "", usage, _finish(usage))])


def malformed_body(ctx: CallContext) -> str:
    return '{"candidates": [{"content": {"parts": [{"text": "The answ'


def malformed_stream(ctx: CallContext, call: ChatCall) -> bytes:
    return b'data: {"candidates": [{"content": {"parts": [{"text": "The ans\n\n'


def models_list(provider: ProviderSpec, created: int) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": f"models/{m.id}",
                "displayName": m.id,
                "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
            }
            for m in provider.models
        ]
    }


def rate_headers(ctx: CallContext, views: Mapping[str, WindowView], denial: Denial | None = None) -> dict[str, str]:
    """Gemini sends no rate-limit headers (its limits show only in 429 bodies)."""
    return {}


def _error(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    return {"error": err}


def render_error(ctx: CallContext, d: Denial, key: str | None = None) -> ErrorReply:
    model = ctx.model
    if d.is_rate_limit and (d.kind or "rpm") != "concurrency":
        metric, quota_id = _QUOTAS.get(d.kind or "rpm", _QUOTAS["rpm"])
        wait = d.retry_after_s if d.retry_after_s is not None and math.isfinite(d.retry_after_s) else 1.0
        msg = (
            "You exceeded your current quota, please check your plan and billing details. For more information on "
            "this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. To monitor your current usage, "
            f"head to: https://ai.dev/rate-limit. \n* Quota exceeded for metric: generativelanguage.googleapis.com/{metric}, "
            f"limit: {d.limit}, model: {model}\nPlease retry in {wait:.3f}s."
        )
        details = [
            HELP,
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": f"generativelanguage.googleapis.com/{metric}",
                        "quotaId": quota_id,
                        "quotaDimensions": {"location": "global", "model": model},
                        "quotaValue": str(d.limit),
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{max(1, math.ceil(wait))}s"},
        ]
        return ErrorReply(429, _error(429, "RESOURCE_EXHAUSTED", d.message or msg, details))
    if d.is_rate_limit:
        return ErrorReply(429, _error(429, "RESOURCE_EXHAUSTED", d.message or "Resource has been exhausted (e.g. check quota)."))
    if d.reason in ("auth", "invalid_key"):
        if d.missing_key:
            msg = (
                "Method doesn't allow unregistered callers (callers without established identity). Please use API Key "
                "or other form of API consumer identity to call this API."
            )
            return ErrorReply(403, _error(403, "PERMISSION_DENIED", msg))
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ]
        return ErrorReply(400, _error(400, "INVALID_ARGUMENT", d.message or "API key not valid. Please pass a valid API key.", details))
    if d.reason == "permission_denied":  # google.rpc PERMISSION_DENIED, the standard wording
        return ErrorReply(403, _error(403, "PERMISSION_DENIED", d.message or "The caller does not have permission"))
    if d.reason == "quota_exhausted":
        msg = (
            "You exceeded your current quota, please check your plan and billing details. For more information on this "
            "error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. \n* Quota exceeded for metric: "
            f"generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 0, model: {model}"
        )
        details = [
            HELP,
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                        "quotaDimensions": {"location": "global", "model": model},
                        "quotaValue": "0",
                    }
                ],
            },
        ]
        return ErrorReply(429, _error(429, "RESOURCE_EXHAUSTED", d.message or msg, details))
    if d.reason in ("unavailable", "overloaded"):
        return ErrorReply(503, _error(503, "UNAVAILABLE", d.message or "The model is overloaded. Please try again later."))
    if d.reason == "server_error":
        msg = "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"
        return ErrorReply(500, _error(500, "INTERNAL", d.message or msg))
    if d.reason == "not_found":
        msg = (
            f"models/{d.message} is not found for API version v1beta, or is not supported for generateContent. "
            "Call ListModels to see the list of available models and their supported methods."
        )
        return ErrorReply(404, _error(404, "NOT_FOUND", msg))
    return ErrorReply(400, _error(400, "INVALID_ARGUMENT", d.message or "Request contains an invalid argument."))
