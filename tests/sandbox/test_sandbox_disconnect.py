"""A client that goes away mid-request (a cancelled fan-out) frees its slot at once, over real HTTP."""

from __future__ import annotations

import asyncio
import time

import httpx

SLOW = {
    "name": "slow",
    "seed": 2,
    "providers": {"openai": {"style": "openai", "keys": ["sk-sbx-slow-0001"],
                             "models": {"slow-model": {"latency": {"base_ms": 20000}, "output_tokens": [5, 5]}}}},
}


async def test_a_cancelled_non_streaming_request_leaves_the_ledger_at_once(sandbox_factory):
    sb = sandbox_factory(SLOW)
    body = {"model": "slow-model", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": "Bearer sk-sbx-slow-0001"}
    async with httpx.AsyncClient(timeout=30) as client:
        task = asyncio.ensure_future(client.post(f"{sb.url}/openai/v1/chat/completions", json=body, headers=headers))
        await asyncio.sleep(0.5)
        assert sb.stats()["totals"]["in_flight"] == 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    deadline = time.monotonic() + 5  # far less than the model's 20 s latency
    while sb.stats()["totals"]["in_flight"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stats = sb.stats()["totals"]
    assert stats["in_flight"] == 0
    assert stats["rejected"].get("client_closed") == 1
