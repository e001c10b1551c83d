"""Four processes on one key: wall time against the limits' bound and refusals, with and without Redis.

    python benchmarks/shared_key.py                 # run by `make bench` after bench.py
    python benchmarks/shared_key.py --reps 3 --out benchmarks/RESULTS.md   # raw numbers beside it: RESULTS.shared.json

Four client processes, each its own ``Fanout`` told the key's real limits, send their prompts to
one model of a sandbox (in its own process) that enforces them exactly: a per-second bucket of
600 RPM and 30,000 TPM (OpenAI's quantization: 10 requests and 500 tokens per second) and 4 in
flight. Without shared budgets each process believes it has the whole key; with ``[shared]``
they keep it jointly through a real ``redis-server`` started here. Repetitions alternate which
runs first. Then the client latency the store adds to each request: the round trip of one
reservation (``SharedStore.reserve``, the only call on a request's path) timed 2,000 times on
loopback. The section is written into ``--out`` between the ``shared`` markers.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from bench import SandboxProc, lower_bound  # noqa: E402  (the runner's sandbox process and bound, reused)

from nbfanout.sandbox import parse_scenario  # noqa: E402

PROCESSES, PROMPTS, MAX_TOKENS = 4, 25, 40
LATENCY_CALLS = 2000  # reservations timed one after another
RPM, TPM, SLOTS = 600, 30_000, 4
SCENARIO = {
    "name": "shared_key_4_processes",
    "description": "one key, one model: per-second quantized 600 RPM / 30,000 TPM, 4 in flight",
    "seed": 77,
    "time_scale": 1.0,
    "providers": {"team": {
        "style": "openai", "keys": ["sk-sbx-team-bench-sh01"],
        "limits": {"limiter": "per_second"},
        "models": {
            "m": {"limits": {"rpm": RPM, "tpm": TPM, "concurrency": SLOTS},
                  "latency": {"base_ms": 250, "per_output_token_ms": 1.0, "jitter": 0.05}, "output_tokens": [10, 30]},
            "free": {"latency": {"base_ms": 1}, "output_tokens": [1, 1]},
        },
    }},
}
BEGIN, END = "<!-- shared:begin -->", "<!-- shared:end -->"


def log(msg: str) -> None:
    print(f"[shared_key] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- one client process
async def worker(spec: dict[str, Any]) -> dict[str, Any]:
    from nbfanout import Fanout

    fx = Fanout(spec["config"], learn=False)
    await asyncio.sleep(max(0.0, spec["start_at"] - time.time()))
    began = time.time()
    batch = await fx.map([f"{spec['tag']}: question {i}, answer in a sentence" for i in range(spec["prompts"])],
                         models=["team/m"], max_tokens=MAX_TOKENS)
    attempts = [a for r in batch.results for a in r.attempts]
    return {"answered": sum(r.ok for r in batch.results), "asked": len(batch.results),
            "refusals": sum(a.outcome == "rate_limit" for a in attempts),
            "first_start": began + min(a.start_s for a in attempts), "last_end": began + max(a.end_s for a in attempts)}


def run_processes(config: dict[str, Any]) -> list[dict[str, Any]]:
    start_at = time.time() + 5.0  # every process imported and waiting: they begin together
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(
        {"config": config, "prompts": PROMPTS, "tag": f"p{i}", "start_at": start_at})],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(PROCESSES)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        if p.returncode != 0:
            raise RuntimeError(f"a client process failed:\n{stderr[-2000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


# --------------------------------------------------------------------------- the store's own latency
async def store_latency(config: dict[str, Any], n: int) -> dict[str, float]:
    """Seconds per reservation round trip, sequential, on loopback (p50, p95, max) and CPU per call."""
    from nbfanout import Fanout

    fx = Fanout(config, learn=False)
    assert fx.shared is not None
    await fx.shared.open()
    model = fx.config.model("team/free")
    budgets = list(fx.router.budgets_for(model, fx.config.providers["team"].keys[0]))
    times = []
    cpu0 = time.process_time()
    for i in range(n):
        t0 = time.perf_counter()
        verdict = await fx.shared.reserve(f"bench-{i}", budgets, 50.0, 0.0)
        times.append(time.perf_counter() - t0)
        assert verdict.admitted, verdict
        fx.shared.release(f"bench-{i}")
    cpu = (time.process_time() - cpu0) / n
    await fx.shared.close()
    times.sort()
    return {"p50_ms": statistics.median(times) * 1e3, "p95_ms": times[int(0.95 * (n - 1))] * 1e3,
            "max_ms": times[-1] * 1e3, "cpu_us": cpu * 1e6, "n": n}


# --------------------------------------------------------------------------- the run and its report
def measure(reps: int) -> dict[str, Any]:
    from nbfanout.sandbox.redis_server import RedisServer

    sc = parse_scenario(SCENARIO)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="nbfanout-shared-") as tmp, RedisServer() as redis:
        path = Path(tmp) / "scenario.json"
        path.write_text(json.dumps(SCENARIO), encoding="utf-8")
        sandbox = SandboxProc(str(path), Path(tmp) / "sandbox.log")
        try:
            base = sc.client_config(sandbox.url)
            for rep in range(reps):
                order = ["redis", "none"] if rep % 2 == 0 else ["none", "redis"]
                for mode in order:
                    config = dict(base)
                    if mode == "redis":
                        config["shared"] = {"url": redis.url, "namespace": f"bench{rep}"}
                    sandbox.reset()
                    procs = run_processes(config)
                    stats = sandbox.stats()
                    wall = max(p["last_end"] for p in procs) - min(p["first_start"] for p in procs)
                    rejected = stats["totals"]["rejected"]
                    runs.append({"rep": rep + 1, "mode": mode, "wall_s": wall,
                                 "answered": sum(p["answered"] for p in procs), "asked": sum(p["asked"] for p in procs),
                                 "refusals": sum(v for k, v in rejected.items() if k in ("rpm", "tpm", "concurrency")),
                                 "rejected": rejected, "requests": stats["totals"]["requests"],
                                 "peak_concurrency": stats["models"]["team/m"]["peak_concurrency"]})
                    log(f"rep {rep + 1} {mode}: {wall:.2f} s, refusals {runs[-1]['refusals']}, "
                        f"answered {runs[-1]['answered']}/{runs[-1]['asked']}")
            latency = asyncio.run(store_latency({**base, "shared": {"url": redis.url, "namespace": "latency"}},
                                                LATENCY_CALLS))
            log(f"store round trip p50 {latency['p50_ms']:.2f} ms, p95 {latency['p95_ms']:.2f} ms")
        finally:
            sandbox.stop()
    bound = lower_bound(sc, ["team/m"], _prompt_tokens(), PROCESSES * PROMPTS, None)
    return {"runs": runs, "latency": latency, "bound_s": bound.seconds, "bound_by": "; ".join((f"set by {bound.critical}", *bound.notes))}


def _prompt_tokens() -> int:
    from nbfanout.sandbox.text import estimate_tokens

    return estimate_tokens("p0: question 10, answer in a sentence")


def section(result: dict[str, Any], took_s: float) -> str:
    runs, lat, bound = result["runs"], result["latency"], result["bound_s"]
    lines = [BEGIN, "", f"## Shared key, {PROCESSES} processes (benchmarks/shared_key.py)", "",
             f"Run {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC in {took_s / 60:.1f} min on {os.cpu_count()} CPUs. "
             f"{PROCESSES} processes × {PROMPTS} prompts to one model on one key (per-second quantized {RPM} RPM / "
             f"{TPM:,} TPM, {SLOTS} in flight, 250 ms + output), every process told the limits; the sandbox "
             "enforces them exactly. `redis`: `[shared]` through a local redis-server; `none`: each process alone.",
             "", f"Lower bound: {bound:.2f} s (the sandbox's `lower_bound`, {result['bound_by']}): the bucket's first "
             f"{RPM // 60} at once, then {RPM // 60} per second, plus the shortest answer.", "",
             "| mode | runs | wall s (median) | × bound | answered | limit refusals (median, all runs) | peak in flight |",
             "|---|---|---|---|---|---|---|"]
    for mode in ("redis", "none"):
        mine = [r for r in runs if r["mode"] == mode]
        if not mine:
            continue
        wall = statistics.median(r["wall_s"] for r in mine)
        lines.append(f"| {mode} | {len(mine)} | {wall:.2f} | {wall / bound:.2f} | "
                     f"{sum(r['answered'] for r in mine)}/{sum(r['asked'] for r in mine)} | "
                     f"{statistics.median(r['refusals'] for r in mine):.0f} ({sum(r['refusals'] for r in mine)}) | "
                     f"{max(r['peak_concurrency'] for r in mine)} |")
    lines += ["", f"Client latency the store adds per request (one reservation round trip on loopback, "
              f"{lat['n']:,} sequential): p50 {lat['p50_ms']:.2f} ms, p95 **{lat['p95_ms']:.2f} ms** "
              f"(target < 2 ms), max {lat['max_ms']:.2f} ms; client CPU {lat['cpu_us']:.0f} µs per reservation.",
              "", "| rep | mode | wall s | refusals (by reason) | requests sent |", "|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['rep']} | {r['mode']} | {r['wall_s']:.2f} | {r['refusals']} {r['rejected'] or ''} | "
                     f"{r['requests']} |")
    lines += ["", END]
    return "\n".join(lines)


def write_section(out: Path, text: str) -> None:
    old = out.read_text(encoding="utf-8") if out.exists() else ""
    if BEGIN in old and END in old:
        new = old.split(BEGIN, 1)[0] + text + old.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    out.write_text(new, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--smoke", action="store_true",
                        help="5 prompts per process, 1 repetition, 200 timed reservations (make test's check)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(asyncio.run(worker(json.loads(args.worker)))), flush=True)
        return 0
    global PROMPTS, LATENCY_CALLS
    if args.smoke:
        PROMPTS, LATENCY_CALLS, args.reps = 5, 200, 1
    t0 = time.monotonic()
    result = measure(args.reps)
    write_section(args.out, section(result, time.monotonic() - t0))
    args.out.with_suffix(".shared.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    log(f"done in {(time.monotonic() - t0) / 60:.1f} min; section written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
