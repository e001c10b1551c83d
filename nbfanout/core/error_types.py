"""The error types: categories, a classified failure, and the exception tree rooted at ``FanoutError``.

This module imports nothing of nbfanout's, so anything may import it; ``nbfanout.core.errors``
re-exports these with ``classify_error``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ConfigError",
    "ErrorCategory",
    "ErrorInfo",
    "FanoutError",
    "LimitHint",
    "MissingKeyError",
    "NoModelsAvailable",
    "ProviderError",
    "UnknownModelError",
    "UsageError",
    "RETRYABLE",
]


class ErrorCategory(str, enum.Enum):
    """Why a call failed. String values are part of the stable surface (design.md)."""

    RATE_LIMIT = "rate_limit"
    QUOTA_EXHAUSTED = "quota_exhausted"
    OVERLOADED = "overloaded"
    AUTH = "auth"
    PERMISSION = "permission"
    NOT_FOUND = "not_found"
    CONTEXT_LENGTH = "context_length"
    CONTENT_POLICY = "content_policy"
    BAD_REQUEST = "bad_request"
    TIMEOUT = "timeout"
    SERVER_ERROR = "server_error"
    NETWORK = "network"
    MISSING_KEY = "missing_key"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


#: Categories worth another attempt (after the wait the provider asks for).
RETRYABLE: frozenset[ErrorCategory] = frozenset(
    {
        ErrorCategory.RATE_LIMIT,
        ErrorCategory.OVERLOADED,
        ErrorCategory.TIMEOUT,
        ErrorCategory.SERVER_ERROR,
        ErrorCategory.NETWORK,
    }
)


@dataclass(frozen=True, slots=True)
class LimitHint:
    """A limit stated by the provider in an error body, e.g. Groq's "Limit 30000, Requested 83690".

    ``kind`` is one of ``"rpm"``, ``"tpm"``, ``"rpd"``, ``"tpd"``, ``"ash"``, ``"asd"``, ``"concurrency"``,
    ``"request_tokens"`` (a single request larger than allowed), ``"max_output_tokens"`` (a
    ``max_tokens`` above the model's output cap: ``limit`` is the cap, ``requested`` what was asked).
    """

    kind: str
    limit: float | None = None
    requested: float | None = None
    used: float | None = None


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A classified failure: category, whether retrying can help, and how long to wait."""

    category: ErrorCategory
    retryable: bool
    message: str
    status: int | None = None
    retry_after_s: float | None = None
    limit_hint: LimitHint | None = None
    provider: str | None = None
    provider_code: str | None = None  # the provider's own error type/code, e.g. "insufficient_quota"


class FanoutError(Exception):
    """Root of every exception nbfanout raises."""


class ConfigError(FanoutError):
    """A config file or value is invalid; the message names file, key, found and expected."""

    def __init__(self, message: str, *, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or (message,)


class UsageError(FanoutError):
    """The API or command line was used wrongly (bad argument, empty model list, ...)."""


class UnknownModelError(UsageError):
    """A model name that neither the catalog nor the config knows."""

    def __init__(self, name: str, suggestions: tuple[str, ...] = ()) -> None:
        self.name = name
        self.suggestions = suggestions
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(
            f"Unknown model {name!r}.{hint} "
            "Run `nbfanout models` to list every model, or add it under [providers.<id>].models in nbfanout.toml."
        )


class MissingKeyError(FanoutError):
    """A provider has no API key; the message names the environment variable(s) to set."""

    def __init__(self, provider: str, variables: tuple[str, ...]) -> None:
        self.provider = provider
        self.variables = variables
        names = " or ".join(variables) if variables else f"{provider.upper()}_API_KEY"
        super().__init__(f"No API key for provider {provider!r}: set {names} (or api_key_env in nbfanout.toml).")


class ProviderError(FanoutError):
    """A provider call failed; ``info`` says how (category, status, provider message)."""

    def __init__(self, info: ErrorInfo, rate: Any = None) -> None:
        self.info = info
        self.rate = rate  # the RateSnapshot of the refusing response's headers, when there was one
        where = f"HTTP {info.status}" if info.status is not None else "no response"
        super().__init__(f"{info.category.value} ({where}): {info.message}")


class NoModelsAvailable(ProviderError):
    """Every candidate model was busy, failing or without a key."""
