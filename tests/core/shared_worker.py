"""One process of the shared-budget tests: its own Fanout, a map, a JSON line of what happened.

``python tests/core/shared_worker.py SPEC_JSON``, SPEC = {config (with or without a [shared]
table), prompts, model, tag, start_at (time.time() to begin at, so processes start together),
max_tokens}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from nbfanout import Fanout


async def main(spec: dict) -> dict:
    fx = Fanout(spec["config"], learn=False)
    delay = spec.get("start_at", 0) - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    print(json.dumps({"started": True}), flush=True)
    began = time.time()
    batch = await fx.map([f"{spec['tag']} question {i}: name a colour" for i in range(spec["prompts"])],
                         models=[spec["model"]], max_tokens=spec.get("max_tokens", 20))
    ended = time.time()
    attempts = [a for r in batch.results for a in r.attempts]
    return {
        "answered": sum(1 for r in batch.results if r.ok),
        "asked": len(batch.results),
        "refusals": sum(1 for a in attempts if a.outcome == "rate_limit"),
        "errors": sorted({f"{r.error.category.value}: {r.error.message}" for r in batch.results if r.error}),
        "began": began,
        "ended": ended,
        "first_start": began + min((a.start_s for a in attempts), default=0.0),
        "last_end": began + max((a.end_s for a in attempts), default=0.0),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))), flush=True)
