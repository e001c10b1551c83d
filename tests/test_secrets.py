"""nbfanout/_secrets.py: the one place keys are masked and redacted."""

from __future__ import annotations

from urllib.parse import quote, quote_plus

import json

import pytest

from nbfanout._secrets import mask, redact, remember


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwxyz1234.", "Incorrect API key provided: …1234."),
        ("key sk-ant-api03-AAAABBBBCCCCDDDD-xyzw here", "key …xyzw here"),
        ("Incorrect API key provided: sk-PMafP***************************************E873. You",
         "Incorrect API key provided: …E873. You"),
        ("Consumer 'api_key:AIzaSyAhTarnL1PaQn_yu_uVf0gia9wUyJx8RSI' suspended",
         "Consumer 'api_key:…8RSI' suspended"),
        ("token gsk_0123456789abcdefWXYZ used", "token …WXYZ used"),
        ("xai-0123456789abcdefghij1234", "…1234"),
        ("Authorization: Bearer abcdefghijklmnop1234", "Authorization: Bearer …1234"),
        ("GET /v1beta/models/x:generateContent?key=AIzaQQQQQQQQQQQQQQQQQQQQQ9876&alt=sse",
         "GET /v1beta/models/x:generateContent?key=…9876&alt=sse"),
        ("no secrets in here: sk-short and task-manager", "no secrets in here: sk-short and task-manager"),
        ("", ""),
    ],
)
def test_key_shaped_strings_are_redacted_known_or_not(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_a_known_key_is_redacted_in_every_form_it_is_echoed_in() -> None:
    key = "tenant-Key/With+Odd=Chars_0123456789AbCd"
    remember(key)
    echoes = [key, key.upper(), key.lower(), quote(key, safe=""), quote_plus(key)]  # as URLs and headers carry it
    for echo in echoes:
        shown = redact(f"error: key {echo!s} is not valid")
        assert shown == "error: key …AbCd is not valid", shown


def test_passwords_in_urls_are_hidden_and_masking_keeps_the_last_four() -> None:
    assert redact("connect to redis://app:s3cr3t-pass@cache:6379/0 failed") == "connect to redis://app:****@cache:6379/0 failed"
    assert (mask("sk-abcdefgh1234"), mask("…1234"), mask(None), mask("")) == ("…1234", "…1234", "", "")


async def test_an_answer_that_echoes_the_key_is_stored_with_its_last_four_only(tmp_path):
    """Seen: a 200 whose text held the key was kept whole in results, results.json and the cache."""
    import httpx

    from nbfanout import Fanout

    key = "sk-echo-" + "E" * 24 + "9f9f"

    def handler(request: httpx.Request) -> httpx.Response:
        sent = request.headers["authorization"].removeprefix("Bearer ")
        body = {"id": "c1", "object": "chat.completion", "model": "m", "created": 0,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": f"Your key is {sent} ({sent.upper()})."}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}}
        return httpx.Response(200, json=body)

    config = {"defaults": {"learn_limits": False, "cache": True, "cache_path": str(tmp_path / "cache.sqlite")},
              "providers": {"echo": {"kind": "openai", "base_url": "http://echo.local/v1", "api_key": key, "models": ["m"]}}}
    async with Fanout(config, transport=httpx.MockTransport(handler), learn=False) as fx:
        run = await fx.run("What is my key?", ["echo/m"])
        (again,) = await fx.run("What is my key?", ["echo/m"])  # from the cache
    (result,) = run
    assert result.ok and result.text == "Your key is …9f9f (…9f9f)." and again.cached and again.text == result.text
    saved = run.save(tmp_path / "out")  # results.json and one .md per model
    for path in [tmp_path / "cache.sqlite", *sorted(saved.iterdir())]:
        data = path.read_bytes()
        assert key.encode() not in data and key.upper().encode() not in data, path


async def test_a_canary_key_echoed_by_every_wire_appears_in_no_output_channel(tmp_path, caplog):
    """Every key is configured, and servers on all three wire formats echo it back: in 429 and 401
    bodies (as sent, upper-cased, percent-encoded), in a response header and in the answer. No repr,
    HTML view, DEBUG log line (ours and httpx's), event, error, saved result, cache or state file
    holds more of it than its last four characters."""
    import logging
    from urllib.parse import quote

    import httpx

    from nbfanout import Fanout

    canary = "sk-canary-" + "Zq8" * 10 + "c4n4"
    answered: dict[str, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        n = answered[path] = answered.get(path, 0) + 1
        echo = f"key {canary} / {canary.upper()} / {quote(canary, safe='')}"
        headers = {"x-echo-key": canary}
        if "denied" in path:
            return httpx.Response(401, json={"error": {"message": f"Invalid key: {echo}", "type": "invalid_request_error"}},
                                  headers=headers)
        if n == 1:  # a rate limit first, then the answer
            return httpx.Response(429, json={"error": {"message": f"Rate limit for {echo}", "type": "rate_limit"}},
                                  headers={**headers, "retry-after": "0"})
        if path.endswith("/messages"):
            body = {"id": "m1", "type": "message", "role": "assistant", "model": "c", "stop_reason": "end_turn",
                    "content": [{"type": "text", "text": f"Anthropic saw {echo}"}], "usage": {"input_tokens": 3, "output_tokens": 5}}
        elif ":generateContent" in path:
            body = {"candidates": [{"content": {"role": "model", "parts": [{"text": f"Gemini saw {echo}"}]},
                                    "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 5}}
        else:
            body = {"id": "c1", "object": "chat.completion", "model": "o", "created": 0,
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": f"OpenAI saw {echo}"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}
        return httpx.Response(200, json=body, headers=headers)

    providers = {
        "o": {"kind": "openai", "base_url": "http://o.local/v1", "api_key": canary, "models": ["m"]},
        "a": {"kind": "anthropic", "base_url": "http://a.local/v1", "api_key": canary, "models": ["m"]},
        "g": {"kind": "gemini", "base_url": "http://g.local/v1beta", "api_key": canary, "models": ["m"]},
        "d": {"kind": "openai", "base_url": "http://d.local/denied/v1", "api_key": canary, "models": ["m"]},
    }
    state = tmp_path / "state.json"
    config = {"defaults": {"cache": True, "cache_path": str(tmp_path / "cache.sqlite"), "state_path": str(state),
                           "base_backoff_s": 0.01, "max_attempts": 3},
              "providers": providers}
    events: list[str] = []
    caplog.set_level(logging.DEBUG)
    async with Fanout(config, transport=httpx.MockTransport(handler)) as fx:
        fx.subscribe(lambda e: events.append(repr(e)))
        result = await fx.run("Echo my key.", ["o/m", "a/m", "g/m", "d/m"])
        batch = await fx.map(["Echo it again."], ["o/m", "d/m"])
        shown = [repr(fx), repr(result), result._repr_html_(), repr(batch), batch._repr_html_(), str(fx.statistics())]
    assert [r.ok for r in result] == [True, True, True, False] and result[3].category == "auth"
    saved = result.save(tmp_path / "out")
    texts = [*shown, *events, caplog.text, *(r.error.message for r in result if r.error),
             *(a.message or "" for r in result for a in r.attempts), result.to_json(), json.dumps(batch.to_records())]
    files = [tmp_path / "cache.sqlite", state, *sorted(saved.iterdir())]
    leaks = [canary, canary.upper(), canary.lower(), quote(canary, safe=""), canary[:-4]]
    for text in texts:
        assert not any(leak in text for leak in leaks), text[:300]
    for path in files:
        data = path.read_bytes()
        assert not any(leak.encode() in data for leak in leaks), path
    assert "c4n4" in result[0].text and any("…c4n4" in t for t in events)  # the last four remain, to tell keys apart
