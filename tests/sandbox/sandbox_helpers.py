"""Plain-httpx requests in each wire format, built from a sandbox client config (tests only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

#: About the size of the README the seeds' run sent (12,664 characters).
SEED_PROMPT = "Review this README and suggest refactorings.\n\n" + (
    "nbfanout sends one prompt to many models at once and gathers every answer. " * 168
)


def first_key(entry: Mapping[str, Any]) -> str:
    key = entry["api_key"]
    return key if isinstance(key, str) else key[0]


def chat_request(
    config: Mapping[str, Any],
    name: str,
    prompt: str = "Say hello",
    *,
    max_tokens: int | None = 256,
    stream: bool = False,
    key: str | None = None,
) -> dict[str, Any]:
    """kwargs for ``client.request(**...)`` that ask ``provider/model`` for a chat answer."""
    provider, _, model = name.partition("/")
    entry = config["providers"][provider]
    key = key or first_key(entry)
    base = entry["base_url"]
    if entry["kind"] == "anthropic":
        body: dict[str, Any] = {"model": model, "max_tokens": max_tokens or 1024, "messages": [{"role": "user", "content": prompt}]}
        if stream:
            body["stream"] = True
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        return {"method": "POST", "url": f"{base}/messages", "headers": headers, "json": body}
    if entry["kind"] == "gemini":
        body = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
        if max_tokens is not None:
            body["generationConfig"] = {"maxOutputTokens": max_tokens}
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return {"method": "POST", "url": f"{base}/models/{model}:{method}", "headers": {"x-goog-api-key": key}, "json": body}
    body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stream:
        body["stream"] = True
    return {"method": "POST", "url": f"{base}/chat/completions", "headers": {"Authorization": f"Bearer {key}"}, "json": body}


def answer_of(kind: str, body: Any) -> str:
    """The answer text in a non-streamed response body of the given wire kind."""
    if kind == "anthropic":
        return "".join(b["text"] for b in body["content"] if b["type"] == "text")
    if kind == "gemini":
        return "".join(p["text"] for p in body["candidates"][0]["content"]["parts"])
    return body["choices"][0]["message"]["content"]


@dataclass
class Outcome:
    """What a test client got for one model: final response (or error), attempts, time."""

    name: str
    response: httpx.Response | None
    attempts: int
    elapsed_s: float
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.response is not None and self.response.status_code == 200


async def naive_fanout(
    client: httpx.AsyncClient,
    config: Mapping[str, Any],
    models: Sequence[str],
    prompt: str = SEED_PROMPT,
    *,
    max_tokens: int = 1024,
    delays: Sequence[float] = (0.1, 0.2, 0.4),
    start_offsets: Mapping[str, float] | None = None,
) -> dict[str, Outcome]:
    """The seeds' naive client: every model at once, three quick retries on any failure."""

    async def one(name: str) -> Outcome:
        await asyncio.sleep((start_offsets or {}).get(name, 0.0))
        t0 = time.monotonic()
        response: httpx.Response | None = None
        attempts = 0
        for delay in (0.0, *delays):
            await asyncio.sleep(delay)
            attempts += 1
            response = await client.request(**chat_request(config, name, prompt, max_tokens=max_tokens))
            if response.status_code == 200:
                break
        return Outcome(name, response, attempts, time.monotonic() - t0)

    results = await asyncio.gather(*(one(n) for n in models))
    return {o.name: o for o in results}
