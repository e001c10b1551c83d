"""Keys never shown: the one place that masks a key and redacts keys from any text.

Every key the process loads is remembered (``remember``, called by the config loader), so
``redact`` removes it wherever it turns up: in a provider's error message, in an answer that
echoes it, upper-cased, lower-cased or percent-encoded. Key-shaped strings of the providers'
own formats and passwords in URLs are redacted too, known or not. What remains of a key is
``…`` and its last four characters.
"""

from __future__ import annotations

import re
from urllib.parse import quote, quote_plus

__all__ = ["mask", "redact", "redact_url", "remember"]

#: Keys shorter than this are not redacted inside texts: they would match ordinary words.
_MIN_SECRET = 8

_known: set[str] = set()
#: (form, mask) for every form of every known key, longest key first: rebuilt when a key is learned,
#: not at every redaction (answers and streamed fragments are redacted as they arrive)
_known_forms: list[tuple[str, str]] = []

_KEY_PATTERNS = (
    # OpenAI, Anthropic (sk-ant-), OpenRouter (sk-or-v1-), DeepSeek; also half-masked "sk-PMafP****E873"
    re.compile(r"(?<![A-Za-z0-9])(?:sk|rk|pk)-[A-Za-z0-9_\-*]{8,}"),
    re.compile(r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_\-]{20,}"),  # Google API keys
    re.compile(r"(?<![A-Za-z0-9])gsk_[A-Za-z0-9]{16,}"),  # Groq
    re.compile(r"(?<![A-Za-z0-9])xai-[A-Za-z0-9]{16,}"),  # xAI
    re.compile(r"(?<=Bearer )[A-Za-z0-9_\-.~+/]{16,}=*", re.IGNORECASE),
    re.compile(r"(?<=[?&]key=)[A-Za-z0-9_\-]{8,}"),
)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.\-]*://[^\s/:@]*:)(?P<password>[^\s/@]+)(?=@)", re.IGNORECASE)


def mask(key: str | None) -> str:
    """``…`` and the last four characters of ``key`` ("" when there is none); a masked key stays as it is."""
    if not key:
        return ""
    key = str(key)
    if key.startswith("…") and len(key) <= 5:
        return key
    return "…" + key[-4:]


def remember(key: str) -> None:
    """Redact ``key`` from every text ``redact`` sees from now on."""
    if len(key) >= _MIN_SECRET and key not in _known:
        _known.add(key)
        _known_forms[:] = [(form, mask(k)) for k in sorted(_known, key=len, reverse=True) for form in _forms(k)]


def _forms(secret: str) -> set[str]:
    return {secret, secret.upper(), secret.lower(), quote(secret, safe=""), quote_plus(secret)}


def redact(text: str, *secrets: str) -> str:
    """``text`` with every known key (and ``secrets``), in any of its usual forms, masked; key-shaped
    strings and URL passwords too."""
    if not text:
        return text
    extra = [(form, mask(s)) for s in secrets if len(s) >= _MIN_SECRET and s not in _known for form in _forms(s)]
    for form, shown in (*extra, *_known_forms):
        if form in text:
            text = text.replace(form, shown)
    for pattern in _KEY_PATTERNS:
        text = pattern.sub(lambda m: mask(m.group(0)), text)
    return redact_url(text)


def redact_url(text: str) -> str:
    """``scheme://user:password@host`` written as ``scheme://user:****@host``."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + "****", text)
