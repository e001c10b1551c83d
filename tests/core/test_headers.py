"""parse_rate_headers and parse_duration against providers' real headers (sources in comments)."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

from nbfanout.core import headers as headers_module
from nbfanout.core.headers import MAX_WAIT_S, RateSnapshot, normalize_headers, parse_duration, parse_rate_headers


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc).timestamp()


def test_all_is_sorted_and_complete() -> None:
    assert headers_module.__all__ == sorted(headers_module.__all__)
    for name in headers_module.__all__:
        assert hasattr(headers_module, name)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),  # OpenAI rate-limits guide / thoughtbot.com/blog/openai-rate-limits
        ("1s", 1.0),
        ("1.2s", 1.2),
        ("6ms", 0.006),  # github.com/Pythagora-io/gpt-pilot/issues/17
        ("20s", 20.0),
        ("1h2m3.5s", 3723.5),
        ("2m59.56s", 179.56),  # Groq docs example, quoted in github.com/Pythagora-io/gpt-pilot/issues/862
        ("9m38.016s", 578.016),  # github.com/continuedev/continue/issues/10920
        ("1.984999999s", 1.984999999),  # github.com/ago19800/HomeMind/issues/29
        ("36.429760048s", 36.429760048),  # Gemini "Please retry in …", github.com/diegosouzapw/OmniRoute/issues/9504
        ("250us", 0.00025),
        ("0s", 0.0),
        ("2", 2.0),  # Retry-After in seconds
        ("1.5", 1.5),
        (" 7.66s ", 7.66),
    ],
)
def test_parse_duration_go_style_and_numbers(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_parse_duration_timestamps_relative_to_now() -> None:
    now = epoch("2025-08-21T12:40:00Z")
    assert parse_duration("2025-08-21T12:40:59Z", now) == pytest.approx(59.0)  # Anthropic reset (RFC 3339)
    assert parse_duration("2025-08-21T12:40:59.250Z", now) == pytest.approx(59.25)
    assert parse_duration("2025-08-21T14:40:59+02:00", now) == pytest.approx(59.0)
    assert parse_duration("2025-08-21T12:39:00Z", now) == 0.0  # already reset
    assert parse_duration("Thu, 21 Aug 2025 12:41:00 GMT", now) == pytest.approx(60.0)  # HTTP-date (RFC 9110)
    assert parse_duration("2099-01-01T00:00:00Z", now) == MAX_WAIT_S


@pytest.mark.parametrize(
    "junk",
    [None, "", "   ", "soon", "-5", "-1s", "nan", "inf", "1e999", "6x", "m", "s6", "2025-13-45T99:99:99Z",
     "Thu, 99 Foo 2025", True, [], {}, object(), b"\xff\xfe", "9" * 400],
)
def test_parse_duration_junk_is_none(junk: Any) -> None:
    assert parse_duration(junk) is None


def test_parse_duration_numbers_and_bytes() -> None:
    assert parse_duration(3) == 3.0
    assert parse_duration(-3) is None
    assert parse_duration(b"6m0s") == 360.0
    assert parse_duration(10**12) == MAX_WAIT_S


def test_openai_headers() -> None:
    # As printed in community.openai.com/t/how-to-get-rate-limit-reset-time-for-response-api/1268905
    raw = {
        "x-ratelimit-limit-requests": "5000",
        "x-ratelimit-limit-tokens": "160000",
        "x-ratelimit-limit-tokens_usage_based": "160000",
        "x-ratelimit-remaining-requests": "4999",
        "x-ratelimit-remaining-tokens": "159976",
        "x-ratelimit-remaining-tokens_usage_based": "159976",
        "x-ratelimit-reset-requests": "12ms",
        "x-ratelimit-reset-tokens": "9ms",
        "x-ratelimit-reset-tokens_usage_based": "9ms",
    }
    snap = parse_rate_headers("openai", raw)
    assert (snap.limit_requests, snap.remaining_requests, snap.limit_tokens, snap.remaining_tokens) == (
        5000, 4999, 160000, 159976)
    assert snap.reset_requests_s == pytest.approx(0.012)
    assert snap.reset_tokens_s == pytest.approx(0.009)
    assert snap.retry_after_s is None and not snap.empty


def test_groq_headers_on_a_429() -> None:
    # Groq's documented example (console.groq.com/docs/rate-limits), quoted in
    # github.com/Pythagora-io/gpt-pilot/issues/862; requests count per day, tokens per minute.
    raw = {
        "retry-after": "2",
        "x-ratelimit-limit-requests": "14400",
        "x-ratelimit-limit-tokens": "18000",
        "x-ratelimit-remaining-requests": "14370",
        "x-ratelimit-remaining-tokens": "17997",
        "x-ratelimit-reset-requests": "2m59.56s",
        "x-ratelimit-reset-tokens": "7.66s",
    }
    assert parse_rate_headers("groq", raw) == RateSnapshot(
        limit_requests=14400, remaining_requests=14370, reset_requests_s=pytest.approx(179.56),
        limit_tokens=18000, remaining_tokens=17997, reset_tokens_s=pytest.approx(7.66), retry_after_s=2.0)


# Recorded Anthropic response headers: rdrr.io/cran/tidyllm/src/tests/testthat/claude/api.anthropic.com/v1/
# messages-e050b5-POST.R (Date: Thu, 21 Aug 2025 12:41:00 GMT).
ANTHROPIC = {
    "date": "Thu, 21 Aug 2025 12:41:00 GMT",
    "anthropic-ratelimit-input-tokens-limit": "80000",
    "anthropic-ratelimit-input-tokens-remaining": "80000",
    "anthropic-ratelimit-input-tokens-reset": "2025-08-21T12:40:59Z",
    "anthropic-ratelimit-output-tokens-limit": "16000",
    "anthropic-ratelimit-output-tokens-remaining": "16000",
    "anthropic-ratelimit-output-tokens-reset": "2025-08-21T12:41:00Z",
    "anthropic-ratelimit-requests-limit": "1000",
    "anthropic-ratelimit-requests-remaining": "999",
    "anthropic-ratelimit-requests-reset": "2025-08-21T12:40:59Z",
    "anthropic-ratelimit-tokens-limit": "96000",
    "anthropic-ratelimit-tokens-remaining": "96000",
    "anthropic-ratelimit-tokens-reset": "2025-08-21T12:40:59Z",
    "request-id": "req_011CSLsW7mFqvHHnzrKdKjAE",
}


def test_anthropic_headers() -> None:
    snap = parse_rate_headers("anthropic", ANTHROPIC, now=epoch("2025-08-21T12:41:00Z"))
    assert (snap.limit_requests, snap.remaining_requests, snap.limit_tokens, snap.remaining_tokens) == (
        1000, 999, 96000, 96000)
    assert snap.reset_requests_s == 0.0 and snap.reset_tokens_s == 0.0  # resets already passed at receipt
    earlier = parse_rate_headers("anthropic", ANTHROPIC, now=epoch("2025-08-21T12:40:30Z"))
    assert earlier.reset_requests_s == pytest.approx(29.0)


def test_anthropic_split_token_headers_report_the_binding_one() -> None:
    split = {k: v for k, v in ANTHROPIC.items() if not k.startswith("anthropic-ratelimit-tokens-")}
    now = epoch("2025-08-21T12:40:00Z")
    snap = parse_rate_headers("anthropic", split, now=now)
    assert (snap.limit_tokens, snap.remaining_tokens) == (80000, 80000)  # a tie: input first
    nearly_out = split | {"anthropic-ratelimit-output-tokens-remaining": "100"}
    snap = parse_rate_headers("anthropic", nearly_out, now=now)
    assert (snap.limit_tokens, snap.remaining_tokens, snap.reset_tokens_s) == (16000, 100, pytest.approx(60.0))


def test_openrouter_headers_reset_in_epoch_ms() -> None:
    # Values from the free-models-per-day error in github.com/Aider-AI/aider/issues/3550
    raw = {"X-RateLimit-Limit": "200", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1743292800000"}
    snap = parse_rate_headers("openrouter", raw, now=1743292800 - 90)
    assert (snap.limit_requests, snap.remaining_requests, snap.reset_requests_s) == (200, 0, pytest.approx(90.0))


def test_together_headers() -> None:
    # Header names from support.together.ai/en/articles/8988956-rate-limits ("time until reset");
    # x-tokenlimit-* as listed for Together's serverless inference. Values illustrative.
    raw = {"x-ratelimit-limit": "60", "x-ratelimit-remaining": "59", "x-ratelimit-reset": "1",
           "x-tokenlimit-limit": "60000", "x-tokenlimit-remaining": "59000"}
    snap = parse_rate_headers("together", raw)
    assert (snap.limit_requests, snap.remaining_requests, snap.reset_requests_s) == (60, 59, 1.0)
    assert (snap.limit_tokens, snap.remaining_tokens) == (60000, 59000)


def test_mistral_headers() -> None:
    # Header names as read by tidyllm's Mistral client (rdrr.io/cran/tidyllm/src/R/api_mistral.R). Values illustrative.
    raw = {"x-ratelimitbysize-limit-minute": "500000", "x-ratelimitbysize-remaining-minute": "498000",
           "ratelimitbysize-reset": "37"}
    snap = parse_rate_headers("mistral", raw)
    assert (snap.limit_tokens, snap.remaining_tokens, snap.reset_tokens_s) == (500000, 498000, 37.0)
    assert snap.limit_requests is None


def test_azure_minus_one_means_unknown() -> None:
    # learn.microsoft.com/en-us/answers/questions/5625878 (Responses API headers of -1 and 0)
    raw = {"x-ratelimit-limit-tokens": "-1", "x-ratelimit-remaining-tokens": "-1", "x-ratelimit-reset-tokens": "0"}
    assert parse_rate_headers("azure", raw).empty


def test_gemini_sends_none() -> None:
    raw = {"content-type": "application/json", "server": "scaffolding on HTTPServer2"}
    assert parse_rate_headers("gemini", raw).empty


def test_retry_after_forms() -> None:
    now = epoch("2015-10-21T07:20:00Z")
    assert parse_rate_headers("x", {"Retry-After": "120"}).retry_after_s == 120.0
    assert parse_rate_headers("x", {"retry-after-ms": "250", "retry-after": "9"}).retry_after_s == 0.25
    assert parse_rate_headers("x", {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=now).retry_after_s == 480.0
    assert parse_rate_headers("x", {"retry-after": "-1"}).retry_after_s is None
    assert parse_rate_headers("x", {"retry-after": "1e12"}).retry_after_s == MAX_WAIT_S


def test_case_insensitive_for_any_mapping() -> None:
    expected = parse_rate_headers("groq", {"x-ratelimit-limit-tokens": "6000", "x-ratelimit-reset-tokens": "7.66s"})
    mixed = {"X-RateLimit-Limit-Tokens": "6000", "X-RATELIMIT-RESET-TOKENS": "7.66s"}
    assert parse_rate_headers("groq", mixed) == expected
    assert parse_rate_headers("groq", httpx.Headers(mixed)) == expected
    assert parse_rate_headers("groq", list(mixed.items())) == expected  # type: ignore[arg-type]


def test_repeated_headers_joined_by_httpx() -> None:
    joined = httpx.Headers([("x-ratelimit-limit-requests", "14400"), ("x-ratelimit-limit-requests", "14400"),
                            ("x-ratelimit-reset-requests", "6m0s"), ("x-ratelimit-reset-requests", "6m0s")])
    snap = parse_rate_headers("groq", joined)
    assert (snap.limit_requests, snap.reset_requests_s) == (14400, 360.0)


def test_normalize_headers_odd_containers() -> None:
    assert normalize_headers(None) == {}
    assert normalize_headers("junk") == {}
    assert normalize_headers(42) == {}
    assert normalize_headers([("A", "1"), ("bad",), 3]) == {"a": "1"}
    assert normalize_headers({b"X-Key": b"\xffv"}) == {"x-key": "\ufffdv"}


@pytest.mark.parametrize("headers", [None, {}, "junk", 42, [(1, 2)], {"retry-after": None},
                                     {"x-ratelimit-limit-requests": "lots", "x-ratelimit-reset-requests": "?"},
                                     {"x-ratelimit-limit": "1e400", "x-ratelimit-reset": "nan"}])
def test_odd_headers_never_raise(headers: Any) -> None:
    assert isinstance(parse_rate_headers("p", headers), RateSnapshot)


def test_fuzz_header_values() -> None:
    rng = random.Random(7)
    names = ["retry-after", "retry-after-ms", "x-ratelimit-limit-requests", "x-ratelimit-reset-tokens",
             "x-ratelimit-reset", "anthropic-ratelimit-tokens-reset", "ratelimitbysize-reset", "x-tokenlimit-limit"]
    alphabet = "0123456789.-+:TZhms ,eEnaiGMTWed"
    for _ in range(3000):
        raw = {rng.choice(names): "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
               for _ in range(rng.randint(0, 4))}
        snap = parse_rate_headers("p", raw, now=1.7e9)
        for value in (snap.reset_requests_s, snap.reset_tokens_s, snap.retry_after_s):
            assert value is None or 0 <= value <= MAX_WAIT_S
        for count in (snap.limit_requests, snap.remaining_requests, snap.limit_tokens, snap.remaining_tokens):
            assert count is None or count >= 0


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_RATE_NAMES = [f"{p}-{k}-{w}" for p in ("x-ratelimit", "anthropic-ratelimit") for k in ("limit", "remaining", "reset")
               for w in ("requests", "tokens", "input-tokens", "output-tokens")] + [
    "retry-after", "retry-after-ms", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset",
    "x-ratelimit-limit-requests-day", "x-ratelimit-reset-requests-day"]


@settings(max_examples=500, deadline=None)
@given(provider=st.sampled_from(["openai", "anthropic", "gemini", "groq", "openrouter", "together", "custom"]),
       headers=st.dictionaries(st.sampled_from(_RATE_NAMES) | st.text(max_size=12),
                               st.sampled_from(["0", "-1", "12", "1e400", "nan", "inf", "6m0s", "1.5s", "20ms",
                                                "99999999h", "2026-12-03T10:00:00Z", "Thu, 03 Dec 2026 10:00:00 GMT",
                                                "", "x"]) | st.text(max_size=30), max_size=10))
def test_parse_rate_headers_never_raises_and_gives_no_negative_or_infinite_numbers(provider, headers) -> None:
    snap = parse_rate_headers(provider, headers)
    assert isinstance(snap, RateSnapshot)
    for name in ("limit_requests", "remaining_requests", "reset_requests_s", "limit_tokens", "remaining_tokens",
                 "reset_tokens_s"):
        value = getattr(snap, name, None)
        assert value is None or (value >= 0 and value == value and value != float("inf")), (name, value)
