"""Provider batch APIs for maps too big for live limits: half the price, their own quota, resumable.

A map sent ``via="batch"`` becomes one provider batch per model (more where the provider's
per-batch ``max_requests`` / ``max_bytes`` are exceeded). As soon as a batch is created its id,
and which prompt each ``custom_id`` stands for, are written to a state file: a temporary file
renamed over the old one, so the file is always whole. A kernel restart, a closed laptop or
Ctrl-C loses nothing: ``Fanout.resume(path)`` reads the file and picks the batches up. Status is
asked for with backoff, from the provider's ``poll_s`` growing by half each time to its
``max_poll_s``. Stopping a run never cancels a provider-side batch; ``Fanout.cancel_batches``
does, when asked. Live answers of the same map (models without a batch API) go into the file too,
so a resumed map returns every answer.

The wire formats are in ``nbfanout/providers/batches.py``; this module decides what to send,
keeps the state, and turns results into ``ModelResult``s (``via="batch"``, at the batch price).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbfanout._secrets import redact
from nbfanout.catalog import BatchSupport
from nbfanout.config import ApiKey, ProviderConfig
from nbfanout.core.errors import ErrorCategory, ErrorInfo, MissingKeyError, ProviderError, UsageError
from nbfanout.core.events import BatchProgress, ModelCompleted, ModelFailed
from nbfanout.core.request import RequestSpec, chat_request
from nbfanout.core.results import Attempt, ModelResult
from nbfanout.providers import adapter_for
from nbfanout.providers.base import ChatRequest, Endpoint
from nbfanout.providers.batches import BatchAPI, BatchItem, BatchStatus, batch_api_for, cancelled_error, expired_error

if TYPE_CHECKING:
    from nbfanout.core.fanout import Fanout, _Run

__all__ = ["BatchJob", "BatchRunner", "BatchState", "STATE_DIR", "new_state_path"]

log = logging.getLogger("nbfanout.batch")

STATE_VERSION = 1
#: Where a map's state file goes unless ``batch_state`` names one (relative to the working directory).
STATE_DIR = Path(".nbfanout") / "batches"


def new_state_path() -> Path:
    """Where a map's state file goes unless the caller names one: ``STATE_DIR/<time>-<random>.json``."""
    return STATE_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.json"


def custom_id(prompt_index: int) -> str:
    return f"p{prompt_index}"


@dataclass(frozen=True, slots=True)
class BatchJob:
    """One provider batch: the model and key it went to, its id, the prompts it holds, its last status."""

    model: str
    provider: str
    key_digest: str  # which of the provider's keys created it (keys are never written down)
    key_id: str  # …abcd, for messages
    batch_id: str
    prompts: tuple[int, ...]  # custom id ``p{i}`` stands for prompt i
    created_at: float  # epoch seconds
    extra: Mapping[str, Any] = field(default_factory=dict)  # what else reads it later (the input file's id)
    status: str = ""  # the provider's own word, as last seen
    state: str = "running"  # running | ended | failed | fetched
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["prompts"] = list(self.prompts)
        out["extra"] = dict(self.extra)
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> BatchJob:
        return cls(**{**raw, "prompts": tuple(int(i) for i in raw["prompts"]), "extra": dict(raw.get("extra") or {})})


@dataclass
class BatchState:
    """What a batch map sent and where: enough to rebuild every request and read every result later."""

    path: Path
    prompts: list[str]
    models: list[str]  # every model of the map, in order (those answered live too)
    batched: list[str]  # the models sent through their provider's batch API
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    config: str = ""  # the config's source, so a resume can say which one it needs
    jobs: list[BatchJob] = field(default_factory=list)
    live: dict[str, dict[str, Any]] = field(default_factory=dict)  # "i:model" -> the live answer's record

    def spec(self, i: int) -> RequestSpec:
        return RequestSpec(self.prompts[i], self.system, (), self.max_tokens, self.temperature, dict(self.params))

    def save(self) -> None:
        """Write the whole state atomically: a reader (or a crash) never sees half a file."""
        doc = {"nbfanout_batch_state": STATE_VERSION, "created_at": self.created_at, "config": self.config,
               "prompts": self.prompts, "models": self.models, "batched": self.batched, "system": self.system,
               "max_tokens": self.max_tokens, "temperature": self.temperature, "params": self.params,
               "jobs": [j.to_json() for j in self.jobs], "live": self.live}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(doc, out, ensure_ascii=False, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BatchState:
        """A state file written by ``save``; UsageError naming the file when it is not one."""
        p = Path(path)
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"{p}: no such batch state file (`nbfanout batches` lists them)") from None
        except (OSError, ValueError) as exc:
            raise UsageError(f"{p}: not a readable batch state file: {exc}") from exc
        if not isinstance(doc, Mapping) or doc.get("nbfanout_batch_state") != STATE_VERSION:
            raise UsageError(f"{p}: not an nbfanout batch state file (version {STATE_VERSION}); it is written by "
                             "map(..., via='batch')")
        try:
            return cls(path=p, prompts=list(doc["prompts"]), models=list(doc["models"]), batched=list(doc["batched"]),
                       system=doc.get("system"), max_tokens=doc.get("max_tokens"),
                       temperature=doc.get("temperature"), params=dict(doc.get("params") or {}),
                       created_at=float(doc.get("created_at") or 0.0), config=str(doc.get("config") or ""),
                       jobs=[BatchJob.from_json(j) for j in doc.get("jobs") or ()],
                       live={str(k): dict(v) for k, v in (doc.get("live") or {}).items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{p}: a damaged batch state file ({type(exc).__name__}: {exc})") from exc

    @property
    def done(self) -> bool:
        """Every batch's results are in and every live answer is kept."""
        batched = set(self.batched)
        live_left = [(i, m) for i in range(len(self.prompts)) for m in self.models
                     if m not in batched and f"{i}:{m}" not in self.live]
        return not live_left and all(j.state in ("fetched", "failed") for j in self.jobs) and all(
            any(j.model == m for j in self.jobs) for m in batched)


def _json_ready(params: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(params)))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"via='batch' writes the request parameters to its state file, and these are not JSON: {exc}"
                         ) from exc


class BatchRunner:
    """Sends a map's batched models as provider batches and reads their results, for one Fanout."""

    def __init__(self, fx: Fanout) -> None:
        self.fx = fx
        self.config = fx.config

    # --- what can go by batch ----------------------------------------------------------------
    def support(self, name: str) -> tuple[BatchSupport, BatchAPI] | None:
        """The model's provider batch API, or None where it has none (its requests then run live)."""
        model = self.config.model(name)
        provider = self.config.providers[model.provider]
        if provider.batch is None:
            return None
        adapter = adapter_for(provider.wire)
        api = batch_api_for(provider.batch.api, adapter)  # type: ignore[arg-type]
        return None if api is None else (provider.batch, api)

    def why_live(self, name: str) -> str:
        provider = self.config.providers[self.config.model(name).provider]
        if provider.batch is None:
            return f"{provider.name} has no batch API in the catalog or config"
        return f"nbfanout does not speak {provider.name}'s batch API ({provider.batch.api!r}) yet"

    def _key(self, provider: ProviderConfig, digest: str | None = None) -> ApiKey:
        if not provider.keys:
            raise MissingKeyError(provider.id, provider.key_vars)
        if digest is None:
            return provider.keys[0]
        for key in provider.keys:
            if key.digest == digest:
                return key
        raise UsageError(f"the {provider.name} batch was created with another key than the ones set now "
                         f"({', '.join(k.id for k in provider.keys)}); set {' or '.join(provider.key_vars)} to "
                         "the key that created it to read its results")

    def _endpoint(self, provider: ProviderConfig, key: ApiKey) -> Endpoint:
        return Endpoint(provider=provider.id, base_url=provider.base_url, api_key=key.value,
                        params=dict(provider.params), headers=dict(provider.headers))

    # --- a map ---------------------------------------------------------------------------------
    def new_state(self, path: str | os.PathLike[str] | None, prompts: Sequence[str], models: Sequence[str],
                  batched: Sequence[str], spec: RequestSpec) -> BatchState:
        if spec.images or spec.conversation or spec.tools:
            raise UsageError("via='batch' sends prompts (with a system prompt and parameters); images, "
                             "conversations and tools go live: use via='live'")
        if path is None:
            path = new_state_path()
        return BatchState(path=Path(path), prompts=list(prompts), models=list(models), batched=list(batched),
                          system=spec.system, max_tokens=spec.max_tokens, temperature=spec.temperature,
                          params=_json_ready(spec.params), config=self.config.source)

    async def run(self, state: BatchState, run: _Run,
                  deliver: Callable[[int, str, ModelResult], None]) -> None:
        """Create what is not created yet, wait for every batch, read the results, ``deliver`` each one."""
        for name in state.batched:
            if not any(j.model == name for j in state.jobs):
                await self._submit(state, name, run, deliver)
        # a batch already read is read again: its results stay with the provider (for weeks), not in the file
        await asyncio.gather(*(self._follow(state, job, run, deliver) for job in list(state.jobs)))

    def _chunks(self, name: str, state: BatchState, api: BatchAPI, support: BatchSupport
                ) -> list[list[tuple[int, dict[str, Any], ChatRequest]]]:
        """The model's requests split so no batch holds more than the provider's requests or bytes."""
        model = self.config.model(name)
        chunks: list[list[tuple[int, dict[str, Any], ChatRequest]]] = [[]]
        size = 0
        for i in range(len(state.prompts)):
            request = chat_request(model, state.spec(i))
            entry = api.entry(custom_id(i), request)
            n = api.entry_size(entry)
            if n > support.max_bytes:
                raise UsageError(f"prompt {i} alone is {n:,} bytes as a {name} batch request, more than the "
                                 f"{support.max_bytes:,} one batch may hold; send it live")
            if chunks[-1] and (len(chunks[-1]) >= support.max_requests or size + n > support.max_bytes):
                chunks.append([])
                size = 0
            chunks[-1].append((i, entry, request))
            size += n
        return chunks

    async def _submit(self, state: BatchState, name: str, run: _Run,
                      deliver: Callable[[int, str, ModelResult], None]) -> None:
        model = self.config.model(name)
        provider = self.config.providers[model.provider]
        found = self.support(name)
        assert found is not None
        support, api = found
        try:
            key = self._key(provider)
        except MissingKeyError as exc:  # this model's requests fail; the map's other models go on
            info = ErrorInfo(ErrorCategory.MISSING_KEY, False, str(exc), provider=provider.id)
            for i in range(len(state.prompts)):
                deliver(i, name, self._failure(name, i, info, "", run, 0.0))
            return
        endpoint = self._endpoint(provider, key)
        for k, chunk in enumerate(self._chunks(name, state, api, support)):
            label = f"nbfanout-{state.path.stem}-{name.replace('/', '_')}-{k}"
            self.fx._emit(BatchProgress, run, model=name, state="creating", total=len(chunk),
                          state_path=str(state.path))
            try:
                with run.http.lease() as client:
                    batch_id, extra = await api.create(client, endpoint, [e for _, e, _ in chunk],
                                                        model=model.model_id, label=label)
            except ProviderError as exc:  # nothing was created: these requests fail with the provider's word
                info = replace(exc.info, message=f"the {provider.name} batch could not be created: {exc.info.message}")
                for i, _, _ in chunk:
                    deliver(i, name, self._failure(name, i, info, key.id, run, 0.0))
                job = BatchJob(name, provider.id, key.digest, key.id, "", tuple(i for i, _, _ in chunk), time.time(),
                               state="failed", message=info.message)
                state.jobs.append(job)
                state.save()
                self._emit(run, state, job, None)
                continue
            job = BatchJob(name, provider.id, key.digest, key.id, batch_id, tuple(i for i, _, _ in chunk),
                           time.time(), extra, total=len(chunk))
            state.jobs.append(job)
            state.save()  # from here on a restart resumes this batch instead of sending it again
            self._emit(run, state, job, None)

    def _job_index(self, state: BatchState, job: BatchJob) -> int:
        return next(k for k, j in enumerate(state.jobs) if j.batch_id == job.batch_id and j.model == job.model
                    and j.prompts == job.prompts)

    async def _follow(self, state: BatchState, job: BatchJob, run: _Run,
                      deliver: Callable[[int, str, ModelResult], None]) -> None:
        """Poll one batch with backoff until it ends, then deliver its results (or its failure)."""
        if job.state == "failed":
            info = ErrorInfo(ErrorCategory.BAD_REQUEST, False, job.message or "the provider refused the batch",
                             provider=job.provider)
            for i in job.prompts:
                deliver(i, job.model, self._failure(job.model, i, info, job.key_id, run, 0.0))
            return
        model = self.config.model(job.model)
        provider = self.config.providers[model.provider]
        found = self.support(job.model)
        if found is None:
            raise UsageError(f"{job.model}: the state file holds a batch, but {self.why_live(job.model)} "
                             f"in {self.config.source}")
        support, api = found
        try:
            key = self._key(provider, job.key_digest)
        except (MissingKeyError, UsageError) as exc:  # its results cannot be read now; the other batches can
            info = ErrorInfo(ErrorCategory.MISSING_KEY, False, str(exc), provider=job.provider)
            for i in job.prompts:
                deliver(i, job.model, self._failure(job.model, i, info, job.key_id, run, 0.0))
            return
        endpoint = self._endpoint(provider, key)
        index = self._job_index(state, job)
        delay = support.poll_s
        while True:
            try:
                with run.http.lease() as client:
                    status = await api.status(client, endpoint, job.batch_id)
            except ProviderError as exc:
                if not exc.info.retryable:
                    for i in job.prompts:
                        deliver(i, job.model, self._failure(job.model, i, exc.info, key.id, run, 0.0))
                    return
                log.info("status of %s batch %s: %s; asking again in %.1fs", job.model, job.batch_id,
                         exc.info.message, delay)
                status = None
                poll_error = exc.info.message
            else:
                poll_error = ""
                job = self._update(state, index, status)
                if status.done:
                    self._emit(run, state, job, None)  # the provider's last word, while its results are read
                    break
            self._emit(run, state, job, delay, poll_error)
            await self.fx.clock.sleep(delay)
            delay = min(delay * 1.5, support.max_poll_s)
        if job.state == "failed":
            self._emit(run, state, job, None)
            await self._follow(state, job, run, deliver)
            return
        requests = {custom_id(i): chat_request(model, state.spec(i)) for i in job.prompts}
        while True:
            try:
                with run.http.lease() as client:
                    items = await api.results(client, endpoint, job.batch_id, requests)
                break
            except ProviderError as exc:
                if not exc.info.retryable:
                    for i in job.prompts:
                        deliver(i, job.model, self._failure(job.model, i, exc.info, key.id, run, 0.0))
                    return
                await self.fx.clock.sleep(delay)
                delay = min(delay * 1.5, support.max_poll_s)
        by_id = {item.custom_id: item for item in items}
        elapsed = time.time() - job.created_at
        last = self.fx.clock.now() - run.t0
        for i in job.prompts:
            item = by_id.get(custom_id(i))
            if item is None:  # the provider holds no result for it: it never ran
                error = (expired_error(job.provider) if status.expired else cancelled_error(job.provider)
                         if status.cancelled else ErrorInfo(ErrorCategory.SERVER_ERROR, True,
                                                            "the batch ended without a result for this request",
                                                            provider=job.provider))
                item = BatchItem(custom_id(i), error=error)
            deliver(i, job.model, self._result(job, i, item, key, support, run, elapsed, last,
                                               state.spec(i).dropped(model.rejects)))
        job = replace(state.jobs[index], state="fetched")
        state.jobs[index] = job
        state.save()
        self._emit(run, state, job, None)

    def _update(self, state: BatchState, index: int, status: BatchStatus, *, save: bool = True) -> BatchJob:
        """The job with the provider's latest status; written to the file only by the map that follows it
        (a listing or a cancel from elsewhere must not overwrite what a running map wrote since)."""
        old = state.jobs[index]
        job = replace(old, status=status.provider_status, state=status.state if old.state != "fetched" else "fetched",
                      total=status.total or old.total, succeeded=status.succeeded, failed=status.failed,
                      message=status.message)
        if job != old:
            state.jobs[index] = job
            if save:
                state.save()
        return job

    # --- results -------------------------------------------------------------------------------
    def _result(self, job: BatchJob, i: int, item: BatchItem, key: ApiKey, support: BatchSupport, run: _Run,
                elapsed: float, end_s: float, dropped: tuple[str, ...]) -> ModelResult:
        model = self.config.model(job.model)
        start_s = max(0.0, end_s - elapsed)
        if item.response is None:
            info = item.error or ErrorInfo(ErrorCategory.SERVER_ERROR, True, "no result", provider=job.provider)
            return self._failure(job.model, i, info, key.id, run, elapsed, start_s, end_s)
        response = item.response
        cost = model.batch_cost(response.usage.input_tokens, response.usage.output_tokens, support.price_factor)
        result = ModelResult(
            requested=job.model, model=job.model, ok=True, text=redact(response.text, key.value),
            input_tokens=response.usage.input_tokens, output_tokens=response.usage.output_tokens, cost=cost,
            latency_s=elapsed, finish_reason=response.finish_reason, prompt_index=i, tool_calls=response.tool_calls,
            attempts=(Attempt(job.model, key.id, start_s, end_s, "ok", response.status,
                              f"batch {job.batch_id}"),),
            dropped_params=dropped, via="batch")
        self.fx._emit(ModelCompleted, run, request=f"{i}:{job.model}", requested=job.model, prompt_index=i,
                      model=job.model, latency_s=elapsed, input_tokens=result.input_tokens,
                      output_tokens=result.output_tokens, cost=cost, attempts=1)
        return result

    def _failure(self, name: str, i: int, info: ErrorInfo, key_id: str, run: _Run, elapsed: float,
                 start_s: float | None = None, end_s: float | None = None) -> ModelResult:
        now = self.fx.clock.now() - run.t0
        end = now if end_s is None else end_s
        start = end if start_s is None else start_s
        self.fx._emit(ModelFailed, run, request=f"{i}:{name}", requested=name, prompt_index=i, model=name,
                      category=info.category.value, status=info.status, message=info.message, attempts=1)
        return ModelResult(requested=name, model=name, ok=False, error=info, latency_s=elapsed, prompt_index=i,
                           attempts=(Attempt(name, key_id, start, end, info.category.value, info.status,
                                             info.message),), via="batch")

    def _emit(self, run: _Run, state: BatchState, job: BatchJob, next_poll_s: float | None,
              poll_error: str = "") -> None:
        self.fx._emit(BatchProgress, run, model=job.model, batch_id=job.batch_id, status=job.status, state=job.state,
                      total=job.total, succeeded=job.succeeded, failed=job.failed,
                      elapsed_s=time.time() - job.created_at, next_poll_s=next_poll_s, message=job.message,
                      poll_error=poll_error, state_path=str(state.path))

    # --- on request ----------------------------------------------------------------------------
    async def cancel(self, state: BatchState, run: _Run) -> list[BatchJob]:
        """Ask each provider to cancel this state's unfinished batches; their finished requests stay readable."""
        return await self._ask_open(state, run, "cancel")

    async def refresh(self, state: BatchState, run: _Run) -> list[BatchJob]:
        """Each unfinished batch's status as its provider reports it now (for ``nbfanout batches``)."""
        await self._ask_open(state, run, "status")
        return list(state.jobs)

    async def _ask_open(self, state: BatchState, run: _Run, what: str) -> list[BatchJob]:
        """``status`` or ``cancel`` of each open batch, into ``state`` (not saved: the map that follows
        a batch writes its file); returns the jobs asked about."""
        out = []
        for index, job in enumerate(state.jobs):
            if job.state != "running" or not job.batch_id:
                continue
            found = self.support(job.model)
            if found is None:
                continue
            provider = self.config.providers[self.config.model(job.model).provider]
            endpoint = self._endpoint(provider, self._key(provider, job.key_digest))
            with run.http.lease() as client:
                status = await getattr(found[1], what)(client, endpoint, job.batch_id)
            out.append(self._update(state, index, status, save=False))
        return out
