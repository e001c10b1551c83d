"""Dashboard overhead: the same run with and without the live dashboard, as a ratio measured in one process.

    python benchmarks/dashboard_overhead.py [--models 50] [--repeats 7] [--out benchmarks/results/dashboard_overhead.md]

A sandbox (real HTTP on loopback) serves ``--models`` unlimited models that stream their
answers, so one run produces thousands of events; a second kind of run is a batch (``map`` of
40 prompts to 10 of them), whose rows count requests. Each repeat runs each kind twice, once
with a ``Dashboard`` subscribed and once without, alternating which goes first; the figure
is median(with) / median(without), per kind. Widgets talk to a comm that JSON-encodes every message
as ipykernel's session would, so the cost of sending updates is counted too. The design
target is a ratio within 1.05 (design.md: "within 5 %"); the result is written as markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import comm
from comm.base_comm import BaseComm

from nbfanout import Fanout
from nbfanout.notebook._runner import LoopJob
from nbfanout.notebook.dashboard import Dashboard
from nbfanout.sandbox import parse_scenario, start_sandbox

DEFAULT_OUT = Path(__file__).parent / "results" / "dashboard_overhead.md"


class SerializingComm(BaseComm):
    """Encodes each message as the kernel would before sending it, and counts them."""

    messages = 0
    times: list[float] = []

    def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None, buffers: Any = None, **keys: Any) -> None:
        json.dumps({"msg_type": msg_type, "data": data, "metadata": metadata, **keys})
        SerializingComm.messages += 1
        SerializingComm.times.append(time.monotonic())


def most_in_one_second(times: list[float]) -> int:
    """The most messages in any one-second window."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def scenario(n: int) -> dict[str, Any]:
    """``n`` unlimited models that stream ~250 tokens in about a second each."""
    model = {"latency": {"base_ms": 200, "per_output_token_ms": 3.0, "jitter": 0.1}, "output_tokens": [220, 280]}
    return {"name": f"overhead{n}", "seed": 11,
            "providers": {"openai": {"style": "openai", "keys": ["sk-sbx-overhead-bench-b001"],
                                     "models": {f"m{i:02d}": model for i in range(n)}}}}


BATCH_PROMPTS = 40  # the batch run: this many prompts to each of the first BATCH_MODELS models, not streamed
BATCH_MODELS = 10


def one_run(fx: Fanout, names: list[str], with_dashboard: bool, batch: bool = False) -> tuple[float, int, int, int]:
    """Wall seconds of one fan-out (streamed, or a batch ``map``) from start to result; events; widget
    messages; most messages in a second."""
    events: list[int] = [0]
    asked = names[:BATCH_MODELS] if batch else names
    dash = Dashboard(asked, stream=not batch) if with_dashboard else None
    sent_before = SerializingComm.messages

    def count(_: Any) -> None:
        events[0] += 1

    async def drive() -> list[Any]:
        unsubscribe = [fx.subscribe(count)] + ([fx.subscribe(dash.on_event)] if dash else [])
        try:
            if batch:
                prompts = [f"Question {i}: explain leaky buckets briefly." for i in range(BATCH_PROMPTS)]
                return list((await fx.map(prompts, asked, max_tokens=40)).results)
            return list((await fx.run("Explain leaky buckets to a new engineer.", asked, stream=True)).results)
        finally:
            for u in unsubscribe:
                u()
            if dash is not None:
                await dash.aclose()

    started = time.perf_counter()
    results = LoopJob(drive()).wait()
    elapsed = time.perf_counter() - started
    if not all(r.ok for r in results):
        raise RuntimeError(f"only {sum(r.ok for r in results)}/{len(results)} requests answered")
    sent = SerializingComm.times[sent_before:]
    return elapsed, events[0], len(sent), most_in_one_second(sent)


def measure(fx: Fanout, names: list[str], repeats: int, batch: bool) -> list[tuple[int, str, float, int, int, int]]:
    """``repeats`` pairs of runs, with and without the dashboard, alternating which goes first."""
    one_run(fx, names, True, batch)  # warm up: connections, imports, first widgets
    one_run(fx, names, False, batch)
    rows = []
    for i in range(repeats):
        for with_dashboard in ((True, False) if i % 2 == 0 else (False, True)):
            rows.append((i + 1, "with" if with_dashboard else "without", *one_run(fx, names, with_dashboard, batch)))
    return rows


def report(title: str, rows: list[tuple[int, str, float, int, int, int]]) -> tuple[list[str], float, int]:
    """Markdown for one kind of run; its ratio (median with / median without); the most messages in a second."""
    with_t = [r[2] for r in rows if r[1] == "with"]
    without_t = [r[2] for r in rows if r[1] == "without"]
    ratio = statistics.median(with_t) / statistics.median(without_t)
    events = statistics.median(r[3] for r in rows if r[1] == "with")
    messages = statistics.median(r[4] for r in rows if r[1] == "with")
    peak = max(r[5] for r in rows)
    verdict = "within" if ratio <= 1.05 else "OUTSIDE"
    lines = [
        f"## {title}",
        "",
        f"**Ratio (median with / median without): {ratio:.3f}** — {verdict} the 5 % target.",
        "",
        "| | median wall time | min | max |",
        "|---|---:|---:|---:|",
        f"| with dashboard | {statistics.median(with_t):.3f} s | {min(with_t):.3f} s | {max(with_t):.3f} s |",
        f"| without | {statistics.median(without_t):.3f} s | {min(without_t):.3f} s | {max(without_t):.3f} s |",
        "",
        f"Per run with the dashboard: {events:,.0f} events, {messages:.0f} widget messages; at most {peak} widget messages "
        "in any one-second window over all runs (the limit is 10).",
        "",
        "| repeat | dashboard | wall time | events | widget messages | most in 1 s |",
        "|---:|---|---:|---:|---:|---:|",
        *[f"| {i} | {kind} | {t:.3f} s | {e:,} | {m} | {p} |" for i, kind, t, e, m, p in rows],
        "",
    ]
    return lines, ratio, peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    os.environ.setdefault("NBFANOUT_STATE", str(Path(os.environ.get("TMPDIR", "/tmp")) / "nbfanout-bench-state.json"))
    comm.create_comm = lambda *a, **k: SerializingComm(*a, **k)  # the comm package's documented hook
    names = [f"openai/m{i:02d}" for i in range(args.models)]
    with start_sandbox(parse_scenario(scenario(args.models))) as sb:
        fx = Fanout(sb.config, learn=False)
        streamed = measure(fx, names, args.repeats, batch=False)
        batched = measure(fx, names, args.repeats, batch=True)
    stream_lines, stream_ratio, stream_peak = report(f"One streamed fan-out to {args.models} models", streamed)
    batch_lines, batch_ratio, batch_peak = report(
        f"A batch: map of {BATCH_PROMPTS} prompts x {BATCH_MODELS} models (one row per model)", batched)
    lines = [
        "# Dashboard overhead",
        "",
        f"Generated by `python benchmarks/dashboard_overhead.py --models {args.models} --repeats {args.repeats}`.",
        "",
        f"Each kind of run against {args.models} sandbox models (real loopback HTTP, unlimited), {args.repeats} times with",
        "the live dashboard subscribed and as many times without, alternating which goes first, in one process.",
        "Widget messages are JSON-encoded as ipykernel would before sending.",
        "",
        *stream_lines,
        *batch_lines,
        f"Machine: {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"dashboard overhead: streamed {stream_ratio:.3f}, batch {batch_ratio:.3f} (target 1.05); at most "
          f"{max(stream_peak, batch_peak)} widget messages in one second; report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
