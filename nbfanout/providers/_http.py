"""Sending a request and turning every way it can fail into a ``ProviderError``.

How failures map (each adapter goes through this module, so the three agree)::

    httpx.TransportError (timeout, connect, read, protocol)
        -> classify_error(provider, None, None, "ReadTimeout: ...")       raise ... from exc
    HTTP status outside 2xx
        -> classify_error(provider, status, headers, body)
    2xx whose body holds an error envelope (OpenRouter's 200 + {"error": ...}, Gemini's
    [{"error": ...}], Anthropic's ``event: error``, an error event mid-stream)
        -> classify_error(provider, status, headers, envelope), which classifies a 2xx
           by the code inside the envelope
    a stream that closes cleanly before its final event (no finish reason, no [DONE])
        -> classify_error(provider, None, None, "IncompleteStream: ...")  (network)
    2xx whose body (or one event) is not JSON, or has no choices/candidates
        -> ErrorInfo(server_error, retryable) built here: classify_error sees a 2xx status
           and a body with no error in it, so it cannot tell these apart
    2xx with no text because the provider blocked it (content filter, refusal, safety)
        -> ErrorInfo(content_policy, not retryable) built here, for the same reason

``asyncio.CancelledError`` is never caught: it propagates and the ``finally`` clauses
close the response, so an interrupted stream frees its connection.

Every message that leaves this module has the endpoint's key replaced by its last four
characters, in case a provider echoes it back.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from nbfanout._secrets import redact
from nbfanout.core.errors import ErrorCategory, ErrorInfo, ProviderError, classify_error
from nbfanout.core.headers import RateSnapshot, parse_rate_headers
from nbfanout.providers._sse import ServerSentEvent, aiter_sse
from nbfanout.providers.base import (
    Adapter,
    ChatRequest,
    ChatResponse,
    DeltaCallback,
    Endpoint,
    ToolCall,
    Usage,
)

__all__ = [
    "HTTPAdapter",
    "StreamState",
    "deep_merge",
    "join_url",
    "parse_arguments",
]

_SNIPPET = 200


def join_url(base_url: str, path: str) -> str:
    """``base_url`` + ``/path`` with exactly one slash between them."""
    return base_url.rstrip("/") + "/" + path.lstrip("/")


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``extra``; nested dicts are merged, any other value from ``extra`` wins."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def parse_arguments(raw: Any) -> dict[str, Any]:
    """A tool call's arguments as a dict: JSON text parsed (OpenAI sends a string), an object kept.

    Text that is not a JSON object is kept under ``"_raw"``, so a malformed call is shown, not lost.
    """
    if isinstance(raw, Mapping):
        return dict(raw)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return {"_raw": str(raw)}
    return dict(value) if isinstance(value, Mapping) else {"_raw": str(raw)}


def _timeout(timeout: float | None) -> Any:
    # None means "the client's own timeout", not httpx's "no timeout at all".
    return httpx.USE_CLIENT_DEFAULT if timeout is None else timeout


def _snippet(body: bytes | str) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    return text[:_SNIPPET] + ("…" if len(text) > _SNIPPET else "")


@dataclass(slots=True)
class StreamState:
    """What a stream has said so far; each adapter's ``feed`` fills it in."""

    parts: list[str] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None
    model: str | None = None
    complete: bool = False  # the provider's end-of-message marker (or a finish reason) was seen
    done: bool = False  # nothing more will follow: stop reading
    last: Any = None  # the last JSON payload, kept as ChatResponse.raw
    tool_calls: list[ToolCall] = field(default_factory=list)
    # a streamed tool call being assembled, by the provider's index: [id, name, argument JSON so far]
    pending_calls: dict[int, list[str]] = field(default_factory=dict)

    def finish_calls(self) -> None:
        """Turn the streamed calls into ToolCalls, in index order."""
        for _, (call_id, name, arguments) in sorted(self.pending_calls.items()):
            self.tool_calls.append(ToolCall(call_id, name, parse_arguments(arguments)))
        self.pending_calls.clear()

    @property
    def text(self) -> str:
        return "".join(self.parts)


class HTTPAdapter(Adapter):
    """The logic the three wire formats share; subclasses say how to build and read their JSON.

    ``timeout`` (seconds) is httpx's per-operation timeout: connect, each read, each write.
    For a stream that bounds the silence between two chunks, not the whole answer; a total
    deadline is the caller's (``asyncio.timeout``), and cancelling is always safe.
    """

    #: Finish reasons that, with no text at all, mean the provider refused or filtered.
    blocked_reasons: frozenset[str] = frozenset()
    #: Finish reasons that mean the output budget ran out (a reasoning model can spend it all unseen).
    length_reasons: frozenset[str] = frozenset()

    # ---- what each wire format defines -------------------------------------------------

    @abc.abstractmethod
    def headers(self, endpoint: Endpoint) -> dict[str, str]:
        """Authentication and version headers (``endpoint.headers`` are added on top)."""

    @abc.abstractmethod
    def chat_url(self, endpoint: Endpoint, request: ChatRequest, *, stream: bool) -> tuple[str, dict[str, str]]:
        """URL and query parameters of the chat call."""

    @abc.abstractmethod
    def chat_body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The JSON body of the chat call, ``request.extra`` merged in."""

    @abc.abstractmethod
    def find_error(self, payload: Any) -> Mapping[str, Any] | None:
        """The error envelope inside a 2xx body or stream event, if there is one."""

    @abc.abstractmethod
    def read_response(self, payload: Any, state: StreamState) -> None:
        """Fill ``state`` from a whole (non-streamed) response body."""

    @abc.abstractmethod
    def feed(self, event: ServerSentEvent, payload: Any, state: StreamState) -> Iterable[str]:
        """Update ``state`` from one stream event; return the text fragments it carried."""

    # ---- shared behaviour ---------------------------------------------------------------

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
        url, params = self.chat_url(endpoint, request, stream=stream)
        body = self.chat_body(request, stream=stream)
        if stream:
            return await self._stream(client, endpoint, request, url, params, body, on_delta, timeout)
        response = await self._send(client, endpoint, "POST", url, params=params, json=body, timeout=timeout)
        payload = self._json(endpoint, response)
        self._raise_for_body_error(endpoint, response, payload)
        state = StreamState(last=payload)
        self.read_response(payload, state)
        if not state.complete:
            raise self._invalid(endpoint, response.status_code, f"no answer in the response: {_snippet(response.text)}")
        return self._result(endpoint, request, response, state)

    def read_body(self, endpoint: Endpoint, request: ChatRequest, payload: Any, status: int = 200) -> ChatResponse:
        """A whole response body that came some other way (a line of a batch's results), read as
        ``complete`` reads one: the same answer, or the same ProviderError. It has no headers."""
        response = httpx.Response(status, json=payload)
        if not response.is_success:
            raise self._status_error(endpoint, response, response.content)
        self._raise_for_body_error(endpoint, response, payload)
        state = StreamState(last=payload)
        self.read_response(payload, state)
        if not state.complete:
            raise self._invalid(endpoint, status, f"no answer in the result: {_snippet(response.text)}")
        return self._result(endpoint, request, response, state)

    async def _stream(
        self,
        client: httpx.AsyncClient,
        endpoint: Endpoint,
        request: ChatRequest,
        url: str,
        params: dict[str, str],
        body: dict[str, Any],
        on_delta: DeltaCallback | None,
        timeout: float | None,
    ) -> ChatResponse:
        state = StreamState()
        async with self._open_stream(client, endpoint, url, params=params, json=body, timeout=timeout) as response:
            async with aclosing(self._events(endpoint, response)) as events:
                async for event in events:
                    data = event.data.strip()
                    if data == "[DONE]":  # OpenAI's end-of-stream sentinel
                        state.done = state.complete = True
                    elif data:
                        payload = self._json(endpoint, response, data)
                        self._raise_for_body_error(endpoint, response, payload)
                        state.last = payload
                        for fragment in self.feed(event, payload, state):
                            if fragment:
                                state.parts.append(fragment)
                                if on_delta is not None and inspect.isawaitable(result := on_delta(fragment)):
                                    await result
                    if state.done:
                        break
            if not state.complete:
                raise self._no_response(
                    endpoint,
                    "IncompleteStream: the connection closed before the provider's final stream event "
                    f"({len(state.parts)} text fragments received)",
                )
            return self._result(endpoint, request, response, state)

    async def _get_json(
        self,
        client: httpx.AsyncClient,
        endpoint: Endpoint,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """GET a JSON document (model lists), with the same error mapping as a chat call."""
        response = await self._send(client, endpoint, "GET", url, params=params, timeout=timeout)
        payload = self._json(endpoint, response)
        self._raise_for_body_error(endpoint, response, payload)
        return payload

    def _result(
        self, endpoint: Endpoint, request: ChatRequest, response: httpx.Response, state: StreamState
    ) -> ChatResponse:
        state.finish_calls()
        if not state.text and not state.tool_calls and state.finish_reason in self.blocked_reasons:
            raise self._safe(
                endpoint,
                ErrorInfo(
                    category=ErrorCategory.CONTENT_POLICY,
                    retryable=False,
                    message=f"the provider returned no text (finish reason {state.finish_reason!r})",
                    status=response.status_code,
                    provider=endpoint.provider,
                    provider_code=state.finish_reason,
                ),
            )
        if not state.text.strip() and not state.tool_calls:
            raise self._safe(endpoint, self._empty(endpoint, request, response, state.finish_reason),
                             self._rate(endpoint, response))  # the provider counted it: its headers still teach
        raw = state.last if isinstance(state.last, Mapping) else {"body": state.last}
        return ChatResponse(
            text=state.text,
            usage=Usage(input_tokens=state.input_tokens, output_tokens=state.output_tokens),
            finish_reason=state.finish_reason,
            model=state.model or request.model,
            status=response.status_code,
            rate=self._rate(endpoint, response),
            raw=raw,
            tool_calls=tuple(state.tool_calls),
        )

    def _empty(self, endpoint: Endpoint, request: ChatRequest, response: httpx.Response,
               finish_reason: str | None) -> ErrorInfo:
        """A 200 with no text and no tool calls is no answer: out of output budget (say so), else a fault to retry."""
        if finish_reason in self.length_reasons:
            budget = f"all {request.max_tokens} output tokens" if request.max_tokens else "its whole output budget"
            return ErrorInfo(ErrorCategory.BAD_REQUEST, False,
                             f"empty answer: the model spent {budget} before writing any text (finish reason "
                             f"{finish_reason!r}, as reasoning models do); raise max_tokens",
                             status=response.status_code, provider=endpoint.provider, provider_code=finish_reason)
        return ErrorInfo(ErrorCategory.SERVER_ERROR, True,
                         f"empty answer: status {response.status_code} with no text and no tool calls "
                         f"(finish reason {finish_reason!r})",
                         status=response.status_code, provider=endpoint.provider, provider_code="empty_answer")

    @staticmethod
    def _rate(endpoint: Endpoint, response: httpx.Response) -> RateSnapshot:
        return parse_rate_headers(endpoint.provider, response.headers)

    def _request_headers(self, endpoint: Endpoint) -> dict[str, str]:
        return {**self.headers(endpoint), **endpoint.headers}

    async def _send(
        self,
        client: httpx.AsyncClient,
        endpoint: Endpoint,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        data: Mapping[str, str] | None = None,
        files: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send and read the whole body; a non-2xx status becomes a ProviderError."""
        try:
            response = await client.request(
                method,
                url,
                params=params,
                headers=self._request_headers(endpoint),
                json=json,
                data=data,
                files=files,
                timeout=_timeout(timeout),
            )
        except httpx.TransportError as exc:
            raise self._transport_error(endpoint, exc) from exc
        except httpx.DecodingError as exc:
            raise self._invalid(endpoint, None, f"the response body could not be decoded: {exc}") from exc
        if not response.is_success:
            raise self._status_error(endpoint, response, response.content)
        return response

    @asynccontextmanager
    async def _open_stream(
        self,
        client: httpx.AsyncClient,
        endpoint: Endpoint,
        url: str,
        *,
        params: Mapping[str, str],
        json: Any,
        timeout: float | None,
    ) -> AsyncIterator[httpx.Response]:
        """A streaming POST whose status is 2xx; the response is closed however the block exits."""
        request = client.build_request(
            "POST", url, params=params, headers=self._request_headers(endpoint), json=json, timeout=_timeout(timeout)
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self._transport_error(endpoint, exc) from exc
        try:
            if not response.is_success:
                try:
                    body = await response.aread()
                except httpx.HTTPError:  # the error body itself was cut off: classify by status
                    body = b""
                raise self._status_error(endpoint, response, body)
            yield response
        finally:
            try:
                await response.aclose()
            except httpx.HTTPError:  # closing a broken connection must not hide the real error
                pass

    async def _events(self, endpoint: Endpoint, response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
        """The response's SSE events; a JSON (not SSE) body is yielded as one event."""
        try:
            if "json" in response.headers.get("content-type", ""):
                # Some gateways answer a stream request with a plain JSON body (usually an
                # error envelope): treat the whole body as one event so it is checked alike.
                yield ServerSentEvent(data=(await response.aread()).decode("utf-8", "replace"))
                return
            async for event in aiter_sse(response.aiter_lines()):
                yield event
        except httpx.TransportError as exc:
            raise self._transport_error(endpoint, exc) from exc
        except httpx.DecodingError as exc:
            raise self._invalid(endpoint, response.status_code, f"the stream could not be decoded: {exc}") from exc

    def _json(self, endpoint: Endpoint, response: httpx.Response, text: str | None = None) -> Any:
        """Parse a body (or one event's data) as JSON; anything else is a server error."""
        try:
            return json.loads(response.content if text is None else text)
        except ValueError as exc:
            what = "the response body" if text is None else "a stream event"
            body = response.content if text is None else text
            message = f"{what} was not valid JSON: {_snippet(body)!r}"
            raise self._invalid(endpoint, response.status_code, message) from exc

    def _raise_for_body_error(self, endpoint: Endpoint, response: httpx.Response, payload: Any) -> None:
        envelope = self.find_error(payload)
        if envelope is not None:
            # classify_error reads the code inside a 2xx envelope (OpenRouter's 429, Gemini's
            # RESOURCE_EXHAUSTED); the status we report stays the one the server sent.
            raise self._status_error(endpoint, response, json.dumps(envelope).encode())

    # ---- ProviderError builders -----------------------------------------------------------

    def _safe(self, endpoint: Endpoint, info: ErrorInfo, rate: RateSnapshot | None = None) -> ProviderError:
        return ProviderError(
            dataclasses.replace(
                info, message=redact(info.message, endpoint.api_key), provider=info.provider or endpoint.provider
            ),
            rate,
        )

    def _status_error(self, endpoint: Endpoint, response: httpx.Response, body: bytes) -> ProviderError:
        info = classify_error(endpoint.provider, response.status_code, response.headers, body)
        return self._safe(endpoint, info, parse_rate_headers(endpoint.provider, response.headers))

    def _transport_error(self, endpoint: Endpoint, exc: httpx.TransportError) -> ProviderError:
        return self._no_response(endpoint, f"{type(exc).__name__}: {exc}")

    def _no_response(self, endpoint: Endpoint, description: str) -> ProviderError:
        return self._safe(endpoint, classify_error(endpoint.provider, None, None, description))

    def _invalid(self, endpoint: Endpoint, status: int | None, message: str) -> ProviderError:
        return self._safe(
            endpoint,
            ErrorInfo(
                category=ErrorCategory.SERVER_ERROR,
                retryable=True,
                message=message,
                status=status,
                provider=endpoint.provider,
            ),
        )
