"""The orchestrator: ``Fanout.run`` / ``map`` / ``synthesize`` / ``transcribe`` / ``plan`` / ``rerun``.

For every requested model a task asks the router for a (model, key) with capacity, waits
until its budgets admit the request, sends it through the provider's adapter, and on
failure learns from the error (limits, cooldowns, rejected keys) and either rotates to
another allowed model, retries after the wait the provider asked for, or gives up with a
precise category. Every attempt is recorded; every step is an event.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import math
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx

from nbfanout.catalog import ModelSpec
from nbfanout.config import Config, load_config, suggest
from nbfanout.core.cache import ResponseCache
from nbfanout.core.clock import Clock, LoopClock
from nbfanout.core.errors import (
    ErrorCategory,
    ErrorInfo,
    ProviderError,
    UsageError,
    classify_error,
)
from nbfanout.core.events import (
    Event,
    EventBus,
    LimitsLearned,
    ModelCompleted,
    ModelFailed,
    ModelQueued,
    ModelRotation,
    ModelSelected,
    NoModelsAvailableEvent,
    RateLimited,
    RequestStarted,
    RetryScheduled,
    RunCompleted,
    RunStarted,
    TextDelta,
    Utilization,
)
from nbfanout.core.limits import Budget, BudgetSet, LearnedLimits
from nbfanout.core.results import Attempt, BatchResult, FanoutResult, ModelResult, Score
from nbfanout.core.retry import RetryPolicy
from nbfanout.core.rotation import Choice, Router, auto_pool
from nbfanout.core.sync import run_coroutine_sync
from nbfanout.core.tokens import estimate_request_tokens
from nbfanout.providers import adapter_for
from nbfanout.providers.base import ChatRequest, ChatResponse, ImagePart, Message, TranscriptionRequest

__all__ = ["Fanout", "Plan", "PlanRow", "Transcription"]

T = TypeVar("T")
UTILIZATION_INTERVAL_S = 0.1  # at most ten utilization snapshots a second
DEFAULT_MAX_TOKENS = 4096
_ROTATE_ON = frozenset(
    {ErrorCategory.RATE_LIMIT, ErrorCategory.OVERLOADED, ErrorCategory.QUOTA_EXHAUSTED, ErrorCategory.SERVER_ERROR,
     ErrorCategory.TIMEOUT, ErrorCategory.NETWORK, ErrorCategory.AUTH, ErrorCategory.PERMISSION, ErrorCategory.NOT_FOUND}
)
_KEY_FAULTS = frozenset({ErrorCategory.AUTH, ErrorCategory.PERMISSION, ErrorCategory.QUOTA_EXHAUSTED})


@dataclass(frozen=True, slots=True)
class PlanRow:
    requested: str
    model: str
    provider: str
    key_id: str | None
    missing_key_vars: tuple[str, ...]
    prompt_tokens: int
    max_output_tokens: int
    context_window: int | None
    fits: bool
    projected_cost: float | None


@dataclass(frozen=True, slots=True)
class Plan:
    """What a run would do, with nothing sent."""

    rows: tuple[PlanRow, ...]
    lower_bound_s: float
    projected_cost: float

    def __repr__(self) -> str:
        return f"<Plan {len(self.rows)} requests, ≥{self.lower_bound_s:.1f}s by limits, ≈${self.projected_cost:.4f}>"


@dataclass(frozen=True, slots=True)
class Transcription:
    text: str
    model: str
    attempts: tuple[Attempt, ...]
    error: ErrorInfo | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Run:
    """Per-call state shared by the request tasks of one run or map."""

    id: str
    t0: float
    client: httpx.AsyncClient
    in_flight: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)
    # provider id -> one future per request in flight there, done when that request ends
    busy: dict[str, set[asyncio.Future[None]]] = field(default_factory=dict)
    # request id -> its attempts so far, so a cancelled request still shows what it did
    attempts: dict[str, list[Attempt]] = field(default_factory=dict)


#: The run the current task belongs to: tasks inherit it, so several runs on one Fanout never mix.
_RUN: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("nbfanout_run", default=None)


class Fanout:
    """Sends prompts to many models at once, inside every provider's limits.

    ``config`` is None (``nbfanout.toml`` in the working directory, else defaults plus the
    environment), a path, a dict of the same shape, or a ``Config``.
    """

    def __init__(
        self,
        config: str | Path | Mapping[str, Any] | Config | None = None,
        *,
        env: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
        provider_rpm: Mapping[str, float] | None = None,
        concurrency: int | None = None,
        learn: bool | None = None,
        state_path: str | Path | None = None,
        cache: bool | str | Path | None = None,
    ) -> None:
        self.config = load_config(config, env=env)
        d = self.config.defaults
        self.clock = clock or LoopClock()
        self.retry = retry or RetryPolicy(
            max_attempts=d.max_attempts, timeout_s=d.timeout_s, deadline_s=d.deadline_s,
            base_s=d.base_backoff_s, max_backoff_s=d.max_backoff_s, max_wait_s=d.max_wait_s,
        )
        if concurrency is not None and concurrency < 1:
            raise UsageError(f"concurrency must be at least 1, got {concurrency}")
        unknown = sorted(set(provider_rpm or {}) - set(self.config.providers))
        if unknown:
            raise UsageError(f"--provider-rpm names unknown provider(s) {unknown}; known: {', '.join(sorted(self.config.providers))}")
        self.concurrency = concurrency or d.concurrency
        self.events = EventBus()
        self._transport = transport
        learn = d.learn_limits if learn is None else learn
        self.learned = LearnedLimits(Path(state_path or d.state_path) if (state_path or d.state_path) else None) if learn else None
        self.budgets = BudgetSet(self.clock, self.learned)
        self.budgets.listeners.append(self._on_learned)
        self.router = Router(self.config, self.budgets, clock=self.clock, provider_rpm=dict(provider_rpm or {}))
        cache_on = d.cache if cache is None else bool(cache)
        cache_path = cache if isinstance(cache, (str, Path)) else d.cache_path
        self.cache = ResponseCache(Path(cache_path) if cache_path else None) if cache_on else None
        self._input_ratio: dict[str, float] = {}  # reported / estimated prompt tokens, per model
        self.last_result: FanoutResult | BatchResult | None = None

    # --- public API -------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Receive every event; returns a function that unsubscribes."""
        return self.events.subscribe(callback)

    def statistics(self) -> tuple[Any, ...]:
        """A frozen snapshot of every budget (provider, key, model)."""
        return self.budgets.statistics()

    async def run(
        self,
        prompt: str,
        models: Sequence[str] | None = None,
        *,
        pool: str | None = None,
        system: str | None = None,
        images: Sequence[str | Path | bytes | ImagePart] = (),
        fallbacks: Mapping[str, Sequence[str]] | None = None,
        stream: bool = False,
        timeout: float | None = None,
        **params: Any,
    ) -> FanoutResult:
        """Send ``prompt`` to every model at once; one ModelResult per requested model, in order."""
        try:
            batch = await self._batch([prompt], models, pool=pool, system=system, images=images, fallbacks=fallbacks,
                                      stream=stream, timeout=timeout, concurrency=None, judge=None, params=params)
        except asyncio.CancelledError:
            if isinstance(self.last_result, BatchResult):
                self.last_result = self.last_result.rows[0]  # what had finished, the rest marked cancelled
            raise
        result = batch.rows[0]
        result = replace(result, elapsed_s=batch.elapsed_s)
        self.last_result = result
        return result

    def run_sync(self, prompt: str, models: Sequence[str] | None = None, **kwargs: Any) -> FanoutResult:
        """``run`` for scripts and notebooks: runs on nbfanout's own event-loop thread when a loop is already running."""
        return run_coroutine_sync(self.run(prompt, models, **kwargs))

    async def map(
        self,
        prompts: Sequence[str],
        models: Sequence[str] | None = None,
        *,
        pool: str | None = None,
        concurrency: int | None = None,
        judge: str | None = None,
        system: str | None = None,
        timeout: float | None = None,
        **params: Any,
    ) -> BatchResult:
        """prompts × models with a global concurrency limit; results in input order; optional judge scores."""
        batch = await self._batch(list(prompts), models, pool=pool, system=system, images=(), fallbacks=None,
                                  stream=False, timeout=timeout, concurrency=concurrency, judge=judge, params=params)
        self.last_result = batch
        return batch

    async def synthesize(self, result: FanoutResult, model: str, *, instructions: str | None = None, **params: Any) -> FanoutResult:
        """Combine the successful answers of ``result`` into one answer from ``model``."""
        answers = [r for r in result.results if r.ok]
        if not answers:
            raise UsageError("nothing to synthesize: no model answered successfully")
        parts = [f"### Answer {i} ({r.requested})\n{r.text.strip()}" for i, r in enumerate(answers, 1)]
        prompt = (
            (instructions or "Several models answered the question below. Write one answer that keeps what they agree on, "
             "resolves where they differ, and corrects any mistakes. Do not mention the individual answers.")
            + f"\n\n## Question\n{result.prompt}\n\n## Answers\n" + "\n\n".join(parts)
        )
        synth = await self.run(prompt, [model], **params)
        merged = replace(result, synthesis=synth.results[0])
        self.last_result = merged
        return merged

    async def rerun(self, result: FanoutResult, **params: Any) -> FanoutResult:
        """Send again only the models that failed in ``result``, and merge the new answers in."""
        failed = [r.requested for r in result.results if not r.ok]
        if not failed:
            return result
        again = await self.run(result.prompt, failed, **params)
        fresh = {r.requested: r for r in again.results}
        merged = tuple(fresh.get(r.requested, r) for r in result.results)
        out = replace(result, results=merged, elapsed_s=result.elapsed_s + again.elapsed_s)
        self.last_result = out
        return out

    def plan(
        self,
        prompts: str | Sequence[str],
        models: Sequence[str] | None = None,
        *,
        pool: str | None = None,
        system: str | None = None,
        max_tokens: int | None = None,
    ) -> Plan:
        """Which model and key each request would use, what lacks a key or does not fit, tokens, cost, time."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        names = self._resolve(models, pool, prompts[0] if prompts else "")
        rows: list[PlanRow] = []
        per_key: dict[str, int] = {}
        for prompt in prompts:
            for name in names:
                spec = self.config.models[name]
                provider = self.config.providers[spec.provider]
                out_budget = max_tokens or self._default_max_tokens(spec)
                prompt_tokens, _ = estimate_request_tokens([Message("user", prompt)], system=system, encoding=spec.tokenizer)
                key = min(provider.keys, key=lambda k: per_key.get(k.id, 0)) if provider.keys else None
                if key is not None:
                    per_key[f"{provider.id} {key.id}"] = per_key.get(f"{provider.id} {key.id}", 0) + 1
                rows.append(PlanRow(
                    requested=name, model=name, provider=provider.id, key_id=key.id if key else None,
                    missing_key_vars=() if key else provider.key_vars, prompt_tokens=prompt_tokens,
                    max_output_tokens=out_budget, context_window=spec.context_window,
                    fits=spec.context_window is None or prompt_tokens + out_budget <= spec.context_window,
                    projected_cost=spec.cost(prompt_tokens, out_budget),
                ))
        return Plan(tuple(rows), self._lower_bound(rows), sum(r.projected_cost or 0.0 for r in rows))

    async def transcribe(self, path: str | Path, *, language: str | None = None, prompt: str | None = None,
                         models: Sequence[str] | None = None) -> Transcription:
        """Transcribe an audio file through the audio pool: Groq first when it has a key, then round-robin."""
        data = Path(path).read_bytes()
        size_mb = len(data) / (1024 * 1024)
        names = list(models) if models else list(self.config.pools.get("audio", ()))
        for n in names:
            self.config.model(n)
        order = self._audio_order(names, size_mb)
        if not order:
            info = ErrorInfo(ErrorCategory.MISSING_KEY if not any(self.config.providers[self.config.models[n].provider].keys for n in names)
                             else ErrorCategory.BAD_REQUEST, False,
                             f"no audio model can take {Path(path).name} ({size_mb:.1f} MB): "
                             + ", ".join(self._why_not_audio(n, size_mb) for n in names))
            return Transcription("", "", (), info)
        attempts: list[Attempt] = []
        async with self._client() as client:
            t0 = self.clock.now()
            last: ErrorInfo | None = None
            for name in order:
                spec = self.config.models[name]
                provider = self.config.providers[spec.provider]
                for key in provider.keys:
                    start = self.clock.now() - t0
                    try:
                        resp = await adapter_for(provider.wire).transcribe(
                            client, self._endpoint(provider, key),
                            TranscriptionRequest(spec.model_id, Path(path).name, data, language, prompt),
                            timeout=self.retry.timeout_s)
                    except ProviderError as exc:
                        last = exc.info
                        attempts.append(Attempt(name, key.id, start, self.clock.now() - t0, exc.info.category.value,
                                                exc.info.status, exc.info.message))
                        if exc.info.category in _KEY_FAULTS:
                            continue
                        break
                    attempts.append(Attempt(name, key.id, start, self.clock.now() - t0, "ok", resp.status))
                    self._audio_turn += 1
                    return Transcription(resp.text, name, tuple(attempts))
        return Transcription("", order[-1], tuple(attempts), last)

    _audio_turn = 0

    def _why_not_audio(self, name: str, size_mb: float) -> str:
        spec = self.config.models[name]
        provider = self.config.providers[spec.provider]
        if not provider.keys:
            return f"{name}: no key (set {' or '.join(provider.key_vars)})"
        return f"{name}: file over its {provider.max_audio_mb:g} MB limit"

    def _audio_order(self, names: list[str], size_mb: float) -> list[str]:
        usable = [n for n in names if self.config.providers[self.config.models[n].provider].keys
                  and (self.config.providers[self.config.models[n].provider].max_audio_mb is None
                       or size_mb <= (self.config.providers[self.config.models[n].provider].max_audio_mb or 0))]
        groq = [n for n in usable if n.startswith("groq/")]
        rest = [n for n in usable if not n.startswith("groq/")]
        if rest:
            k = self._audio_turn % len(rest)
            rest = rest[k:] + rest[:k]
        return groq + rest

    # --- the engine ---------------------------------------------------------------------------
    def _resolve(self, models: Sequence[str] | None, pool: str | None, prompt: str, has_images: bool = False) -> list[str]:
        if models and pool:
            raise UsageError("pass models=[...] or pool=..., not both")
        if models:
            if isinstance(models, str):
                models = [m for m in re.split(r"[,\s]+", models) if m]
            for name in models:
                self.config.model(name)
            if len(set(models)) != len(models):
                raise UsageError(f"a model is listed twice: {[m for m in models if list(models).count(m) > 1][0]}")
            return list(models)
        if pool is None:
            raise UsageError("no models: pass models=[...] or pool=... (fast, research, code, vision, audio or auto)")
        if pool == "auto":
            pool = auto_pool(prompt, has_images=has_images)
        if pool not in self.config.pools:
            close = suggest(pool, list(self.config.pools))
            raise UsageError(f"unknown pool {pool!r}; known pools: {', '.join(sorted(self.config.pools))}"
                             + (f" (did you mean {close[0]}?)" if close else ""))
        return list(self.config.pools[pool])

    def _default_max_tokens(self, spec: ModelSpec) -> int:
        """The output budget when the caller names none; it is sent, so TPM charges match the provider's."""
        return min(spec.max_output_tokens or DEFAULT_MAX_TOKENS, DEFAULT_MAX_TOKENS)

    async def _batch(self, prompts: list[str], models: Sequence[str] | None, *, pool: str | None, system: str | None,
                     images: Sequence[Any], fallbacks: Mapping[str, Sequence[str]] | None, stream: bool,
                     timeout: float | None, concurrency: int | None, judge: str | None, params: dict[str, Any]) -> BatchResult:
        if not prompts:
            raise UsageError("no prompts to send")
        if concurrency is not None and concurrency < 1:
            raise UsageError(f"concurrency must be at least 1, got {concurrency}")
        parts = tuple(_image_part(i) for i in images)
        pooled = models is None
        names = self._resolve(models, pool, prompts[0], has_images=bool(parts))
        if judge is not None:
            self.config.model(judge)
        fallbacks = dict(fallbacks or {})
        for m, alts in fallbacks.items():
            for a in (m, *alts):
                self.config.model(a)
        max_tokens = params.pop("max_tokens", None)
        temperature = params.pop("temperature", None)
        # the run's own in-flight cap; not registered with the budget set, so it ends with the run
        run_budget = Budget("run", "run", concurrency=concurrency or self.concurrency, clock=self.clock)
        async with self._client() as client:
            run = _Run(id=uuid.uuid4().hex[:8], t0=self.clock.now(), client=client)
            token = _RUN.set(run)
            self._emit(RunStarted, models=tuple(names), prompts=len(prompts))
            ticker = asyncio.ensure_future(self._utilization_ticker(run))
            # with a pool, each request may be answered by any model of the pool; with models, only by itself
            jobs = [
                (i, name, names[k:] + names[:k] if pooled else [name, *fallbacks.get(name, [])])
                for i in range(len(prompts))
                for k, name in enumerate(names)
            ]
            for i, name, _ in jobs:
                self._emit(ModelQueued, request=f"{i}:{name}", model=name, prompt_index=i)
            results: list[Any] = [None] * len(jobs)

            scores: dict[int, Score | None] = {}

            async def lane(queue: list[int]) -> None:
                while queue:
                    j = queue.pop(0)
                    i, name, cands = jobs[j]
                    results[j] = await self._request(run, i, name, cands, prompts[i], system, parts, max_tokens,
                                                     temperature, params, stream, timeout, run_budget)
                    if judge is not None and results[j].ok:  # the answer is kept even if judging is cancelled
                        scores[j] = await self._judge(run, i, judge, prompts[i], results[j], run_budget)

            # One lane of workers per requested model, as wide as that model may run at once: a model
            # that must wait for its limits never holds the workers that other models could use.
            width = concurrency or self.concurrency
            workers = []
            for name in names:
                queue = [j for j, job in enumerate(jobs) if job[1] == name]
                cap = self.config.models[name].limits.concurrency or width
                workers += [asyncio.ensure_future(lane(queue)) for _ in range(min(cap, width, len(queue)))]
            try:
                await asyncio.gather(*workers)
                done = results
            except asyncio.CancelledError:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                partial = self._collect(prompts, names, jobs, [
                    r if r is not None else _cancelled_result(jobs[j][1], jobs[j][0], run) for j, r in enumerate(results)],
                    run, scores)
                self.last_result = partial
                ok = sum(1 for r in partial.results if r.ok)
                self._emit(RunCompleted, succeeded=ok, failed=len(partial.results) - ok,
                           elapsed_s=self.clock.now() - run.t0, cancelled=True)
                raise
            finally:
                for w in workers:
                    w.cancel()
                ticker.cancel()
                await asyncio.gather(ticker, *workers, return_exceptions=True)
                self._emit_utilization()
                if self.learned is not None:
                    self.learned.save()
                _RUN.reset(token)
            batch = self._collect(prompts, names, jobs, done, run, scores)
            ok = sum(1 for r in batch.results if r.ok)
            self._emit(RunCompleted, run, succeeded=ok, failed=len(batch.results) - ok, elapsed_s=batch.elapsed_s)
            return batch

    def _collect(self, prompts: list[str], names: list[str], jobs: list[tuple[int, str, list[str]]],
                 results: list[ModelResult], run: _Run, scores: dict[int, Score | None]) -> BatchResult:
        rows: list[list[ModelResult]] = [[] for _ in prompts]
        for (i, _, _), result in zip(jobs, results):
            rows[i].append(result)
        by_model = {(jobs[j][0], jobs[j][1]): score for j, score in scores.items() if score is not None}
        elapsed = self.clock.now() - run.t0
        fan = tuple(FanoutResult(prompt=p, results=tuple(r), elapsed_s=elapsed) for p, r in zip(prompts, rows))
        return BatchResult(prompts=tuple(prompts), models=tuple(names), rows=fan, elapsed_s=elapsed, scores=by_model)

    async def _request(self, run: _Run, index: int, requested: str, candidates: list[str], prompt: str,
                       system: str | None, images: tuple[ImagePart, ...], max_tokens: int | None,
                       temperature: float | None, params: dict[str, Any], stream: bool, timeout: float | None,
                       run_budget: Budget, tag: str = "") -> ModelResult:
        req_id = f"{index}:{requested}{tag}"
        if tag:  # batch jobs were announced when the batch was queued; extra requests (judging) now
            self._emit(ModelQueued, request=req_id, model=requested, prompt_index=index)
        attempts = run.attempts.setdefault(req_id, [])
        messages = (Message("user", prompt, images),)
        needs = frozenset({"vision"}) if images else frozenset()
        first = self.config.models[candidates[0]]
        unusable = self.router.unusable_reason(first)
        if unusable == "missing_key" and len(candidates) == 1:
            provider = self.config.providers[first.provider]
            info = ErrorInfo(ErrorCategory.MISSING_KEY, False,
                             f"no API key for {provider.id}: set {' or '.join(provider.key_vars)} "
                             f"(or api_key_env under [providers.{provider.id}] in nbfanout.toml)", provider=provider.id)
            return self._failed(req_id, requested, requested, info, attempts, index, 0.0)
        t_start = self.clock.now()
        last_failed: str | None = None
        last_info: ErrorInfo | None = None
        selected: str | None = None
        attempt_no = 0
        rotations = 0
        tried: set[str] = set()
        explored = False  # max_rotations reached: only models already tried remain candidates
        announced = False
        deadline = self.retry.deadline_s
        while True:
            elapsed = self.clock.now() - t_start
            if deadline is not None and elapsed >= deadline:
                info = last_info or ErrorInfo(ErrorCategory.TIMEOUT, False, f"deadline of {deadline:g}s passed before an answer")
                return self._failed(req_id, requested, selected or requested, info, attempts, index, elapsed)
            order = self.router.circular(candidates, last_failed)
            if explored:
                # rotated enough: stop exploring and wait for the earliest of the models already tried
                order = [m for m in order if m in tried]
            spec0 = self.config.models[order[0]]
            out_budget = max_tokens or self._default_max_tokens(spec0)
            prompt_tokens, _ = estimate_request_tokens(messages, system=system, encoding=spec0.tokenizer)
            prompt_tokens = math.ceil(prompt_tokens * self._input_ratio.get(spec0.name, 1.0))
            tokens = prompt_tokens + out_budget
            choice, wait = self.router.pick(order, tokens, prompt_tokens, needs)
            if choice is not None and not run_budget.has_capacity(0):
                choice, wait = None, run_budget.wait_time(0)
            if choice is None:
                if math.isinf(wait):
                    info = self._nothing_usable(candidates, prompt_tokens, tokens, needs, last_info)
                    return self._failed(req_id, requested, selected or requested, info, attempts, index, self.clock.now() - t_start)
                if not announced:  # once per wait, not on every wake-up
                    self._emit(NoModelsAvailableEvent, request=req_id, candidates=tuple(order), wait_s=wait)
                    announced = True
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - (self.clock.now() - t_start)))
                run.released.clear()
                try:
                    await asyncio.wait_for(run.released.wait(), timeout=max(wait, 0.001))
                except asyncio.TimeoutError:
                    pass
                continue
            announced = False
            model = choice.model
            tried.add(model.name)
            if model.name != selected:
                if selected is not None:
                    self._emit(ModelRotation, request=req_id, from_model=selected, to_model=model.name,
                               reason=last_info.category.value if last_info else "busy")
                selected = model.name
                self._emit(ModelSelected, request=req_id, requested=requested, model=model.name, key_id=choice.key_id)
            budgets = (*choice.budgets, run_budget)
            await self.budgets.take(budgets, tokens)
            attempt_no += 1
            run.in_flight += 1
            in_flight = run.in_flight
            start = self.clock.now()
            self._emit(RequestStarted, request=req_id, model=model.name, key_id=choice.key_id, attempt=attempt_no, in_flight=in_flight)
            request = ChatRequest(model=model.model_id, messages=messages, system=system, max_tokens=out_budget,
                                  temperature=temperature, extra=dict(params))
            response: ChatResponse | None = None
            info: ErrorInfo | None = None
            cached = False
            finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            busy = run.busy.setdefault(choice.provider.id, set())
            others = set(busy)
            busy.add(finished)
            try:
                left = None if deadline is None else max(0.001, deadline - (start - t_start))
                limit = min(x for x in (timeout or self.retry.timeout_s, left) if x is not None)
                response, cached = await self._send(run, req_id, choice, request, stream, limit)
            except ProviderError as exc:
                info = exc.info
            except asyncio.CancelledError:
                attempts.append(Attempt(model.name, choice.key_id, start - run.t0, self.clock.now() - run.t0,
                                        ErrorCategory.CANCELLED.value, message="cancelled while in flight",
                                        in_flight=in_flight))
                raise
            finally:
                busy.discard(finished)
                finished.set_result(None)
                for b in budgets:
                    b.release()
                run.in_flight -= 1
                run.released.set()
            end = self.clock.now()
            if response is not None:
                self.router.model_key_budget(model, choice.key).learn_from_headers(response.rate)
                for b in choice.budgets:
                    b.learn_from_success()
                    b.charge_extra(response.usage.input_tokens - prompt_tokens)
                self._reconcile(model.name, prompt_tokens, response.usage.input_tokens)
                attempts.append(Attempt(model.name, choice.key_id, start - run.t0, end - run.t0, "ok", response.status,
                                        in_flight=in_flight))
                cost = model.cost(response.usage.input_tokens, response.usage.output_tokens)
                result = ModelResult(
                    requested=requested, model=model.name, ok=True, text=response.text,
                    input_tokens=response.usage.input_tokens, output_tokens=response.usage.output_tokens, cost=cost,
                    latency_s=end - t_start, finish_reason=response.finish_reason, attempts=tuple(attempts),
                    prompt_index=index, cached=cached,
                )
                self._emit(ModelCompleted, request=req_id, requested=requested, model=model.name, latency_s=end - t_start,
                           input_tokens=result.input_tokens, output_tokens=result.output_tokens, cost=cost, attempts=len(attempts))
                return result
            assert info is not None
            last_info = info
            retry, wait, reason = self.retry.decide(attempt_no, info, self.clock.now() - t_start)
            # A refusal with no stated wait while other requests to the provider were running means
            # they hold the capacity (the seeds' free R1 behind a shared upstream): wait for those to
            # finish, up to the backoff cap, rather than guessing a time and hammering.
            drain = {f for f in others if not f.done()} if (
                info.category == ErrorCategory.RATE_LIMIT and info.retry_after_s is None and retry) else set()
            if drain:
                wait, reason = self.retry.max_backoff_s, "until the provider's busy requests finish"
            self._learn_from_failure(choice, info, req_id, 0.0 if drain else wait)
            may_rotate = (len(candidates) > 1 and info.category in _ROTATE_ON
                          and rotations < self.config.defaults.max_rotations)
            rotations += may_rotate
            explored = explored or (len(candidates) > 1 and not may_rotate and info.category in _ROTATE_ON)
            other_key = info.category in _KEY_FAULTS and any(
                not self.router.key_budget(choice.provider, k).disabled for k in choice.provider.keys)
            if (may_rotate or other_key) and attempt_no < self.retry.max_attempts:
                retry, wait, reason = True, 0.0, "rotate"
            attempts.append(Attempt(model.name, choice.key_id, start - run.t0, end - run.t0, info.category.value,
                                    info.status, info.message, wait_s=wait if retry else 0.0, in_flight=in_flight))
            if not retry:
                return self._failed(req_id, requested, model.name, info, attempts, index, end - t_start)
            last_failed = model.name if may_rotate else None
            if reason != "rotate":
                self._emit(RetryScheduled, request=req_id, model=model.name, attempt=attempt_no, wait_s=wait,
                           category=info.category.value, reason=reason)
                if drain:
                    began = self.clock.now()
                    await asyncio.wait(drain, timeout=wait)
                    attempts[-1] = replace(attempts[-1], wait_s=self.clock.now() - began)  # the wait it really took
                elif info.category not in (ErrorCategory.RATE_LIMIT, ErrorCategory.OVERLOADED):
                    await self.clock.sleep(wait)  # refusals wait through their budget's cooldown instead

    async def _send(self, run: _Run, req_id: str, choice: Choice, request: ChatRequest, stream: bool,
                    timeout: float | None) -> tuple[ChatResponse, bool]:
        endpoint = self._endpoint(choice.provider, choice.key)
        if self.cache is not None:
            hit = self.cache.get(choice.model.name, request)
            if hit is not None:
                return hit, True
        adapter = adapter_for(choice.provider.wire)
        chars = 0

        def on_delta(text: str) -> None:
            nonlocal chars
            chars += len(text)
            self._emit(TextDelta, request=req_id, model=choice.model.name, text=text, chars_so_far=chars)

        limit = timeout or self.retry.timeout_s
        try:
            response = await asyncio.wait_for(
                adapter.complete(run.client, endpoint, request, stream=stream, on_delta=on_delta if stream else None,
                                 timeout=limit),
                timeout=limit + 1.0,
            )
        except asyncio.TimeoutError as exc:
            raise ProviderError(classify_error(choice.provider.id, None, None, f"ReadTimeout: no answer within {limit:g}s")) from exc
        if self.cache is not None:
            self.cache.put(choice.model.name, request, response)
        return response, False

    def _reconcile(self, model: str, estimated: int, reported: int) -> None:
        """Move the model's estimate toward what the provider counts (EWMA of reported / estimated)."""
        if estimated <= 0 or reported <= 0:
            return
        ratio = self._input_ratio.get(model, 1.0)
        observed = min(4.0, max(0.25, reported / (estimated / ratio)))
        self._input_ratio[model] = 0.7 * ratio + 0.3 * observed if model in self._input_ratio else observed

    def _learn_from_failure(self, choice: Choice, info: ErrorInfo, req_id: str, wait: float) -> None:
        """Put what the failure says into the budgets: limits, cooldowns, keys out of use."""
        model_b, key_b = choice.budgets[0], choice.budgets[1]
        cat = info.category
        if cat == ErrorCategory.RATE_LIMIT:
            self._emit(RateLimited, request=req_id, model=choice.model.name, key_id=choice.key_id,
                       retry_after_s=info.retry_after_s if info.retry_after_s is not None else wait, message=info.message)
            # Providers name the model when the limit is the model's ("Rate limit reached for gpt-4.1 in
            # organization ...", OpenRouter's "... is temporarily rate-limited upstream"); then only that
            # model waits and the key stays free for the others. Otherwise the key itself is limited.
            text = info.message.lower()
            per_model = choice.model.model_id.lower() in text or "upstream" in text or (
                info.limit_hint is not None and info.limit_hint.kind == "concurrency")
            target = model_b if per_model else key_b
            target.learn_from_429(info)
            target.cool_down(wait)
        elif cat == ErrorCategory.OVERLOADED:
            model_b.cool_down(wait)
        elif cat in _KEY_FAULTS:
            # a quota or permission that names the model is that model's on this key (Gemini's per-model
            # quotas, a model the account may not use); otherwise the key itself is out
            names_model = choice.model.model_id.lower() in info.message.lower()
            target = self.router.model_key_budget(choice.model, choice.key) if names_model else key_b
            if target is key_b and names_model:  # OpenRouter: model×key is the key budget; use the model's
                target = model_b
            target.disabled = f"{cat.value}: {info.message[:120]}"
        elif cat == ErrorCategory.NOT_FOUND:
            model_b.cool_down(3600.0)

    def _nothing_usable(self, candidates: list[str], prompt_tokens: int, tokens: int, needs: frozenset[str],
                        last: ErrorInfo | None) -> ErrorInfo:
        """Why no candidate can ever take this request: no key, keys rejected, too big, or a missing capability."""
        if last is not None:
            return last
        reasons: list[tuple[ErrorCategory, str]] = []
        for name in candidates:
            spec = self.config.models[name]
            provider = self.config.providers[spec.provider]
            budgets = [b for k in provider.keys for b in self.router.budgets_for(spec, k)]
            disabled = next((b.disabled for b in budgets if b.disabled), None)
            too_big = next((b for b in budgets if b.too_large(tokens)), None)
            if not provider.keys:
                reasons.append((ErrorCategory.MISSING_KEY, f"{name}: no API key (set {' or '.join(provider.key_vars)})"))
            elif disabled is not None and all(any(b.disabled for b in self.router.budgets_for(spec, k)) for k in provider.keys):
                reasons.append((ErrorCategory(disabled.split(":", 1)[0]), f"{name}: taken out of use after {disabled}"))
            elif spec.context_window is not None and prompt_tokens > spec.context_window:
                reasons.append((ErrorCategory.CONTEXT_LENGTH,
                                f"{name}: prompt of ~{prompt_tokens} tokens exceeds its {spec.context_window}-token context window"))
            elif too_big is not None:
                reasons.append((ErrorCategory.CONTEXT_LENGTH,
                                f"{name}: ~{tokens} tokens (prompt + max output) exceed the {too_big.tpm:g} tokens per "
                                f"minute allowed for {too_big.scope} {too_big.name}; lower max_tokens or shorten the prompt"))
            else:
                reasons.append((ErrorCategory.BAD_REQUEST, f"{name}: lacks {', '.join(sorted(needs - spec.capabilities))}"))
        categories = {c for c, _ in reasons}
        category = categories.pop() if len(categories) == 1 else ErrorCategory.BAD_REQUEST
        return ErrorInfo(category, False, "; ".join(r for _, r in reasons))

    def _failed(self, req_id: str, requested: str, model: str, info: ErrorInfo, attempts: list[Attempt], index: int,
                latency: float) -> ModelResult:
        self._emit(ModelFailed, request=req_id, requested=requested, model=model, category=info.category.value,
                   status=info.status, message=info.message, attempts=len(attempts))
        return ModelResult(requested=requested, model=model, ok=False, latency_s=latency, attempts=tuple(attempts),
                           error=info, prompt_index=index)

    async def _judge(self, run: _Run, index: int, judge: str, prompt: str, answer: ModelResult, run_budget: Budget) -> Score:
        """Score an answer 0-10 with the judge model; an empty or unparsable verdict is asked again (3 tries)."""
        ask = (
            "You are grading an answer. Reply with JSON only: {\"score\": <number 0-10>, \"reason\": \"<one sentence>\"}.\n\n"
            f"## Question\n{prompt}\n\n## Answer\n{answer.text}"
        )
        last_text = ""
        for attempt in range(3):
            verdict = await self._request(run, index, judge, [judge], ask, None, (), 200, 0.0, {}, False, None,
                                          run_budget, tag=f"/judge:{answer.requested}#{attempt + 1}")
            if not verdict.ok:
                return Score(None, "", judge, verdict.error)
            last_text = verdict.text
            parsed = parse_score(verdict.text)
            if parsed is not None:
                return Score(parsed[0], parsed[1], judge)
        return Score(None, f"unparsable judge reply after 3 tries: {last_text[:80]!r}", judge,
                     ErrorInfo(ErrorCategory.BAD_REQUEST, False, "judge reply had no score"))

    # --- plumbing -------------------------------------------------------------------------
    def _endpoint(self, provider: Any, key: Any) -> Any:
        from nbfanout.providers.base import Endpoint

        return Endpoint(provider=provider.id, base_url=provider.base_url, api_key=key.value, headers=dict(provider.headers))

    def _client(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=max(64, self.concurrency * 2), max_keepalive_connections=32)
        return httpx.AsyncClient(transport=self._transport, limits=limits, timeout=httpx.Timeout(self.retry.timeout_s))

    def _emit(self, cls: type[Event], run: _Run | None = None, **fields: Any) -> None:
        run = run or _RUN.get()
        t = self.clock.now() - run.t0 if run else 0.0
        self.events.emit(cls(t=t, run_id=run.id if run else "", **fields))

    def _emit_utilization(self) -> None:
        self._emit(Utilization, budgets=self.budgets.statistics())

    async def _utilization_ticker(self, run: _Run) -> None:
        while True:
            self._emit_utilization()
            await self.clock.sleep(UTILIZATION_INTERVAL_S)

    def _on_learned(self, scope: str, metric: str, old: float | None, new: float | None, source: str) -> None:
        self._emit(LimitsLearned, scope=scope, metric=metric, old=old, new=new, source=source)

    def _lower_bound(self, rows: Sequence[PlanRow]) -> float:
        """Seconds the known request limits force, ignoring latency: per budget, (requests beyond the burst) / rate."""
        counts: dict[tuple[str, float], int] = {}
        for r in rows:
            spec = self.config.models[r.model]
            provider = self.config.providers[spec.provider]
            for scope, rpm in ((f"model {spec.name}", spec.limits.rpm), (f"key {provider.id}", provider.limits.rpm)):
                if rpm:
                    counts[(scope, rpm)] = counts.get((scope, rpm), 0) + 1
        return max((max(0, n - rpm) * 60.0 / rpm for (_, rpm), n in counts.items()), default=0.0)

    def __repr__(self) -> str:
        keyed = [p.id for p in self.config.providers.values() if p.keys]
        return f"<Fanout {len(self.config.models)} models, keys for {keyed}, concurrency {self.concurrency}>"


def parse_score(text: str) -> tuple[float, str] | None:
    """A judge's score from JSON (``{"score": 7}``) or a plain "score: 7" / "7/10"; None if absent."""
    text = (text or "").strip()
    match = re.search(r"\{.*\}", text, re.S)
    if match:
        try:
            doc = json.loads(match.group(0))
            if isinstance(doc, dict) and isinstance(doc.get("score"), (int, float)):
                return float(doc["score"]), str(doc.get("reason", ""))
        except ValueError:
            pass
    m = re.search(r"score\W{0,3}(\d+(?:\.\d+)?)|\b(\d+(?:\.\d+)?)\s*/\s*10\b", text, re.I)
    if m:
        return float(m.group(1) or m.group(2)), text
    return None


def _image_part(image: str | Path | bytes | ImagePart) -> ImagePart:
    if isinstance(image, ImagePart):
        return image
    if isinstance(image, bytes):
        return ImagePart(data=image, mime_type="image/jpeg" if image[:2] == b"\xff\xd8" else "image/png")
    text = str(image)
    if text.startswith(("http://", "https://", "data:")):
        return ImagePart(url=text)
    path = Path(text)
    mime = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp"}.get(path.suffix.lower(), "image/png")
    return ImagePart(data=path.read_bytes(), mime_type=mime)


def _cancelled_result(name: str, index: int, run: _Run) -> ModelResult:
    attempts = tuple(run.attempts.get(f"{index}:{name}", ()))
    return ModelResult(requested=name, model=attempts[-1].model if attempts else name, ok=False, prompt_index=index,
                       attempts=attempts,
                       error=ErrorInfo(ErrorCategory.CANCELLED, False, "cancelled before an answer arrived"))
