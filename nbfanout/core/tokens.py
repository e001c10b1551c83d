"""Token estimates before a call, so TPM budgets can admit a request before it would be refused.

An exact BPE tokenizer is used when one is available for the model's encoding: ``bpe_openai``
(the vocabularies shipped inside the package, so it works offline) or ``tiktoken`` (if its
vocabulary can be loaded). Otherwise a heuristic calibrated against o200k/cl100k on
English prose and code (within ±20 %; tests/core/test_tokens.py measures it).
"""

from __future__ import annotations

import json
import math
import re
import struct
import threading
from collections.abc import Iterable
from typing import Any, Protocol

__all__ = ["encoder_ready", "estimate_image_tokens", "estimate_request_tokens", "estimate_text_tokens", "exact_encoder",
           "request_tokens_bound"]

# Chat formats add a few tokens per message for role markers and separators
# (OpenAI's cookbook "How to count tokens with tiktoken": 3 per message, 3 to prime the reply).
PER_MESSAGE_TOKENS = 3
REPLY_PRIMER_TOKENS = 3

_PIECE = re.compile(r"[A-Za-z]+|[0-9]{1,3}|[^\sA-Za-z0-9]+|\s+")


class _Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


_encoders: dict[str, _Encoder | None] = {}
_loading: dict[str, threading.Thread] = {}
_lock = threading.Lock()


def exact_encoder(encoding: str) -> _Encoder | None:
    """A real BPE encoder for ``encoding`` (e.g. "o200k_base"), or None when none can be loaded."""
    if encoding not in _encoders:
        enc = _load(encoding)
        with _lock:
            _encoders.setdefault(encoding, enc)
    return _encoders[encoding]


def encoder_ready(encoding: str) -> bool:
    """Whether ``encoding``'s encoder is loaded (or known to be missing); if not, it starts loading.

    Loading bpe_openai's vocabularies costs about a second of CPU. A request need not wait for
    it: until it is ready the caller can count with ``request_tokens_bound``, which never
    counts less than any byte-level BPE does.
    """
    if encoding in _encoders:
        return True
    with _lock:
        if encoding not in _loading:
            _loading[encoding] = threading.Thread(target=exact_encoder, args=(encoding,), daemon=True,
                                                  name=f"nbfanout-tokenizer-{encoding}")
            _loading[encoding].start()
    return False


def _load(encoding: str) -> _Encoder | None:
    # bpe_openai first: it ships its vocabularies, where tiktoken may try to download them (and an
    # offline machine then waits for DNS before the first request goes out)
    try:
        import bpe_openai

        return bpe_openai.get_encoding(encoding)
    except Exception:  # not installed or unknown encoding
        pass
    try:
        import tiktoken

        return tiktoken.get_encoding(encoding)
    except Exception:  # not installed, unknown encoding, or its vocabulary cannot be downloaded
        return None


def _heuristic(text: str) -> int:
    """Count the way BPE vocabularies mostly split text: words, digit groups, symbol runs.

    Constants fitted against o200k_base and cl100k_base on prose and Python source.
    """
    total = 0
    for piece in _PIECE.findall(text):
        c = piece[0]
        if c.isascii() and c.isalpha():
            total += 1 if len(piece) <= 10 else math.ceil(len(piece) / 6)  # long identifiers split
        elif c.isspace():
            total += 0 if piece == " " else 1  # a lone space merges into the next word
        elif c.isdigit():
            total += 1
        elif ord(c) > 127:
            total += len(piece)  # non-Latin scripts and emoji: about a token per character
        else:
            total += math.ceil(len(piece) / 3)  # punctuation runs like "):" or "==" merge
    return total


def estimate_text_tokens(text: str, encoding: str | None = None) -> int:
    """Tokens in ``text``: exact when ``encoding`` names a loadable vocabulary, else heuristic."""
    if not text:
        return 0
    if encoding:
        enc = exact_encoder(encoding)
        if enc is not None:
            try:
                return _exact_count(enc, text)
            except Exception:  # noqa: BLE001 - a tokenizer's own refusal must not lose a run: count bytes
                return len(text.encode("utf-8", "surrogatepass"))  # no byte-level BPE counts more
    return _heuristic(text)


#: Characters per call to an encoder: bpe-openai refuses inputs past its own limits ("Input too
#: long to encode safely" above about a million characters, TokenLimitError past its chunk limit).
_CHUNK = 100_000


def _exact_count(enc: _Encoder, text: str) -> int:
    """``len(enc.encode(text))``, in pieces cut at whitespace, where BPE's pre-tokenizer cuts anyway."""
    if len(text) <= _CHUNK:
        return len(enc.encode(text))
    total, start = 0, 0
    while start < len(text):
        end = min(len(text), start + _CHUNK)
        if end < len(text):
            cut = max(text.rfind(" ", start + _CHUNK // 2, end), text.rfind("\n", start + _CHUNK // 2, end))
            end = cut if cut > start else end
        total += len(enc.encode(text[start:end]))
        start = end
    return total


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG or JPEG header, without decoding the image."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return w, h
            i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return None


def estimate_image_tokens(data: bytes | None) -> int:
    """OpenAI's high-detail formula: scale to fit 2048², shortest side to 768, 170 per 512² tile + 85.

    Source: OpenAI vision guide, "Calculating costs". Unknown sizes count as one 1024² image (765).
    """
    size = image_size(data) if data else None
    if size is None:
        return 765
    w, h = size
    if max(w, h) > 2048:
        w, h = w * 2048 / max(w, h), h * 2048 / max(w, h)
    if min(w, h) > 768:
        w, h = w * 768 / min(w, h), h * 768 / min(w, h)
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def _tool_text(message: Any) -> str:
    """The text a message's tool calls add (name and JSON arguments), counted like any other text."""
    calls = getattr(message, "tool_calls", ()) or ()
    return "".join(f"{c.name}{json.dumps(dict(c.arguments), sort_keys=True)}" for c in calls)


def tools_text(tools: Iterable[Any]) -> str:
    """The tool definitions as the provider sees them: names, descriptions and JSON Schemas."""
    return "".join(f"{t.name}{t.description}{json.dumps(dict(t.parameters), sort_keys=True)}" for t in tools)


def estimate_request_tokens(
    messages: Iterable[Any],
    *,
    system: str | None = None,
    max_output_tokens: int | None = None,
    encoding: str | None = None,
    tools: Iterable[Any] = (),
) -> tuple[int, int]:
    """(prompt tokens, output budget) for a chat request; messages have ``content``, ``images``
    and ``tool_calls``; ``tools`` are the definitions sent with it."""
    prompt = REPLY_PRIMER_TOKENS
    if system:
        prompt += PER_MESSAGE_TOKENS + estimate_text_tokens(system, encoding)
    for m in messages:
        text = (getattr(m, "content", "") or "") + _tool_text(m)
        prompt += PER_MESSAGE_TOKENS + estimate_text_tokens(text, encoding)
        for image in getattr(m, "images", ()) or ():
            prompt += estimate_image_tokens(getattr(image, "data", None))
    listed = tools_text(tools)
    if listed:
        prompt += estimate_text_tokens(listed, encoding)
    return prompt, int(max_output_tokens or 0)


def request_tokens_bound(messages: Iterable[Any], *, system: str | None = None, tools: Iterable[Any] = ()) -> int:
    """At least as many prompt tokens as any byte-level BPE counts: each token is one byte or more."""
    def size(text: str | None) -> int:
        return len(text.encode("utf-8", "surrogatepass")) if text else 0

    prompt = REPLY_PRIMER_TOKENS + (PER_MESSAGE_TOKENS + size(system) if system else 0) + size(tools_text(tools))
    for m in messages:
        prompt += PER_MESSAGE_TOKENS + size((getattr(m, "content", "") or "") + _tool_text(m))
        for image in getattr(m, "images", ()) or ():
            prompt += estimate_image_tokens(getattr(image, "data", None))
    return prompt
