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
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from nbfanout.sandbox.limits import WindowView
from nbfanout.sandbox.scenario import ProviderSpec
from nbfanout.sandbox.wire import BadRequest, CallContext, ChatCall, Denial, ErrorReply, Usage, sse_data

__all__ = [
    "extract_key",
    "malformed_body",
    "models_list",
    "parse_chat",
    "rate_headers",
    "render_error",
    "render_success",
    "stream_delta",
    "stream_head",
    "stream_tail",
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


def _parts_text(obj: Any) -> str:
    if not isinstance(obj, dict):
        return ""
    parts = obj.get("parts") or []
    return " ".join(p.get("text", "") for p in parts if isinstance(p, dict))


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
    config = body.get("generationConfig") or body.get("generation_config") or {}
    max_tokens = config.get("maxOutputTokens", config.get("max_output_tokens")) if isinstance(config, dict) else None
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise BadRequest("* GenerateContentRequest.generation_config.max_output_tokens: must be positive\n")
    return ChatCall(model=model, prompt="\n".join(texts), max_tokens=max_tokens, stream=stream)


def _finish(usage: Usage) -> str:
    return "MAX_TOKENS" if usage.finish == "length" else "STOP"


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


def _chunk(ctx: CallContext, text: str, usage: Usage | None, finish: str | None) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
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


def stream_tail(ctx: CallContext, call: ChatCall, usage: Usage) -> bytes:
    return sse_data(_chunk(ctx, "", usage, _finish(usage)))


def array_body(ctx: CallContext, pieces: list[str], usage: Usage) -> str:
    """streamGenerateContent without ``alt=sse``: a JSON array of chunks."""
    chunks = [_chunk(ctx, p, None, None) for p in pieces] + [_chunk(ctx, "", usage, _finish(usage))]
    return json.dumps(chunks)


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
