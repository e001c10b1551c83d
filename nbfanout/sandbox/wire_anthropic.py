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

The sandbox keeps one token budget (input + max_tokens); it reports it in the
``tokens`` headers and does not split input and output token limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nbfanout.sandbox.limits import WindowView
from nbfanout.sandbox.scenario import ProviderSpec
from nbfanout.sandbox.wire import (
    text_of_parts,
    BadRequest,
    CallContext,
    ChatCall,
    Denial,
    ErrorReply,
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
    "stream_delta",
    "stream_head",
    "stream_tail",
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


def _text_of(content: Any) -> str:
    return text_of_parts(content, BadRequest("messages.0.content: Input should be a valid list"))


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
    return ChatCall(model=model, prompt="\n".join(texts), max_tokens=max_tokens, stream=bool(body.get("stream", False)))


def _stop(usage: Usage) -> str:
    return "max_tokens" if usage.finish == "length" else "end_turn"


def _msg_id(ctx: CallContext) -> str:
    return "msg_sbx" + ctx.request_id


def render_success(ctx: CallContext, text: str, usage: Usage) -> dict[str, Any]:
    """A ``message`` object."""
    return {
        "id": _msg_id(ctx),
        "type": "message",
        "role": "assistant",
        "model": ctx.model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": _stop(usage),
        "stop_sequence": None,
        "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
    }


def stream_head(ctx: CallContext, call: ChatCall, input_tokens: int) -> bytes:
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
        + sse_event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
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

