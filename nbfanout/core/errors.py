"""The error taxonomy: what went wrong with a model call, precisely, and whether to retry.

Exception tree (every exception nbfanout raises derives from ``FanoutError``)::

    FanoutError
    ├── ConfigError            bad config file or value (file, key, found, expected)
    ├── UsageError             misuse of the API or command line
    │   └── UnknownModelError  a model name not in the catalog (lists close names)
    ├── MissingKeyError        a provider has no API key (names the variable to set)
    └── ProviderError          a call failed; carries an ErrorInfo
        └── NoModelsAvailable  rotation found nothing to send to

``classify_error(provider, status, headers, body) -> ErrorInfo`` turns any provider
failure (or no response at all: ``status=None``) into a category from ``ErrorCategory``.
"""

from __future__ import annotations

from nbfanout.core import error_types
from nbfanout.core._classify import classify_error
from nbfanout.core.error_types import (
    RETRYABLE,
    ConfigError,
    ErrorCategory,
    ErrorInfo,
    FanoutError,
    LimitHint,
    MissingKeyError,
    NoModelsAvailable,
    ProviderError,
    UnknownModelError,
    UsageError,
)

__all__ = [*error_types.__all__, "classify_error"]
