"""Token estimates: the heuristic within ±20 % of the real tokenizers on English prose and code."""

from __future__ import annotations

import inspect
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import nbfanout.config
import nbfanout.core.limits
from nbfanout.core.tokens import (
    _heuristic,
    estimate_image_tokens,
    estimate_request_tokens,
    exact_encoder,
    request_tokens_bound,
)
from nbfanout.providers.base import ImagePart, Message

ROOT = Path(__file__).resolve().parents[2]
PROSE = (
    "Rate limits are restrictions that an API imposes on the number of times a user or client can access "
    "the server within a specified period of time. They help protect against abuse or misuse of the API, "
    "ensure that everyone has fair access, and help manage the aggregate load on the infrastructure. "
    "If requests to the API increase dramatically, it could tax the servers and cause performance issues."
)
SAMPLES = {
    "english prose": PROSE * 3,
    "markdown design doc": (ROOT / "README.md").read_text(encoding="utf-8") + PROSE,
    "python (config loader)": inspect.getsource(nbfanout.config),
    "python (budgets)": inspect.getsource(nbfanout.core.limits),
    "json": json.dumps({"models": [{"name": f"openai/gpt-{i}", "rpm": 500 * i, "ok": True} for i in range(40)], "note": PROSE}),
}


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_heuristic_is_within_20_percent_of_the_real_tokenizer(name, encoding):
    encoder = exact_encoder(encoding)
    assert encoder is not None, "bpe-openai (a dev dependency) ships these vocabularies"
    exact = len(encoder.encode(SAMPLES[name]))
    estimate = _heuristic(SAMPLES[name])
    assert 0.8 * exact <= estimate <= 1.2 * exact, f"{name}: heuristic {estimate} vs {encoding} {exact}"


def _png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_image_tokens_follow_openais_tile_formula():
    assert estimate_image_tokens(_png(1024, 1024)) == 765  # OpenAI's worked example: 4 tiles
    assert estimate_image_tokens(_png(2048, 4096)) == 1105  # scaled to 768×1536: 6 tiles
    assert estimate_image_tokens(b"not an image") == 765


def test_request_estimate_counts_system_messages_images_and_output_budget():
    msgs = [Message("user", PROSE, (ImagePart(data=_png(512, 512)),))]
    prompt, out = estimate_request_tokens(msgs, system="Be brief.", max_output_tokens=300, encoding="o200k_base")
    text_only, _ = estimate_request_tokens([Message("user", PROSE)], encoding="o200k_base")
    assert prompt > text_only + 255 - 1  # one 512² tile: 85 + 170
    assert out == 300


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_the_bound_used_while_a_tokenizer_loads_never_counts_less_than_it(name, encoding):
    text = SAMPLES[name] + " Grüße, 東京, 🙂 and \udcff"  # multibyte characters and a lone surrogate
    exact, _ = estimate_request_tokens([Message("user", text)], system="Be brief.", encoding=encoding)
    bound = request_tokens_bound([Message("user", text)], system="Be brief.")
    assert exact <= bound <= 4 * len(text.encode("utf-8", "surrogatepass")) + 20


FIRST_REQUEST = r"""
import asyncio, json, sys
import httpx
from nbfanout import Fanout
from nbfanout.core import tokens
from nbfanout.sandbox import create_app, load_scenario

app = create_app(load_scenario("fast"), time_scale=0.0)
config = load_scenario("fast").client_config("http://sandbox")
fx = Fanout(config, transport=httpx.ASGITransport(app=app), learn=False)
seen = []
fx.subscribe(lambda e: seen.append("o200k_base" in tokens._encoders) if e.kind == "request_started" else None)
result = asyncio.run(fx.run("Hello there", ["openai/gpt-4o-mini"], max_tokens=20))
print(json.dumps({"ok": result[0].ok, "loaded_at_first_request": seen[0],
                  "model_tokenizer": fx.config.model("openai/gpt-4o-mini").tokenizer}))
"""


def test_the_first_request_is_sent_before_the_tokenizer_has_loaded():
    # a fresh interpreter: in this one the vocabularies are loaded already
    out = subprocess.run([sys.executable, "-c", FIRST_REQUEST], capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"ok": True, "loaded_at_first_request": False, "model_tokenizer": "o200k_base"}


def test_a_prompt_past_the_tokenizers_own_limit_is_counted_in_pieces_not_raised():
    """Seen: a ~250k-token prompt raised bpe_openai's TokenLimitError and >1M characters its ValueError."""
    import random

    from nbfanout.core.tokens import estimate_text_tokens, exact_encoder

    enc = exact_encoder("o200k_base")
    assert enc is not None  # bpe-openai, a dev dependency, ships the vocabulary
    rng = random.Random(7)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(300_000)]
    text = " ".join(words)  # ~1.95M characters
    with pytest.raises(Exception):  # noqa: B017 - the tokenizer itself refuses it whole
        enc.encode(text)
    counted = estimate_text_tokens(text, "o200k_base")
    by_parts = sum(len(enc.encode(" ".join(words[i:i + 10_000]))) for i in range(0, len(words), 10_000))
    assert abs(counted - by_parts) <= len(words) // 10_000 + 2  # differs only where the pieces meet


@pytest.mark.looptime
async def test_one_huge_prompt_in_a_map_fails_for_small_windows_only_and_loses_nothing(sandbox_app_factory):
    import asyncio

    from nbfanout import Fanout

    app = sandbox_app_factory("fast", time_scale=None, clock=lambda: asyncio.get_running_loop().time())
    fx = Fanout(app.config, transport=app.transport(), learn=False)
    huge = "lorem ipsum dolor " * 70_000  # ~1.26M characters, ~210k tokens
    batch = await fx.map(["Say one.", huge, "Say three."], ["openai/gpt-4o-mini", "openai/gpt-4.1-nano"], max_tokens=20)
    by = {(r.prompt_index, r.requested): r for r in batch.results}
    assert all(by[(i, m)].ok for i in (0, 2) for m in ("openai/gpt-4o-mini", "openai/gpt-4.1-nano"))
    assert by[(1, "openai/gpt-4o-mini")].category == "context_length"  # 128K window
    assert by[(1, "openai/gpt-4.1-nano")].ok  # 1M window
