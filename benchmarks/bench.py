"""nbfanout side by side with LiteLLM Router and a plain asyncio client, in one run.

    make bench                                   # = python benchmarks/bench.py
    python benchmarks/bench.py --reps 3 --out benchmarks/RESULTS.md
    python benchmarks/bench.py --only fast,storm  # some scenarios (the report says which ran)
    python benchmarks/bench.py --smoke --out /tmp/smoke.md   # what tests/benchmarks runs

Every scenario runs with every client, ``--reps`` times (at least 3 for the report),
the clients' order rotating from one repetition to the next. Each client runs in a process
of its own (benchmarks/bench_clients.py), so the CPU time and peak RSS measured are that
client's alone, against a sandbox in another process (benchmarks/bench_serve.py). A
scenario bound by rate-limit windows takes a minute or more whatever the client does, so
its clients run at the same time, each against a sandbox of its own (several such
scenarios may share a wave, see ``WAVES``); the CPU-bound ``fast`` scenario runs its
clients one at a time against one sandbox. Before a client's timed part starts, the
runner waits until every client of the wave has imported and built its client, resets
their sandboxes (ledger, limit windows, fault clocks) and only then lets them go.

The report (``--out``, default benchmarks/RESULTS.md) is written from this run only:
per scenario and client the wall time, the scenario's lower bound (computed by the
sandbox from the scenario's own limits and latencies: ``Scenario.lower_bound``) and the
ratio, answered / asked, requests sent and refusals by reason (the sandbox's ledger),
client CPU µs per request sent, peak RSS, and for failover the time from a 429 to the
answer from another pool member. A JSON file with every run sits beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from nbfanout.sandbox import load_scenario, parse_scenario
from nbfanout.sandbox.scenario import Scenario
from nbfanout.sandbox.text import estimate_tokens

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: The client and sandbox scripts; main() points them at copies taken when the run starts.
SCRIPTS = {"client": HERE / "bench_clients.py", "serve": HERE / "bench_serve.py"}
READY = "bench-client-ready"  # bench_clients.READY (not imported: that module is a client process)
MAX_TOKENS = 40
CONCURRENCY = 64
TIMEOUT_S = 60.0
MAX_ATTEMPTS = 6
LIMIT_REASONS = ("rpm", "tpm", "rpd", "concurrency")
T0 = time.monotonic()
#: Set by main(): PYTHONPATH for every sandbox and client process, pointing at a copy of
#: nbfanout/ taken when the run started, so one run measures one version of the code even
#: while the checkout changes under it.
SNAPSHOT_ENV: dict[str, str] = {}
RUNNER_CPU_AT = [0.0]  # the runner's own CPU-seconds when the current wave's timed part began


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.0f} s] {msg}", flush=True)


def prompt(i: int) -> str:
    # 46-47 characters: 12 tokens as the sandbox counts them (ceil(chars / 4)), so every
    # request costs 12 + 40 = 52 TPM, the figure the batch scenarios are written for.
    return f"Question {i:03d}: what is the square of {i:04d} then?"


# --------------------------------------------------------------------------- scenarios


def _batch_stand_in(name: str, limiter: str, hidden: bool = False) -> dict[str, Any]:
    """Used only while the built-in scenario ``name`` does not exist in this checkout."""
    lim = {"rpm-a": {"rpm": 300}, "rpm-b": {"rpm": 360, "concurrency": 16}, "tpm-a": {"tpm": 15600},
           "tpm-b": {"tpm": 18720}, "both": {"rpm": 330, "tpm": 17160}}
    models = {}
    for i, (mid, limits) in enumerate(lim.items()):
        limits = dict(limits)
        if hidden:
            limits["hidden"] = sorted(k for k in limits if k != "hidden")
        models[mid] = {"limits": limits, "latency": {"base_ms": 150 + 40 * i, "per_output_token_ms": 5.0, "jitter": 0.05},
                       "output_tokens": [20, 40]}
    provider: dict[str, Any] = {"style": "openai", "keys": [f"sk-sbx-bench-standin-{len(name):04d}"], "models": models}
    del limiter  # the checkout's sandbox may not know limiter shapes yet
    return {"name": name, "seed": 500, "providers": {"bench": provider}}


FAILOVER_STAND_IN = {
    "name": "failover", "seed": 9,
    "providers": {"bench": {"style": "openai", "keys": ["sk-sbx-bench-failover-f001"], "models": {
        "first": {"latency": {"base_ms": 200, "per_output_token_ms": 2.0, "jitter": 0.05}, "output_tokens": [20, 40],
                  "faults": [{"kind": "rate_limit_burst", "first_n": 600, "retry_after_s": 30}]},
        "second": {"latency": {"base_ms": 250, "per_output_token_ms": 2.0, "jitter": 0.05}, "output_tokens": [20, 40]},
        "third": {"latency": {"base_ms": 300, "per_output_token_ms": 2.0, "jitter": 0.05}, "output_tokens": [20, 40]},
    }}},
}

SMOKE = {
    "name": "smoke", "seed": 20, "description": "20 prompts x 2 models; a concurrency limit that binds a little",
    "providers": {"bench": {"style": "openai", "keys": ["sk-sbx-bench-smoke-s001"], "models": {
        "a": {"limits": {"rpm": 40, "concurrency": 3}, "latency": {"base_ms": 120, "per_output_token_ms": 1.0, "jitter": 0.05},
              "output_tokens": [10, 20]},
        "b": {"limits": {"tpm": 3000, "concurrency": 5}, "latency": {"base_ms": 150, "per_output_token_ms": 1.0, "jitter": 0.05},
              "output_tokens": [10, 20]},
    }}},
}


@dataclass
class Spec:
    key: str
    title: str
    scenario: str | dict[str, Any]  # a built-in name, or a dict scenario
    prompts: int
    clients: tuple[str, ...] = ("nbfanout", "litellm", "naive")
    models: tuple[str, ...] | None = None  # None: every chat model of the scenario
    mode: str = "batch"  # batch: every prompt to every model; failover: each prompt once, to a pool
    parallel: bool = True  # clients at once, each against its own sandbox
    stand_in: dict[str, Any] | None = None  # used while the built-in does not exist yet
    deadline_s: float | None = None  # a client still running then is cut (reported as such)
    pool: str | None = None  # failover: the scenario's pool whose models are used, in order
    about: str = ""


SPECS: list[Spec] = [
    Spec("seed15", "seed15: the seeds' 15 models, one prompt each", "seed15", 1, deadline_s=120,
         about="One prompt to each of the 15 models of the seeds' run (three wire formats, a free model that "
               "allows one request at a time and shares an upstream with the paid one)."),
    Spec("batch_token_bucket", "500 prompts × 5 models, token buckets", "batch_token_bucket", 500,
         stand_in=_batch_stand_in("batch_token_bucket", "token_bucket")),
    Spec("batch_sliding_window", "500 prompts × 5 models, sliding 60-s windows", "batch_sliding_window", 500,
         stand_in=_batch_stand_in("batch_sliding_window", "sliding_window")),
    Spec("batch_fixed_window", "500 prompts × 5 models, fixed windows reset on the minute", "batch_fixed_window", 500,
         stand_in=_batch_stand_in("batch_fixed_window", "fixed_window")),
    Spec("batch_per_second", "500 prompts × 5 models, per-minute limits enforced per second", "batch_per_second", 500,
         stand_in=_batch_stand_in("batch_per_second", "per_second")),
    Spec("batch_headers", "500 prompts × 5 models, limits unknown to the clients, stated in x-ratelimit-* headers",
         "batch_headers", 500, stand_in=_batch_stand_in("batch_headers", "token_bucket", hidden=True)),
    Spec("fast", "no limits: many requests at concurrency 64", "fast", 2000,
         clients=("nbfanout", "litellm", "naive", "httpx"), parallel=False, deadline_s=150,
         models=("openai/gpt-4o-mini", "openai/gpt-4.1-nano", "openrouter/meta-llama/llama-3.3-70b-instruct",
                 "openrouter/x-ai/grok-3-mini-beta", "local/m1"),
         about="Prompts to each of 5 OpenAI-compatible models of the `fast` scenario, which enforces no "
               "limits and answers at once: the clients' own overhead. CPU-bound, so its clients run one at a time "
               "against one sandbox (reset between clients); plain httpx is the reference."),
    Spec("storm", "storm: every fault kind on every wire", "storm", 3, deadline_s=240,
         about="Three prompts to each chat model of `storm` (429s with and without waits, 500/503/529, slow "
               "answers, dropped connections, malformed and empty bodies, revoked and exhausted keys)."),
    Spec("failover", "failover: a pool of 3, the first rate limited for its first 30 s", "failover", 200,
         mode="failover", stand_in=FAILOVER_STAND_IN, deadline_s=240, pool="failover",
         about="Each prompt needs one answer from the pool; the first model refuses every request for its first "
               "30 s, so a client must move to another pool member. 'From a 429 to the answer' is measured per "
               "prompt, in the client process, from its first 429 to the answer from another pool member."),
]
SMOKE_SPEC = Spec("smoke", "smoke: 20 prompts × 2 models, concurrency limits that bind a little", SMOKE, 20,
                  clients=("nbfanout", "litellm", "naive", "httpx"), deadline_s=90)

#: Scenarios whose clients all run at once, one wave after the other. A batch scenario's
#: three clients ask for well over one of this machine's two cores at their peak (2,500
#: requests each at 3-12 ms of client CPU, plus the sandboxes), so the busiest batch
#: scenarios (per second, headers: 31-86 % of 2 CPUs alone) have a wave of their own. The
#: two window shapes hold most requests back for a minute and kept the machine 42-49 % busy
#: together, so they share one; the token bucket (27-32 %) shares the few-request scenarios'
#: (24-28 %) (RESULTS.md of 2026-12-02). The report gives each wave's CPU load.
WAVES: list[list[str]] = [
    ["seed15", "storm", "failover", "batch_token_bucket"],
    ["batch_sliding_window", "batch_fixed_window"],
    ["batch_per_second"],
    ["batch_headers"],
    ["fast"],
]
FAST_PROMPTS = 400  # x 5 models; see --fast-prompts


def builtin_names() -> set[str]:
    folder = ROOT / "nbfanout" / "sandbox" / "scenarios"
    return {p.stem for p in folder.glob("*.toml")}


@dataclass
class Resolved:
    spec: Spec
    scenario: Scenario
    serve_arg: str
    stand_in: bool
    models: list[str]


def resolve(spec: Spec, tmp: Path) -> Resolved:
    if isinstance(spec.scenario, str) and spec.scenario in builtin_names():
        sc = load_scenario(spec.scenario)
        arg, stand_in = spec.scenario, False
    else:
        data = spec.scenario if isinstance(spec.scenario, dict) else spec.stand_in
        if data is None:
            raise SystemExit(f"scenario {spec.scenario!r} is not built in and has no stand-in")
        sc = parse_scenario(data, source=f"<bench {spec.key}>")
        path = tmp / f"scenario-{spec.key}.json"
        path.write_text(json.dumps(data), encoding="utf-8")
        arg, stand_in = str(path), not isinstance(spec.scenario, dict)
    chat = [f"{p.id}/{m.id}" for p in sc.providers for m in p.models if m.kind == "chat"]
    pools = dict(getattr(sc, "pools", ()) or ())
    if spec.pool and spec.pool in pools:
        models = list(pools[spec.pool])
    else:
        models = list(spec.models) if spec.models else chat
    return Resolved(spec, sc, arg, stand_in, models)


def lower_bound(sc: Scenario, models: list[str], prompt_tokens: int, prompts: int, start: float | None) -> Any:
    """The sandbox's bound; ``prompts`` and ``start`` passed where this checkout supports them."""
    params = inspect.signature(sc.lower_bound).parameters
    kwargs: dict[str, Any] = {}
    names = models
    if "prompts" in params:
        kwargs["prompts"] = prompts
    else:  # older sandbox: the same model listed n times counts n requests in each pool
        names = [m for m in models for _ in range(prompts)]
    if "start" in params:
        kwargs["start"] = start
    if "concurrency" in params:  # every client is told to keep at most CONCURRENCY in flight
        kwargs["concurrency"] = CONCURRENCY
    return sc.lower_bound(names, prompt_tokens, MAX_TOKENS, **kwargs)


# --------------------------------------------------------------------------- processes


class SandboxProc:
    """bench_serve.py in its own process; stopped by closing its stdin."""

    def __init__(self, serve_arg: str, log_path: Path) -> None:
        self.log = open(log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen([sys.executable, str(SCRIPTS["serve"]), serve_arg], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT,
                                     env=dict(os.environ, **SNAPSHOT_ENV))
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.proc.wait(5)
            raise RuntimeError(f"sandbox {serve_arg} did not start; see {log_path}")
        self.url = json.loads(line)["url"]
        self.http = httpx.Client(timeout=30)

    def stats(self) -> dict[str, Any]:
        try:
            r = self.http.get(f"{self.url}/_sandbox/stats")
            r.raise_for_status()
            return r.json()
        except httpx.HTTPError as exc:  # a sandbox that died: the run is reported without a ledger
            return {"error": f"sandbox stats unavailable: {exc}"}

    def reset(self) -> float:
        """Clear the ledger, windows and fault clocks; returns the sandbox clock just after."""
        self.http.post(f"{self.url}/_sandbox/reset").raise_for_status()
        return float(self.stats().get("clock", 0.0))

    def stop(self) -> None:
        self.http.close()
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


class ClientProc:
    """bench_clients.py for one client and one job; ready / go / result."""

    def __init__(self, job: dict[str, Any], tmp: Path, tag: str) -> None:
        self.job = job
        self.tag = tag
        self.job_path = tmp / f"job-{tag}.json"
        self.out_path = tmp / f"result-{tag}.json"
        self.err_path = tmp / f"client-{tag}.log"
        self.job_path.write_text(json.dumps(job), encoding="utf-8")
        self.err = open(self.err_path, "w", encoding="utf-8")
        env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONUNBUFFERED="1", **SNAPSHOT_ENV)
        self.proc = subprocess.Popen([sys.executable, str(SCRIPTS["client"]), str(self.job_path), str(self.out_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
                                     cwd=ROOT, env=env)
        self.ready = threading.Event()
        self.output: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:  # keeps the pipe empty whatever the client prints
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip() == READY:
                self.ready.set()
            else:
                self.output.append(line)
        self.ready.set()  # exited before it was ready: wait() reports it

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float) -> dict[str, Any]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.err.close()
        if self.proc.returncode == 0 and self.out_path.exists():
            return json.loads(self.out_path.read_text("utf-8"))
        tail = self.err_path.read_text("utf-8", "replace")[-1500:]
        return {"client": self.job["client"], "error": f"exit {self.proc.returncode}: {tail}"}


def model_info(sc: Scenario, config: dict[str, Any], name: str) -> dict[str, Any]:
    """What every client is told about one model: endpoint, keys and the advertised limits."""
    p, m = sc.resolve(name)
    told = config.get("models", {}).get(name, {})
    return {"name": name, "provider": p.id, "model": m.id, "wire": p.wire,
            "base_url": config["providers"][p.id]["base_url"], "keys": [k.key for k in p.keys],
            "per_key": m.limits.per_key,
            **{k: told.get(k) for k in ("rpm", "tpm", "rpd", "concurrency")}}


def make_job(r: Resolved, client: str, url: str) -> dict[str, Any]:
    config = r.scenario.client_config(url)
    config.setdefault("defaults", {}).update({"timeout_s": TIMEOUT_S, "max_attempts": MAX_ATTEMPTS})
    return {"client": client, "mode": r.spec.mode, "scenario": r.scenario.name,
            "models": [model_info(r.scenario, config, n) for n in r.models],
            "prompts": [prompt(i) for i in range(r.spec.prompts)], "max_tokens": MAX_TOKENS,
            "concurrency": CONCURRENCY, "timeout_s": TIMEOUT_S, "max_attempts": MAX_ATTEMPTS,
            "deadline_s": deadline(r), "pool": r.spec.pool if r.spec.pool in config.get("pools", {}) else None,
            "nbfanout_config": config if client == "nbfanout" else None}


#: A client still running this long after its start is cut (and marked so in the report):
#: ``DEADLINE_FACTOR`` × the scenario's bound + ``DEADLINE_EXTRA_S``, at least ``DEADLINE_MIN_S``.
#: Long enough to tell a slow client from a stuck one; the whole of ``make bench`` waits on it.
DEADLINE_FACTOR, DEADLINE_EXTRA_S, DEADLINE_MIN_S = 1.25, 25.0, 60.0


def deadline(r: Resolved) -> float:
    if r.spec.deadline_s is not None:
        return r.spec.deadline_s
    b = bound_for(r, None).seconds
    return max(DEADLINE_MIN_S, DEADLINE_FACTOR * b + DEADLINE_EXTRA_S) if math.isfinite(b) else 300.0


def bound_for(r: Resolved, start: float | None) -> Any:
    tokens = max(estimate_tokens(prompt(i)) for i in range(r.spec.prompts))
    if r.spec.mode == "failover":
        # Each prompt needs one answer from some pool member: the bound of the spares (every
        # member but the first, which refuses at the start) sharing the prompts between them.
        spares = r.models[1:]
        return lower_bound(r.scenario, spares, tokens, math.ceil(r.spec.prompts / len(spares)), start)
    return lower_bound(r.scenario, r.models, tokens, r.spec.prompts, start)


# --------------------------------------------------------------------------- one run


@dataclass
class Unit:
    """One client on one scenario in one repetition."""

    r: Resolved
    client: str
    rep: int
    position: int  # 1 = started first in its repetition
    sandbox: SandboxProc | None = None
    proc: ClientProc | None = None
    start_clock: float | None = None
    result: dict[str, Any] = field(default_factory=dict)


def _finish(u: Unit, stats: dict[str, Any]) -> None:
    res = u.result
    totals = stats.get("totals", {})
    res["requests"] = totals.get("requests", 0)
    res["rejected"] = totals.get("rejected", {})
    res["peak_concurrency"] = totals.get("peak_concurrency")
    res["rep"], res["position"], res["scenario_key"] = u.rep, u.position, u.r.spec.key
    res["deadline_s"] = deadline(u.r)
    b = bound_for(u.r, u.start_clock)
    res["bound_s"], res["bound_critical"] = b.seconds, getattr(b, "critical", "")
    res["bound_serialized_s"] = getattr(b, "serialized_s", b.seconds)
    res["bound_notes"] = list(getattr(b, "notes", ()))
    ok = "wall_s" in res
    res["ratio"] = res["wall_s"] / b.seconds if ok and b.seconds and math.isfinite(b.seconds) else None
    res["cpu_us_per_request"] = res["cpu_s"] * 1e6 / res["requests"] if ok and res["requests"] else None


def _launch(units: list[Unit], tmp: Path) -> None:
    for u in units:
        assert u.sandbox is not None
        tag = f"{u.r.spec.key}-{u.client}-{u.rep}"
        u.proc = ClientProc(make_job(u.r, u.client, u.sandbox.url), tmp, tag)


def cpu_ticks() -> tuple[int, int]:
    """(all, idle) jiffies of the whole machine, from /proc/stat (Linux); (0, 0) elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            vals = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    return sum(vals), vals[3] + vals[4]


def busy_since(mark: tuple[int, int]) -> float | None:
    now = cpu_ticks()
    total = now[0] - mark[0]
    return None if total <= 0 else 1 - (now[1] - mark[1]) / total


def busy_seconds_since(mark: tuple[int, int]) -> float:
    """CPU-seconds the whole machine spent busy since ``mark`` (all CPUs added up)."""
    now = cpu_ticks()
    return ((now[0] - mark[0]) - (now[1] - mark[1])) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU-seconds of a running process so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def outside_cpu(mark: tuple[int, int], sandboxes: dict[int, float], units: list[Unit]) -> float:
    """CPU-seconds spent by processes that are not part of this run, since ``mark``.

    The machine's busy time less the clients' timed CPU, the sandboxes' CPU and the
    runner's own: what other programs on the machine (another test run, say) took.
    """
    ours = sum(u.result.get("cpu_s", 0.0) for u in units)
    ours += sum(process_cpu_s(pid) - before for pid, before in sandboxes.items())
    ru = resource.getrusage(resource.RUSAGE_SELF)
    ours += ru.ru_utime + ru.ru_stime - RUNNER_CPU_AT[0]
    return max(0.0, busy_seconds_since(mark) - ours)


def _go(units: list[Unit]) -> None:
    for u in units:
        assert u.proc is not None
        if not u.proc.ready.wait(180):
            raise RuntimeError(f"{u.client} did not get ready in 180 s")
    marks = []
    for u in units:  # reset every sandbox, then start the clients in this repetition's order
        assert u.sandbox is not None
        marks.append((u, u.sandbox.reset(), time.monotonic()))
    for u, clock, at in marks:
        assert u.proc is not None
        u.start_clock = clock + (time.monotonic() - at)
        u.proc.go()


def _mark(units: list[Unit]) -> tuple[tuple[int, int], dict[int, float]]:
    """The machine's and every sandbox's CPU counters as the timed part begins."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    RUNNER_CPU_AT[0] = ru.ru_utime + ru.ru_stime
    pids = {u.sandbox.proc.pid for u in units if u.sandbox is not None}
    return cpu_ticks(), {pid: process_cpu_s(pid) for pid in pids}


def run_wave(specs: list[Resolved], rep: int, tmp: Path) -> list[Unit]:
    """Every client of every scenario at once, each against its own sandbox."""
    units: list[Unit] = []
    for r in specs:
        order = rotate(r.spec.clients, rep)
        units += [Unit(r, c, rep, i + 1) for i, c in enumerate(order)]
    try:
        for u in units:
            u.sandbox = SandboxProc(u.r.serve_arg, tmp / f"sandbox-{u.r.spec.key}-{u.client}-{rep}.log")
        _launch(units, tmp)
        _go(units)
        mark, sandboxes = _mark(units)
        for u in units:
            assert u.proc is not None
            u.result = u.proc.wait(deadline(u.r) + 120)
        busy, outside = busy_since(mark), outside_cpu(mark, sandboxes, units)
        for u in units:
            assert u.sandbox is not None
            _finish(u, u.sandbox.stats())
            u.result["machine_busy"], u.result["outside_cpu_s"] = busy, outside
    finally:
        for u in units:
            if u.proc is not None and u.proc.proc.poll() is None:
                u.proc.proc.kill()
            if u.sandbox is not None:
                u.sandbox.stop()
    return units


def run_serial(r: Resolved, rep: int, tmp: Path) -> list[Unit]:
    """One client after the other against one sandbox, reset between them (CPU-bound scenarios)."""
    units = [Unit(r, c, rep, i + 1) for i, c in enumerate(rotate(r.spec.clients, rep))]
    sandbox = SandboxProc(r.serve_arg, tmp / f"sandbox-{r.spec.key}-{rep}.log")
    try:
        for u in units:
            u.sandbox = sandbox
            _launch([u], tmp)
            _go([u])
            mark, sandboxes = _mark([u])
            assert u.proc is not None
            u.result = u.proc.wait(deadline(r) + 120)
            busy, outside = busy_since(mark), outside_cpu(mark, sandboxes, [u])
            _finish(u, sandbox.stats())
            u.result["machine_busy"], u.result["outside_cpu_s"] = busy, outside
            log(f"  {r.spec.key} rep {rep + 1}: {summary(u)}")
    finally:
        sandbox.stop()
    return units


def rotate(clients: tuple[str, ...], rep: int) -> list[str]:
    k = rep % len(clients)
    return list(clients[k:] + clients[:k])


def summary(u: Unit) -> str:
    res = u.result
    if "error" in res:
        return f"{u.client}: FAILED ({res['error'][:200]})"
    ratio = f"{res['ratio']:.2f}x" if res.get("ratio") else "-"
    cut = " CUT AT DEADLINE" if res.get("cut_by_deadline") else ""
    return (f"{u.client}: {res['wall_s']:.1f} s ({ratio} the bound {res['bound_s']:.1f} s), "
            f"{res['answered']}/{res['asked']} answered, {res['requests']} requests, "
            f"{_limit_refusals(res)} refused for a limit{cut}")


# --------------------------------------------------------------------------- report


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("nbfanout", "litellm", "tenacity", "httpx", "aiolimiter", "uvicorn", "starlette"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "nbfanout"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}" + (" with uncommitted changes under nbfanout/" if dirty else "")


def _fmt_s(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(0.95 * len(xs)) - 1))]


def _range(values: list[Any], fmt: Any = str) -> str:
    lo, hi = min(values), max(values)
    return fmt(lo) if lo == hi else f"{fmt(lo)}–{fmt(hi)}"


def _limit_refusals(x: dict[str, Any]) -> int:
    return sum(n for why, n in x.get("rejected", {}).items() if why in LIMIT_REASONS)


def scenario_table(key: str, units: list[Unit]) -> list[str]:
    r = units[0].r
    failover = r.spec.mode == "failover"
    head = ["client", "wall s (median; min–max)", "bound s", "wall / bound", "answered / asked", "requests sent",
            "limit refusals: median (all runs, by limit)", "other refusals and faults, all runs",
            "client CPU µs / request", "peak RSS MB"]
    if failover:
        head += ["429 → other member's answer, median / p95 ms"]
    if key == "fast":
        head += ["requests / s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for client in r.spec.clients:
        runs = [u.result for u in units if u.client == client]
        good = [x for x in runs if "wall_s" in x]
        if not good:
            lines.append(f"| {client} | failed: {runs[0].get('error', '?')[:120]!r} |" + " |" * (len(head) - 2))
            continue
        walls = [x["wall_s"] for x in good]
        bounds = [x["bound_s"] for x in good]
        ratios = [x["ratio"] for x in good if x.get("ratio") is not None]
        limits: Counter[str] = Counter()
        others: Counter[str] = Counter()
        for x in good:
            for why, n in x.get("rejected", {}).items():
                # client_closed: the client hung up before the answer (a run cut at its deadline)
                (limits if why in LIMIT_REASONS else others)["abandoned" if why == "client_closed" else why] += n
        refusals = statistics.median(_limit_refusals(x) for x in good)
        by_limit = ", ".join(f"{k} {v}" for k, v in sorted(limits.items())) or "none"
        by_other = ", ".join(f"{k} {v}" for k, v in sorted(others.items())) or "none"
        cpu = [x["cpu_us_per_request"] for x in good if x.get("cpu_us_per_request") is not None]
        cut = sum(1 for x in good if x.get("cut_by_deadline"))
        answered = _range([x["answered"] for x in good]) + f" / {good[0]['asked']}"
        if cut:
            answered += f" ({cut} of {len(good)} runs cut at the {good[0].get('deadline_s', deadline(r)):.0f}-s deadline)"
        if len(good) < len(runs):
            answered += f" ({len(runs) - len(good)} runs failed)"
        row = [client, f"{statistics.median(walls):.2f} ({_range(walls, lambda v: f'{v:.2f}')})",
               _range(bounds, _fmt_s), f"{statistics.median(ratios):.2f}" if ratios else "—", answered,
               f"{statistics.median(x['requests'] for x in good):.0f}", f"{refusals:g} ({by_limit})", by_other,
               f"{statistics.median(cpu):.0f}" if cpu else "—", f"{max(x['maxrss_kb'] for x in good) / 1024:.0f}"]
        if failover:
            lat = [s for x in good for s in x.get("failover_s", [])]
            row.append(f"{statistics.median(lat) * 1000:.0f} / {_p95(lat) * 1000:.0f} (n={len(lat)})" if lat else "— (none seen)")
        if key == "fast":
            row.append(f"{statistics.median(x['answered'] / x['wall_s'] for x in good):.0f}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


CLIENT_NOTES = [
    "- **nbfanout**: `Fanout(sandbox_config, concurrency=64, learn=False)`, then `await fx.map(prompts, models=[...], "
    "max_tokens=40)` (README, Python API); the sandbox's config with `timeout_s = 60` and `max_attempts = 6` in "
    "`[defaults]`. Failover: one call per prompt naming the pool (`fx.ask(prompt, models=pool)` where it exists, "
    "else `fx.run(prompt, [first], fallbacks={first: rest})`), gathered under a semaphore of 64.",
    "- **LiteLLM Router**: one model group per model (one deployment per key where the scenario's limits are per "
    "key), `rpm`/`tpm` and `max_parallel_requests` on each deployment as advertised, "
    "`routing_strategy=\"usage-based-routing-v2\"` (the docs' rate-limit-aware strategy, which keeps a deployment "
    "under its rpm/tpm; `simple-shuffle` only weighs deployments of one group by them), `num_retries=5`, "
    "`timeout=60`; `await router.acompletion(...)` gathered under a semaphore of 64; failover through the Router's "
    "`fallbacks`. OpenAI-compatible, Anthropic and Gemini deployments with `api_base` at the sandbox; "
    "`LITELLM_LOCAL_MODEL_COST_MAP=True`.",
    "- **naive**: `asyncio.gather` over httpx calls under a semaphore of 64, tenacity "
    "`wait_random_exponential(min=1, max=60)` and `stop_after_attempt(6)` retrying 429, 5xx, broken bodies and "
    "network errors (the OpenAI cookbook's pattern), paced by `aiolimiter.AsyncLimiter(rpm, 60)` per model (and "
    "`AsyncLimiter(tpm, 60).acquire(prompt + max_tokens)`) where a limit is advertised, a semaphore per advertised "
    "concurrency limit; the provider's first key; failover moves to the next pool member on each attempt.",
    "- **httpx** (fast only): the same calls under a semaphore of 64, no retries, no pacing.",
]


def _kept_sections(path: Path) -> list[str]:
    """The sections other scripts wrote into ``path`` between their markers (benchmarks/soak.py's and
    benchmarks/shared_key.py's), each kept as its script wrote it, with its own date."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    kept = []
    for name in ("soak", "shared"):
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if begin in text and end in text:
            kept.append(begin + text.split(begin, 1)[1].split(end, 1)[0] + end)
    return kept


def write_report(out: Path, units: list[Unit], args: argparse.Namespace, started: dt.datetime, took_s: float,
                 resolved: dict[str, Resolved]) -> None:
    from nbfanout.sandbox.scenario import lower_bound_s

    v = versions()
    by_key: dict[str, list[Unit]] = {}
    for u in units:
        by_key.setdefault(u.r.spec.key, []).append(u)
    reps = max((u.rep for u in units), default=0) + 1
    cmd = "python benchmarks/bench.py " + " ".join(args.argv) if args.argv else "make bench"
    lines = [
        "# Benchmarks: nbfanout, LiteLLM Router and plain asyncio, side by side",
        "",
        f"Written by `{cmd}` on {started:%Y-%m-%d %H:%M} UTC in {took_s / 60:.1f} minutes; every number below comes "
        "from that run. Do not edit by hand: run `make bench` again.",
        "",
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}. Python {v['python']}; nbfanout {v['nbfanout']} "
        f"(git {getattr(args, 'git_at_start', None) or git_state()}, copied when the run started), litellm {v['litellm']}, tenacity {v['tenacity']}, httpx {v['httpx']}, aiolimiter "
        f"{v['aiolimiter']}; sandbox on uvicorn {v['uvicorn']} / starlette {v['starlette']}.",
        "",
        "## How it was measured",
        "",
        f"- {reps} repetitions of every scenario with every client; the clients' order rotates between repetitions "
        "(each client goes first once in three; in a wave that runs them at once, the order in which they are "
        "told to start, milliseconds apart).",
        "- Each client runs in its own process against a sandbox in another process. Wall time is the client's "
        "fan-out call, from the moment its sandbox was reset to the last answer (imports and client construction "
        "are not timed). CPU is the client process's user + system time over that interval divided by the requests "
        "it sent (one-time work on a client's first call, such as loading a tokenizer's vocabulary, included: it "
        "dominates where there are few requests); peak RSS is the client process's, imports included.",
        "- Scenarios bound by rate-limit windows take a minute or more whatever the client does, so their clients "
        "run at the same time, each against a sandbox of its own, and several such scenarios share a wave: "
        + "; ".join(" + ".join(w) for w in WAVES if any(k in by_key for k in w) and w != ["fast"])
        + ". `fast` is CPU-bound: its clients run one at a time against one sandbox, reset between clients.",
        f"- A client still running {DEADLINE_FACTOR:g} × the scenario's bound + {DEADLINE_EXTRA_S:.0f} s after it "
        f"started (at least {DEADLINE_MIN_S:.0f} s; seed15, storm, failover and fast have fixed deadlines) is cut "
        "there; its wall time is then the deadline and the table says how many runs were cut.",
        "- Requests sent and refusals come from the sandbox's own ledger (`GET /_sandbox/stats`), per client: "
        "refusals by reason are limit refusals (rpm, tpm, rpd, concurrency) and injected faults.",
        f"- Every client is told the same: the advertised limits of each model, {MAX_ATTEMPTS} attempts, a "
        f"{TIMEOUT_S:.0f}-s timeout per request, concurrency {CONCURRENCY}, `max_tokens` {MAX_TOKENS}. No client "
        "may connect anywhere but loopback (an audit hook in each client process refuses and counts it).",
        "",
        "Clients, each configured the way its own documentation recommends (the comments in "
        "`benchmarks/bench_clients.py` cite the pages):",
        "",
        *CLIENT_NOTES,
        "",
        f"The lower bound is the sandbox's `Scenario.lower_bound(models, prompt_tokens, max_tokens=40, prompts=N, "
        f"start=..., concurrency={CONCURRENCY})`, computed from the scenario's own limits, limiter shapes and latencies (for fixed windows, "
        "from the phase at which the client started). Its definition, from `nbfanout/sandbox/scenario.py`:",
        "",
        *["> " + ln.strip() if ln.strip() else ">" for ln in (lower_bound_s.__doc__ or "").splitlines()],
        "",
    ]
    off = [(u.client, u.r.spec.key, u.result.get("off_loopback")) for u in units if u.result.get("off_loopback_count")]
    if off:
        lines += ["**Connections off loopback were attempted and refused:** "
                  + "; ".join(f"{c} in {k}: {', '.join(sorted(set(a)))}" for c, k, a in off), ""]
    else:
        lines += ["No client tried to connect anywhere but loopback.", ""]
    for key in [s.key for s in (SPECS if not args.smoke else [SMOKE_SPEC])]:
        if key not in by_key:
            continue
        us = by_key[key]
        r = resolved[key]
        lines += [f"## {r.spec.title}", ""]
        src = (f"stand-in dict scenario in benchmarks/bench.py (the built-in `{r.spec.scenario}` was not in this "
               "checkout)") if r.stand_in else (f"built-in scenario `{r.scenario.name}`" if isinstance(r.spec.scenario, str)
                                                   else "dict scenario in benchmarks/bench.py")
        n_models = len(r.models) if r.spec.mode == "batch" else 1
        lines += [f"{r.spec.about} " if r.spec.about else "",
                  f"Scenario: {src}; {r.spec.prompts} prompt(s) × {n_models} model(s) = "
                  f"{r.spec.prompts * n_models} requests asked; models: {', '.join(f'`{m}`' for m in r.models)}. "
                  f"{r.scenario.description}", ""]
        lines += scenario_table(key, us)
        crit = sorted({u.result.get("bound_critical", "") for u in us
                       if u.result.get("bound_critical") and u.result.get("bound_s")})
        if crit:
            lines += ["", f"The bound is set by: {', '.join(crit)}."]
        serial = [u.result["bound_serialized_s"] for u in us if u.result.get("bound_serialized_s")]
        bounds = [u.result["bound_s"] for u in us if u.result.get("bound_s")]
        if serial and bounds and max(serial) > max(bounds) + 1e-9:
            lines += ["", f"For a client that cannot know the scenario's hidden upstream conflict (it sends the "
                      f"conflicting models in either order) the bound is {_range(serial, _fmt_s)} s "
                      "(`LowerBound.serialized_s`)."]
        busy = [u.result["machine_busy"] for u in us if u.result.get("machine_busy") is not None]
        if busy:
            where = ("while each client ran alone" if not r.spec.parallel else
                     "while these runs' waves ran (every client of the wave at once, sandboxes included)")
            outside = [u.result["outside_cpu_s"] for u in us if u.result.get("outside_cpu_s") is not None]
            lines += ["", f"Machine CPU busy {where}: {_range([round(100 * b) for b in busy])} % of "
                      f"{os.cpu_count()} CPUs"
                      + (f"; of that, programs outside this benchmark took {_range([round(x) for x in outside])} "
                         "CPU-seconds per wave." if outside else ".")]
        if r.spec.mode == "failover":
            by: Counter[str] = Counter()
            for u in us:
                for m, n in (u.result.get("answered_by") or {}).items():
                    by[(u.client, m)] += n
            lines += ["", "Answers by pool member, summed over the runs: " + "; ".join(
                f"{c}: " + ", ".join(f"{m} {n}" for (cc, m), n in sorted(by.items()) if cc == c)
                for c in r.spec.clients) + "."]
        fails: Counter[tuple[str, str]] = Counter()
        for u in us:
            for why, n in (u.result.get("failed") or {}).items():
                fails[(u.client, why)] += n
        if fails:
            lines += ["", "Requests a client gave up on, summed over the runs: "
                      + "; ".join(f"{c}: {why} × {n}" for (c, why), n in sorted(fails.items())) + "."]
        lines += [""]
    lines += ["## Every run", "", "| scenario | rep | order | client | wall s | bound s | answered | requests | "
              "limit refusals | "
              "CPU µs / req | peak RSS MB | setup s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for u in units:
        x = u.result
        if "wall_s" not in x:
            lines.append(f"| {u.r.spec.key} | {u.rep + 1} | {u.position} | {u.client} | failed | | | | | | | |")
            continue
        lines.append(f"| {u.r.spec.key} | {u.rep + 1} | {u.position} | {u.client} | {x['wall_s']:.2f}"
                     f"{' (cut)' if x.get('cut_by_deadline') else ''} | {_fmt_s(x['bound_s'])} | {x['answered']}/{x['asked']} | "
                     f"{x['requests']} | {_limit_refusals(x)} | "
                     f"{x['cpu_us_per_request']:.0f} | {x['maxrss_kb'] / 1024:.0f} | {x['setup_s']:.1f} |")
    lines.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    for kept in _kept_sections(out):  # make soak's and the shared-key run's own sections, as they wrote them
        lines += [kept, ""]
    out.write_text("\n".join(lines), encoding="utf-8")
    raw = [{k: v for k, v in u.result.items()} | {"client": u.client} for u in units]
    meta = {"command": cmd, "started_utc": started.isoformat(), "took_s": took_s, "reps": reps,
            "git": getattr(args, "git_at_start", None), "cpus": os.cpu_count(), "platform": platform.platform()}
    out.with_suffix(".json").write_text(json.dumps({"run": meta, "versions": v, "runs": raw}, indent=1, default=str),
                                        encoding="utf-8")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions per scenario and client (default 3)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--only", default="", help="comma-separated scenario keys (default: all)")
    parser.add_argument("--smoke", action="store_true", help="one small scenario, every client, 1 repetition")
    parser.add_argument("--clients", default="", help="comma-separated clients (default: each scenario's all)")
    parser.add_argument("--fast-prompts", type=int, default=FAST_PROMPTS,
                        help=f"prompts per model in `fast` (5 models; default {FAST_PROMPTS})")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    started = dt.datetime.now(dt.timezone.utc)
    specs = [SMOKE_SPEC] if args.smoke else SPECS
    for s in specs:
        if s.key == "fast":
            s.prompts = args.fast_prompts
            s.title = f"no limits: {s.prompts * len(s.models or ()):,} requests at concurrency {CONCURRENCY}"
    if args.only:
        keep = set(args.only.split(","))
        unknown = keep - {s.key for s in specs}
        if unknown:
            parser.error(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(s.key for s in specs)}")
        specs = [s for s in specs if s.key in keep]
    if args.clients:
        keep_clients = args.clients.split(",")
        for s in specs:
            s.clients = tuple(c for c in s.clients if c in keep_clients)
        specs = [s for s in specs if s.clients]
    reps = 1 if args.smoke else args.reps
    waves = [[SMOKE_SPEC.key]] if args.smoke else WAVES
    git_at_start = git_state()
    with tempfile.TemporaryDirectory(prefix="nbfanout-bench-") as tmpdir:
        tmp = Path(tmpdir)
        shutil.copytree(ROOT / "nbfanout", tmp / "snapshot" / "nbfanout",
                        ignore=shutil.ignore_patterns("__pycache__"))
        SNAPSHOT_ENV["PYTHONPATH"] = os.pathsep.join(
            [str(tmp / "snapshot"), *filter(None, [os.environ.get("PYTHONPATH")])])
        for role, script in list(SCRIPTS.items()):
            SCRIPTS[role] = Path(shutil.copy2(script, tmp / "snapshot" / script.name))
        args.git_at_start = git_at_start
        resolved = {s.key: resolve(s, tmp) for s in specs}
        for r in resolved.values():
            b = bound_for(r, None)
            log(f"{r.spec.key}: {'stand-in dict' if r.stand_in else 'scenario ' + r.scenario.name}, "
                f"{len(r.models)} models, {r.spec.prompts} prompts, bound {b.seconds:.2f} s, clients {', '.join(r.spec.clients)}")
        units: list[Unit] = []
        try:
            run_all(resolved, waves, reps, tmp, units)
        finally:  # a run stopped half-way still leaves a report of what it measured
            took = time.monotonic() - T0
            if units:
                write_report(args.out, units, args, started, took, resolved)
    log(f"done in {took / 60:.1f} min; report: {args.out}")
    failed = [u for u in units if "wall_s" not in u.result]
    return 1 if failed or not units else 0


def run_all(resolved: dict[str, Resolved], waves: list[list[str]], reps: int, tmp: Path, units: list[Unit]) -> None:
    """Every repetition of every wave, appending each finished run to ``units``."""
    for rep in range(reps):
        for wave in waves:
            group = [resolved[k] for k in wave if k in resolved]
            if not group:
                continue
            parallel = [r for r in group if r.spec.parallel]
            if parallel:
                log(f"rep {rep + 1}/{reps}: {', '.join(r.spec.key for r in parallel)} "
                    f"({sum(len(r.spec.clients) for r in parallel)} clients at once)")
                done = run_wave(parallel, rep, tmp)
                for u in done:
                    log(f"  {u.r.spec.key} rep {rep + 1}: {summary(u)}")
                units += done
            for r in group:
                if not r.spec.parallel:
                    log(f"rep {rep + 1}/{reps}: {r.spec.key} (clients one at a time)")
                    units += run_serial(r, rep, tmp)


if __name__ == "__main__":
    sys.exit(main())
