"""A long run on one Fanout: memory stays flat and the budgets stay exact to the last request.

    make soak                                   # = python benchmarks/soak.py
    python benchmarks/soak.py --maps 10 --prompts 1000 --out benchmarks/results/soak.json

Ten maps of 1,000 prompts × 2 models (20,000 requests) go through one ``Fanout`` against a
sandbox in its own process (benchmarks/bench_serve.py), whose two models have limits that bind:
a token bucket of 6,000 RPM and a sliding window of 4,800 RPM with 16 in flight, both with TPM.
After every map (2,000 completions) the client's resident memory is read from /proc, and the
Python heap that tracemalloc traces (everything the client's objects hold, without the
allocator's own arenas, which settle slowly and are returned to the OS late). The heap's slope
over the second half of the run (after imports, pools and caches have settled) says whether
anything grows per request; RSS is what a user's machine sees. The sandbox's ledger says whether any request was refused for a
limit the client knew (the sandbox enforces each shape exactly) and the sliding window's
60-s maximum. The report goes to ``--out`` (JSON) and into benchmarks/RESULTS.md between the
``soak`` markers, which ``make bench`` keeps.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from bench import SandboxProc  # noqa: E402  (the runner's sandbox process, reused)

MARK_BEGIN, MARK_END = "<!-- soak:begin -->", "<!-- soak:end -->"

SCENARIO: dict[str, Any] = {
    "name": "soak",
    "description": "two models whose limits bind, for a long run on one client",
    "seed": 77,
    "providers": {"soak": {"style": "openai", "keys": ["sk-sbx-soak-0001"], "models": {
        "bucket": {"limits": {"rpm": 6000, "tpm": 600_000, "limiter": "token_bucket"},
                   "latency": {"base_ms": 20, "jitter": 0.2}, "output_tokens": [10, 30]},
        "window": {"limits": {"rpm": 4800, "tpm": 480_000, "concurrency": 16, "limiter": "sliding_window"},
                   "latency": {"base_ms": 30, "jitter": 0.2}, "output_tokens": [10, 30]},
    }}},
}
MODELS = ["soak/bucket", "soak/window"]


def rss_mib() -> float:
    """Resident memory now (not the peak), from /proc; the peak where /proc is missing."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def slope_per_10k(points: list[tuple[int, float]]) -> float:
    """Least-squares MiB per 10,000 completions."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var * 10_000


async def soak(url: str, maps: int, prompts: int) -> dict[str, Any]:
    from nbfanout import Fanout
    from nbfanout.sandbox import parse_scenario

    config = parse_scenario(SCENARIO).client_config(url)
    tracemalloc.start(1)
    samples: list[tuple[int, float]] = [(0, rss_mib())]
    heap: list[tuple[int, float]] = [(0, tracemalloc.get_traced_memory()[0] / 2**20)]
    done = failed = 0
    t0 = time.perf_counter()
    async with Fanout(config, learn=False, concurrency=64) as fx:
        for k in range(maps):
            batch = await fx.map([f"Soak prompt {k}-{i}: say a word." for i in range(prompts)], MODELS, max_tokens=30)
            done += len(batch.results)
            failed += sum(not r.ok for r in batch.results)
            samples.append((done, rss_mib()))
            heap.append((done, tracemalloc.get_traced_memory()[0] / 2**20))
            print(f"[{time.perf_counter() - t0:6.0f} s] {done:>6} done, {failed} failed, RSS {samples[-1][1]:.1f} MiB, "
                  f"heap {heap[-1][1]:.1f} MiB", flush=True)
    tracemalloc.stop()
    return {"samples": samples, "heap": heap, "done": done, "failed": failed, "wall_s": time.perf_counter() - t0}


def report(run: dict[str, Any], stats: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    samples, heap = run["samples"], run["heap"]
    second_half = samples[len(samples) // 2:]
    refusals = {k: v for k, v in stats.get("totals", {}).get("rejected", {}).items()
                if k in ("rpm", "tpm", "rpd", "concurrency")}
    window = stats.get("models", {}).get("soak/window", {})
    return {
        "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "maps": args.maps, "prompts_per_map": args.prompts, "requests": run["done"], "failed": run["failed"],
        "wall_s": round(run["wall_s"], 1),
        "rss_mib": [[n, round(m, 1)] for n, m in samples],
        "rss_peak_mib": round(max(m for _, m in samples), 1),
        "slope_mib_per_10k_second_half": round(slope_per_10k(second_half), 2),
        "heap_mib": [[n, round(m, 2)] for n, m in heap],
        "heap_slope_mib_per_10k_second_half": round(slope_per_10k(heap[len(heap) // 2:]), 2),
        "limit_refusals": refusals,
        "window_max_requests_60s": window.get("max_requests_60s"), "window_rpm": 4800,
        "peak_in_flight_window": window.get("peak_concurrency"), "window_concurrency": 16,
    }


def markdown(doc: dict[str, Any]) -> str:
    rows = " · ".join(f"{n:,}: {m}" for n, m in doc["rss_mib"])
    heap = " · ".join(f"{n:,}: {m}" for n, m in doc["heap_mib"])
    refusals = ", ".join(f"{k} {v}" for k, v in doc["limit_refusals"].items()) or "none"
    return "\n".join([
        MARK_BEGIN,
        f"## soak: {doc['requests']:,} requests on one Fanout (make soak)",
        "",
        f"Written by `make soak` on {doc['when']} (Python {doc['python']}, {doc['cpus']} CPUs); every number comes "
        "from that run. Two sandbox models whose limits bind (a 6,000-RPM token bucket; a 4,800-RPM sliding window "
        f"with 16 in flight), {doc['maps']} maps of {doc['prompts_per_map']:,} prompts each through one `Fanout`.",
        "",
        f"- Requests: {doc['requests']:,} in {doc['wall_s']} s, {doc['failed']} failed; limit refusals at the sandbox: "
        f"{refusals}.",
        f"- Sliding window: at most {doc['window_max_requests_60s']} requests in any 60 s (limit {doc['window_rpm']}); "
        f"at most {doc['peak_in_flight_window']} in flight (limit {doc['window_concurrency']}).",
        f"- Python heap traced after each map (completions: MiB): {heap}; slope over the second half "
        f"{doc['heap_slope_mib_per_10k_second_half']:+.2f} MiB per 10,000 requests (what the run itself keeps).",
        f"- Client RSS after each map (completions: MiB): {rows}. Peak {doc['rss_peak_mib']} MiB; slope over the "
        f"second half {doc['slope_mib_per_10k_second_half']:+.2f} MiB per 10,000 requests (the allocator's arenas "
        "included).",
        MARK_END,
    ])


def write_into_results(section: str, path: Path) -> None:
    """Replace the soak section of RESULTS.md (or append it), leaving the rest as make bench wrote it."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        text = head + section + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--maps", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=1000, help="prompts per map (x 2 models)")
    parser.add_argument("--out", default=str(HERE / "results" / "soak.json"))
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"), help="the report the section goes into")
    parser.add_argument("--max-slope", type=float, default=1.0,
                        help="MiB of traced heap per 10,000 requests, over the second half, that fails the soak")
    args = parser.parse_args(argv)
    tmp = Path(args.out).with_suffix(".scenario.json")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(SCENARIO), encoding="utf-8")
    sandbox = SandboxProc(str(tmp), tmp.with_suffix(".log"))
    try:
        run = asyncio.run(soak(sandbox.url, args.maps, args.prompts))
        doc = report(run, sandbox.stats(), args)
    finally:
        sandbox.stop()
        tmp.unlink(missing_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1), encoding="utf-8")
    write_into_results(markdown(doc), Path(args.results))
    print(markdown(doc))
    exact = not doc["limit_refusals"] and doc["failed"] == 0 and (doc["window_max_requests_60s"] or 0) <= doc["window_rpm"]
    flat = doc["heap_slope_mib_per_10k_second_half"] <= args.max_slope
    if not (exact and flat):
        print(f"soak: {'budgets not exact' if not exact else ''} {'memory grows' if not flat else ''}".strip(),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
