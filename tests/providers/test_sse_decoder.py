"""The SSE line decoder shared by the three wire formats."""

from __future__ import annotations

from nbfanout.providers._sse import SSEDecoder, ServerSentEvent, aiter_sse


def decode(text: str) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events = [e for line in text.splitlines() if (e := decoder.decode(line)) is not None]
    tail = decoder.flush()
    return events + ([tail] if tail else [])


def test_data_lines_and_event_names() -> None:
    # Anthropic names every event (https://docs.anthropic.com/en/docs/build-with-claude/streaming).
    events = decode('event: ping\ndata: {"type": "ping"}\n\ndata: {"a": 1}\n\n')
    assert events == [ServerSentEvent("ping", '{"type": "ping"}'), ServerSentEvent("message", '{"a": 1}')]


def test_comments_are_skipped() -> None:
    # OpenRouter keeps connections alive with ": OPENROUTER PROCESSING"
    # (https://openrouter.ai/docs/api-reference/streaming).
    assert decode(": OPENROUTER PROCESSING\n\ndata: [DONE]\n\n") == [ServerSentEvent(data="[DONE]")]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert decode("data: {\ndata: \"a\": 1}\n\n") == [ServerSentEvent(data='{\n"a": 1}')]


def test_field_without_space_and_id_retry() -> None:
    assert decode("id: 7\nretry: 1500\ndata:x\n\n") == [ServerSentEvent(data="x", id="7", retry=1500)]


def test_pending_event_is_flushed_at_end_of_stream() -> None:
    assert decode("data: last") == [ServerSentEvent(data="last")]


async def test_aiter_sse_strips_crlf() -> None:
    async def lines():
        for line in ["data: one\r\n", "\r\n", "data: two\r\n", "\r\n"]:
            yield line

    assert [e.data async for e in aiter_sse(lines())] == ["one", "two"]
