"""The sandbox as an ASGI app (Starlette): provider routes, the request pipeline, /_sandbox routes.

Routes (``{provider}`` is a scenario provider id; its wire format decides which apply)::

    POST /{provider}/v1/chat/completions            OpenAI-compatible chat (stream=true: SSE)
    POST /{provider}/v1/audio/transcriptions        OpenAI-compatible transcription (multipart)
    GET  /{provider}/v1/models                      model list (OpenAI or Anthropic shape)
    POST /{provider}/v1/messages                    Anthropic Messages (stream=true: SSE)
    POST /{provider}/v1beta/models/{model}:generateContent
    POST /{provider}/v1beta/models/{model}:streamGenerateContent[?alt=sse]
    GET  /{provider}/v1beta/models                  Gemini model list
    Batch APIs, for providers with a [batch] table (batches.py has the details):
    POST /{provider}/v1/files, GET .../v1/files[/{id}[/content]], DELETE .../v1/files/{id}
    POST /{provider}/v1/batches, GET .../v1/batches[/{id}], POST .../v1/batches/{id}/cancel
         (OpenAI's bodies, or OpenRouter's inline ones for style openrouter)
    POST /{provider}/v1/batch/jobs, GET .../v1/batch/jobs[/{id}], POST .../v1/batch/jobs/{id}/cancel (Mistral)
    POST /{provider}/v1/messages/batches, GET .../v1/messages/batches[/{id}[/results]],
         POST .../v1/messages/batches/{id}/cancel, DELETE .../v1/messages/batches/{id}
    POST /{provider}/v1beta/models/{model}:batchGenerateContent, GET .../v1beta/batches[/{id}],
         POST .../v1beta/batches/{id}:cancel, DELETE .../v1beta/batches/{id}
    GET  /_sandbox/stats                            the ledger (see ledger.py), batches included
    POST /_sandbox/reset                            clear the ledger, limit windows, fault counters, batches and files
    GET  /_sandbox/scenario                         the scenario, keys masked to their last four chars

Every model call goes through one pipeline, in the order a provider checks things:
key (401) -> request body (400) -> model (404) -> key out of credit -> rejecting faults
-> limits (429, nothing counted) -> admission (counted in every window it touches,
in flight) -> busy-upstream rules -> failing faults -> the answer after its latency
-> settlement (``tokens_counted = "usage"``: the TPM charge shrinks to the real output).
A request that offers tools, unless its conversation ends with a tool result, is answered
with one tool call (``wire.plan_tool_call``) instead of text, through the same pipeline.

The clock is injectable (``clock``, default ``time.monotonic``) so enforcement can be
tested with a fake clock; latencies are slept with ``asyncio.sleep`` times ``time_scale``
(0 turns sleeping off).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from types import ModuleType
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from nbfanout.sandbox import batches, wire_anthropic, wire_gemini, wire_openai
from nbfanout.sandbox.faults import FaultBook
from nbfanout.sandbox.ledger import Ledger, LedgerCharge
from nbfanout.sandbox.limits import Charge, Limiter, Pool, Rejection, WindowView
from nbfanout.sandbox.scenario import (
    Fault,
    KeySpec,
    ModelSpec,
    ProviderSpec,
    Scenario,
    load_scenario,
    mask_key,
    parse_scenario,
)
from nbfanout.sandbox.text import chunk_text, jitter_draw, transcript_text
from nbfanout.sandbox.wire import (
    BadRequest,
    CallContext,
    ChatCall,
    Denial,
    ErrorReply,
    ToolAnswer,
    Usage,
    compose_answer,
    rejected_parameter,
)

__all__ = ["RAW_SEND_KEY", "RawSendCapture", "SandboxState", "create_app"]

WIRES: dict[str, ModuleType] = {"openai": wire_openai, "anthropic": wire_anthropic, "gemini": wire_gemini,
                                 "azure": wire_openai}

#: Where RawSendCapture leaves the server's own ``send`` so a "drop" fault can reach the socket.
RAW_SEND_KEY = "nbfanout.sandbox.raw_send"


class SandboxState:
    """Everything one sandbox remembers: scenario, clock, limit pools, ledger, fault counters."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        clock: Callable[[], float] | None = None,
        time_scale: float | None = None,
        wall: Callable[[], float] | None = None,
    ) -> None:
        self.scenario = scenario if time_scale is None else scenario.with_time_scale(time_scale)
        self.clock = clock or time.monotonic
        self.wall = wall or time.time
        self.limiter = Limiter(self.scenario)
        self.ledger = Ledger()
        self.faults = FaultBook(self.scenario, self.clock)
        self.batches = batches.BatchBook(self.scenario, self.clock, self.wall, self.ledger)
        self._ids = 0
        self._draws: Counter[tuple[str, str]] = Counter()

    def __repr__(self) -> str:
        return f"SandboxState({self.scenario.name!r}, {self.ledger!r}, {self.limiter!r})"

    @property
    def time_scale(self) -> float:
        return self.scenario.time_scale

    async def sleep(self, seconds: float) -> None:
        """Sleep a scenario duration, scaled by ``time_scale``."""
        scaled = seconds * self.time_scale
        if scaled > 0:
            await asyncio.sleep(scaled)

    def next_id(self) -> str:
        self._ids += 1
        return f"{self._ids:06d}{self.scenario.seed & 0xFFFF:04x}"

    def jitter(self, provider: str, model: str, prompt: str) -> float:
        """The jitter draw for this model's next request (seeded; depends on request order)."""
        self._draws[(provider, model)] += 1
        return jitter_draw(self.scenario.seed, f"{provider}/{model}", prompt, self._draws[(provider, model)])

    def reset(self) -> None:
        self.limiter.reset()
        self.ledger.reset()
        self.faults.reset()
        self.batches.reset()
        self._draws.clear()

    def stats(self) -> dict[str, Any]:
        out = self.ledger.snapshot()
        out["scenario"] = self.scenario.name
        out["time_scale"] = self.time_scale
        out["clock"] = self.clock()
        out["limits"] = {
            pool.id.label: {"limits": dict(pool.limits.items()), "limiter": pool.shape, "in_flight": pool.in_flight}
            for pool in self.limiter.pools.values()
        }
        # Window maxima are the sliding window's bound; the shape says which bound applies.
        for pool in self.limiter.pools.values():
            if pool.id.label in out["pools"]:
                out["pools"][pool.id.label]["limiter"] = pool.shape
        empty = {"batches": 0, "failed_validation": 0, "requests": 0, "models": {}}
        for pid, live in self.batches.stats().items():
            out["batches"][pid] = {**out["batches"].get(pid, empty), **live}
        return out


class _Lease:
    """A request's place in the in-flight counts (pools and ledger); released exactly once."""

    def __init__(self, state: SandboxState, pools: list[Pool], entities: list[tuple[str, str]]) -> None:
        self.state, self.pools, self.entities = state, pools, entities
        self.generation = state.ledger.generation
        self.released = False
        Limiter.enter(pools)
        state.ledger.enter(entities)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        Limiter.leave(self.pools)
        if self.state.ledger.generation == self.generation:  # a reset forgot this request
            self.state.ledger.leave(self.entities)


class _Drop(Response):
    """Close the connection without any response (a "drop" fault).

    Under uvicorn the socket is aborted, so the client sees "Server disconnected without
    sending a response"; in-process (httpx.ASGITransport) there is no socket, so the same
    ``httpx.RemoteProtocolError`` a client would see is raised.
    """

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get(RAW_SEND_KEY)
        transport = getattr(getattr(raw, "__self__", None), "transport", None)
        if transport is not None and hasattr(transport, "abort"):
            transport.abort()
            # Let the server see connection_lost before this app returns, so it sends nothing.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            return
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")


class RawSendCapture:
    """Outermost ASGI wrapper: records the server's ``send`` in the scope (used by drop faults)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[RAW_SEND_KEY] = send
        await self.app(scope, receive, send)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status_code=status, headers=headers, media_type="application/json")


def _unknown_provider(state: SandboxState, pid: str) -> Response:
    known = ", ".join(p.id for p in state.scenario.providers)
    msg = f"Unknown sandbox provider {pid!r} in scenario {state.scenario.name!r} (known: {known})."
    return _json({"error": {"message": msg, "type": "invalid_request_error", "code": "unknown_url"}}, 404)


def _wrong_wire(provider: ProviderSpec, route_wire: str) -> Response:
    msg = f"Provider {provider.id!r} speaks the {provider.wire} wire format; this is a {route_wire} route."
    return _json({"error": {"message": msg, "type": "invalid_request_error", "code": "unknown_url"}}, 404)


class _Call:
    """One model call through the pipeline; holds what the steps share."""

    def __init__(self, state: SandboxState, request: Request, provider: ProviderSpec, mod: ModuleType) -> None:
        self.state, self.request, self.provider, self.mod = state, request, provider, mod
        self.key: str | None = mod.extract_key(request.headers, request.query_params)
        self.keyspec: KeySpec | None = provider.key(self.key)
        self.model: ModelSpec | None = None
        self.pools: list[Pool] = []
        self.views: dict[str, WindowView] = {}
        self.entities: list[tuple[str, str]] = []
        self.ctx: CallContext | None = None
        self.charge: Charge | None = None
        self.ledger_charge: LedgerCharge | None = None

    def begin(self, model_id: str | None, max_tokens: int | None) -> None:
        """Record the request and build its context once the model id is known (or not)."""
        p = self.provider
        self.model = p.model(model_id) if model_id else None
        key_id = self.keyspec.key_id if self.keyspec is not None else None
        self.entities = Ledger.entities(p.id, self.model.id if self.model else None, key_id)
        if self.keyspec is not None and self.model is not None:
            self.pools = self.state.limiter.pools_for(p, self.model.id, self.keyspec.key_id)
            self.entities += [("pools", pool.id.label) for pool in self.pools]
        self.state.ledger.request(self.entities)
        self.ctx = CallContext(
            provider=p,
            model=model_id,
            key_id=key_id or mask_key(self.key),
            request_id=self.state.next_id(),
            created=int(self.state.wall()),
            wall_now=self.state.wall(),
            max_tokens=max_tokens,
        )

    def refuse(self, denial: Denial, *, fault: str | None = None) -> Response:
        """Record and render a refusal in the provider's style (with its rate headers)."""
        assert self.ctx is not None
        self.state.ledger.reject(self.entities, denial.reason, fault=fault)
        if self.pools and not self.views:
            self.views = Limiter.views(self.pools, self.state.clock())
        reply: ErrorReply = self.mod.render_error(self.ctx, denial, self.key)
        headers = self.mod.rate_headers(self.ctx, self.views, denial) if denial.reason not in ("auth", "invalid_key") else {}
        return Response(reply.content(), status_code=reply.status, headers=headers, media_type="application/json")

    def gate(self, bad: BadRequest | None, expected_kind: str) -> Response | None:
        """Key, body, model and credit checks; a Response if the call stops here."""
        if self.keyspec is None or self.keyspec.invalid:
            return self.refuse(Denial("auth", missing_key=self.key is None))
        if bad is not None:
            return self.refuse(Denial("bad_request", message=bad.message, param=bad.param, code=bad.code))
        assert self.ctx is not None
        if self.model is None or self.model.kind != expected_kind:
            return self.refuse(Denial("not_found", message=self.ctx.model))
        if self.keyspec.quota_exhausted:
            return self.refuse(Denial("quota_exhausted"))
        return None

    def fault_denial(self, fault: Fault) -> Denial:
        """A rejecting fault as a Denial; a burst quotes the tightest real RPM (else 60)."""
        left = self.state.faults.period_left(fault)
        if fault.kind == "rate_limit_burst":
            rpm = self.views.get("rpm")
            limit = rpm.limit if rpm is not None else 60
            wait = fault.retry_after_s if fault.retry_after_s is not None else (None if fault.upstream else left or 1.0)
            return Denial(
                "rate_limit_burst",
                kind="rpm",
                limit=limit,
                used=limit,
                requested=1,
                retry_after_s=wait,
                upstream=fault.upstream,
                message=fault.message,
            )
        return Denial(fault.kind, retry_after_s=fault.retry_after_s if fault.retry_after_s is not None else left, message=fault.message)

    async def admit(self, tokens: int, audio_s: int = 0) -> Response | _Lease:
        """Rejecting faults, then the limits; on success the request is in flight (a lease)."""
        assert self.model is not None
        now = self.state.clock()
        self.views = Limiter.views(self.pools, now)
        fault = self.state.faults.pick(self.provider, self.model, "pre")
        if fault is not None:
            if fault.delay_s:
                await self.state.sleep(fault.delay_s)
            return self.refuse(self.fault_denial(fault), fault=fault.kind)
        rej = Limiter.try_admit(self.pools, now, tokens, audio_s)
        if isinstance(rej, Rejection):
            if self.model.latency.refusal_ms:  # decided at arrival, answered a round trip later
                await self.state.sleep(self.model.latency.refusal_ms / 1000.0)
            return self.refuse(
                Denial(
                    rej.kind,
                    kind=rej.kind,
                    limit=rej.limit,
                    used=rej.used,
                    requested=rej.requested,
                    retry_after_s=rej.retry_after_s,
                    scope=rej.pool.scope,
                    pool_name=rej.pool.name if rej.pool.scope == "group" else None,
                    too_large=rej.too_large,
                )
            )
        self.charge = rej
        self.ledger_charge = self.state.ledger.admit(self.entities, now, tokens)
        self.views = Limiter.views(self.pools, now)
        return _Lease(self.state, self.pools, self.entities)

    async def after_admission(self) -> tuple[Response | None, Fault | None, str | None]:
        """The busy-upstream check, then the post-admission fault: (refusal, fault, and the finish of an
        answer that comes back empty: "stop", "content_filter", or None)."""
        stop = await self.busy_upstream()
        if stop is not None:
            return stop, None, None
        assert self.model is not None
        fault = self.state.faults.pick(self.provider, self.model, "post")
        if fault is not None and fault.kind in ("empty_answer", "content_filter"):
            self.state.ledger.fault(self.entities, fault.kind)
            return None, None, "stop" if fault.kind == "empty_answer" else "content_filter"
        return None, fault, None

    async def busy_upstream(self) -> Response | None:
        """``while_busy`` rules: after the upstream queue time, fail if another listed request runs."""
        assert self.model is not None
        for rule in FaultBook.busy_rules(self.model):
            await self.state.sleep(rule.after_ms / 1000.0)
            others = sum(self.state.ledger.in_flight("models", f"{self.provider.id}/{m}") for m in rule.while_busy)
            if self.model.id in rule.while_busy:
                others -= 1  # this request itself
            if others > 0:
                return self.refuse(self.fault_denial(rule), fault=rule.kind)
        return None

    def accept(self, charged_tokens: int | None = None) -> None:
        """An answer completed; under ``tokens_counted = "usage"`` its TPM charge settles to ``charged_tokens``."""
        self.state.ledger.accept(self.entities)
        if charged_tokens is not None and self.provider.counts_usage and self.charge is not None:
            back = Limiter.settle(self.charge, charged_tokens, self.state.clock())
            if self.ledger_charge is not None:
                self.state.ledger.settle(self.ledger_charge, back)


def _latency_split(model: ModelSpec, n_out: int, total: float) -> tuple[float, float]:
    """(time to first token, time per remaining token) for a total latency."""
    lat = model.latency
    raw = lat.base_ms + lat.per_output_token_ms * n_out
    if raw <= 0 or n_out <= 0:
        return total, 0.0
    first = total * lat.base_ms / raw
    return first, (total - first) / n_out


async def _chat(request: Request, route_wire: str, gemini_target: str | None = None) -> Response:
    state: SandboxState = request.app.state.sandbox
    provider = state.scenario.provider(request.path_params["provider"])
    if provider is None:
        return _unknown_provider(state, request.path_params["provider"])
    if provider.wire != route_wire:
        return _wrong_wire(provider, route_wire)
    mod = WIRES[provider.wire]
    c = _Call(state, request, provider, mod)

    bad: BadRequest | None = None
    call: ChatCall | None = None
    model_id: str | None = None
    stream = False
    stream_mode = "sse"
    try:
        if route_wire == "gemini":
            assert gemini_target is not None
            model_id, method = wire_gemini.split_target(gemini_target)
            if method not in ("generateContent", "streamGenerateContent"):
                raise BadRequest(f"Method {method!r} is not supported by the sandbox.")
            stream = method == "streamGenerateContent"
            stream_mode = "sse" if request.query_params.get("alt") == "sse" else "array"
        raw = await request.body()
        try:
            body = json.loads(raw or b"null")
        except json.JSONDecodeError as exc:
            raise BadRequest(f"Invalid JSON payload received. {exc.msg} at position {exc.pos}.") from exc
        if route_wire == "azure":  # the deployment in the URL is the model; an api-version is required
            if not request.query_params.get("api-version"):
                raise BadRequest("Missing required query parameter 'api-version'.", "api-version")
            if isinstance(body, dict):
                body = {**body, "model": request.path_params["deployment"]}
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            model_id = body["model"]
        if route_wire == "anthropic":
            wire_anthropic.check_version(request.headers)
        call = wire_gemini.parse_chat(body, model_id or "", stream) if route_wire == "gemini" else mod.parse_chat(body)
        model_id = call.model
    except BadRequest as exc:
        bad = exc
    c.begin(model_id, call.max_tokens if call else None)
    if bad is None and c.model is not None and isinstance(body, dict):
        bad = rejected_parameter(c.model, body)
    stop = c.gate(bad, "chat")
    if stop is not None:
        return stop
    assert call is not None and c.model is not None and c.ctx is not None
    model, ctx = c.model, c.ctx

    # Everything about the answer is known at arrival: a tool call or text, length, latency.
    answer = compose_answer(call, model, provider.id, state.scenario.seed)
    text, tool, usage = answer.text, answer.tool, answer.usage
    input_tokens, n_out = usage.input_tokens, usage.output_tokens
    latency = model.latency.seconds(n_out, state.jitter(provider.id, model.id, call.prompt))
    budget_tokens = input_tokens + (call.max_tokens if call.max_tokens is not None else model.output_tokens[1])

    admitted = await c.admit(budget_tokens)
    if isinstance(admitted, Response):
        return admitted
    lease = admitted
    handed_off = False
    try:
        stop, fault, empty = await c.after_admission()
        if stop is not None:
            return stop
        if empty:
            text, usage, tool = "", Usage(input_tokens, 0, empty), None
        if fault is not None and fault.kind != "slow":
            # A broken body arrives when the answer would have; a 500 or a drop after the first-token time.
            default = latency if fault.kind == "malformed" else model.latency.base_ms / 1000.0
            await state.sleep(fault.delay_s if fault.delay_s is not None else default)
            if fault.kind == "drop":
                state.ledger.reject(c.entities, "drop", fault="drop")
                return _Drop()
            if fault.kind == "malformed":
                state.ledger.reject(c.entities, "malformed", fault="malformed")
                headers = mod.rate_headers(ctx, c.views)
                if call.stream and stream_mode == "sse":
                    return Response(mod.malformed_stream(ctx, call), headers=headers, media_type="text/event-stream")
                return Response(mod.malformed_body(ctx), headers=headers, media_type="application/json")
            return c.refuse(c.fault_denial(fault), fault=fault.kind)
        if fault is not None:  # slow: the answer comes, but only after delay_s
            state.ledger.fault(c.entities, "slow")
            latency = max(latency, fault.delay_s or 0.0)
        headers = mod.rate_headers(ctx, c.views)
        if not call.stream or (route_wire == "gemini" and stream_mode == "array"):
            if not await _sleep_unless_client_leaves(request, state, latency):
                state.ledger.reject(c.entities, "client_closed")
                return Response(status_code=499)  # nobody is listening; the lease is released below
            c.accept(usage.total_tokens)
        if not call.stream:
            body_out = mod.render_success(ctx, text, usage) if tool is None else mod.render_tool_call(ctx, tool, usage)
            return _json(body_out, headers=headers)
        if route_wire == "gemini" and stream_mode == "array":
            body_text = wire_gemini.array_body(ctx, chunk_text(text), usage, tool)
            return Response(body_text, headers=headers, media_type="application/json")
        first, per_token = _latency_split(model, n_out, latency)
        handed_off = True
        events = _stream_events(mod, ctx, call, text, tool, usage, first, per_token)
        return StreamingResponse(_stream(c, lease, call, events, usage), headers=headers, media_type="text/event-stream")
    finally:
        if not handed_off:
            lease.release()


def _stream_events(
    mod: ModuleType,
    ctx: CallContext,
    call: ChatCall,
    text: str,
    tool: ToolAnswer | None,
    usage: Usage,
    first: float,
    per_token: float,
) -> list[tuple[float, bytes]]:
    """A stream's events before its tail, each with the wait before it: the head after the
    first-token time, then the text's pieces (or the tool call's fragments) paced per token."""
    if tool is not None:
        head, *deltas = mod.stream_tool_call(ctx, call, tool, usage.input_tokens)
        per_delta = per_token * usage.output_tokens / max(1, len(deltas))
        return [(first, head)] + [(per_delta, d) for d in deltas]
    head = wire_anthropic.stream_head(ctx, call, usage.input_tokens) if mod is wire_anthropic else mod.stream_head(ctx, call)
    pieces = chunk_text(text)
    return [(first, head)] + [(per_token * len(p.split()), mod.stream_delta(ctx, call, p)) for p in pieces]


async def _stream(c: _Call, lease: _Lease, call: ChatCall, events: list[tuple[float, bytes]], usage: Usage) -> AsyncIterator[bytes]:
    """The SSE body: the events, each after its wait (paced like the model), then the tail; releases the lease."""
    assert c.ctx is not None
    mod, ctx, state = c.mod, c.ctx, c.state
    finished = False
    try:
        for wait, data in events:
            await state.sleep(wait)
            if data:
                yield data
        yield mod.stream_tail(ctx, call, usage)
        finished = True
        c.accept(usage.total_tokens)
    finally:
        if not finished:
            state.ledger.reject(c.entities, "client_closed")
        lease.release()


async def _sleep_unless_client_leaves(request: Request, state: SandboxState, seconds: float) -> bool:
    """Wait out a simulated latency; False as soon as the client disconnects (a cancelled request)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    sleeper = asyncio.ensure_future(state.sleep(seconds))
    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({sleeper, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, watcher):
            task.cancel()
        await asyncio.gather(sleeper, watcher, return_exceptions=True)
    return sleeper in done


async def openai_chat(request: Request) -> Response:
    return await _chat(request, "openai")


async def azure_chat(request: Request) -> Response:
    return await _chat(request, "azure")


async def anthropic_messages(request: Request) -> Response:
    return await _chat(request, "anthropic")


async def gemini_post(request: Request) -> Response:
    rest = request.path_params["rest"]
    model, _, method = rest.rpartition(":")
    if method == "batchGenerateContent" and model:
        return await batches.gemini_create(request, model)
    return await _chat(request, "gemini", rest)


async def openai_transcriptions(request: Request) -> Response:
    state: SandboxState = request.app.state.sandbox
    provider = state.scenario.provider(request.path_params["provider"])
    if provider is None:
        return _unknown_provider(state, request.path_params["provider"])
    if provider.wire != "openai":
        return _wrong_wire(provider, "openai")
    c = _Call(state, request, provider, wire_openai)
    bad: BadRequest | None = None
    fields: dict[str, Any] = {}
    try:
        fields = wire_openai.parse_transcription(request.headers.get("content-type", ""), await request.body())
    except BadRequest as exc:
        bad = exc
    c.begin(fields.get("model"), None)
    stop = c.gate(bad, "transcription")
    if stop is not None:
        return stop
    assert c.model is not None and c.ctx is not None
    model, ctx = c.model, c.ctx
    seed = state.scenario.seed
    text = transcript_text(seed, model.id, fields["filename"], fields["file"], fields.get("language"))
    n_words = len(text.split())
    latency = model.latency.seconds(n_words, state.jitter(provider.id, model.id, fields["filename"]))
    duration_s = wire_openai.audio_duration_s(fields["file"])
    try:
        body, media = wire_openai.transcription_reply(fields, text, duration_s=duration_s)
    except BadRequest as exc:
        return c.refuse(Denial("bad_request", message=exc.message, param=exc.param))
    # Audio takes requests and whole seconds of audio (ash / asd), not tokens, of a model's budget.
    admitted = await c.admit(0, audio_s=math.ceil(duration_s))
    if isinstance(admitted, Response):
        return admitted
    lease = admitted
    try:
        stop, fault, empty = await c.after_admission()
        if stop is not None:
            return stop
        if empty:
            body, media = wire_openai.transcription_reply(fields, "", duration_s=duration_s)
        if fault is not None and fault.kind != "slow":
            await state.sleep(fault.delay_s if fault.delay_s is not None else latency)
            if fault.kind == "drop":
                state.ledger.reject(c.entities, "drop", fault="drop")
                return _Drop()
            if fault.kind == "malformed":
                state.ledger.reject(c.entities, "malformed", fault="malformed")
                return Response('{"text": "Sandbox transcr', media_type="application/json")
            return c.refuse(c.fault_denial(fault), fault=fault.kind)
        if fault is not None:
            state.ledger.fault(c.entities, "slow")
            latency = max(latency, fault.delay_s or 0.0)
        await state.sleep(latency)
        c.accept()
        headers = wire_openai.rate_headers(ctx, c.views)
        if isinstance(body, str):
            return Response(body, headers=headers, media_type=media)
        return _json(body, headers=headers)
    finally:
        lease.release()


async def list_models(request: Request) -> Response:
    """GET models: checks the key (a cheap validity probe, as ``nbfanout doctor`` uses it)."""
    state: SandboxState = request.app.state.sandbox
    provider = state.scenario.provider(request.path_params["provider"])
    if provider is None:
        return _unknown_provider(state, request.path_params["provider"])
    if "/v1beta/" in request.url.path:
        route_wire = "gemini"
    elif request.url.path.endswith("/openai/models"):
        route_wire = "azure"
    else:
        route_wire = provider.wire if provider.wire in ("openai", "anthropic") else "openai or anthropic"
    if provider.wire != route_wire:
        return _wrong_wire(provider, route_wire)
    mod = WIRES[provider.wire]
    key = mod.extract_key(request.headers, request.query_params)
    keyspec = provider.key(key)
    created = int(state.wall())
    if keyspec is None or keyspec.invalid:
        ctx = CallContext(provider, None, mask_key(key), state.next_id(), created, state.wall())
        reply: ErrorReply = mod.render_error(ctx, Denial("auth", missing_key=key is None), key)
        return Response(reply.content(), status_code=reply.status, media_type="application/json")
    return _json(mod.models_list(provider, created))


async def sandbox_stats(request: Request) -> Response:
    return _json(request.app.state.sandbox.stats())


async def sandbox_reset(request: Request) -> Response:
    request.app.state.sandbox.reset()
    return _json({"ok": True})


async def sandbox_scenario(request: Request) -> Response:
    return _json(request.app.state.sandbox.scenario.public_dict())


async def sandbox_health(request: Request) -> Response:
    state: SandboxState = request.app.state.sandbox
    return _json({"ok": True, "scenario": state.scenario.name})


def create_app(
    scenario: Scenario | str | Mapping[str, Any] = "seed15",
    *,
    clock: Callable[[], float] | None = None,
    time_scale: float | None = None,
    wall: Callable[[], float] | None = None,
) -> Starlette:
    """The sandbox ASGI app for ``scenario`` (a Scenario, built-in name, TOML path or schema dict).

    ``app.state.sandbox`` is its SandboxState. ``clock`` replaces ``time.monotonic`` for
    limit windows and the ledger; ``time_scale`` overrides the scenario's (0: no sleeping).
    """
    if isinstance(scenario, Mapping):
        sc = parse_scenario(scenario, source="<dict scenario>")
    else:
        sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    routes = [
        Route("/_sandbox/stats", sandbox_stats, methods=["GET"]),
        Route("/_sandbox/reset", sandbox_reset, methods=["POST"]),
        Route("/_sandbox/scenario", sandbox_scenario, methods=["GET"]),
        Route("/_sandbox/health", sandbox_health, methods=["GET"]),
        Route("/{provider}/v1/chat/completions", openai_chat, methods=["POST"]),
        Route("/{provider}/openai/deployments/{deployment}/chat/completions", azure_chat, methods=["POST"]),
        Route("/{provider}/v1/audio/transcriptions", openai_transcriptions, methods=["POST"]),
        Route("/{provider}/v1/models", list_models, methods=["GET"]),
        Route("/{provider}/openai/models", list_models, methods=["GET"]),
        Route("/{provider}/v1/messages", anthropic_messages, methods=["POST"]),
        Route("/{provider}/v1beta/models", list_models, methods=["GET"]),
        Route("/{provider}/v1beta/models/{rest:path}", gemini_post, methods=["POST"]),
        *batches.ROUTES,
    ]
    app = Starlette(routes=routes)
    app.state.sandbox = SandboxState(sc, clock=clock, time_scale=time_scale, wall=wall)
    return app
