"""Server-sent events: the line format all three streaming wire formats share.

Parsing follows the WHATWG "event stream interpretation" rules
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
``field: value`` lines, several ``data:`` lines joined by newlines, a blank line dispatches
the event, lines starting with ``:`` are comments. OpenRouter sends such comments
(``: OPENROUTER PROCESSING``) to keep connections alive
(https://openrouter.ai/docs/api-reference/streaming), so they must be skipped, not parsed.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field

__all__ = ["SSEDecoder", "ServerSentEvent", "aiter_sse"]


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event: its type (``message`` unless an ``event:`` line said otherwise) and data."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


@dataclass(slots=True)
class SSEDecoder:
    """Feed lines (without their line ending) one at a time; get an event at each blank line."""

    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None
    _retry: int | None = None

    def decode(self, line: str) -> ServerSentEvent | None:
        """Consume one line; return the event it completes, if any."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value or None
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def flush(self) -> ServerSentEvent | None:
        """End of stream: return a pending event that was not followed by a blank line.

        The spec discards it; we keep it, because some servers end the body right after
        the last ``data:`` line and that line (a final usage chunk) still matters.
        """
        return self._dispatch()

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data and not self._event:
            return None
        event = ServerSentEvent(
            event=self._event or "message", data="\n".join(self._data), id=self._id, retry=self._retry
        )
        self._event, self._data = "", []
        return event


async def aiter_sse(lines: AsyncIterable[str]) -> AsyncIterator[ServerSentEvent]:
    """Turn an async iterable of lines (``httpx.Response.aiter_lines()``) into events."""
    decoder = SSEDecoder()
    async for line in lines:
        event = decoder.decode(line.rstrip("\r\n"))
        if event is not None:
            yield event
    event = decoder.flush()
    if event is not None:
        yield event
