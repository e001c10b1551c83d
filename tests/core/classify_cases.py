"""What the classifier tests share: a real error as a ``Case``, the provider envelopes its bodies come
in, and the one check every sourced case must pass (tests/core/test_classify*.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest

from nbfanout.core.errors import RETRYABLE, ErrorCategory, LimitHint, classify_error

C = ErrorCategory


def epoch(text: str) -> float:
    """RFC 3339 → epoch seconds, to pin ``now`` in cases that depend on the clock."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc).timestamp()


def openai_error(message: str, type_: str | None, code: str | None, param: str | None = None) -> str:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def anthropic_error(type_: str, message: str, request_id: str | None = None) -> str:
    body: dict[str, Any] = {"type": "error", "error": {"type": type_, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return json.dumps(body)


def google_error(code: int, message: str, status: str, details: list[dict[str, Any]] | None = None,
                 **extra: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, **extra, "status": status}
    if details is not None:
        error["details"] = details
    return {"error": error}


def sdk_wrapped(inner: Any, code: int, reason: str) -> str:
    """How @google/genai (gemini-cli, continue, Roo-Code) re-wraps Google's JSON error text."""
    return json.dumps({"error": {"message": json.dumps(inner, indent=2) + "\n", "code": code, "status": reason}})


@dataclass(frozen=True)
class Case:
    id: str
    provider: str
    status: int | None
    body: str | bytes | None
    category: ErrorCategory
    retry: float | None = None
    hint: LimitHint | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    now: float | None = None
    contains: str | None = None


def check(case: Case) -> None:
    """The classification of ``case`` is what the provider's words and headers say, and readable."""
    info = classify_error(case.provider, case.status, case.headers, case.body, now=case.now)
    assert info.category is case.category
    assert info.retryable == (case.category in RETRYABLE)
    assert info.status == case.status
    assert info.provider == case.provider
    if case.retry is None:
        assert info.retry_after_s is None
    else:
        assert info.retry_after_s == pytest.approx(case.retry, abs=1e-3)
    assert info.limit_hint == case.hint
    if case.code is not None:
        assert info.provider_code == case.code
    if case.contains is not None:
        assert case.contains in info.message
    assert info.message and "<html" not in info.message.lower()
