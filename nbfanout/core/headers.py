"""Rate-limit headers → RateSnapshot (limit / remaining / reset for requests and tokens).

Header families understood (lookups are case-insensitive; every family is tried for every
provider id, because OpenAI-compatible hosts and gateways reuse the same names):

* ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` — OpenAI, Groq, DeepSeek,
  Mistral, OpenRouter. Resets are Go durations: ``"6m0s"``, ``"7.66s"``, ``"12ms"``
  (OpenAI rate-limits guide). On Groq the requests headers count requests per *day* and
  the tokens headers tokens per *minute* (Groq rate-limits doc).
* ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}``
  — resets are RFC 3339 timestamps (Anthropic rate-limits doc). Without the combined
  ``tokens`` headers, the input/output pair that is closer to exhaustion is reported.
* ``x-ratelimit-{limit,remaining,reset}`` — requests on OpenRouter (reset in epoch
  milliseconds, OpenRouter limits doc) and Together (reset in seconds, Together rate-limits
  doc); ``x-tokenlimit-{limit,remaining}`` — Together tokens.
* ``x-ratelimitbysize-{limit,remaining}-minute`` and ``ratelimitbysize-reset`` — Mistral
  tokens per minute (as read by tidyllm's Mistral client).
* ``retry-after-ms`` and ``retry-after`` (seconds or an HTTP-date, RFC 9110).

Gemini normally sends none of these; its wait is in the error body (see classify_error).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any

__all__ = ["MAX_WAIT_S", "RateSnapshot", "normalize_headers", "parse_duration", "parse_rate_headers"]

#: Longest wait we report (a week). Larger values are clamped: they are garbage or a
#: monthly cap, and either way the caller should not plan to wait for them.
MAX_WAIT_S: float = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class RateSnapshot:
    """What a provider's headers said about its limits; None where a header was absent.

    Reset values are seconds from the moment the headers were received.
    """

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None
    retry_after_s: float | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, f) is None for f in self.__slots__)  # type: ignore[attr-defined]


def normalize_headers(headers: Any) -> dict[str, str]:
    """Any header container (Mapping, httpx.Headers, pairs, None, junk) → lower-case name → value.

    Plain dicts are case-sensitive, httpx.Headers is not; lower-casing once makes both alike.
    """
    if headers is None:
        return {}
    try:
        items: Iterable[Any] = headers.items() if hasattr(headers, "items") else headers
        out: dict[str, str] = {}
        for pair in items:
            try:
                name, value = pair
            except (TypeError, ValueError):
                continue
            out[_text(name).strip().lower()] = _text(value).strip()
        return out
    except Exception:  # a broken container must not break error handling
        return {}


def parse_duration(text: Any, now: float | None = None) -> float | None:
    """Seconds until a provider's "reset"/"retry" value, or None when it can't be read.

    Accepts Go durations (``"6m0s"``, ``"1.2s"``, ``"6ms"``, ``"1h2m3.5s"``), bare numbers
    of seconds, RFC 3339 timestamps (Anthropic) and HTTP-dates (``Retry-After``); the
    timestamps are measured from ``now`` (epoch seconds, default: the current time) and
    a time in the past gives 0. Results are clamped to ``MAX_WAIT_S``.
    """
    if isinstance(text, bool) or text is None:
        return None
    if isinstance(text, (int, float)):
        return _clamp_wait(float(text))
    value = _text(text).strip()
    if not value or len(value) > 200:
        return None
    number = _float(value)
    if number is not None:
        return _clamp_wait(number)
    if _GO_DURATION.fullmatch(value.lower()):
        total = sum(float(n) * _GO_UNITS[u] for n, u in _GO_PART.findall(value.lower()))
        return _clamp_wait(total)
    moment = _parse_timestamp(value)
    if moment is None:
        return None
    current = time.time() if now is None else now
    return _clamp_wait(max(0.0, moment - current))


def parse_rate_headers(provider: str, headers: Mapping[str, str] | None, now: float | None = None) -> RateSnapshot:
    """Read a provider's rate-limit headers into a RateSnapshot; never raises.

    ``provider`` is part of the stable signature; names are recognised whatever the id.
    Negative values (Azure sends ``-1`` for "unknown") are treated as absent.
    """
    try:
        h = normalize_headers(headers)
        current = time.time() if now is None else now
        requests = _first_family(h, _REQUEST_FAMILIES, current)
        tokens = _first_family(h, _token_families(h), current)
        return RateSnapshot(
            limit_requests=requests[0],
            remaining_requests=requests[1],
            reset_requests_s=requests[2],
            limit_tokens=tokens[0],
            remaining_tokens=tokens[1],
            reset_tokens_s=tokens[2],
            retry_after_s=retry_after_from(h, current),
        )
    except Exception:  # headers are advisory: a surprise in them must not fail a call
        return RateSnapshot()


def retry_after_from(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait asked for by ``retry-after-ms`` or ``retry-after`` in lower-cased headers."""
    millis = _float(_first_item(headers.get("retry-after-ms", "")))
    if millis is not None:
        return _clamp_wait(millis / 1000.0)
    raw = headers.get("retry-after")
    return None if raw is None else _duration_reset(raw, now)


# --- helpers -------------------------------------------------------------------------

_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ns": 1e-9}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|h|m|s)")
_GO_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|h|m|s))+")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?\s*(Z|z|[+-]\d{2}:?\d{2})?"
)

_Triple = tuple[int | None, int | None, float | None]
_Family = tuple[str, str, str, Callable[[str, float], float | None]]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


def _first_item(value: str) -> str:
    """First of comma-joined repeated header values (httpx joins duplicates with ", ")."""
    return value.split(",", 1)[0].strip()


def _float(value: str) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _clamp_wait(seconds: float) -> float | None:
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_WAIT_S)


def _count(value: str | None) -> int | None:
    if value is None:
        return None
    number = _float(_first_item(value))
    if number is None or number < 0 or number > 1e15:
        return None
    return int(number)


def _parse_timestamp(value: str) -> float | None:
    """Epoch seconds of an RFC 3339 timestamp or an HTTP-date, else None."""
    match = _RFC3339.fullmatch(value)
    if match:
        year, month, day, hour, minute, second, fraction, offset = match.groups()
        try:
            moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                              tzinfo=_offset(offset))
        except ValueError:
            return None
        return moment.timestamp() + (float("0." + fraction) if fraction else 0.0)
    if not any(c.isalpha() for c in value):
        return None
    try:
        moment = parsedate_to_datetime(value)
    except Exception:  # email.utils raises TypeError/ValueError/IndexError on junk
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _offset(text: str | None) -> timezone:
    if not text or text in "Zz":
        return timezone.utc
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:4])))


def _duration_reset(value: str, now: float) -> float | None:
    """A duration, number or timestamp; a comma-joined repeat is read by its first item.

    An HTTP-date has a comma of its own, so the whole value is tried when the first item fails.
    """
    first = parse_duration(_first_item(value), now)
    return first if first is not None else parse_duration(value, now)


def _epoch_or_seconds_reset(value: str, now: float) -> float | None:
    """``x-ratelimit-reset``: epoch ms (OpenRouter), epoch s, or seconds to wait (Together)."""
    number = _float(_first_item(value))
    if number is None:
        return parse_duration(value, now)
    if number > 1e11:
        return _clamp_wait(max(0.0, number / 1000.0 - now))
    if number > 1e9:
        return _clamp_wait(max(0.0, number - now))
    return _clamp_wait(number)


def _triple(h: Mapping[str, str], family: _Family, now: float) -> _Triple:
    limit_name, remaining_name, reset_name, reset_parser = family
    reset_raw = h.get(reset_name) if reset_name else None
    reset = reset_parser(reset_raw, now) if reset_raw else None
    return _count(h.get(limit_name)), _count(h.get(remaining_name)), reset


def _first_family(h: Mapping[str, str], families: Iterable[_Family], now: float) -> _Triple:
    for family in families:
        found = _triple(h, family, now)
        if found[0] is not None or found[1] is not None:
            return found
    return None, None, None


_REQUEST_FAMILIES: tuple[_Family, ...] = (
    ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests", _duration_reset),
    ("anthropic-ratelimit-requests-limit", "anthropic-ratelimit-requests-remaining",
     "anthropic-ratelimit-requests-reset", _duration_reset),
    ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", _epoch_or_seconds_reset),
)


def _token_families(h: Mapping[str, str]) -> list[_Family]:
    families: list[_Family] = [
        ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens", _duration_reset),
        ("anthropic-ratelimit-tokens-limit", "anthropic-ratelimit-tokens-remaining",
         "anthropic-ratelimit-tokens-reset", _duration_reset),
    ]
    families.extend(sorted(_ANTHROPIC_SPLIT, key=lambda family: _headroom(h, family)))
    families.extend((
        ("x-ratelimitbysize-limit-minute", "x-ratelimitbysize-remaining-minute", "ratelimitbysize-reset",
         _epoch_or_seconds_reset),
        ("ratelimitbysize-limit", "ratelimitbysize-remaining", "ratelimitbysize-reset", _epoch_or_seconds_reset),
        ("x-tokenlimit-limit", "x-tokenlimit-remaining", "", _epoch_or_seconds_reset),
    ))
    return families


_ANTHROPIC_SPLIT: tuple[_Family, ...] = tuple(
    (f"anthropic-ratelimit-{kind}-limit", f"anthropic-ratelimit-{kind}-remaining",
     f"anthropic-ratelimit-{kind}-reset", _duration_reset)
    for kind in ("input-tokens", "output-tokens")
)


def _headroom(h: Mapping[str, str], family: _Family) -> float:
    """Fraction of a limit still available (lower = binding); unknown sorts last."""
    limit, remaining = _count(h.get(family[0])), _count(h.get(family[1]))
    if limit and remaining is not None:
        return remaining / limit
    return 2.0 if limit is None and remaining is None else 1.5
