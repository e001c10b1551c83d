"""seed15: all 15 models at once, 20 runs in a row, over real loopback HTTP.

Checks, per run: 15/15 answered, no request refused for a limit, and the wall time against
the scenario's lower bound. Two bounds are reported (nbfanout.sandbox.scenario.lower_bound_s
documents both): ``seconds``, the least time any client could take if it knew the hidden
upstream conflict between the paid and the free R1 (send the free one first), and
``serialized_s``, the least time for a client that cannot know it: the paid R1's fastest
answer, then the free R1's. Writes benchmarks/results/seed15_wall_time.md.

Run: .venv/bin/python benchmarks/seed15_wall_time.py [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from nbfanout import Fanout
from nbfanout.core.tokens import estimate_text_tokens
from nbfanout.sandbox import start_sandbox

PROMPT = "Suggest three ways to make a README easier to follow for a newcomer."
LIMIT_REASONS = {"rpm", "tpm", "rpd", "concurrency"}


async def one_run(sandbox, models: list[str]) -> tuple[float, int, dict[str, int], dict[str, int]]:
    sandbox.reset()
    fx = Fanout(sandbox.config, learn=False)
    t0 = time.perf_counter()
    result = await fx.run(PROMPT, models)
    wall = time.perf_counter() - t0
    rejected = sandbox.stats()["totals"]["rejected"]
    limits = {k: v for k, v in rejected.items() if k in LIMIT_REASONS}
    others = {k: v for k, v in rejected.items() if k not in LIMIT_REASONS}
    return wall, len(result.succeeded), limits, others


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "seed15_wall_time.md"))
    args = parser.parse_args()
    with start_sandbox("seed15") as sandbox:
        models = [f"{p.id}/{m.id}" for p in sandbox.scenario.providers for m in p.models if m.kind == "chat"]
        bound = sandbox.lower_bound(models, prompt_tokens=estimate_text_tokens(PROMPT))
        rows = [asyncio.run(one_run(sandbox, models)) for _ in range(args.runs)]
    walls = [r[0] for r in rows]
    ok_runs = sum(1 for r in rows if r[1] == len(models))
    limit_refusals = sum(sum(r[2].values()) for r in rows)
    lines = [
        "# seed15: 15 models at once, real loopback HTTP",
        "",
        f"runs: {args.runs}; runs with {len(models)}/{len(models)} answered: {ok_runs}",
        f"requests refused for a limit (rpm/tpm/rpd/concurrency): {limit_refusals}",
        f"other refusals (the scenario's upstream-busy fault), per run: {[sum(r[3].values()) for r in rows]}",
        "",
        f"lower bound, conflict known (free R1 sent first): {bound.seconds:.2f} s",
        f"lower bound, conflict unknowable (paid R1 then free R1): {bound.serialized_s:.2f} s",
        f"wall time: median {statistics.median(walls):.2f} s, min {min(walls):.2f} s, max {max(walls):.2f} s",
        f"ratio to the unknowable-conflict bound: median {statistics.median(walls) / bound.serialized_s:.3f}, "
        f"max {max(walls) / bound.serialized_s:.3f}",
        f"ratio to the conflict-known bound: median {statistics.median(walls) / bound.seconds:.3f}",
        "",
        "| run | wall s | answered | limit refusals |",
        "|---|---|---|---|",
        *(f"| {i + 1} | {w:.2f} | {n} | {sum(lim.values())} |" for i, (w, n, lim, _) in enumerate(rows)),
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines[:12]))


if __name__ == "__main__":
    main()
