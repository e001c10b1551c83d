"""Images checked against each provider's documented limits before sending (core/images.py), end to end."""

from __future__ import annotations

import asyncio
import struct
import zlib

import pytest

from nbfanout import Fanout
from nbfanout.providers.base import ImagePart

pytestmark = pytest.mark.looptime

QUICK = {"latency": {"base_ms": 100}, "output_tokens": [10, 20]}
SCENARIO = {"name": "images", "seed": 6, "providers": {
    "openai": {"style": "openai", "keys": ["sk-sbx-openai-img-0001"], "models": {"v": QUICK}},
    "anthropic": {"style": "anthropic", "keys": ["sk-ant-sbx-img-0002"], "models": {"v": QUICK}}}}


def png(width: int, height: int, pad: int = 0) -> bytes:
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"tEXt", b"x" * pad) + chunk(b"IEND", b""))


async def run(sandbox_app_factory, images):
    app = sandbox_app_factory(SCENARIO, time_scale=None, clock=lambda: asyncio.get_running_loop().time())
    fx = Fanout(app.config, transport=app.transport(), learn=False)
    result = await fx.run("Describe these.", ["openai/v", "anthropic/v"], images=images, max_tokens=40)
    return app, result


async def test_25_large_images_go_to_openai_and_not_to_anthropic_which_allows_2000_px_past_20(sandbox_app_factory):
    """Seen: 25 images of 3000×3000 were sent to every provider, whatever its limits."""
    app, (openai, anthropic) = await run(sandbox_app_factory, [ImagePart(png(3000, 3000))] * 25)
    assert openai.ok
    assert not anthropic.ok and anthropic.category == "bad_request" and anthropic.attempts == ()
    assert "image 1 is 3000×3000 px" in anthropic.error.message and "more than 20 images" in anthropic.error.message
    assert app.stats()["models"].get("anthropic/v", {}).get("requests", 0) == 0


async def test_an_image_over_5_mb_is_not_sent_to_anthropic(sandbox_app_factory):
    app, (openai, anthropic) = await run(sandbox_app_factory, [ImagePart(png(800, 600, pad=6 * 1024 * 1024))])
    assert openai.ok
    assert not anthropic.ok and "image 1 is 6.0 MB" in anthropic.error.message and "at most 5 MB each" in anthropic.error.message


async def test_images_within_every_limit_go_everywhere(sandbox_app_factory):
    _, result = await run(sandbox_app_factory, [ImagePart(png(1500, 1000))] * 3)
    assert all(r.ok for r in result)
