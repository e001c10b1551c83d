"""Images checked against each provider's documented limits before sending (core/images.py), end to end."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import zlib

import httpx
import pytest
from PIL import Image

from nbfanout import Fanout
from nbfanout.core.images import fit_messages, image_problem
from nbfanout.providers.base import ImagePart, Message

pytestmark = pytest.mark.looptime

QUICK = {"latency": {"base_ms": 100}, "output_tokens": [10, 20]}
SCENARIO = {"name": "images", "seed": 6, "providers": {
    "openai": {"style": "openai", "keys": ["sk-sbx-openai-img-0001"], "models": {"v": QUICK}},
    "anthropic": {"style": "anthropic", "keys": ["sk-ant-sbx-img-0002"], "models": {"v": QUICK}}}}


def png(width: int, height: int, pad: int = 0) -> bytes:
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"tEXt", b"x" * pad) + chunk(b"IEND", b""))


def photo(width: int, height: int, fmt: str = "PNG") -> bytes:
    """A real, decodable image (a gradient), as a user's file would be."""
    from PIL import Image

    img = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


class Recording(httpx.AsyncBaseTransport):
    """The sandbox's transport, keeping each request body as sent."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner, self.bodies = inner, []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append((request.url.path, json.loads(await request.aread())))
        return await self.inner.handle_async_request(request)


async def run(sandbox_app_factory, images, *, downscale=False, transport=None):
    app = sandbox_app_factory(SCENARIO, time_scale=None, clock=lambda: asyncio.get_running_loop().time())
    fx = Fanout(app.config, transport=transport(app.transport()) if transport else app.transport(), learn=False,
                downscale_images=downscale)
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


async def test_25_large_images_are_made_smaller_for_anthropic_only_and_the_result_says_so(sandbox_app_factory):
    recording: list[Recording] = []

    def record(inner: httpx.AsyncBaseTransport) -> Recording:
        recording.append(Recording(inner))
        return recording[0]

    app, (openai, anthropic) = await run(sandbox_app_factory, [ImagePart(photo(3000, 3000))] * 25,
                                         downscale=True, transport=record)
    assert openai.ok and openai.downscaled == ()
    assert anthropic.ok and len(anthropic.downscaled) == 25
    assert anthropic.downscaled[0].startswith("image 1 3000×3000 px") and "→ 2000×2000 px" in anthropic.downscaled[0]
    sent = {path.split("/")[1]: body for path, body in recording[0].bodies}
    blocks = [b for b in sent["anthropic"]["messages"][0]["content"] if b["type"] == "image"]
    sizes = {Image.open(io.BytesIO(base64.b64decode(b["source"]["data"]))).size for b in blocks}
    assert len(blocks) == 25 and sizes == {(2000, 2000)}
    parts = [p for p in sent["openai"]["messages"][0]["content"] if p["type"] == "image_url"]
    first = base64.b64decode(parts[0]["image_url"]["url"].split(",", 1)[1])
    assert Image.open(io.BytesIO(first)).size == (3000, 3000)  # OpenAI takes them as they are


def test_groqs_pixel_limit_is_met_by_downscaling_and_its_image_count_is_refused():
    big = ImagePart(photo(7000, 5000, "JPEG"), mime_type="image/jpeg")
    assert "at most 33,177,600 pixels" in image_problem("groq", [big])
    assert image_problem("groq", [big], downscale=True) is None
    (message,), notes = fit_messages("groq", [Message("user", "what is this?", (big,))])
    w, h = Image.open(io.BytesIO(message.images[0].data)).size
    assert w * h <= 33_177_600 and abs(w / h - 7000 / 5000) < 0.01 and message.images[0].mime_type == "image/jpeg"
    assert len(message.images[0].data) * 4 / 3 <= 4 * 1024 * 1024 and notes[0].startswith("image 1 7000×5000 px")
    assert "6 images" in image_problem("groq", [ImagePart(photo(64, 64))] * 6, downscale=True)


def test_geminis_inline_limit_counts_the_base64_of_every_image():
    blobs = [ImagePart(bytes(5 * 1024 * 1024) + bytes([i])) for i in range(3)]  # 15 MB, 20 MB as base64
    assert "as base64; Gemini's inline image limits: at most 20 MB per request" in image_problem("gemini", blobs, downscale=True)
    assert image_problem("gemini", blobs[:2], downscale=True) is None
