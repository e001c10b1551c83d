"""Images checked against each provider's documented input limits before anything is sent.

A request that breaks one would only come back as a 400 after a round trip (and, in a fan-out,
once per model). An image too large for a provider (bytes, pixels a side, pixels in all) is made
smaller for that provider only (``fit_messages``; Pillow, off with ``downscale_images = false``),
and what no downscale can fix (too many images, too many bytes in all) skips the provider with a
reason that names the limit. Only images given as bytes are checked (a URL's size is the
provider's to see), and only providers whose limits are documented below.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from nbfanout.core.tokens import image_size
from nbfanout.providers.base import ImagePart, Message

__all__ = ["IMAGE_LIMITS", "ImageLimits", "fit_messages", "image_problem"]

MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What one provider's API accepts per request.

    ``base64``: the byte limits count the base64 text (4/3 of the bytes), as a JSON body carries it.
    """

    max_image_mb: float
    max_images: int
    max_total_mb: float
    max_side_px: int | None = None
    many: tuple[int, int] | None = None  # (more than N images, then each side at most M px)
    max_pixels: int | None = None  # width x height of one image
    base64: bool = False
    source: str = ""

    def side(self, count: int) -> int | None:
        if self.many is not None and count > self.many[0]:
            return self.many[1]
        return self.max_side_px

    def size(self, data: bytes) -> float:
        """What ``data`` counts against the byte limits."""
        return len(data) * 4 / 3 if self.base64 else float(len(data))


IMAGE_LIMITS: dict[str, ImageLimits] = {
    # OpenAI images guide, "Image input requirements": up to 20 MB per image, 500 images and
    # 50 MB of image bytes per request (developers.openai.com/api/docs/guides/images-vision;
    # read in a stored copy of the guide, 2026-12-02)
    "openai": ImageLimits(20, 500, 50, source="OpenAI's image input requirements"),
    # Anthropic vision guide, "General limits": 5 MB per image through the API, at most 8000 px a
    # side, 2000 px when a request has more than 20 images, 32 MB per request
    # (platform.claude.com/docs/en/build-with-claude/vision, as quoted in shellicar/claude-cli#323)
    "anthropic": ImageLimits(5, 100, 32, max_side_px=8000, many=(20, 2000), source="Anthropic's vision limits"),
    # Gemini API image understanding: inline data limits the whole request (prompt and base64
    # bytes) to 20 MB; at most 3,600 images per request (ai.google.dev/gemini-api/docs/image-understanding,
    # stored copies, 2026-12-03). Google's file-input-methods page and a January 2026 post give
    # 100 MB for inline data; the image page's 20 MB is the one kept here.
    "gemini": ImageLimits(20, 3600, 20, base64=True, source="Gemini's inline image limits"),
    # Groq vision: a request with a base64 image may be 4 MB (413 above), an image at most
    # 33,177,600 pixels (400 above), at most 5 images (console.groq.com/docs/vision, 2026-12-03)
    "groq": ImageLimits(4, 5, 4, max_pixels=33_177_600, base64=True, source="Groq's vision limits"),
    # Mistral vision FAQ: 10 MB per image, 8 images per request, an error above 10000x10000
    # (docs.mistral.ai/capabilities/vision, published source mistralai/platform-docs-public)
    "mistral": ImageLimits(10, 8, 80, max_side_px=10000, source="Mistral's vision limits"),
    # DeepSeek vision guide: base64 images count toward the 48 MiB request body
    # (api-docs.deepseek.com/guides/vision, 2026-12-03); no per-image count is documented
    "deepseek": ImageLimits(48, 10_000, 48, base64=True, source="DeepSeek's request body limit"),
}

#: Formats Pillow re-encodes in kind when it makes an image smaller; others become PNG.
_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}


def image_problem(provider: str, images: Sequence[ImagePart], *, downscale: bool = False) -> str | None:
    """Why ``provider`` would refuse these images, naming the limit, or None when they fit (or it is unknown).

    With ``downscale``, an image that is too large is judged as ``fit_messages`` would send it.
    """
    limits = IMAGE_LIMITS.get(provider)
    if limits is None or not images:
        return None
    if len(images) > limits.max_images:
        return f"{len(images)} images; {limits.source}: at most {limits.max_images} per request"
    sent = [_fitted(limits, image, len(images)) if downscale else image for image in images]
    sized = [(i, image) for i, image in enumerate(sent, 1) if image.data is not None]
    total = sum(limits.size(image.data or b"") for _, image in sized)
    if total > limits.max_total_mb * MB:
        return (f"{total / MB:.1f} MB of images{' as base64' if limits.base64 else ''}; {limits.source}: "
                f"at most {limits.max_total_mb:g} MB per request (send fewer or smaller images)")
    for i, image in sized:
        problem = _one_problem(limits, image.data or b"", len(images))
        if problem is not None:
            return f"image {i} {problem}"
    return None


def _one_problem(limits: ImageLimits, data: bytes, count: int) -> str | None:
    if limits.size(data) > limits.max_image_mb * MB:
        return f"is {limits.size(data) / MB:.1f} MB; {limits.source}: at most {limits.max_image_mb:g} MB each"
    size = image_size(data)
    if size is None:
        return None
    side = limits.side(count)
    if side is not None and max(size) > side:
        many = f" when a request has more than {limits.many[0]} images" if limits.many and side != limits.max_side_px else ""
        return (f"is {size[0]}×{size[1]} px; {limits.source}: at most {side} px a side{many} "
                "(downscale it, or send fewer images)")
    if limits.max_pixels is not None and size[0] * size[1] > limits.max_pixels:
        return f"is {size[0]}×{size[1]} px; {limits.source}: at most {limits.max_pixels:,} pixels"
    return None


def fit_messages(provider: str, messages: Sequence[Message]) -> tuple[tuple[Message, ...], tuple[str, ...]]:
    """``messages`` with each image too large for ``provider`` made smaller, and a note per image changed."""
    limits = IMAGE_LIMITS.get(provider)
    count = sum(len(m.images) for m in messages)
    if limits is None or not count:
        return tuple(messages), ()
    notes: list[str] = []
    out: list[Message] = []
    n = 0
    for m in messages:
        images = []
        for image in m.images:
            n += 1
            fitted = _fitted(limits, image, count)
            if fitted is not image:
                notes.append(f"image {n} {_describe(image)} → {_describe(fitted)} ({limits.source})")
            images.append(fitted)
        out.append(replace(m, images=tuple(images)) if m.images else m)
    return tuple(out), tuple(notes)


def _describe(image: ImagePart) -> str:
    size = image_size(image.data or b"")
    dims = f"{size[0]}×{size[1]} px, " if size else ""
    return f"{dims}{len(image.data or b'') / MB:.1f} MB"


def _fitted(limits: ImageLimits, image: ImagePart, count: int) -> ImagePart:
    """The image as sent under ``limits``: itself when it fits or cannot be decoded, else a smaller copy."""
    if image.data is None or _one_problem(limits, image.data, count) is None:
        return image
    data, mime = _shrink(image.data, image.mime_type, limits.side(count), limits.max_pixels,
                         int(limits.max_image_mb * MB * (3 / 4 if limits.base64 else 1)))
    return image if data is None else ImagePart(data=data, mime_type=mime)


@functools.lru_cache(maxsize=64)  # a map sends one image with every prompt; bytes hash once
def _shrink(data: bytes, mime: str, side: int | None, pixels: int | None, max_bytes: int) -> tuple[bytes | None, str]:
    """A copy within ``side`` px a side, ``pixels`` in all and ``max_bytes``, or (None, mime) when it can't be decoded."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib, a dependency
        return None, mime
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            w, h = img.size
            scale = 1.0
            if side is not None:
                scale = min(scale, side / max(w, h))
            if pixels is not None:
                scale = min(scale, math.sqrt(pixels / (w * h)))
            fmt = _FORMATS.get(mime, "PNG")
            out_mime = mime if mime in _FORMATS else "image/png"
            for _ in range(8):  # shrink until the bytes fit too
                size = (max(1, math.floor(w * scale)), max(1, math.floor(h * scale)))
                small = img.resize(size, Image.Resampling.LANCZOS) if size != (w, h) else img
                if fmt == "JPEG" and small.mode not in ("RGB", "L"):
                    small = small.convert("RGB")
                buf = io.BytesIO()
                small.save(buf, format=fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
                if buf.tell() <= max_bytes:
                    return buf.getvalue(), out_mime
                scale *= math.sqrt(max_bytes / buf.tell()) * 0.95
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None, mime
    return None, mime
