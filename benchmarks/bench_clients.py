"""The clients benchmarks/bench.py compares, each run alone in its own process.

    python benchmarks/bench_clients.py JOB.json RESULT.json

JOB.json (written by bench.py) names the client, the mode, the models with their
endpoints, keys and the limits a client is told, the prompts, ``max_tokens``, the overall
concurrency (64), the per-request timeout, the attempt budget (6) and a deadline.
RESULT.json gets what only the client process can know: wall time of the fan-out, answers,
the client's own CPU time and peak RSS, and (failover) the time from each 429 to the answer
from another pool member. The sandbox's ledger (requests sent, refusals) is read by the
runner, from the sandbox's own process.

Clients:

- ``nbfanout``  ``Fanout(config, concurrency=64, learn=False)`` and ``await fx.map(...)``.
- ``litellm``   LiteLLM Router, one model group per model, rpm/tpm on each deployment.
- ``naive``     ``asyncio.gather`` over httpx with a semaphore, tenacity retries with
                jittered exponential backoff, aiolimiter pacing where a limit is known.
- ``httpx``     plain httpx, a semaphore and nothing else: the throughput reference.

Only nbfanout's process imports nbfanout, so the others' CPU and memory are their own.
An audit hook refuses, and records, any connection to an address off loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

T_PROCESS = time.perf_counter()

Go = Any  # an async callable: the timed part of a client's run
READY = "bench-client-ready"

# --------------------------------------------------------------------------- loopback only

OFF_LOOPBACK: list[str] = []


def _loopback(host: Any) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip("[]")
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name that is not localhost


def _audit(event: str, args: tuple[Any, ...]) -> None:
    # A benchmark must never talk to anything but the sandbox on this machine (litellm, for
    # one, can fetch a model price map, and tiktoken its vocabularies). Raising here makes the
    # call fail as a network error would.
    if event == "socket.getaddrinfo":
        host = args[0]
    elif event == "socket.connect":
        address = args[1]
        if not isinstance(address, tuple):
            return  # AF_UNIX
        host = address[0]
    else:
        return
    if not _loopback(host):
        OFF_LOOPBACK.append(f"{event} {host!r}")
        raise OSError(f"benchmark: refused a connection off loopback ({host!r})")


sys.addaudithook(_audit)

# --------------------------------------------------------------------------- shared helpers


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return ru.ru_utime + ru.ru_stime


def _messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


class Tally:
    """Answers and failures as they happen, so a run cut by its deadline still reports."""

    def __init__(self) -> None:
        self.answered = 0
        self.failed: Counter[str] = Counter()
        self.first_429: dict[Any, float] = {}
        self.failover_s: list[float] = []
        self.answered_by: Counter[str] = Counter()

    def ok(self, text: Any, model: str = "") -> bool:
        if isinstance(text, str) and text.strip():
            self.answered += 1
            if model:
                self.answered_by[model] += 1
            return True
        self.failed["empty answer"] += 1
        return False

    def fail(self, why: str) -> None:
        self.failed[why[:80]] += 1

    def refused(self, rid: Any) -> None:
        self.first_429.setdefault(rid, time.perf_counter())

    def rotated(self, rid: Any) -> None:
        t = self.first_429.get(rid)
        if t is not None:
            self.failover_s.append(time.perf_counter() - t)


def _jobs(job: dict[str, Any]) -> list[tuple[int, str, dict[str, Any]]]:
    """(prompt index, prompt, model) for a batch: every prompt to every model, prompt by prompt.

    Fan-out order (each prompt to all models, then the next prompt), as a user writes it; a
    model-by-model order would make a shared semaphore wait on one model's limit at a time.
    """
    return [(i, p, m) for i, p in enumerate(job["prompts"]) for m in job["models"]]


# --------------------------------------------------------------------------- nbfanout


async def run_nbfanout(job: dict[str, Any], tally: Tally) -> Go:
    # README "Python API": Fanout(config) with the sandbox's config dict (timeout_s and
    # max_attempts in its [defaults]); map() for prompts x models. learn=False: nothing
    # learned is saved between runs.
    from nbfanout import Fanout

    fx = Fanout(job["nbfanout_config"], concurrency=job["concurrency"], learn=False)
    names = [m["name"] for m in job["models"]]
    if job["mode"] == "failover":
        first, rest = names[0], names[1:]

        def on_event(e: Any) -> None:
            kind = getattr(e, "kind", "")
            if kind == "rate_limited" and getattr(e, "model", "") == first:
                tally.refused(e.request)
            elif kind == "model_completed" and getattr(e, "model", first) != first:
                tally.rotated(e.request)

        fx.subscribe(on_event)
        sem = asyncio.Semaphore(job["concurrency"])

        async def one(prompt: str) -> None:
            async with sem:
                if hasattr(fx, "ask"):  # design.md's one-answer call with failover, where it exists
                    where = {"pool": job["pool"]} if job.get("pool") else {"models": names}
                    r = await fx.ask(prompt, **where, max_tokens=job["max_tokens"])
                else:
                    res = await fx.run(prompt, [first], fallbacks={first: rest}, max_tokens=job["max_tokens"])
                    r = res[0]
                if r.ok:
                    tally.ok(r.text, r.model.split("/", 1)[-1])
                else:
                    tally.fail(f"{r.category}")

        async def go_failover() -> None:
            await asyncio.gather(*(one(p) for p in job["prompts"]))

        return go_failover

    def count(e: Any) -> None:  # only read if the deadline cuts the run short
        if getattr(e, "kind", "") == "model_completed":
            tally.answered_by["(events)"] += 1

    fx.subscribe(count)

    async def go() -> None:
        batch = await fx.map(job["prompts"], models=names, max_tokens=job["max_tokens"])
        tally.answered_by.clear()
        for r in batch.results:
            if r.ok:
                tally.ok(r.text, r.model.split("/", 1)[-1])
            else:
                tally.fail(f"{r.category}")

    return go


# --------------------------------------------------------------------------- LiteLLM Router


def _litellm_deployments(job: dict[str, Any]) -> list[dict[str, Any]]:
    """One model group per model; one deployment per key where the model's limits are per key."""
    out = []
    for m in job["models"]:
        prefix = {"openai": "openai", "anthropic": "anthropic", "gemini": "gemini"}[m["wire"]]
        # litellm appends its own paths: /chat/completions to an OpenAI base (…/v1),
        # /v1/messages to an Anthropic base, /models/{model}:generateContent to a Gemini base.
        api_base = m["base_url"][: -len("/v1")] if m["wire"] == "anthropic" else m["base_url"]
        keys = m["keys"] if m["per_key"] else m["keys"][:1]
        for key in keys:
            params: dict[str, Any] = {"model": f"{prefix}/{m['model']}", "api_base": api_base, "api_key": key}
            # rpm / tpm on the deployment: what usage-based-routing-v2 keeps each deployment under.
            for kind in ("rpm", "tpm"):
                if m.get(kind):
                    params[kind] = m[kind]
            if m.get("concurrency"):
                params["max_parallel_requests"] = m["concurrency"]
            out.append({"model_name": m["name"], "litellm_params": params})
    return out


async def run_litellm(job: dict[str, Any], tally: Tally) -> Go:
    # Offline: use the price map that ships inside the package instead of fetching one at
    # import ("export LITELLM_LOCAL_MODEL_COST_MAP=True", litellm/litellm_core_utils/
    # get_model_cost_map.py). The audit hook above refuses any fetch regardless.
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    import litellm
    from litellm import Router

    litellm.suppress_debug_info = True  # as in docs.litellm.ai/docs/load_test_rpm
    litellm.telemetry = False
    names = [m["name"] for m in job["models"]]
    kwargs: dict[str, Any] = {}
    if job["mode"] == "failover":
        # docs.litellm.ai/docs/routing#fallbacks: "If a call fails after num_retries, fall back
        # to another model group": the rest of the pool, in order.
        kwargs["fallbacks"] = [{names[0]: names[1:]}]
    # Router configuration as docs.litellm.ai/docs/routing ("Router - Load Balancing") and the
    # Router docstring in litellm/router.py describe it:
    # - routing_strategy="usage-based-routing-v2": the docs' "Rate-Limit Aware v2" strategy,
    #   which "filters out deployment if tpm/rpm limit exceeded" when the deployment's rpm/tpm
    #   are given (router_strategy/lowest_tpm_rpm_v2.py). The default "simple-shuffle" only
    #   uses rpm/tpm as weights between deployments of one group; with one deployment per
    #   model it would not pace at all (docs.litellm.ai/docs/router/learn/strategies).
    # - num_retries=5: six attempts in all, as every client gets; timeout per request.
    router = Router(
        model_list=_litellm_deployments(job),
        routing_strategy="usage-based-routing-v2",
        num_retries=job["max_attempts"] - 1,
        timeout=job["timeout_s"],
        **kwargs,
    )
    if job["mode"] == "failover":
        from litellm.integrations.custom_logger import CustomLogger

        first = job["models"][0]["model"]

        class FirstRefusal(CustomLogger):  # docs.litellm.ai/docs/observability/custom_callback
            async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
                meta = (kwargs.get("litellm_params") or {}).get("metadata") or {}
                exc = kwargs.get("exception")
                if meta.get("bench_id") is not None and first in str(kwargs.get("model", "")) and "RateLimit" in type(exc).__name__:
                    tally.refused(meta["bench_id"])

        litellm.callbacks = [FirstRefusal()]

    sem = asyncio.Semaphore(job["concurrency"])

    async def one(i: int, prompt: str, name: str) -> None:
        async with sem:
            try:
                resp = await router.acompletion(
                    model=name, messages=_messages(prompt), max_tokens=job["max_tokens"], metadata={"bench_id": i}
                )
            except Exception as exc:  # a client that gives up reports why
                tally.fail(type(exc).__name__)
                return
        answered_by = str(getattr(resp, "model", "") or "")
        if tally.ok(resp.choices[0].message.content, answered_by) and job["mode"] == "failover":
            if job["models"][0]["model"] not in answered_by:
                tally.rotated(i)

    async def go() -> None:
        if job["mode"] == "failover":
            await asyncio.gather(*(one(i, p, names[0]) for i, p in enumerate(job["prompts"])))
        else:
            await asyncio.gather(*(one(i, p, m["name"]) for i, p, m in _jobs(job)))

    return go


# --------------------------------------------------------------------------- plain httpx (+ tenacity)


class CallFailed(Exception):
    """A call that did not answer: its HTTP status, or None for a broken body."""

    def __init__(self, status: int | None, text: str = "") -> None:
        super().__init__(f"HTTP {status}" if status else text)
        self.status = status


def _request(m: dict[str, Any], prompt: str, max_tokens: int, key: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """URL, headers and body of one call in the model's own wire format."""
    if m["wire"] == "anthropic":
        return (f"{m['base_url']}/messages", {"x-api-key": key, "anthropic-version": "2023-06-01"},
                {"model": m["model"], "max_tokens": max_tokens, "messages": _messages(prompt)})
    if m["wire"] == "gemini":
        return (f"{m['base_url']}/models/{m['model']}:generateContent", {"x-goog-api-key": key},
                {"contents": [{"role": "user", "parts": [{"text": prompt}]}],
                 "generationConfig": {"maxOutputTokens": max_tokens}})
    return (f"{m['base_url']}/chat/completions", {"authorization": f"Bearer {key}"},
            {"model": m["model"], "messages": _messages(prompt), "max_tokens": max_tokens})


def _text(m: dict[str, Any], body: dict[str, Any]) -> str:
    if m["wire"] == "anthropic":
        return "".join(part.get("text", "") for part in body.get("content", []))
    if m["wire"] == "gemini":
        parts = body["candidates"][0].get("content", {}).get("parts", [])
        return "".join(part.get("text", "") for part in parts)
    return body["choices"][0]["message"].get("content") or ""


async def _post(client: Any, m: dict[str, Any], prompt: str, max_tokens: int) -> tuple[int, str]:
    url, headers, body = _request(m, prompt, max_tokens, m["keys"][0])  # one key, as a plain script has
    r = await client.post(url, headers=headers, json=body)
    if r.status_code != 200:
        return r.status_code, r.text[:200]
    try:
        return 200, _text(m, r.json())
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise CallFailed(None, f"malformed body: {exc}") from exc


async def run_naive(job: dict[str, Any], tally: Tally) -> Go:
    import httpx
    from aiolimiter import AsyncLimiter
    from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

    # Pacing the way aiolimiter's README and AsyncLimiter docstring show it: AsyncLimiter(rate,
    # 60) per known per-minute limit, acquire(amount) for tokens (input estimate + max_tokens);
    # a semaphore per known concurrency limit; one semaphore of 64 over everything.
    limiters: dict[str, list[tuple[AsyncLimiter, int]]] = {}
    lanes: dict[str, asyncio.Semaphore] = {}
    for m in job["models"]:
        amount = -(-len(job["prompts"][0]) // 4) + job["max_tokens"] if job["prompts"] else 1
        limiters[m["name"]] = [(AsyncLimiter(m["rpm"], 60), 1)] if m.get("rpm") else []
        if m.get("tpm"):
            limiters[m["name"]].append((AsyncLimiter(m["tpm"], 60), min(amount, m["tpm"])))
        if m.get("concurrency"):
            lanes[m["name"]] = asyncio.Semaphore(m["concurrency"])

    def retryable(exc: BaseException) -> bool:
        if isinstance(exc, CallFailed):
            return exc.status is None or exc.status == 429 or exc.status >= 500  # 429, 5xx, broken body
        return isinstance(exc, httpx.TransportError)  # timeouts, refused and dropped connections

    async def attempt(client: Any, m: dict[str, Any], prompt: str, rid: Any) -> str:
        for limiter, amount in limiters[m["name"]]:
            await limiter.acquire(amount)
        lane = lanes.get(m["name"])
        if lane is not None:
            async with lane:
                status, text = await _post(client, m, prompt, job["max_tokens"])
        else:
            status, text = await _post(client, m, prompt, job["max_tokens"])
        if status == 429 and rid is not None:
            tally.refused(rid)
        if status != 200:
            raise CallFailed(status, text)
        return text

    sem = asyncio.Semaphore(job["concurrency"])
    limits = httpx.Limits(max_connections=job["concurrency"], max_keepalive_connections=job["concurrency"])
    client = httpx.AsyncClient(timeout=job["timeout_s"], limits=limits)

    async def one(i: int, prompt: str, models: list[dict[str, Any]]) -> None:
        # tenacity's docs ("Waiting before retrying", wait_random_exponential: the "Full
        # Jitter" backoff) and the OpenAI cookbook's "How to handle rate limits" use exactly
        # wait_random_exponential(min=1, max=60) with stop_after_attempt(6). A pool
        # (failover) moves to the next model on every new attempt.
        rid = i if len(models) > 1 else None
        async with sem:
            try:
                async for state in AsyncRetrying(
                    retry=retry_if_exception(retryable),
                    wait=wait_random_exponential(min=1, max=60),
                    stop=stop_after_attempt(job["max_attempts"]),
                    reraise=True,
                ):
                    with state:
                        m = models[(state.retry_state.attempt_number - 1) % len(models)]
                        text = await attempt(client, m, prompt, rid)
            except Exception as exc:
                tally.fail(f"{type(exc).__name__} {getattr(exc, 'status', '') or ''}".strip())
                return
        if tally.ok(text, m["model"]) and rid is not None and m is not models[0]:
            tally.rotated(rid)

    async def go() -> None:
        async with client:
            if job["mode"] == "failover":
                await asyncio.gather(*(one(i, p, job["models"]) for i, p in enumerate(job["prompts"])))
            else:
                await asyncio.gather(*(one(i, p, [m]) for i, p, m in _jobs(job)))

    return go


async def run_httpx(job: dict[str, Any], tally: Tally) -> Go:
    import httpx

    sem = asyncio.Semaphore(job["concurrency"])
    limits = httpx.Limits(max_connections=job["concurrency"], max_keepalive_connections=job["concurrency"])
    client = httpx.AsyncClient(timeout=job["timeout_s"], limits=limits)

    async def one(prompt: str, m: dict[str, Any]) -> None:
        async with sem:
            try:
                status, text = await _post(client, m, prompt, job["max_tokens"])
            except Exception as exc:
                tally.fail(type(exc).__name__)
                return
        if status == 200:
            tally.ok(text, m["model"])
        else:
            tally.fail(f"HTTP {status}")

    async def go() -> None:
        async with client:
            await asyncio.gather(*(one(p, m) for _, p, m in _jobs(job)))

    return go


CLIENTS = {"nbfanout": run_nbfanout, "litellm": run_litellm, "naive": run_naive, "httpx": run_httpx}


# --------------------------------------------------------------------------- main


def _versions(client: str) -> dict[str, str]:
    from importlib import metadata

    names = {"nbfanout": ["nbfanout", "httpx"], "litellm": ["litellm", "httpx"],
             "naive": ["httpx", "tenacity", "aiolimiter"], "httpx": ["httpx"]}[client]
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


async def _run(job: dict[str, Any], tally: Tally) -> dict[str, Any]:
    go = await CLIENTS[job["client"]](job, tally)  # imports and client construction: not timed
    setup_s = time.perf_counter() - T_PROCESS
    # Tell the runner we are ready and wait for its word: it resets the sandbox then, so
    # every client meets the scenario from its beginning (and concurrent ones start together).
    print(READY, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    cpu0, t0 = _cpu_s(), time.perf_counter()
    cut = False
    try:
        await asyncio.wait_for(go(), timeout=job["deadline_s"])
    except asyncio.TimeoutError:
        cut = True
    wall = time.perf_counter() - t0
    cpu = _cpu_s() - cpu0
    answered = tally.answered
    if cut and not answered and tally.answered_by.get("(events)"):
        answered = tally.answered_by["(events)"]
    return {"wall_s": wall, "cpu_s": cpu, "cut_by_deadline": cut, "answered": answered,
            "setup_s": setup_s, "started_at_unix": time.time() - wall}


def main(argv: list[str]) -> int:
    job_path, out_path = Path(argv[0]), Path(argv[1])
    job = json.loads(job_path.read_text("utf-8"))
    tally = Tally()
    result = asyncio.run(_run(job, tally))
    n_prompts = len(job["prompts"])
    asked = n_prompts if job["mode"] == "failover" else n_prompts * len(job["models"])
    result.update({
        "client": job["client"],
        "asked": asked,
        "failed": dict(tally.failed),
        "answered_by": {k: v for k, v in tally.answered_by.items() if k != "(events)"},
        "failover_s": tally.failover_s,
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "off_loopback": OFF_LOOPBACK[:20],
        "off_loopback_count": len(OFF_LOOPBACK),
        "versions": _versions(job["client"]),
        "nbfanout_file": getattr(sys.modules.get("nbfanout"), "__file__", None),
    })
    out_path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
