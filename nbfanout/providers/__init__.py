"""Provider adapters, one per wire format: ``openai`` (and every compatible server), ``anthropic``, ``gemini``.

Adapters are stateless; ``adapter_for(wire)`` returns a shared instance. Each one sends a
``ChatRequest`` with a caller-owned ``httpx.AsyncClient`` and returns a ``ChatResponse``,
or raises ``ProviderError`` whose ``info`` says what went wrong (see ``_http`` for how
every failure is mapped).
"""

from __future__ import annotations

from nbfanout.core.errors import UsageError
from nbfanout.providers.anthropic import AnthropicAdapter
from nbfanout.providers.azure import AzureOpenAIAdapter
from nbfanout.providers.base import Adapter
from nbfanout.providers.gemini import GeminiAdapter
from nbfanout.providers.openai import OpenAIAdapter

__all__ = ["AnthropicAdapter", "AzureOpenAIAdapter", "GeminiAdapter", "OpenAIAdapter", "adapter_for"]

_ADAPTERS: dict[str, Adapter] = {
    "anthropic": AnthropicAdapter(),
    "azure": AzureOpenAIAdapter(),
    "gemini": GeminiAdapter(),
    "openai": OpenAIAdapter(),
}


def adapter_for(wire: str) -> Adapter:
    """The adapter for a wire format (``"openai"``, ``"anthropic"`` or ``"gemini"``)."""
    try:
        return _ADAPTERS[wire]
    except KeyError:
        raise UsageError(f"unknown wire format {wire!r}; expected one of {', '.join(sorted(_ADAPTERS))}") from None
