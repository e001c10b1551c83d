"""nbfanout/_secrets.py: the one place keys are masked and redacted."""

from __future__ import annotations

from urllib.parse import quote, quote_plus

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
