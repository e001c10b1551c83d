"""Deterministic answers: text and token counts derived from seed + model + prompt.

The same seed, model and prompt always give the same answer, output length and jitter
draw, so runs can be compared and tests can assert exact text. Token counting in the
sandbox is deliberately simple and documented: input tokens are ``ceil(chars / 4)``;
an answer's tokens are its whitespace-separated words.
"""

from __future__ import annotations

import hashlib
import math
import random
import re

__all__ = [
    "answer_text",
    "chunk_text",
    "estimate_tokens",
    "jitter_draw",
    "output_token_count",
    "rng",
    "transcript_text",
]

_VOCAB = (
    "the answer considers this question from several angles and weighs the evidence "
    "carefully before reaching a conclusion about structure clarity risk cost trade-offs "
    "naming tests interfaces latency retries limits providers models tokens budget "
    "refactoring modules documentation examples errors edge cases concurrency order "
    "failover caching streaming summary first second third finally overall therefore"
).split()


def rng(*parts: object) -> random.Random:
    """A Random seeded from the parts (stable across processes, unlike hash())."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def estimate_tokens(text: str) -> int:
    """Input tokens as the sandbox counts them: ceil(characters / 4)."""
    return math.ceil(len(text) / 4) if text else 0


def output_token_count(seed: int, model: str, prompt: str, lo: int, hi: int) -> int:
    """The answer length in tokens for this seed, model and prompt, within [lo, hi]."""
    return rng(seed, "length", model, prompt).randint(lo, hi)


def jitter_draw(seed: int, model: str, prompt: str, n: int) -> float:
    """A number in [-1, 1] for the n-th request of this model and prompt (latency jitter)."""
    return rng(seed, "jitter", model, prompt, n).uniform(-1.0, 1.0)


def answer_text(seed: int, model: str, prompt: str, n_tokens: int) -> str:
    """Exactly ``n_tokens`` words: names the model, echoes up to three prompt words, then filler."""
    echo = re.findall(r"[A-Za-z0-9][A-Za-z0-9'_-]*", prompt)[:3]
    words = [f"[{model}]", "On", f"\"{' '.join(echo) or 'your prompt'}\":"]
    words = " ".join(words).split()
    r = rng(seed, "answer", model, prompt)
    while len(words) < n_tokens:
        words.append(r.choice(_VOCAB))
    words = words[: max(1, n_tokens)]
    if len(words) > 3 and not words[-1].endswith("."):
        words[-1] += "."
    return " ".join(words)


def transcript_text(seed: int, model: str, filename: str, data: bytes, language: str | None) -> str:
    """A deterministic "transcript" of an audio upload (the sandbox does not listen)."""
    digest = hashlib.sha256(data).hexdigest()[:8]
    r = rng(seed, "transcript", model, digest)
    body = " ".join(r.choice(_VOCAB) for _ in range(12))
    lang = f" [{language}]" if language else ""
    return f"Sandbox transcript of {filename} ({len(data)} bytes, {digest}){lang}: {body}."


def chunk_text(text: str, words_per_chunk: int = 4) -> list[str]:
    """Split an answer into stream fragments whose concatenation is exactly ``text``."""
    pieces = re.findall(r"\S+\s*", text)
    if not pieces:
        return [text] if text else []
    return ["".join(pieces[i : i + words_per_chunk]) for i in range(0, len(pieces), words_per_chunk)]


_JUDGE = re.compile(r"reply with json only", re.IGNORECASE)


def judge_verdict(seed: int, model: str, prompt: str) -> str | None:
    """A grading prompt ("Reply with JSON only ... score") gets a seeded JSON verdict; others None."""
    if not _JUDGE.search(prompt) or '"score"' not in prompt:
        return None
    r = rng(seed, "judge", model, prompt)
    return '{"score": %d, "reason": "%s"}' % (r.randint(3, 10), " ".join(r.choice(_VOCAB) for _ in range(6)))
