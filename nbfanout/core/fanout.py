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
import logging
import math
import re
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx

from nbfanout.config import Config, load_config, suggest
from nbfanout.core.audio import Transcriber, Transcription
from nbfanout.core.batch import BatchJob, BatchRunner, BatchState
from nbfanout.core.cache import ResponseCache
from nbfanout.core.clients import HttpClients, ssl_context
from nbfanout.core.clock import Clock, LoopClock
from nbfanout.core.conversation import as_conversation, as_tools, check_options, check_text
from nbfanout.core.errors import ErrorCategory, ErrorInfo, UsageError
from nbfanout.core.events import (
    Cooldown,
    Event,
    EventBus,
    LimitsLearned,
    ModelCompleted,
    ModelFailed,
    ModelQueued,
    RunCompleted,
    RunStarted,
    Utilization,
)
from nbfanout.core.judge import JUDGE_TRIES, judge_prompt, parse_score
from nbfanout.core.limits import Budget, BudgetSet, LearnedLimits
from nbfanout.core.store import SharedConfig, SharedStore
from nbfanout.core.plan import Plan, PlanRow, build_plan
from nbfanout.core.request import RequestPipeline, RequestSpec
from nbfanout.core.results import Attempt, BatchResult, FanoutResult, ModelResult, Score
from nbfanout.core.retry import RetryPolicy
from nbfanout.core.rotation import Router, auto_pool
from nbfanout.core.sync import run_coroutine_sync
from nbfanout.providers.base import ImagePart, Message, Tool

__all__ = ["Fanout", "Plan", "PlanRow", "Transcription"]

T = TypeVar("T")
UTILIZATION_INTERVAL_S = 0.1  # at most ten utilization snapshots a second
VIAS = ("live", "batch", "auto")
LIVE_SAVE_S = 1.0  # a batch map's live answers reach its state file at most this often (and at the end)
BATCH_AFTER_S = 600.0  # via="auto": a model whose live run the limits make last longer goes by batch
log = logging.getLogger("nbfanout")


@dataclass
class _Run:
    """Per-call state shared by the request tasks of one run or map."""

    id: str
    t0: float
    http: HttpClients
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
        downscale_images: bool | None = None,
        shared: str | SharedConfig | bool | None = None,
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
        # one HTTP client per event loop, kept across runs: a client costs milliseconds of CPU to
        # build (an SSL context) and its pooled connections save a TCP handshake per request
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, HttpClients] = weakref.WeakKeyDictionary()
        if transport is None:
            ssl_context()  # built now, not while the first requests of the first run wait for it
        self._active: list[_Run] = []  # runs in progress, oldest first; the utilization ticker serves them all
        self._ticker: asyncio.Future[None] | None = None
        learn = d.learn_limits if learn is None else learn
        where = state_path or d.state_path
        self.learned = LearnedLimits(Path(where) if where else None, ttl_s=d.learned_ttl_s) if learn else None
        # shared budgets: None takes the config's [shared] table; False keeps budgets in process whatever it says
        shared_config = self.config.shared if shared is None else SharedConfig.resolve(shared, env)
        self.shared = SharedStore(shared_config) if shared_config is not None else None
        self.budgets = BudgetSet(self.clock, self.learned, shared=self.shared)
        self.budgets.listeners.append(self._on_learned)
        self.downscale_images = d.downscale_images if downscale_images is None else downscale_images
        self.router = Router(self.config, self.budgets, clock=self.clock, provider_rpm=dict(provider_rpm or {}),
                             downscale_images=self.downscale_images)
        cache_on = d.cache if cache is None else bool(cache)
        cache_path = cache if isinstance(cache, (str, Path)) else d.cache_path
        self.cache = ResponseCache(Path(cache_path) if cache_path else None) if cache_on else None
        self._pipeline = RequestPipeline(self)
        self._transcriber = Transcriber(self)
        self._batch_runner = BatchRunner(self)
        self.last_result: FanoutResult | BatchResult | None = None

    # --- public API -------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Receive every event; returns a function that unsubscribes."""
        return self.events.subscribe(callback)

    def statistics(self) -> tuple[Any, ...]:
        """A frozen snapshot of every budget (provider, key, model)."""
        return self.budgets.statistics()

    def cooldowns(self) -> tuple[Cooldown, ...]:
        """Every model, key or provider cooling down now: what the provider asked to wait, and how long is left."""
        return self.budgets.cooldowns()

    def clear_cooldowns(self, model: str | None = None, key: str | None = None) -> list[str]:
        """End cooldowns now (all, or those of ``model`` and/or the key whose id or last four characters is ``key``).

        Saved cooldowns go too, so the next run does not wait for them either. Returns the budgets cleared.
        """
        if model is not None:
            self.config.model(model)  # an unknown name fails with close matches

        def match(scope: str, name: str) -> bool:
            if model is not None and not (scope in ("model", "model-key") and name.split(" ", 1)[0] == model):
                return False
            if key is not None and not (scope in ("key", "model-key") and name.endswith(key[-4:])):
                return False
            return True

        cleared = self.budgets.clear_cooldowns(match)
        if self.learned is not None:
            self.learned.save()
        return cleared

    async def aclose(self) -> None:
        """Close the HTTP connections this Fanout keeps on the running loop (it stays usable)."""
        clients = self._clients.pop(asyncio.get_running_loop(), None)
        if clients is not None:
            await clients.aclose()

    async def __aenter__(self) -> Fanout:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def run(
        self,
        prompt: str | Sequence[Message | Mapping[str, Any]],
        models: Sequence[str] | None = None,
        *,
        pool: str | None = None,
        system: str | None = None,
        images: Sequence[str | Path | bytes | ImagePart] = (),
        tools: Sequence[Tool | Mapping[str, Any]] = (),
        fallbacks: Mapping[str, Sequence[str]] | None = None,
        stream: bool = False,
        timeout: float | None = None,
        **params: Any,
    ) -> FanoutResult:
        """Send ``prompt`` (text, or a conversation of messages) to every model at once; one
        ModelResult per requested model, in order, with the ``tool_calls`` a model made."""
        return await self._one(prompt, models, pool=pool, system=system, images=images, tools=tools,
                               fallbacks=fallbacks, stream=stream, timeout=timeout, params=params, route=False)

    async def ask(
        self,
        prompt: str | Sequence[Message | Mapping[str, Any]],
        *,
        models: Sequence[str] | None = None,
        pool: str | None = None,
        system: str | None = None,
        images: Sequence[str | Path | bytes | ImagePart] = (),
        tools: Sequence[Tool | Mapping[str, Any]] = (),
        stream: bool = False,
        timeout: float | None = None,
        **params: Any,
    ) -> ModelResult:
        """One answer from the first of ``models`` (or of ``pool``, in its order) that can give it.

        A member that is busy, rate limited, out of quota or down hands the request to the next:
        the rest of its provider first, then the other providers; keys rotate within a model.
        ``result.model`` says who answered, ``result.attempts`` everything tried on the way.
        With ``tools``, only members that can call tools are asked.
        """
        if models is None and pool is None:
            raise UsageError("ask needs models=[...] or pool=... to choose from")
        row = await self._one(prompt, models, pool=pool, system=system, images=images, tools=tools, fallbacks=None,
                              stream=stream, timeout=timeout, params=params, route=True)
        return row.results[0]

    async def _one(self, prompt: str | Sequence[Message | Mapping[str, Any]], models: Sequence[str] | None, *,
                   pool: str | None, system: str | None, images: Sequence[Any], tools: Sequence[Any],
                   fallbacks: Mapping[str, Sequence[str]] | None, stream: bool, timeout: float | None,
                   params: dict[str, Any], route: bool, purpose: str = "answer") -> FanoutResult:
        """One prompt or conversation: fanned out (``run``) or routed to one answer (``ask``)."""
        text, conversation, system = as_conversation(prompt, system)
        try:
            batch = await self._batch([text], models, pool=pool, system=system, images=images, fallbacks=fallbacks,
                                      stream=stream, timeout=timeout, concurrency=None, judge=None, params=params,
                                      route=route, conversation=conversation, tools=as_tools(tools), purpose=purpose)
        except asyncio.CancelledError:
            if isinstance(self.last_result, BatchResult):
                self.last_result = self.last_result.rows[0]  # what had finished, the rest marked cancelled
            raise
        row = replace(batch.rows[0], elapsed_s=batch.elapsed_s)
        self.last_result = row
        return row

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
        route: bool = False,
        tools: Sequence[Tool | Mapping[str, Any]] = (),
        via: str = "live",
        batch_state: str | Path | None = None,
        batch_after_s: float = BATCH_AFTER_S,
        **params: Any,
    ) -> BatchResult:
        """prompts × models with a global concurrency limit; results in input order; optional judge scores.

        ``route=True``: one answer per prompt instead, from the models (or pool) in order as ``ask``
        chooses it, so a batch spreads over the members' capacity, the first ones first.

        ``via="batch"``: each model whose provider has a batch API gets its prompts as provider
        batches (half the price, their own quota, minutes to hours); the others run live.
        ``via="auto"``: batch only the models whose live run the known limits make last longer than
        ``batch_after_s``. The batches are written to ``batch_state`` (default: a new file under
        ``.nbfanout/batches/``) the moment they exist: ``resume(path)`` picks them up after a restart.
        """
        batch = await self._batch(list(prompts), models, pool=pool, system=system, images=(), fallbacks=None,
                                  stream=False, timeout=timeout, concurrency=concurrency, judge=judge, params=params,
                                  route=route, tools=as_tools(tools), via=via, batch_state=batch_state,
                                  batch_after_s=batch_after_s)
        self.last_result = batch
        return batch

    async def resume(self, path: str | Path, *, judge: str | None = None, concurrency: int | None = None) -> BatchResult:
        """The map a batch state file describes, finished: its batches waited for and read, its live
        answers kept, whatever never ran sent now; the same BatchResult the map would have returned."""
        state = BatchState.load(path)
        for name in state.models:
            self.config.model(name)
        batch = await self._batch(list(state.prompts), list(state.models), pool=None, system=state.system, images=(),
                                  fallbacks=None, stream=False, timeout=None, concurrency=concurrency, judge=judge,
                                  params={**state.params, "max_tokens": state.max_tokens,
                                          "temperature": state.temperature},
                                  via="batch", state=state)
        self.last_result = batch
        return batch

    async def cancel_batches(self, path: str | Path) -> list[BatchJob]:
        """Ask the providers to cancel the unfinished batches of a state file (requests already done stay
        readable: ``resume`` returns them, the others as cancelled)."""
        state = BatchState.load(path)
        run = _Run(id=uuid.uuid4().hex[:8], t0=self.clock.now(), http=self._http())
        return await self._batch_runner.cancel(state, run)

    async def batch_status(self, path: str | Path) -> list[BatchJob]:
        """A state file's batches with the status each provider reports now."""
        state = BatchState.load(path)
        run = _Run(id=uuid.uuid4().hex[:8], t0=self.clock.now(), http=self._http())
        return await self._batch_runner.refresh(state, run)

    def _batched(self, names: Sequence[str], prompts: list[str], via: str, after_s: float, system: str | None,
                 max_tokens: int | None) -> list[str]:
        """The models of a map that go through their provider's batch API."""
        if via not in VIAS:
            raise UsageError(f"via must be one of {', '.join(map(repr, VIAS))}, got {via!r}")
        if via == "live":
            return []
        out = []
        for name in names:
            if self._batch_runner.support(name) is None:
                log.warning("%s runs live: %s", name, self._batch_runner.why_live(name))
                continue
            if via == "auto" and build_plan(self.config, prompts, [name], system=system,
                                            max_tokens=max_tokens).lower_bound_s <= after_s:
                continue
            out.append(name)
        return out

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
        synth = await self._one(prompt, [model], pool=None, system=params.pop("system", None), images=(), tools=(),
                                fallbacks=None, stream=params.pop("stream", False), timeout=params.pop("timeout", None),
                                params=params, route=False, purpose="synthesis")
        merged = replace(result, synthesis=synth.results[0])
        self.last_result = merged
        return merged

    async def rerun(self, result: FanoutResult | BatchResult, *, via: str = "live", **params: Any) -> Any:
        """Send again only the models that failed in ``result``, and merge the new answers in.

        A BatchResult (from ``map``, ``resume``): each failed prompt × model (expired, errored or
        cancelled inside a batch, or refused live) again, live or ``via="batch"`` in new batches;
        pass the map's ``system`` / ``max_tokens`` again, as for the map itself.
        """
        if isinstance(result, BatchResult):
            return await self._rerun_map(result, via, params)
        if via != "live":
            raise UsageError("a single prompt's rerun goes live; via='batch' reruns the failures of a map (a BatchResult)")
        failed = [r.requested for r in result.results if not r.ok]
        if not failed:
            return result
        again = await self.run(result.prompt, failed, **params)
        # the new attempts happened after the first run: on its clock they start where it ended
        fresh = {r.requested: _shifted(r, result.elapsed_s) for r in again.results}
        merged = tuple(fresh.get(r.requested, r) for r in result.results)
        out = replace(result, results=merged, elapsed_s=result.elapsed_s + again.elapsed_s)
        self.last_result = out
        return out

    async def _rerun_map(self, batch: BatchResult, via: str, params: dict[str, Any]) -> BatchResult:
        failed: dict[str, list[int]] = {}
        for i, row in enumerate(batch.rows):
            for r in row.results:
                if not r.ok:
                    failed.setdefault(r.requested, []).append(i)
        if not failed:
            return batch
        path = params.pop("batch_state", None)

        def state_of(k: int) -> Path | None:  # one state file per model's map
            if path is None or len(failed) == 1:
                return None if path is None else Path(path)
            return Path(path).with_name(f"{Path(path).stem}-{k}{Path(path).suffix}")

        # one map per failed model, at once: each sends only that model's failed prompts
        again = await asyncio.gather(*(self.map([batch.prompts[i] for i in where], models=[name], via=via,
                                                batch_state=state_of(k), **params)
                                       for k, (name, where) in enumerate(failed.items())))
        fresh: dict[tuple[int, str], ModelResult] = {}
        for (name, where), redo in zip(failed.items(), again):
            for k, i in enumerate(where):
                fresh[(i, name)] = replace(_shifted(redo.rows[k].results[0], batch.elapsed_s), prompt_index=i)
        rows = tuple(replace(row, results=tuple(fresh.get((i, r.requested), r) for r in row.results))
                     for i, row in enumerate(batch.rows))
        out = replace(batch, rows=rows, elapsed_s=batch.elapsed_s + max(b.elapsed_s for b in again))
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
        return build_plan(self.config, prompts, names, system=system, max_tokens=max_tokens)

    async def transcribe(self, path: str | Path, *, language: str | None = None, prompt: str | None = None,
                         models: Sequence[str] | None = None) -> Transcription:
        """Transcribe an audio file through the audio pool: Groq first when it has a key, then round-robin."""
        if self.shared is not None:  # audio seconds (Groq's ASH / ASD) are shared like every other budget
            await self.shared.open()
        try:
            return await self._transcriber.transcribe(path, language=language, prompt=prompt, models=models)
        finally:
            if self.shared is not None:
                await self.shared.close()

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

    async def _batch(self, prompts: list[str], models: Sequence[str] | None, *, pool: str | None, system: str | None,
                     images: Sequence[Any], fallbacks: Mapping[str, Sequence[str]] | None, stream: bool,
                     timeout: float | None, concurrency: int | None, judge: str | None, params: dict[str, Any],
                     route: bool = False, conversation: tuple[Message, ...] = (), tools: tuple[Tool, ...] = (),
                     purpose: str = "answer", via: str = "live", batch_state: str | Path | None = None,
                     batch_after_s: float = BATCH_AFTER_S, state: BatchState | None = None) -> BatchResult:
        if not prompts:
            raise UsageError("no prompts to send")
        for i, p in enumerate(prompts):  # refused before anything is sent, so nothing received is lost
            what = f"prompt {i}" if len(prompts) > 1 else "the prompt"
            check_text(p, what)
            if not conversation and not p.strip():
                raise UsageError(f"{what} is empty: there is nothing to ask")
        for k, m in enumerate(conversation):
            check_text(m.content, f"message {k} of the conversation")
        if system:
            check_text(system, "the system prompt")
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
        check_options(max_tokens=max_tokens, temperature=temperature, timeout=timeout)
        if state is None:
            batched = self._batched(names, prompts, via, batch_after_s, system, max_tokens)
            if batched:
                if route:
                    raise UsageError("route=True picks one model per prompt as capacity frees up; a batch cannot: "
                                     "use via='live' with route, or name the models")
                state = self._batch_runner.new_state(batch_state, prompts, names, batched, RequestSpec(
                    prompts[0], system, parts, max_tokens, temperature, dict(params), conversation=conversation,
                    tools=tools))
                state.save()  # the map is on disk before anything is sent
        # the run's own in-flight cap; not registered with the budget set, so it ends with the run
        run_budget = Budget("run", "run", concurrency=concurrency or self.concurrency, clock=self.clock, ranked=True)
        if self.shared is not None:  # unreachable with on_unavailable = "fail": raised here, before any request
            await self.shared.open()
        run = _Run(id=uuid.uuid4().hex[:8], t0=self.clock.now(), http=self._http())
        token = _RUN.set(run)
        self._emit(RunStarted, models=tuple(names), prompts=len(prompts), purpose=purpose)
        self._start_ticker(run)
        # routed: one request per prompt, which any member may answer, the first ones first; fanned
        # out with a pool, each request may be answered by any model of the pool; with models, only by itself
        if route:
            jobs = [(i, names[0], list(names)) for i in range(len(prompts))]
        else:
            jobs = [
                (i, name, names[k:] + names[:k] if pooled else [name, *fallbacks.get(name, [])])
                for i in range(len(prompts))
                for k, name in enumerate(names)
            ]
        for i, name, _ in jobs:
            self._emit(ModelQueued, request=f"{i}:{name}", requested=name, purpose=purpose, prompt_index=i, model=name)
        results: list[Any] = [None] * len(jobs)
        batched_names = set(state.batched) if state is not None else set()
        if state is not None:  # a resumed map: its live answers are kept, not asked again
            for j, (i, name, _) in enumerate(jobs):
                record = state.live.get(f"{i}:{name}")
                if record is not None and name not in batched_names:
                    results[j] = kept = ModelResult.from_record(record)
                    self._emit_outcome(run, f"{i}:{name}", name, i, kept)

        scores: dict[int, Score | None] = {}

        def spec_for(i: int) -> RequestSpec:
            return RequestSpec(prompts[i], system, parts, max_tokens, temperature, dict(params), stream, timeout,
                               conversation=conversation, tools=tools)

        saved_at = self.clock.now()
        live_left = sum(1 for j, job in enumerate(jobs) if job[1] not in batched_names and results[j] is None)

        def keep_live(j: int) -> None:
            """A live answer of a batch map into its state file (written at most every LIVE_SAVE_S, and
            with the last one), so a resume after a crash asks again only what had not come."""
            nonlocal saved_at, live_left
            assert state is not None
            i, name, _ = jobs[j]
            state.live[f"{i}:{name}"] = results[j].to_record()
            live_left -= 1
            if live_left == 0 or self.clock.now() - saved_at >= LIVE_SAVE_S:
                state.save()
                saved_at = self.clock.now()

        async def lane(queue: list[int], width: int, holds: float) -> None:
            while queue:
                j = queue.pop(0)
                # Critical path first: a request whose sliding-window share a later request of its
                # model must wait a minute for goes before any that none does, and then the lane
                # with the most requests left per worker (the rank orders the run's slots only).
                left = len(queue) + 1
                windows_after = (left - 1) // holds if math.isfinite(holds) else 0
                rank = -(windows_after * (len(jobs) + 1) + left / width)
                i, name, cands = jobs[j]
                spec = spec_for(i)
                results[j] = await self._pipeline.run(run, i, name, cands, spec, run_budget, rank=rank, purpose=purpose)
                if state is not None:
                    keep_live(j)
                if judge is not None and results[j].ok:  # the answer is kept even if judging is cancelled
                    scores[j] = await self._judge(run, i, judge, prompts[i], results[j], run_budget, rank)

        # One lane of workers per requested model, as wide as that model may run at once: a model
        # that must wait for its limits never holds the workers that other models could use.
        width = concurrency or self.concurrency
        workers = []
        for name in names:
            if name in batched_names:
                continue
            queue = [j for j, job in enumerate(jobs) if job[1] == name and results[j] is None]
            # a routed request may go to any member: its lane is as wide as the run
            cap = width if route else self.config.models[name].limits.concurrency or width
            n = min(cap, width, len(queue))
            holds = self._pipeline.window_holds(name, spec_for(jobs[queue[0]][0])) if queue and not route else math.inf
            workers += [asyncio.ensure_future(lane(queue, n, holds)) for _ in range(n)]
        if state is not None:
            workers.append(asyncio.ensure_future(self._run_batches(state, run, jobs, results, scores, judge,
                                                                   run_budget)))
        try:
            await asyncio.gather(*workers)
            done = results
        except asyncio.CancelledError:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            partial = self._collect(prompts, names, jobs, [
                r if r is not None else _cancelled_result(jobs[j][1], jobs[j][0], run, self.clock.now())
                for j, r in enumerate(results)],
                run, scores)
            self.last_result = partial
            ok = sum(1 for r in partial.results if r.ok)
            self._emit(RunCompleted, succeeded=ok, failed=len(partial.results) - ok,
                       elapsed_s=self.clock.now() - run.t0, cancelled=True)
            raise
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            if state is not None:  # every live answer so far, so a resume does not ask again
                for j, (i, name, _) in enumerate(jobs):
                    if name not in batched_names and results[j] is not None and results[j].status != "cancelled":
                        state.live[f"{i}:{name}"] = results[j].to_record()
                state.save()
            await self._stop_ticker(run)
            self._emit_utilization()
            if self.shared is not None:
                await self.shared.close()
            if self.learned is not None:
                self.learned.save()
            _RUN.reset(token)
        batch = self._collect(prompts, names, jobs, done, run, scores)
        ok = sum(1 for r in batch.results if r.ok)
        self._emit(RunCompleted, run, succeeded=ok, failed=len(batch.results) - ok, elapsed_s=batch.elapsed_s)
        return batch

    async def _run_batches(self, state: BatchState, run: _Run, jobs: list[tuple[int, str, list[str]]],
                           results: list[Any], scores: dict[int, Score | None], judge: str | None,
                           run_budget: Budget) -> None:
        """The batched part of a map: its provider batches followed to the end, each answer put in its
        place (and judged live, when asked)."""
        where = {(i, name): j for j, (i, name, _) in enumerate(jobs)}
        judging: list[asyncio.Future[None]] = []

        async def judge_one(j: int) -> None:
            i = jobs[j][0]
            scores[j] = await self._judge(run, i, judge or "", state.prompts[i], results[j], run_budget, 0.0)

        def deliver(i: int, name: str, result: ModelResult) -> None:
            j = where[(i, name)]
            results[j] = result
            if judge is not None and result.ok:
                judging.append(asyncio.ensure_future(judge_one(j)))

        try:
            await self._batch_runner.run(state, run, deliver)
            await asyncio.gather(*judging)
        finally:
            for task in judging:
                task.cancel()
            log.info("batch state kept in %s", state.path)

    def _emit_outcome(self, run: _Run, request: str, requested: str, index: int, r: ModelResult) -> None:
        """ModelCompleted or ModelFailed for an outcome that needs no request (kept from a state file)."""
        if r.ok:
            self._emit(ModelCompleted, run, request=request, requested=requested, prompt_index=index, model=r.model,
                       latency_s=r.latency_s, input_tokens=r.input_tokens, output_tokens=r.output_tokens,
                       cost=r.cost, attempts=len(r.attempts))
        else:
            self._emit(ModelFailed, run, request=request, requested=requested, prompt_index=index, model=r.model,
                       category=r.category, status=r.http_status, message=r.error.message if r.error else "",
                       attempts=len(r.attempts))

    def _collect(self, prompts: list[str], names: list[str], jobs: list[tuple[int, str, list[str]]],
                 results: list[ModelResult], run: _Run, scores: dict[int, Score | None]) -> BatchResult:
        rows: list[list[ModelResult]] = [[] for _ in prompts]
        for (i, _, _), result in zip(jobs, results):
            rows[i].append(result)
        by_model = {(jobs[j][0], jobs[j][1]): score for j, score in scores.items() if score is not None}
        elapsed = self.clock.now() - run.t0
        fan = tuple(FanoutResult(prompt=p, results=tuple(r), elapsed_s=elapsed) for p, r in zip(prompts, rows))
        return BatchResult(prompts=tuple(prompts), models=tuple(names), rows=fan, elapsed_s=elapsed, scores=by_model)

    async def _judge(self, run: _Run, index: int, judge: str, prompt: str, answer: ModelResult, run_budget: Budget,
                     rank: float = 0.0) -> Score:
        """Score an answer 0-10 with the judge model; an empty or unparsable verdict is asked again."""
        spec = RequestSpec(judge_prompt(prompt, answer.text), max_tokens=200, temperature=0.0)
        last_text = ""
        for attempt in range(JUDGE_TRIES):
            verdict = await self._pipeline.run(run, index, judge, [judge], spec, run_budget,
                                               tag=f"/judge:{answer.requested}#{attempt + 1}", rank=rank, purpose="judge")
            if not verdict.ok:
                return Score(None, "", judge, verdict.error)
            last_text = verdict.text
            parsed = parse_score(verdict.text)
            if parsed is not None:
                return Score(parsed[0], parsed[1], judge)
        return Score(None, f"unparsable judge reply after {JUDGE_TRIES} tries: {last_text[:80]!r}", judge,
                     ErrorInfo(ErrorCategory.BAD_REQUEST, False, "judge reply had no score"))

    # --- plumbing -------------------------------------------------------------------------
    def _http(self) -> HttpClients:
        """The running loop's HTTP clients, built on first use (connections belong to one loop)."""
        loop = asyncio.get_running_loop()
        clients = self._clients.get(loop)
        if clients is None or clients.closed:
            # several runs may share this Fanout, each up to its own concurrency
            clients = HttpClients(max(64, self.concurrency * 2), self.retry.timeout_s, self._transport)
            self._clients[loop] = clients
        return clients

    def _emit(self, cls: type[Event], run: _Run | None = None, **fields: Any) -> None:
        run = run or _RUN.get()
        t = self.clock.now() - run.t0 if run else 0.0
        self.events.emit(cls(t=t, run_id=run.id if run else "", **fields))

    def _emit_utilization(self) -> None:
        self._emit(Utilization, budgets=self.budgets.statistics())

    def _start_ticker(self, run: _Run) -> None:
        """One utilization ticker per Fanout, however many runs share it (200 concurrent ``run``s
        would otherwise wake 2,000 times a second to send the same snapshot)."""
        self._active.append(run)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.ensure_future(self._utilization_ticker())

    async def _stop_ticker(self, run: _Run) -> None:
        self._active.remove(run)
        if not self._active and self._ticker is not None:
            ticker, self._ticker = self._ticker, None
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)

    async def _utilization_ticker(self) -> None:
        while self._active:
            if self.events.listening:  # a snapshot of every budget, ten times a second, only for a viewer
                self._emit(Utilization, self._active[0], budgets=self.budgets.statistics())
            await self.clock.sleep(UTILIZATION_INTERVAL_S)

    def _on_learned(self, scope: str, metric: str, old: float | None, new: float | None, source: str) -> None:
        self._emit(LimitsLearned, scope=scope, metric=metric, old=old, new=new, source=source)

    def __repr__(self) -> str:
        keyed = [p.id for p in self.config.providers.values() if p.keys]
        return f"<Fanout {len(self.config.models)} models, keys for {keyed}, concurrency {self.concurrency}>"


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


def _shifted(result: ModelResult, seconds: float) -> ModelResult:
    """``result`` with its attempts moved ``seconds`` later (a rerun's, on the first run's clock)."""
    moved = tuple(replace(a, start_s=a.start_s + seconds, end_s=a.end_s + seconds) for a in result.attempts)
    return replace(result, attempts=moved)


def _cancelled_result(name: str, index: int, run: _Run, now: float) -> ModelResult:
    """A request the user stopped: its attempts so far, and how long it had been under way (queued
    since the run started, or since its first attempt)."""
    attempts = tuple(run.attempts.get(f"{index}:{name}", ()))
    began = attempts[0].start_s if attempts else 0.0
    return ModelResult(requested=name, model=attempts[-1].model if attempts else name, ok=False, prompt_index=index,
                       attempts=attempts, latency_s=max(0.0, now - run.t0 - began),
                       error=ErrorInfo(ErrorCategory.CANCELLED, False, "cancelled before an answer arrived"))
