"""What every provider adapter takes and returns; one adapter per wire format."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from nbfanout._secrets import mask
from nbfanout.core.errors import ErrorCategory, ErrorInfo, ProviderError
from nbfanout.core.headers import RateSnapshot

__all__ = [
    "Adapter",
    "ChatRequest",
    "ChatResponse",
    "Endpoint",
    "ImagePart",
    "Message",
    "Tool",
    "ToolCall",
    "TranscriptionRequest",
    "TranscriptionResponse",
    "Usage",
]


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image attached to a user message: raw bytes with a MIME type, or a URL."""

    data: bytes | None = None
    mime_type: str = "image/png"
    url: str | None = None

    def __repr__(self) -> str:
        size = f"{len(self.data)} bytes" if self.data is not None else self.url
        return f"ImagePart({self.mime_type}, {size})"


@dataclass(frozen=True, slots=True)
class Tool:
    """A function a model may call, in one form for every wire: name, what it does, JSON Schema of its arguments."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A model's call of a tool: the id to answer it under, the tool's name, and its arguments (parsed JSON)."""

    id: str
    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message: ``role`` "user", "assistant" or "tool" (system prompts go in ChatRequest.system).

    An assistant message may carry the ``tool_calls`` it made; a "tool" message is the result of
    one call: ``tool_call_id`` names it, ``name`` the tool, ``content`` the result as text.
    """

    role: str
    content: str
    images: tuple[ImagePart, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to reach one provider with one key.

    ``api_key`` is never shown: the repr keeps only its last four characters.
    """

    provider: str
    base_url: str
    api_key: str = field(repr=False)
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)  # query parameters of every call (Azure's api-version)

    @property
    def key_id(self) -> str:
        """A printable, non-secret name for the key: ``…abcd``."""
        return mask(self.api_key) or "(none)"

    def __repr__(self) -> str:
        return f"Endpoint(provider={self.provider!r}, base_url={self.base_url!r}, key={self.key_id!r})"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A provider-neutral chat call. ``model`` is the provider's own id (no ``provider/`` prefix).

    ``extra`` is passed through into the request body as-is (e.g. ``reasoning_effort``,
    OpenRouter's ``reasoning``, Gemini's ``generationConfig`` fields).
    """

    model: str
    messages: tuple[Message, ...]
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    tools: tuple[Tool, ...] = ()
    parallel_tools: bool = False  # may the model call several tools in one turn (the catalog's parallel_tools)


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class ChatResponse:
    """A successful completion: text, usage, why it stopped, and what the headers said."""

    text: str
    usage: Usage
    finish_reason: str | None
    model: str
    status: int
    rate: RateSnapshot
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class TranscriptionRequest:
    model: str
    filename: str
    data: bytes = field(repr=False)
    language: str | None = None
    prompt: str | None = None


@dataclass(frozen=True, slots=True)
class TranscriptionResponse:
    text: str
    model: str
    status: int
    rate: RateSnapshot
    duration_s: float | None = None


#: Called with each streamed text fragment as it arrives.
DeltaCallback = Callable[[str], Awaitable[None] | None]


class Adapter(abc.ABC):
    """One wire format. Stateless: the caller owns the httpx client, the key and the retries.

    Every failure (HTTP error status, error inside a 200 body, malformed body, timeout,
    dropped connection) is raised as ``ProviderError`` whose ``info`` comes from
    ``classify_error``; httpx exceptions are chained with ``raise ... from exc``.
    """

    wire: str  # "openai", "anthropic" or "gemini"

    @abc.abstractmethod
    async def complete(
        self,
        client: httpx.AsyncClient,
        endpoint: Endpoint,
        request: ChatRequest,
        *,
        stream: bool = False,
        on_delta: DeltaCallback | None = None,
        timeout: float | None = None,
    ) -> ChatResponse:
        """Send one chat request; with ``stream=True`` read SSE and call ``on_delta`` per fragment."""

    @abc.abstractmethod
    async def list_models(self, client: httpx.AsyncClient, endpoint: Endpoint) -> list[str]:
        """The model ids the key can use: the cheap call ``nbfanout doctor`` validates keys with."""

    async def transcribe(
        self,
        client: httpx.AsyncClient,
        endpoint: Endpoint,
        request: TranscriptionRequest,
        *,
        timeout: float | None = None,
    ) -> TranscriptionResponse:
        """Transcribe audio. Only OpenAI-compatible endpoints offer this."""
        raise ProviderError(
            ErrorInfo(
                category=ErrorCategory.BAD_REQUEST,
                retryable=False,
                message=f"the {self.wire} wire format has no audio transcription endpoint",
                provider=endpoint.provider,
            )
        )

