"""From a 429 to the request going out on another model: real time, over real loopback HTTP.

A pool of two models where the first always answers 429 with a 30 s retry-after: every
request is refused by it and must go out on the second. The subscriber stamps, on the
wall clock, the moment the refusal is recorded (``rate_limited``) and the moment the
request starts on the spare (``request_started``). Writes benchmarks/results/rotation_latency.md.

Run: .venv/bin/python benchmarks/rotation_latency.py [--requests 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from nbfanout import Fanout
from nbfanout.sandbox import start_sandbox

SCENARIO = {
    "name": "rotation",
    "seed": 1,
    "providers": {
        "openai": {
            "style": "openai",
            "keys": ["sk-sbx-rotation-0001"],
            "models": {
                "busy": {"latency": {"base_ms": 5}, "output_tokens": [5, 10],
                         "faults": [{"kind": "rate_limit_burst", "probability": 1.0, "retry_after_s": 30}]},
                "spare": {"latency": {"base_ms": 5}, "output_tokens": [5, 10]},
            },
        }
    },
}


async def measure(sandbox, n: int) -> list[float]:
    deltas: list[float] = []
    for i in range(n):
        fx = Fanout(sandbox.config, learn=False)  # fresh budgets: the busy model is tried first every time
        refused: dict[str, float] = {}

        def on_event(e, refused=refused) -> None:
            now = time.perf_counter()
            if e.kind == "rate_limited":
                refused[e.request] = now
            elif e.kind == "request_started" and e.model == "openai/spare" and e.request in refused:
                deltas.append(now - refused.pop(e.request))

        fx.subscribe(on_event)
        result = await fx.run(f"question {i}", ["openai/busy"], fallbacks={"openai/busy": ["openai/spare"]})
        assert result[0].ok and result[0].model == "openai/spare"
    return deltas


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "rotation_latency.md"))
    args = parser.parse_args()
    with start_sandbox(SCENARIO) as sandbox:
        deltas = asyncio.run(measure(sandbox, args.requests))
    ms = sorted(d * 1000 for d in deltas)
    p95 = ms[max(0, int(len(ms) * 0.95) - 1)]
    lines = [
        "# From a 429 to the request going out on another model (real loopback HTTP)",
        "",
        f"requests: {len(ms)}; target: under 50 ms",
        f"median {statistics.median(ms):.2f} ms, p95 {p95:.2f} ms, max {ms[-1]:.2f} ms",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
