"""Images checked against each provider's documented input limits before anything is sent.

A request that breaks one would only come back as a 400 after a round trip (and, in a fan-out,
once per model); here the model is skipped and the reason names the limit. Only images given as
bytes are checked (a URL's size is the provider's to see), and only providers whose limits are
documented below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nbfanout.core.tokens import image_size
from nbfanout.providers.base import ImagePart

__all__ = ["ImageLimits", "IMAGE_LIMITS", "image_problem"]

MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What one provider's API accepts per request."""

    max_image_mb: float
    max_images: int
    max_total_mb: float
    max_side_px: int | None = None
    many: tuple[int, int] | None = None  # (more than N images, then each side at most M px)
    source: str = ""


IMAGE_LIMITS: dict[str, ImageLimits] = {
    # OpenAI images guide, "Image input requirements": up to 20 MB per image, 500 images and
    # 50 MB of image bytes per request (developers.openai.com/api/docs/guides/images-vision;
    # read in a stored copy of the guide, 2026-12-02)
    "openai": ImageLimits(20, 500, 50, source="OpenAI's image input requirements"),
    # Anthropic vision guide, "General limits": 5 MB per image through the API, at most 8000 px a
    # side, 2000 px when a request has more than 20 images, 32 MB per request
    # (platform.claude.com/docs/en/build-with-claude/vision, as quoted in shellicar/claude-cli#323)
    "anthropic": ImageLimits(5, 100, 32, max_side_px=8000, many=(20, 2000), source="Anthropic's vision limits"),
}


def image_problem(provider: str, images: Sequence[ImagePart]) -> str | None:
    """Why ``provider`` would refuse these images, naming the limit, or None when they fit (or it is unknown)."""
    limits = IMAGE_LIMITS.get(provider)
    if limits is None or not images:
        return None
    sized = [(i, image) for i, image in enumerate(images, 1) if image.data is not None]
    if len(images) > limits.max_images:
        return f"{len(images)} images; {limits.source}: at most {limits.max_images} per request"
    total = sum(len(image.data or b"") for _, image in sized)
    if total > limits.max_total_mb * MB:
        return f"{total / MB:.1f} MB of images; {limits.source}: at most {limits.max_total_mb:g} MB per request"
    side = limits.max_side_px
    if limits.many is not None and len(images) > limits.many[0]:
        side = limits.many[1]
    for i, image in sized:
        data = image.data or b""
        if len(data) > limits.max_image_mb * MB:
            return f"image {i} is {len(data) / MB:.1f} MB; {limits.source}: at most {limits.max_image_mb:g} MB each"
        size = image_size(data)
        if side is not None and size is not None and max(size) > side:
            many = f" when a request has more than {limits.many[0]} images" if side != limits.max_side_px and limits.many else ""
            return (f"image {i} is {size[0]}×{size[1]} px; {limits.source}: at most {side} px a side{many} "
                    "(downscale it, or send fewer images)")
    return None
