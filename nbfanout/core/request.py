"""The per-request pipeline: RequestSpec → wait_for_capacity → send_once → decide → Decision.

One request (a prompt for one requested model, possibly answered by a fallback or a pool
member) runs as named steps: the router lists the options (model × key) that could take
it, ``wait_for_capacity`` reserves one in every budget it needs, ``send_once`` sends it,
the router learns from the outcome, and ``decide`` says what follows: done, retry after a
wait, rotate, or fail with a precise category. Every attempt is recorded with the wait that
really happened; every step is an event.
"""

from __future__ import annotations

import logging

import asyncio
import contextvars
import functools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from nbfanout._secrets import redact
from nbfanout.catalog import ModelSpec
from nbfanout.core.clients import on_sent
from nbfanout.core.errors import ErrorCategory, ErrorInfo, ProviderError, classify_error
from nbfanout.core.events import (
    ModelCompleted,
    ModelFailed,
    ModelQueued,
    ModelRecovered,
    ModelRotation,
    ModelSelected,
    NoModelsAvailableEvent,
    RequestEvent,
    RequestStarted,
    RetryScheduled,
    TextDelta,
)
from nbfanout.core.images import fit_messages, image_problem
from nbfanout.core.limits import Budget, CapacityError, Option, Reservation
from nbfanout.core.store import SharedUnavailable
from nbfanout.core.results import Attempt, ModelResult
from nbfanout.core.retry import RetryPolicy
from nbfanout.core.rotation import KEY_FAULTS, Choice
from nbfanout.core.tokens import (
    encoder_ready,
    estimate_request_tokens,
    estimate_text_tokens,
    request_tokens_bound,
    tools_text,
)
from nbfanout.providers import adapter_for
from nbfanout.providers.base import ChatRequest, ChatResponse, Endpoint, ImagePart, Message, Tool

if TYPE_CHECKING:
    from nbfanout.core.fanout import Fanout, _Run

__all__ = ["Decision", "RequestSpec", "decide"]

log = logging.getLogger("nbfanout.request")

DEFAULT_MAX_TOKENS = 4096
ROTATE_ON = frozenset(
    {ErrorCategory.RATE_LIMIT, ErrorCategory.OVERLOADED, ErrorCategory.QUOTA_EXHAUSTED, ErrorCategory.SERVER_ERROR,
     ErrorCategory.TIMEOUT, ErrorCategory.NETWORK, ErrorCategory.AUTH, ErrorCategory.PERMISSION, ErrorCategory.NOT_FOUND}
)
#: Refusals wait in admission (their scope's cooldown), not in a sleep of their own.
_WAIT_IN_ADMISSION = frozenset({ErrorCategory.RATE_LIMIT, ErrorCategory.OVERLOADED})


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """What to send, independent of where: prompt, system, images, output budget and parameters."""

    prompt: str
    system: str | None = None
    images: tuple[ImagePart, ...] = ()
    max_tokens: int | None = None
    temperature: float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    stream: bool = False
    timeout: float | None = None
    conversation: tuple[Message, ...] = ()  # a whole conversation (tool calls, results) instead of one prompt
    tools: tuple[Tool, ...] = ()
    # derived once, not at every look of a waiting request: the tools as counted, and all characters sent
    listed_tools: str = field(init=False, repr=False, compare=False)
    chars: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        listed = tools_text(self.tools)
        object.__setattr__(self, "listed_tools", listed)
        # what OpenAI's TPM estimate counts (a quarter of them)
        object.__setattr__(self, "chars", len(self.system or "") + len(listed) + sum(
            len(m.content) + sum(len(c.name) + len(json.dumps(dict(c.arguments))) for c in m.tool_calls)
            for m in self.messages))

    @property
    def messages(self) -> tuple[Message, ...]:
        return self.conversation or (Message("user", self.prompt, self.images),)

    def max_output(self, max_output_tokens: int | None) -> int:
        """The output budget sent (and reserved) for a model whose own cap is ``max_output_tokens``."""
        return self.max_tokens or default_max_tokens(max_output_tokens)

    @property
    def needs(self) -> frozenset[str]:
        """Capabilities a model must have: ``vision`` for images, ``tools`` for tool definitions."""
        return frozenset({*(("vision",) if self.all_images else ()), *(("tools",) if self.tools else ())})

    @property
    def all_images(self) -> tuple[ImagePart, ...]:
        """Every image the request carries, in the prompt or anywhere in the conversation."""
        return self.images + tuple(i for m in self.conversation for i in m.images)

    def dropped(self, rejects: frozenset[str]) -> tuple[str, ...]:
        """The parameters asked for that a model refuses (its catalog ``rejects``): they are left out."""
        asked = {*self.params, *(("temperature",) if self.temperature is not None else ())}
        return tuple(sorted(asked & rejects))


@dataclass(frozen=True, slots=True)
class Decision:
    """What follows a failed attempt: ``action`` is "retry", "rotate" or "fail"; the wait and why."""

    action: str
    wait_s: float
    reason: str


def decide(policy: RetryPolicy, attempt: int, info: ErrorInfo, elapsed_s: float, *, may_rotate: bool,
           other_key: bool) -> Decision:
    """The next step after failed attempt ``attempt``: rotate when another model or key can take it,
    else retry after the provider's wait (or our backoff) within attempts and deadline, else fail."""
    retry, wait, reason = policy.decide(attempt, info, elapsed_s)
    if (may_rotate or other_key) and attempt < policy.max_attempts:
        # the wait still cools the refusing scope down, so rotation comes back to it only after it
        return Decision("rotate", wait, "another model or key can take it now")
    return Decision("retry" if retry else "fail", wait, reason)


@functools.lru_cache(maxsize=4096)
def _estimate_messages(messages: tuple[Message, ...], system: str | None, encoding: str | None, listed: str) -> int:
    """Tokens of a request's messages and tool list (cached: a waiting request is looked at again and again)."""
    return estimate_request_tokens(messages, system=system, encoding=encoding)[0] + (
        estimate_text_tokens(listed, encoding) if listed else 0)


def _estimate(spec: RequestSpec, encoding: str | None) -> int:
    try:
        return _estimate_messages(spec.messages, spec.system, encoding, spec.listed_tools)
    except TypeError:  # a part that cannot be hashed (a tool call's arguments): count it without the cache
        return estimate_request_tokens(spec.messages, system=spec.system, encoding=encoding, tools=spec.tools)[0]


def default_max_tokens(max_output: int | None) -> int:
    """The output budget when the caller names none; it is sent, so TPM charges match the provider's."""
    return min(max_output or DEFAULT_MAX_TOKENS, DEFAULT_MAX_TOKENS)


#: Whose request the running task is answering (requested model, purpose, prompt index): set for
#: the length of one ``RequestPipeline.run``, read by every event it emits, callbacks included.
_WHO: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("nbfanout_request", default=None)


def chat_request(model: ModelSpec, spec: RequestSpec, messages: tuple[Message, ...] | None = None) -> ChatRequest:
    """``spec`` as one model is sent it (live or inside a batch): what the model refuses left out."""
    rejects = model.rejects
    return ChatRequest(model=model.model_id, messages=spec.messages if messages is None else messages,
                       system=spec.system, max_tokens=spec.max_output(model.max_output_tokens),
                       temperature=None if "temperature" in rejects else spec.temperature,
                       extra={k: v for k, v in spec.params.items() if k not in rejects},
                       tools=spec.tools, parallel_tools="parallel_tools" in model.capabilities)


class RequestPipeline:
    """Runs one request through its steps for a Fanout (its config, router, budgets, clock, events)."""

    def __init__(self, fx: Fanout) -> None:
        self.fx = fx
        self.router = fx.router
        self.clock = fx.clock
        self.policy = fx.retry
        self._input_ratio: dict[str, float] = {}  # reported / estimated prompt tokens, per model

    # --- the steps ---------------------------------------------------------------------------
    def options(self, order: list[str], spec: RequestSpec, run_budget: Budget) -> list[tuple[Choice, int, int]]:
        """Every (model, key) that could take the request, in search order, with its tokens."""
        out = []
        for choice in self.router.choices(order, spec.needs):
            prompt_tokens, tokens = self._tokens_for(choice, spec)
            if choice.model.context_window is not None and prompt_tokens > choice.model.context_window:
                continue
            if image_problem(choice.provider.id, spec.all_images, downscale=self.fx.downscale_images):
                continue  # the provider would refuse the images: explain() names the limit
            out.append((replace(choice, budgets=(*choice.budgets, run_budget)), prompt_tokens, tokens))
        return out

    def window_holds(self, name: str, spec: RequestSpec) -> float:
        """How many requests like ``spec`` one window of ``name``'s own limits holds (inf: not windowed)."""
        choices = self.router.choices([name], spec.needs)
        if not choices:
            return math.inf
        return self.router.model_budget(choices[0].model).window_holds(self._tokens_for(choices[0], spec)[1])

    def _messages_for(self, choice: Choice, spec: RequestSpec) -> tuple[tuple[Message, ...], tuple[str, ...]]:
        """The messages as sent to this provider (images made to fit its limits) and a note per image changed."""
        if not self.fx.downscale_images or not spec.all_images:
            return spec.messages, ()
        return fit_messages(choice.provider.id, spec.messages)

    def prompt_tokens(self, choice: Choice, spec: RequestSpec) -> int:
        """The prompt's tokens: our estimate, moved toward the usage the provider reports.

        While the model's tokenizer is still loading, a bound that never counts less.
        """
        if not self._counts_exactly(choice):
            return request_tokens_bound(spec.messages, system=spec.system, tools=spec.tools)
        return math.ceil(_estimate(spec, choice.model.tokenizer) * self._input_ratio.get(choice.model.name, 1.0))

    @staticmethod
    def _counts_exactly(choice: Choice) -> bool:
        return choice.model.tokenizer is None or encoder_ready(choice.model.tokenizer)

    def charged_prompt_tokens(self, choice: Choice, spec: RequestSpec) -> int:
        """The prompt's tokens as the provider charges them against TPM at admission.

        OpenAI-compatible providers charge "the estimated number of tokens based on the character
        count of your request" (developers.openai.com/api/docs/guides/rate-limits), whatever the
        tokenizer later reports: a quarter of the characters. Others charge the tokens themselves.
        """
        if choice.provider.wire == "openai":
            return math.ceil(spec.chars / 4)
        return self.prompt_tokens(choice, spec)

    async def wait_for_capacity(self, options: list[tuple[Choice, int, int]], spec: RequestSpec,
                                on_wait: Callable[[float, str], None], max_wait_s: float, rank: float = 0.0
                                ) -> tuple[Reservation, Choice, int]:
        """Reserve the first option all of whose budgets admit it; raises CapacityError past ``max_wait_s``.

        Tokens are estimated again at every look, so a request that waited is charged with what
        the answers so far taught about this model's token counts.
        """
        def estimate(choice: Choice) -> Callable[[], float]:
            return lambda: float(self._tokens_for(choice, spec)[1])

        reservation = await self.fx.budgets.acquire(
            [Option(c.budgets, t, estimate(c)) for c, _, t in options], max_wait_s, on_wait, rank)
        choice = options[reservation.index][0]
        return reservation, choice, int(reservation.tokens) - spec.max_output(choice.model.max_output_tokens)

    async def send_once(self, run: _Run, req_id: str, choice: Choice, spec: RequestSpec, timeout: float,
                        messages: tuple[Message, ...]) -> tuple[ChatResponse, bool]:
        """One call to the provider (or the cache) with ``messages``, the spec's as fitted to this provider
        (``_messages_for``); ProviderError on any failure."""
        request = chat_request(choice.model, spec, messages)
        cache = self.fx.cache
        if cache is not None:
            hit = cache.get(choice.model.name, request)
            if hit is not None:
                return hit, True
        chars = 0

        def on_delta(text: str) -> None:
            nonlocal chars
            chars += len(text)
            self._emit(TextDelta, request=req_id, model=choice.model.name, text=redact(text, choice.key.value),
                          chars_so_far=chars)

        endpoint = Endpoint(provider=choice.provider.id, base_url=choice.provider.base_url, api_key=choice.key.value,
                            params=dict(choice.provider.params),
                            headers=dict(choice.provider.headers))
        try:
            with run.http.lease() as client:
                response = await asyncio.wait_for(
                    adapter_for(choice.provider.wire).complete(client, endpoint, request, stream=spec.stream,
                                                               on_delta=on_delta if spec.stream else None,
                                                               timeout=timeout),
                    timeout=timeout + 1.0,
                )
        except asyncio.TimeoutError as exc:
            raise ProviderError(classify_error(choice.provider.id, None, None,
                                               f"ReadTimeout: no answer within {timeout:g}s")) from exc
        shown = redact(response.text, choice.key.value)  # an answer that echoes a key keeps only its last four
        if shown != response.text:
            response = replace(response, text=shown)
        if cache is not None:
            cache.put(choice.model.name, request, response)
        return response, False

    # --- the request -------------------------------------------------------------------------
    async def run(self, run: _Run, index: int, requested: str, candidates: list[str], spec: RequestSpec,
                  run_budget: Budget, tag: str = "", rank: float = 0.0, purpose: str = "answer") -> ModelResult:
        """Answer one request: wait, send, learn, decide, until done or failed.

        ``rank`` orders it for the run's slots (lower first; see ``core/limits.py``); ``purpose``
        (one of PURPOSES) goes into its events, with ``requested`` and ``index``, for the views.

        Whatever goes wrong inside (a bug, an input nothing checked) ends this request only, as a
        failure that says what happened: the other requests of a run and every answer received stand.
        """
        req_id = f"{index}:{requested}{tag}"
        token = _WHO.set({"requested": requested, "purpose": purpose, "prompt_index": index})
        try:
            return await self._run(run, index, requested, candidates, spec, run_budget, tag, rank)
        except Exception as exc:  # noqa: BLE001 - contained on purpose, reported below
            log.exception("request %s failed inside nbfanout", req_id)
            info = ErrorInfo(ErrorCategory.BAD_REQUEST, False,
                             f"nbfanout could not complete this request: {type(exc).__name__}: {exc}")
            return self.failed(req_id, requested, requested, info, list(run.attempts.get(req_id, [])), index, 0.0)
        finally:
            _WHO.reset(token)

    def _emit(self, cls: type[RequestEvent], *, request: str, **fields: Any) -> None:
        """Emit an event about ``request`` (the one this task is answering), saying whose it is."""
        self.fx._emit(cls, request=request, **(_WHO.get() or {}), **fields)

    async def _run(self, run: _Run, index: int, requested: str, candidates: list[str], spec: RequestSpec,
                   run_budget: Budget, tag: str, rank: float) -> ModelResult:
        fx = self.fx
        req_id = f"{index}:{requested}{tag}"
        if tag:  # batch jobs were announced when the batch was queued; extra requests (judging) now
            self._emit(ModelQueued, request=req_id, model=requested)
        attempts = run.attempts.setdefault(req_id, [])
        first = fx.config.models[candidates[0]]
        provider = fx.config.providers[first.provider]
        if len(candidates) == 1 and not provider.keys:
            info = ErrorInfo(ErrorCategory.MISSING_KEY, False,
                             f"no API key for {provider.id}: set {' or '.join(provider.key_vars)} "
                             f"(or api_key_env under [providers.{provider.id}] in nbfanout.toml)", provider=provider.id)
            return self.failed(req_id, requested, requested, info, attempts, index, 0.0)
        if len(candidates) == 1 and not provider.base_url:  # set up but not told where (an Azure resource)
            where = " or ".join(provider.endpoint_vars)
            info = ErrorInfo(ErrorCategory.MISSING_KEY, False,
                             f"no endpoint for {provider.id}: set {where + ' or ' if where else ''}base_url under "
                             f"[providers.{provider.id}] in nbfanout.toml (e.g. https://RESOURCE.openai.azure.com)",
                             provider=provider.id)
            return self.failed(req_id, requested, requested, info, attempts, index, 0.0)
        t_start = self.clock.now()
        last_failed: str | None = None
        last_info: ErrorInfo | None = None
        selected: str | None = None
        attempt_no = rotations = 0
        tried: set[str] = set()
        explored = False  # max_rotations reached: only models already tried remain candidates
        deadline = self.policy.deadline_s
        while True:
            elapsed = self.clock.now() - t_start
            if deadline is not None and elapsed >= deadline:
                info = last_info or ErrorInfo(ErrorCategory.TIMEOUT, False, f"deadline of {deadline:g}s passed before an answer")
                return self.failed(req_id, requested, selected or requested, info, attempts, index, elapsed)
            order = self.router.circular(candidates, last_failed)
            if explored:
                order = [m for m in order if m in tried]
            options = self.options(order, spec, run_budget)
            announced = False

            def on_wait(seconds: float, why: str, candidates: tuple[str, ...] = tuple(order)) -> None:
                nonlocal announced
                if not announced:  # once per wait, not on every wake-up
                    announced = True
                    self._emit(NoModelsAvailableEvent, request=req_id, candidates=candidates, wait_s=seconds, reason=why)

            max_wait = self.policy.max_wait_s
            if deadline is not None:
                max_wait = min(max_wait, max(0.0, deadline - elapsed))
            try:
                if not options:
                    raise CapacityError(math.inf, "no candidate can take it")
                reservation, choice, prompt_tokens = await self.wait_for_capacity(options, spec, on_wait, max_wait, rank)
            except CapacityError as exc:
                info = self.router.explain(candidates, spec, last_info, exc, self._tokens_for)
                return self.failed(req_id, requested, selected or requested, info, attempts, index,
                                   self.clock.now() - t_start)
            except SharedUnavailable as exc:  # the shared store went away ("fail"): nothing else is lost
                info = ErrorInfo(ErrorCategory.NETWORK, False, str(exc))
                return self.failed(req_id, requested, selected or requested, info, attempts, index,
                                   self.clock.now() - t_start)
            now = self.clock.now()
            for b in choice.budgets:
                lasted = b.recovered(now)
                if lasted is not None:
                    self._emit(ModelRecovered, request=req_id, model=choice.model.name, scope=f"{b.scope} {b.name}",
                             cooled_for_s=lasted)
            if attempts and attempts[-1].outcome != "ok":  # the wait that really happened
                attempts[-1] = replace(attempts[-1], wait_s=max(0.0, self.clock.now() - run.t0 - attempts[-1].end_s))
            model = choice.model
            tried.add(model.name)
            if model.name != selected:
                if selected is not None:
                    self._emit(ModelRotation, request=req_id, from_model=selected, to_model=model.name,
                             reason=last_info.category.value if last_info else "busy")
                selected = model.name
                self._emit(ModelSelected, request=req_id, model=model.name, key_id=choice.key_id)
            attempt_no += 1
            result, info, others = await self._attempt(run, req_id, requested, index, choice, spec, reservation,
                                                       prompt_tokens, attempt_no, attempts, t_start, deadline)
            if result is not None:
                return result
            assert info is not None
            last_info = info
            decision = decide(
                self.policy, attempt_no, info, self.clock.now() - t_start,
                may_rotate=len(candidates) > 1 and info.category in ROTATE_ON and rotations < fx.config.defaults.max_rotations,
                other_key=info.category in KEY_FAULTS and self.router.has_other_key(choice),
            )
            # A refusal with no stated wait while other requests to the provider were running means
            # they hold the capacity (the seeds' free R1 behind a shared upstream): wait for those to
            # finish, up to the backoff cap, rather than guessing a time and hammering.
            drain = {f for f in others if not f.done()} if (
                info.category == ErrorCategory.RATE_LIMIT and info.retry_after_s is None
                and decision.action == "retry") else set()
            wait = self.policy.max_backoff_s if drain else decision.wait_s
            self.router.learn_failure(choice, info, reservation, 0.0 if drain else wait, self._emit, req_id)
            if decision.action == "rotate":
                rotations += len(candidates) > 1 and info.category in ROTATE_ON
                last_failed = model.name if len(candidates) > 1 else None
            else:
                last_failed = None
                explored = explored or (len(candidates) > 1 and info.category in ROTATE_ON)
            attempts[-1] = replace(attempts[-1], wait_s=wait if decision.action == "retry" else 0.0)
            if decision.action == "fail":
                return self.failed(req_id, requested, model.name, info, attempts, index, self.clock.now() - t_start)
            if decision.action == "retry":
                self._emit(RetryScheduled, request=req_id, model=model.name, attempt=attempt_no, wait_s=wait,
                         category=info.category.value,
                         reason="until the provider's busy requests finish" if drain else decision.reason)
                if drain:
                    await asyncio.wait(drain, timeout=wait)
                elif info.category not in _WAIT_IN_ADMISSION:
                    await self.clock.sleep(wait)

    def _tokens_for(self, choice: Choice, spec: RequestSpec) -> tuple[int, int]:
        """(prompt tokens, for the context window; the TPM charge: charged prompt + max output)."""
        return (self.prompt_tokens(choice, spec),
                self.charged_prompt_tokens(choice, spec) + spec.max_output(choice.model.max_output_tokens))

    async def _attempt(self, run: _Run, req_id: str, requested: str, index: int, choice: Choice, spec: RequestSpec,
                       reservation: Reservation, prompt_tokens: int, attempt_no: int, attempts: list[Attempt],
                       t_start: float, deadline: float | None
                       ) -> tuple[ModelResult | None, ErrorInfo | None, set[asyncio.Future[None]]]:
        """Send under the reservation; on success settle and return the result, else the error."""
        fx = self.fx
        model = choice.model
        run.in_flight += 1
        in_flight = run.in_flight
        start = self.clock.now()
        self._emit(RequestStarted, request=req_id, model=model.name, key_id=choice.key_id, attempt=attempt_no,
                 in_flight=in_flight)
        finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        busy = run.busy.setdefault(choice.provider.id, set())
        others = set(busy)
        busy.add(finished)
        response: ChatResponse | None = None
        info: ErrorInfo | None = None
        rate = None
        cached = False
        messages, downscaled = self._messages_for(choice, spec)
        async with reservation:
            try:
                left = None if deadline is None else max(0.001, deadline - (start - t_start))
                limit = min(x for x in (spec.timeout or self.policy.timeout_s, left) if x is not None)
                sending = on_sent.set(reservation.sent)
                try:
                    response, cached = await self.send_once(run, req_id, choice, spec, limit, messages)
                finally:
                    on_sent.reset(sending)
                rate = response.rate
            except ProviderError as exc:
                info, rate = exc.info, exc.rate
            except asyncio.CancelledError:
                attempts.append(Attempt(model.name, choice.key_id, start - run.t0, self.clock.now() - run.t0,
                                        ErrorCategory.CANCELLED.value, message="cancelled while in flight",
                                        in_flight=in_flight))
                raise
            finally:
                busy.discard(finished)
                finished.set_result(None)
                run.in_flight -= 1
            if rate is not None and not cached:
                self.router.learn_headers(choice, rate, reservation, refused=info is not None)
            if response is not None:
                max_output = spec.max_output(model.max_output_tokens)
                # what the provider charged at admission is what it counts, except where it counts usage
                charged_input = response.usage.input_tokens if choice.provider.wire != "openai" else prompt_tokens
                reservation.settle(charged_input, response.usage.output_tokens, max_output, prompt_tokens)
                self.router.learn_success(choice, None if cached else self.clock.now() - start)
                if self._counts_exactly(choice):  # a bound says nothing about how our counts compare
                    self._reconcile(model.name, self.prompt_tokens(choice, spec), response.usage.input_tokens)
        end = self.clock.now()
        if response is None:
            assert info is not None
            attempts.append(Attempt(model.name, choice.key_id, start - run.t0, end - run.t0, info.category.value,
                                    info.status, info.message, in_flight=in_flight))
            return None, info, others
        attempts.append(Attempt(model.name, choice.key_id, start - run.t0, end - run.t0, "ok", response.status,
                                in_flight=in_flight))
        cost = model.cost(response.usage.input_tokens, response.usage.output_tokens)
        saved, cost = (cost, 0.0 if cost is not None else None) if cached else (None, cost)  # a cached answer is free
        result = ModelResult(
            requested=requested, model=model.name, ok=True, text=response.text,
            input_tokens=response.usage.input_tokens, output_tokens=response.usage.output_tokens, cost=cost,
            latency_s=end - t_start, finish_reason=response.finish_reason, attempts=tuple(attempts),
            prompt_index=index, cached=cached, dropped_params=spec.dropped(model.rejects), saved_cost=saved,
            tool_calls=response.tool_calls, downscaled=downscaled,
        )
        self._emit(ModelCompleted, request=req_id, model=model.name, latency_s=end - t_start,
                 input_tokens=result.input_tokens, output_tokens=result.output_tokens, cost=cost, attempts=len(attempts))
        return result, None, others

    def _reconcile(self, model: str, estimated: int, reported: int) -> None:
        """Move the model's estimate toward what the provider counts (EWMA of reported / estimated)."""
        if estimated <= 0 or reported <= 0:
            return
        ratio = self._input_ratio.get(model, 1.0)
        observed = min(4.0, max(0.25, reported / (estimated / ratio)))
        self._input_ratio[model] = 0.7 * ratio + 0.3 * observed if model in self._input_ratio else observed

    def failed(self, req_id: str, requested: str, model: str, info: ErrorInfo, attempts: list[Attempt], index: int,
               latency: float) -> ModelResult:
        self._emit(ModelFailed, request=req_id, model=model, category=info.category.value,
                      status=info.status, message=info.message, attempts=len(attempts))
        return ModelResult(requested=requested, model=model, ok=False, latency_s=latency, attempts=tuple(attempts),
                           error=info, prompt_index=index)
