"""classify_error(): any provider failure → ErrorInfo (category, retryable, wait, stated limit).

Conventions (the choices the taxonomy makes where providers leave room):

* **No response.** ``status=None`` means no HTTP response at all; ``body`` is then a short
  description of the exception, ``"<ExceptionClass>: <text>"`` — e.g.
  ``"ReadTimeout: The read operation timed out"``, ``"ConnectError: [Errno 111] Connection
  refused"``, ``"CancelledError"``. Anything mentioning a timeout → ``timeout``, a
  cancellation → ``cancelled``, everything else (refused, reset, DNS, TLS, protocol) →
  ``network``. The message reads ``"no response: timeout (ReadTimeout: ...)"``.
* **Bodies.** JSON in the OpenAI (``{"error": {"type", "code", "message"}}``), Anthropic
  (``{"type": "error", "error": {...}}``), Google (``{"error": {"code", "status",
  "message", "details"}}``), OpenRouter (``{"error": {"code": 429, "metadata": {...}}}``)
  and Mistral (``{"message": ...}``) shapes is recognised whatever the provider id, also
  inside a list (Gemini's OpenAI-compatible endpoint), as a JSON string inside another
  error's ``message`` or OpenRouter's ``metadata.raw`` (SDK and gateway wrappers), and in
  an SSE ``data:`` line. An error inside an HTTP 2xx body (OpenRouter) is classified by the
  code inside it. HTML and empty bodies are described, never quoted.
* **Too large to ever fit.** 413, "Request too large", and any token limit whose stated
  ``Requested`` exceeds its ``Limit`` (Groq, OpenAI TPM) → ``context_length``: waiting
  can't help, a smaller prompt or a model with a bigger budget can. The LimitHint names the
  exceeded window (``"tpm"``/``"tpd"``) so the core can learn it, or ``"request_tokens"``
  for a model's context window. A body too many *bytes* for the endpoint (OpenAI's
  "Maximum content size limit (26214400) exceeded" for audio, Anthropic's 32 MB
  ``request_too_large``) names no tokens and is ``bad_request``: no other model's window helps.
* **Retired models** (OpenAI "has been deprecated", Groq ``model_decommissioned``, Anthropic
  ``not_found_error``, Gemini "is not found for API version") → ``not_found``, 400 or 404.
* **Gateways.** 504, 408, 522, 524 and ``DEADLINE_EXCEEDED`` → ``timeout`` (a gateway gave up
  waiting for the model; retryable). 503, 529, 498 and "overloaded"/"at capacity" →
  ``overloaded``; 500, 502 and other 5xx → ``server_error``.
* **Gemini quotas.** ``RESOURCE_EXHAUSTED`` is ``rate_limit`` even for per-day free-tier
  quotas: they reset at midnight Pacific time (Gemini rate-limits doc), so for a per-day
  violation ``retry_after_s`` is the time until then, not Google's ``retryDelay`` (which
  stays "36s" all day). Google's text "check your plan and billing details" is on every
  429 and is not read as a quota signal. A stated limit of 0 (the model is not offered to
  this project or tier), in the details or only in the message ("Quota exceeded for metric:
  ..., limit: 0"), is ``quota_exhausted``.
* **Quota exhausted** (not retried): ``insufficient_quota``, 402, Anthropic's credit-balance
  400 and spend-limit 429, OpenRouter/DeepSeek credit and balance errors.
* ``retry_after_s`` is set only when retrying can help. In order: ``retry-after-ms``,
  ``retry-after``, Google ``RetryInfo``, "try again in …" / "retry after N seconds" (Azure) in
  the message, OpenRouter's
  ``metadata.headers`` reset, then the reset of whichever ``x-ratelimit``/``anthropic-
  ratelimit`` window has 0 remaining. Negative waits are dropped, huge ones clamped.
* ``missing_key`` is never produced here: a missing key is caught before any call.

Keys echoed by a provider (``"Incorrect API key provided: sk-abc...wxyz"``) are cut to
their last four characters in ``ErrorInfo.message`` by ``nbfanout._secrets.redact``.
"""

from __future__ import annotations

import html
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from nbfanout._secrets import redact
from nbfanout.core.error_types import RETRYABLE, ErrorCategory, ErrorInfo, LimitHint
from nbfanout.core.headers import MAX_WAIT_S, normalize_headers, parse_duration, parse_rate_headers

__all__ = ["classify_error"]

C = ErrorCategory
_MAX_BODY_CHARS = 2_000_000
_MAX_MESSAGE_CHARS = 2_000


def classify_error(
    provider: str,
    status: int | None,
    headers: Mapping[str, str] | None,
    body: str | bytes | None,
    *,
    now: float | None = None,
) -> ErrorInfo:
    """Classify one failed call; never raises, whatever the input.

    ``now`` (epoch seconds) pins the clock used for timestamps in headers and bodies.
    """
    try:
        return _classify(provider, status, headers, body, now=now)
    except Exception as exc:  # last resort: a classifier bug must not hide the provider's failure
        code = _status(status)
        category = _status_category(code) if code is not None else C.NETWORK
        return ErrorInfo(category, category in RETRYABLE, f"unclassifiable error ({type(exc).__name__})",
                         status=code, provider=_provider(provider))


# --- the pipeline ---------------------------------------------------------------------


@dataclass(slots=True)
class _Err:
    """One provider error record, flattened from whatever JSON shape carried it."""

    message: str | None = None
    type: str | None = None
    code: str | None = None
    number: int | None = None  # an HTTP-like code inside the body (OpenRouter, Google)
    gstatus: str | None = None  # google.rpc status, e.g. RESOURCE_EXHAUSTED
    reasons: list[str] = field(default_factory=list)  # specific codes: ErrorInfo reason, details.error_code
    hints: list[str] = field(default_factory=list)  # matched, never reported: errors[].reason, limit_source
    details: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def _classify(provider: Any, status: Any, headers: Any, body: Any, *, now: float | None) -> ErrorInfo:
    current = time.time() if now is None else float(now)
    code = _status(status)
    h = normalize_headers(headers)
    text, parsed = _read_body(body)
    err = _extract(parsed) if parsed is not None else None
    if err is None and text:
        err = _extract_sse(text)
    if code is None and err is None:
        return _no_response(provider, text)
    effective = code
    if err is not None and err.number is not None and (code is None or 200 <= code < 300):
        effective = err.number
    message = _message(code, text, err)
    blob = _blob(message, err)
    hint = _limit_hint(err, message)
    category = _category(effective, err, blob, hint)
    retryable = category in RETRYABLE
    wait = _retry_after(h, err, message, hint, current) if retryable else None
    return ErrorInfo(
        category=category,
        retryable=retryable,
        message=redact(message),
        status=code,
        retry_after_s=wait,
        limit_hint=hint,
        provider=_provider(provider),
        provider_code=_provider_code(err),
    )


def _provider(provider: Any) -> str | None:
    return None if provider is None else str(provider)


def _status(status: Any) -> int | None:
    if status is None or isinstance(status, bool):
        return None
    try:
        number = int(status)
    except (TypeError, ValueError, OverflowError):
        return None
    return number


def _read_body(body: Any) -> tuple[str, Any]:
    """Body → (text, parsed JSON or None). Bytes that aren't UTF-8 are decoded with replacement."""
    if isinstance(body, (dict, list)):
        return "", body
    if body is None:
        return "", None
    if isinstance(body, (bytes, bytearray, memoryview)):
        text = bytes(body)[:_MAX_BODY_CHARS].decode("utf-8", "replace")
    else:
        text = str(body)[:_MAX_BODY_CHARS]
    text = text.lstrip("\ufeff").strip()
    return text, _loads(text)


def _loads(text: str) -> Any:
    if not text or text[0] not in "{[\"":
        return None
    try:
        return json.loads(text)
    except Exception:  # ValueError, and RecursionError on absurdly deep nesting
        return None


def _no_response(provider: Any, text: str) -> ErrorInfo:
    """Classify a failure with no HTTP response from the exception description in ``text``."""
    lowered = text.lower()
    if "cancel" in lowered or "keyboardinterrupt" in lowered:
        category = C.CANCELLED
    elif "timeout" in lowered or "timed out" in lowered:
        category = C.TIMEOUT
    else:
        category = C.NETWORK
    kind = {C.CANCELLED: "cancelled", C.TIMEOUT: "timeout", C.NETWORK: "network error"}[category]
    detail = _squash(text)[:300]
    message = f"no response: {kind} ({detail})" if detail else f"no response: {kind}"
    return ErrorInfo(category, category in RETRYABLE, redact(message), provider=_provider(provider))


# --- reading error records --------------------------------------------------------------


def _extract(obj: Any, depth: int = 0) -> _Err | None:
    """Find the error record in parsed JSON of any known shape; None if there is none."""
    if depth > 6:
        return None
    if isinstance(obj, list):
        for item in obj[:20]:
            found = _extract(item, depth + 1)
            if found is not None:
                return found
        return None
    if isinstance(obj, str):
        # A bare JSON string is a message (xAI answers 400 with one).
        return _Err(message=obj) if obj.strip() else None
    if not isinstance(obj, dict):
        return None
    error = obj.get("error")
    if isinstance(error, dict):
        found = _from_record(error, depth)
        if isinstance(obj.get("error_type"), str):  # Together puts its limit type beside the error
            found.reasons.append(obj["error_type"])
        return found
    if isinstance(error, str) and error.strip():
        return _from_record({k: v for k, v in obj.items() if k != "error"} | {"message": error}, depth)
    if _is_error_record(obj):
        return _from_record(obj, depth)
    return _blocked_prompt(obj)


def _is_error_record(obj: dict[str, Any]) -> bool:
    """A top-level record like Mistral's ``{"message": ...}`` or ``{"object": "error", ...}``."""
    if any(k in obj for k in ("choices", "candidates", "content", "output")):
        return False
    return obj.get("object") == "error" or obj.get("type") == "error" or "message" in obj or "detail" in obj


def _blocked_prompt(obj: dict[str, Any]) -> _Err | None:
    """Gemini's 200 answer whose prompt was blocked: ``promptFeedback.blockReason``."""
    feedback = obj.get("promptFeedback")
    if isinstance(feedback, dict) and isinstance(feedback.get("blockReason"), str):
        reason = feedback["blockReason"]
        return _Err(message=f"prompt blocked by the provider's safety filter ({reason})",
                    reasons=[reason], hints=["blocked_prompt"])
    return None


def _from_record(record: dict[str, Any], depth: int) -> _Err:
    err = _Err()
    message = record.get("message", record.get("detail"))
    if isinstance(message, str):
        err.message = message.strip()
    elif isinstance(message, (int, float)) and not isinstance(message, bool):
        err.message = str(message)
    if isinstance(record.get("type"), str):
        err.type = record["type"]
    _read_code(err, record.get("code"))
    status = record.get("status")
    if isinstance(status, str) and re.fullmatch(r"[A-Z][A-Z_]+", status):
        err.gstatus = status
    elif isinstance(status, int) and not isinstance(status, bool) and err.number is None:
        err.number = status
    _read_details(err, record.get("details"))
    for key in ("error_type", "error_code"):
        if isinstance(record.get(key), str):
            err.reasons.append(record[key])
    errors = record.get("errors")
    if isinstance(errors, list):
        err.hints.extend(e["reason"] for e in errors[:10] if isinstance(e, dict) and isinstance(e.get("reason"), str))
    metadata = record.get("metadata")
    if isinstance(metadata, dict):
        err.metadata = metadata
        for key in ("error_type", "provider_code"):
            if isinstance(metadata.get(key), str):
                err.reasons.append(metadata[key])
        if isinstance(metadata.get("limit_source"), str):
            err.hints.append(metadata["limit_source"])
    _merge_nested(err, depth)
    return err


def _read_code(err: _Err, code: Any) -> None:
    if isinstance(code, bool):
        return
    if isinstance(code, int):
        err.number = code if 100 <= code <= 599 else None
    elif isinstance(code, str) and code.strip():
        if code.strip().isdigit():
            number = int(code.strip())
            if 100 <= number <= 599:
                err.number = number
        else:
            err.code = code.strip()


def _read_details(err: _Err, details: Any) -> None:
    """google.rpc details (a list) or Anthropic's ``details: {"error_code": ...}``."""
    if isinstance(details, dict):
        if isinstance(details.get("error_code"), str):
            err.reasons.append(details["error_code"])
        return
    if not isinstance(details, list):
        return
    for detail in details[:20]:
        if not isinstance(detail, dict):
            continue
        err.details.append(detail)
        if isinstance(detail.get("reason"), str):
            err.reasons.append(detail["reason"])


def _merge_nested(err: _Err, depth: int) -> None:
    """Read a provider error carried as a JSON string in ``message`` or ``metadata.raw``."""
    if err.message and err.message[:1] in "{[":
        inner = _extract(_loads(err.message), depth + 1)
        if inner is not None:
            _adopt(err, inner, replace_message=True)
            return
    raw = err.metadata.get("raw")
    if isinstance(raw, str) and raw.strip():
        inner = _extract(_loads(raw.strip()), depth + 1)
        if inner is None:
            inner = _Err(message=_squash(raw)[:500])
        _adopt(err, inner, replace_message=False)


def _adopt(outer: _Err, inner: _Err, *, replace_message: bool) -> None:
    """The wrapped error is the real one: its fields win, the wrapper fills the gaps."""
    if replace_message:
        outer.message = inner.message or outer.message
    elif inner.message and inner.message not in (outer.message or ""):
        outer.message = f"{outer.message}: {inner.message}" if outer.message else inner.message
    outer.type = inner.type or outer.type
    outer.code = inner.code or outer.code
    outer.number = inner.number if inner.number is not None else outer.number
    outer.gstatus = inner.gstatus or outer.gstatus
    outer.reasons = inner.reasons + outer.reasons
    outer.hints = inner.hints + outer.hints
    outer.details = inner.details + outer.details
    outer.metadata = inner.metadata | outer.metadata if inner.metadata else outer.metadata


def _extract_sse(text: str) -> _Err | None:
    """An error event in a server-sent-events stream: ``data: {...}`` lines."""
    if "data:" not in text:
        return None
    for line in text.splitlines()[:200]:
        if line.startswith("data:"):
            found = _extract(_loads(line[5:].strip()))
            if found is not None:
                return found
    return None


# --- message ----------------------------------------------------------------------------


def _message(code: int | None, text: str, err: _Err | None) -> str:
    """The provider's own words, or a clear description when it gave none."""
    where = f"HTTP {code}" if code is not None else "no HTTP status"
    if err is not None:
        if err.message:
            return err.message[:_MAX_MESSAGE_CHARS]
        label = err.code or err.gstatus or err.type
        return f"{where} ({label}) with no message" if label else f"{where} with an error and no message"
    if not text:
        return f"{where} with an empty body"
    if _looks_like_html(text):
        title = _html_title(text)
        suffix = f" ({title})" if title else ""
        return f"{where} with an HTML body from a gateway{suffix}"
    if code is not None and 200 <= code < 300:
        return f"{where} without an answer or an error in the body"
    return _squash(text)[:500]


def _looks_like_html(text: str) -> bool:
    head = text[:500].lower()
    return head.startswith("<") and any(tag in head for tag in ("<html", "<!doctype", "<head", "<body", "<title"))


def _html_title(text: str) -> str | None:
    match = re.search(r"<title[^>]*>(.*?)</title>", text[:20_000], re.IGNORECASE | re.DOTALL)
    title = _squash(html.unescape(match.group(1)))[:200] if match else ""
    return title or None


def _squash(text: str) -> str:
    return " ".join(text.split())


def _blob(message: str, err: _Err | None) -> str:
    parts = [message]
    if err is not None:
        parts += [err.type or "", err.code or "", err.gstatus or "", *err.reasons, *err.hints]
        parts += [k for k in ("flagged_input", "reasons") if k in err.metadata]
    return " ".join(parts).lower()


def _provider_code(err: _Err | None) -> str | None:
    """The provider's own error code: code, then a specific reason, then Google status, then type."""
    if err is None:
        return None
    for candidate in (err.code, *err.reasons, err.gstatus, err.type):
        if candidate and candidate.strip():
            return candidate.strip()[:100]
    return None


# --- category -----------------------------------------------------------------------------

_QUOTA_CODES = {"insufficient_quota", "billing_hard_limit_reached", "billing_not_active", "insufficient_credits",
                "insufficient_balance", "enforced_spend_limit_reached", "billing_error", "payment_required"}
_QUOTA_PHRASES = ("credit balance", "insufficient balance", "insufficient credits", "requires more credits",
                  "can only afford", "billing hard limit", "spend limit", "spending limit", "out of credits",
                  "credits are depleted", "regain access on", "exceeded your monthly")
_POLICY_CODES = {"content_policy_violation", "content_filter", "content_policy", "safety", "prohibited_content",
                 "blocklist", "spii", "blocked_prompt"}
_POLICY_PHRASES = ("flagged as potentially violating", "usage policy", "safety system", "content management policy",
                   "content filter", "content policy", "requires moderation", "was flagged", "blocked due to safety",
                   "content exists risk", "public_error_unsafe", "flagged_input")
_AUTH_CODES = {"invalid_api_key", "authentication_error", "api_key_invalid", "unauthenticated",
               "invalid_authentication", "account_deactivated"}
_AUTH_PHRASES = ("incorrect api key", "invalid api key", "api key not valid", "invalid x-api-key", "api key expired",
                 "api key not found", "no auth credentials", "reported as leaked", "invalid authentication",
                 "didn't provide an api key")
_CONTEXT_CODES = {"context_length_exceeded", "request_too_large", "string_above_max_length"}
_CONTEXT_PHRASES = ("maximum context length", "context length", "context window", "prompt is too long",
                    "input token count", "exceeds the maximum number of tokens", "request too large",
                    "input is too long", "reduce the length of the messages")
_SIZE_PHRASES = ("maximum content size", "bytes read", "exceeds the maximum size", "entity too large",
                 "payload too large")
_NOT_FOUND_CODES = {"model_not_found", "not_found_error", "not_found", "unknown_model", "model_decommissioned"}
_NOT_FOUND_PHRASES = ("does not exist", "is not found for api version", "no endpoints found", "model not found",
                      "has been decommissioned")
_PERMISSION_CODES = {"permission_error", "permission_denied", "forbidden", "failed_precondition", "service_disabled",
                     "consumer_suspended", "api_key_service_blocked", "unsupported_country_region_territory"}
_PERMISSION_PHRASES = ("location is not supported", "not supported in your region",
                       "country, region, or territory not supported")
_RATE_CODES = {"rate_limit_exceeded", "rate_limit_error", "rate_limited", "resource_exhausted", "too_many_requests",
               "ratelimitexceeded", "rate_limit_exceeded_error", "dynamic_request_limited", "dynamic_token_limited",
               "tokens", "requests"}
_RATE_PHRASES = ("rate limit", "ratelimit", "too many requests", "quota exceeded", "resource has been exhausted",
                 "resource exhausted", "exceeded your current quota", "queries per minute", "free-models-per")
_OVERLOAD_CODES = {"overloaded_error", "overloaded", "unavailable", "model_capacity_exhausted", "service_unavailable",
                   "server_overloaded", "engine_overloaded"}
_OVERLOAD_PHRASES = ("overloaded", "at capacity", "over capacity", "high demand", "no capacity available",
                     "server is busy", "too busy", "temporarily unavailable", "capacity exceeded")
_TIMEOUT_CODES = {"deadline_exceeded", "timeout_error", "timeout", "request_timeout", "gateway_timeout"}
# Gemini states a zero quota in the message too, which some SDKs pass on without the details.
_ZERO_LIMIT_RE = re.compile(r"quota exceeded for metric: [^,\s]+, limit: 0(?![\d.])")


def _category(status: int | None, err: _Err | None, blob: str, hint: LimitHint | None) -> ErrorCategory:
    """Hard, provider-stated signals first; then retryable ones; then the HTTP status."""
    codes = _codes(err)
    if (status == 402 or codes & _QUOTA_CODES or _has(blob, _QUOTA_PHRASES) or (hint is not None and hint.limit == 0)
            or _ZERO_LIMIT_RE.search(blob)):
        return C.QUOTA_EXHAUSTED
    if codes & _POLICY_CODES or _has(blob, _POLICY_PHRASES):
        return C.CONTENT_POLICY
    if status == 401 or codes & _AUTH_CODES or _has(blob, _AUTH_PHRASES):
        return C.AUTH
    if (status == 413 or "request_too_large" in codes) and _has(blob, _SIZE_PHRASES) and "token" not in blob:
        return C.BAD_REQUEST  # too many bytes, not tokens
    if status == 413 or codes & _CONTEXT_CODES or _has(blob, _CONTEXT_PHRASES) or _never_fits(hint):
        return C.CONTEXT_LENGTH
    client_side = status is None or 400 <= status < 500
    if status == 404 or codes & _NOT_FOUND_CODES or (client_side and _has(blob, _NOT_FOUND_PHRASES)):
        return C.NOT_FOUND
    if status == 403 or codes & _PERMISSION_CODES or _has(blob, _PERMISSION_PHRASES):
        return C.PERMISSION
    if codes & _RATE_CODES:
        return C.RATE_LIMIT
    if codes & _OVERLOAD_CODES or _has(blob, _OVERLOAD_PHRASES):
        return C.OVERLOADED
    if codes & _TIMEOUT_CODES:
        return C.TIMEOUT
    if status == 429 or _has(blob, _RATE_PHRASES):
        return C.RATE_LIMIT
    if status is not None and not 200 <= status < 300 and _status_category(status) is not C.SERVER_ERROR:
        return _status_category(status)
    if (status is None or status >= 500) and _has(blob, ("timed out", "timeout", "deadline exceeded")):
        return C.TIMEOUT
    return C.SERVER_ERROR


def _codes(err: _Err | None) -> set[str]:
    if err is None:
        return set()
    values = (err.type, err.code, err.gstatus, *err.reasons, *err.hints)
    return {v.strip().lower() for v in values if v and v.strip()}


def _has(blob: str, phrases: tuple[str, ...]) -> bool:
    return any(p in blob for p in phrases)


def _never_fits(hint: LimitHint | None) -> bool:
    """A token limit stated smaller than the request itself: no wait will make it fit."""
    return (hint is not None and hint.kind in ("tpm", "tpd", "request_tokens")
            and hint.limit is not None and hint.requested is not None and hint.requested > hint.limit)


def _status_category(status: int) -> ErrorCategory:
    """The category an HTTP status implies when the body says nothing more specific."""
    table = {400: C.BAD_REQUEST, 401: C.AUTH, 402: C.QUOTA_EXHAUSTED, 403: C.PERMISSION, 404: C.NOT_FOUND,
             408: C.TIMEOUT, 413: C.CONTEXT_LENGTH, 429: C.RATE_LIMIT, 498: C.OVERLOADED, 503: C.OVERLOADED,
             504: C.TIMEOUT, 522: C.TIMEOUT, 524: C.TIMEOUT, 529: C.OVERLOADED}
    if status in table:
        return table[status]
    if 400 <= status < 500 or 300 <= status < 400:
        return C.BAD_REQUEST
    return C.SERVER_ERROR


# --- limit hints ----------------------------------------------------------------------------

_NUMBER = r"(\d[\d,]*(?:\.\d+)?)"
_LIMIT_RE = re.compile(r"\blimit:?\s*~?" + _NUMBER, re.IGNORECASE)
_USED_RE = re.compile(r"\b(?:used|current):?\s*~?" + _NUMBER, re.IGNORECASE)
_REQUESTED_RE = re.compile(r"\brequested:?\s*~?" + _NUMBER, re.IGNORECASE)
_ORG_LIMIT_RE = re.compile(r"rate limit for your organization(?: \([^)]*\))? of " + _NUMBER, re.IGNORECASE)
_QPM_RE = re.compile(r"rate limit (?:for this model )?is " + _NUMBER + r" queries per minute", re.IGNORECASE)
_AFFORD_RE = re.compile(r"requested up to " + _NUMBER + r" tokens, but can only afford " + _NUMBER, re.IGNORECASE)
_CONTEXT_RES = (
    # OpenAI / DeepSeek: "maximum context length is 4097 tokens. However, you requested 4226 tokens"
    (re.compile(r"maximum context length is " + _NUMBER + r" tokens.*?(?:resulted in|requested) " + _NUMBER,
                re.IGNORECASE | re.DOTALL), False),
    # Anthropic: "prompt is too long: 208310 tokens > 200000 maximum"
    (re.compile(r"prompt is too long: " + _NUMBER + r" tokens > " + _NUMBER, re.IGNORECASE), True),
    # Gemini: "The input token count (1200293) exceeds the maximum number of tokens allowed (1048576)"
    (re.compile(r"input token count \(" + _NUMBER + r"\) exceeds the maximum number of tokens allowed \("
                + _NUMBER, re.IGNORECASE), True),
)


def _limit_hint(err: _Err | None, message: str) -> LimitHint | None:
    """The limit the provider stated in its error, if it stated one."""
    for pattern, requested_first in _CONTEXT_RES:
        match = pattern.search(message)
        if match:
            first, second = _num(match.group(1)), _num(match.group(2))
            limit, requested = (second, first) if requested_first else (first, second)
            return LimitHint("request_tokens", limit=limit, requested=requested)
    match = _AFFORD_RE.search(message)
    if match:
        return LimitHint("request_tokens", limit=_num(match.group(2)), requested=_num(match.group(1)))
    return _google_hint(err, message) or _openrouter_hint(err, message) or _text_hint(message)


#: Anthropic's 400 for a max_tokens above the model's output cap: "max_tokens: 10000 > 4096, which is
#: the maximum allowed number of output tokens for <model>" (quoted in NextChat#4964, claude-code#24451)
_MAX_OUTPUT_RE = re.compile(r"max_tokens:\s*(\d+)\s*>\s*(\d+),\s*which is the maximum allowed number of output tokens")


def _text_hint(message: str) -> LimitHint | None:
    cap = _MAX_OUTPUT_RE.search(message)
    if cap is not None:  # not a rate: the largest answer this model may be asked for
        return LimitHint("max_output_tokens", limit=float(cap.group(2)), requested=float(cap.group(1)))
    kind = _window_kind(message)
    if kind is None:
        return None
    limit = _search_num(_LIMIT_RE, message)
    for pattern in (_ORG_LIMIT_RE, _QPM_RE):
        limit = limit if limit is not None else _search_num(pattern, message)
    return LimitHint(kind, limit=limit, requested=_search_num(_REQUESTED_RE, message),
                     used=_search_num(_USED_RE, message))


def _window_kind(text: str) -> str | None:
    """Which budget a message names: tokens or requests, per minute or per day."""
    t = text.lower()
    tokens = "token" in t
    # Groq's audio limits, named as on https://console.groq.com/docs/rate-limits
    if re.search(r"\(ash\)|audio seconds per hour|seconds of audio per hour", t):
        return "ash"
    if re.search(r"\(asd\)|audio seconds per day|seconds of audio per day", t):
        return "asd"
    if re.search(r"\(tpd\)|tokens per day", t):
        return "tpd"
    if re.search(r"\(rpd\)|requests per day|free-models-per-day", t):
        return "rpd"
    if re.search(r"\(tpm\)|tokens per min|per-minute rate limit|for tokens\b.*?/ ?min", t):
        return "tpm"
    if re.search(r"\(rpm\)|requests per min|queries per minute|free-models-per-min|for requests\b.*?/ ?min", t):
        return "rpm"
    if "per day" in t:
        return "tpd" if tokens else "rpd"
    if re.search(r"concurren(t|cy)|in flight", t):
        return "concurrency"
    return None


def _google_hint(err: _Err | None, message: str) -> LimitHint | None:
    """google.rpc.QuotaFailure violations, or ErrorInfo quota metadata; a per-day one wins."""
    if err is None:
        return None
    candidates: list[tuple[str, float | None]] = []
    for detail in err.details:
        kind_of = str(detail.get("@type", ""))
        if kind_of.endswith("QuotaFailure") and isinstance(detail.get("violations"), list):
            for violation in detail["violations"][:20]:
                if isinstance(violation, dict):
                    name = f"{violation.get('quotaId', '')} {violation.get('quotaMetric', '')}"
                    candidates.append((name, _num(str(violation.get("quotaValue", "")))))
        elif kind_of.endswith("ErrorInfo") and isinstance(detail.get("metadata"), dict):
            meta = detail["metadata"]
            if "quota_limit" in meta:
                candidates.append((f"{meta.get('quota_limit', '')} {meta.get('quota_metric', '')}",
                                   _num(str(meta.get("quota_limit_value", "")))))
    hints = [LimitHint(kind, limit=value if value is not None else _search_num(_LIMIT_RE, message))
             for name, value in candidates if (kind := _quota_kind(name)) is not None]
    daily = [h for h in hints if h.kind in ("rpd", "tpd")]
    return (daily or hints or [None])[0]


def _quota_kind(name: str) -> str | None:
    lowered = name.lower()
    tokens = "token" in lowered
    if "perday" in lowered or "per_day" in lowered:
        return "tpd" if tokens else "rpd"
    if "perminute" in lowered or "per_minute" in lowered:
        return "tpm" if tokens else "rpm"
    return None


def _openrouter_hint(err: _Err | None, message: str) -> LimitHint | None:
    """OpenRouter free-model limits: ``metadata.headers`` X-RateLimit-Limit/Remaining."""
    kind = _window_kind(message)
    body_headers = _body_headers(err)
    limit = _num(body_headers.get("x-ratelimit-limit", ""))
    if kind is None or limit is None:
        return None
    remaining = _num(body_headers.get("x-ratelimit-remaining", ""))
    return LimitHint(kind, limit=limit, used=limit - remaining if remaining is not None else None)


def _body_headers(err: _Err | None) -> dict[str, str]:
    if err is None or not isinstance(err.metadata.get("headers"), dict):
        return {}
    return normalize_headers(err.metadata["headers"])


def _num(text: str) -> float | None:
    try:
        number = float(text.replace(",", ""))
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _search_num(pattern: re.Pattern[str], text: str) -> float | None:
    match = pattern.search(text)
    return _num(match.group(1)) if match else None


# --- retry-after ------------------------------------------------------------------------------

_TRY_AGAIN_RE = re.compile(r"(?:try again|retry) in\s+~?((?:\d+(?:\.\d+)?(?:ns|us|µs|ms|h|m|s))+)(?![a-z])",
                           re.IGNORECASE)
_TRY_AGAIN_WORDS_RE = re.compile(
    r"(?:try again|retry) (?:in|after)\s+(\d+(?:\.\d+)?)\s*(milliseconds?|seconds?|secs?|minutes?|mins?|hours?)\b",
    re.IGNORECASE)
_WORD_UNITS = {"mil": 1e-3, "sec": 1.0, "min": 60.0, "hou": 3600.0}


def _retry_after(h: dict[str, str], err: _Err | None, message: str, hint: LimitHint | None,
                 now: float) -> float | None:
    """How long the provider asked us to wait (see the module docstring for the order)."""
    wait = _first_wait(h, err, message, now)
    if hint is not None and hint.kind in ("rpd", "tpd") and err is not None and err.gstatus == "RESOURCE_EXHAUSTED":
        until_midnight = _seconds_to_pacific_midnight(now)
        wait = until_midnight if wait is None else max(wait, until_midnight)
    return None if wait is None else min(max(wait, 0.0), MAX_WAIT_S)


def _first_wait(h: dict[str, str], err: _Err | None, message: str, now: float) -> float | None:
    snapshot = parse_rate_headers("", h, now)
    if snapshot.retry_after_s is not None:
        return snapshot.retry_after_s
    for wait in (_retry_info(err), _text_wait(message)):
        if wait is not None:
            return wait
    body_snapshot = parse_rate_headers("", _body_headers(err), now)
    if body_snapshot.remaining_requests == 0 and body_snapshot.reset_requests_s is not None:
        return body_snapshot.reset_requests_s
    exhausted = [reset for remaining, reset in ((snapshot.remaining_requests, snapshot.reset_requests_s),
                                                (snapshot.remaining_tokens, snapshot.reset_tokens_s))
                 if remaining == 0 and reset is not None]
    return max(exhausted) if exhausted else None


def _retry_info(err: _Err | None) -> float | None:
    """google.rpc.RetryInfo ``retryDelay``: "37s", or ``{"seconds": 37, "nanos": 0}``."""
    if err is None:
        return None
    for detail in err.details:
        if str(detail.get("@type", "")).endswith("RetryInfo"):
            delay = detail.get("retryDelay")
            if isinstance(delay, dict):
                seconds, nanos = _num(str(delay.get("seconds", 0))), _num(str(delay.get("nanos", 0)))
                if seconds is not None:
                    return seconds + (nanos or 0.0) / 1e9
            elif isinstance(delay, str):
                return parse_duration(delay)
    return None


def _text_wait(message: str) -> float | None:
    """ "Please try again in 7.66s" (OpenAI, Groq), "Please retry in 36.4s" (Gemini), "Please retry after 7
    seconds" (Azure OpenAI)."""
    match = _TRY_AGAIN_RE.search(message)
    if match:
        return parse_duration(match.group(1))
    match = _TRY_AGAIN_WORDS_RE.search(message)
    if match:
        amount = _num(match.group(1))
        unit = _WORD_UNITS.get(match.group(2).lower()[:3], 1.0)
        return None if amount is None else amount * unit
    return None


def _seconds_to_pacific_midnight(now: float) -> float:
    """Seconds until the next midnight in Mountain View, when Gemini's daily quotas reset."""
    try:
        from zoneinfo import ZoneInfo

        zone: Any = ZoneInfo("America/Los_Angeles")
    except Exception:  # no tz database: Pacific standard time is off by at most an hour
        zone = timezone(timedelta(hours=-8))
    local = datetime.fromtimestamp(now, zone)
    midnight = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(0.0, midnight.timestamp() - now)


