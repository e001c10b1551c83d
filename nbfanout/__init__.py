"""nbfanout: send prompts to many LLMs at once, inside every provider's limits.

``%load_ext nbfanout`` registers the ``%%fanout`` magic in IPython / Jupyter.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from nbfanout.config import Config, load_config
from nbfanout.core.batch import BatchJob, BatchState
from nbfanout.core.errors import (
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
    classify_error,
)
from nbfanout.core.events import BatchProgress, Cooldown, Event
from nbfanout.core.fanout import Fanout, Plan
from nbfanout.core.headers import RateSnapshot, parse_rate_headers
from nbfanout.core.results import Attempt, BatchResult, FanoutResult, ModelResult
from nbfanout.core.retry import RetryPolicy
from nbfanout.core.store import SharedConfig, SharedUnavailable
from nbfanout.providers.base import Message, Tool, ToolCall

try:
    __version__ = version("nbfanout")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"


def start_sandbox(scenario: str = "seed15", **kwargs):  # type: ignore[no-untyped-def]
    """Start the built-in simulated provider server in a background thread (see nbfanout.sandbox)."""
    from nbfanout.sandbox import start_sandbox as _start

    return _start(scenario, **kwargs)


def load_ipython_extension(ipython):  # type: ignore[no-untyped-def]
    """``%load_ext nbfanout``: registers the magics (imported lazily, so the core never needs IPython)."""
    from nbfanout.notebook.magics import load_ipython_extension as _load

    _load(ipython)


__all__ = [
    "Attempt",
    "BatchJob",
    "BatchProgress",
    "BatchResult",
    "BatchState",
    "Config",
    "ConfigError",
    "Cooldown",
    "ErrorCategory",
    "ErrorInfo",
    "Event",
    "Fanout",
    "FanoutError",
    "FanoutResult",
    "LimitHint",
    "Message",
    "MissingKeyError",
    "ModelResult",
    "NoModelsAvailable",
    "Plan",
    "ProviderError",
    "RateSnapshot",
    "RetryPolicy",
    "SharedConfig",
    "SharedUnavailable",
    "Tool",
    "ToolCall",
    "UnknownModelError",
    "UsageError",
    "__version__",
    "classify_error",
    "load_config",
    "parse_rate_headers",
    "start_sandbox",
]
