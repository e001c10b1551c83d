"""The providers' batch APIs: OpenAI files + batches, Anthropic message batches, Gemini batch mode,
Mistral batch jobs, OpenRouter inline batches.

A provider whose scenario has a ``[providers.<id>.batch]`` table (see ``scenario.py``,
"Batches") serves its wire's batch routes::

    OpenAI wire, OpenAI's shapes (styles openai, groq, together, generic)
    POST   /{provider}/v1/files                         upload (multipart: file, purpose); Mistral's too
    GET    /{provider}/v1/files                         list
    GET    /{provider}/v1/files/{file_id}               the file object
    GET    /{provider}/v1/files/{file_id}/content       the raw bytes
    DELETE /{provider}/v1/files/{file_id}
    POST   /{provider}/v1/batches                       input_file_id, endpoint, completion_window, metadata
    GET    /{provider}/v1/batches                       list (limit, after)
    GET    /{provider}/v1/batches/{batch_id}
    POST   /{provider}/v1/batches/{batch_id}/cancel
    Mistral (style mistral): the file routes above, with Mistral's file object, and
    POST   /{provider}/v1/batch/jobs                    input_files, endpoint, model, metadata, timeout_hours
    GET    /{provider}/v1/batch/jobs                    list (page, page_size, status)
    GET    /{provider}/v1/batch/jobs/{job_id}
    POST   /{provider}/v1/batch/jobs/{job_id}/cancel
    OpenRouter (style openrouter): OpenAI's batch paths, OpenRouter's bodies (no file routes)
    POST   /{provider}/v1/batches                       endpoint, model, completion_window?, requests (inline)
    GET    /{provider}/v1/batches                       list (limit, after; results null)
    GET    /{provider}/v1/batches/{batch_id}            the batch, its results inline once terminal
    POST   /{provider}/v1/batches/{batch_id}/cancel
    Anthropic wire
    POST   /{provider}/v1/messages/batches              requests: [{custom_id, params}]
    GET    /{provider}/v1/messages/batches              list (limit, after_id, before_id)
    GET    /{provider}/v1/messages/batches/{id}
    GET    /{provider}/v1/messages/batches/{id}/results JSONL
    POST   /{provider}/v1/messages/batches/{id}/cancel
    DELETE /{provider}/v1/messages/batches/{id}
    Gemini wire
    POST   /{provider}/v1beta/models/{model}:batchGenerateContent   inlined requests only
    GET    /{provider}/v1beta/batches                   list (pageSize, pageToken)
    GET    /{provider}/v1beta/batches/{id}              the long-running operation
    POST   /{provider}/v1beta/batches/{id}:cancel
    DELETE /{provider}/v1beta/batches/{id}

Time: nothing runs in the background. A batch records when it was created on the sandbox
clock; its status, its request counts and its results are a pure function of the clock
(``Batch.phase`` / ``Batch.processed``), from the scenario's ``in_progress_after_s``,
``complete_after_s``, ``finalizing_s`` (OpenAI and OpenRouter) and ``cancel_after_s`` times ``time_scale``.
Requests finish in input order, evenly between in_progress and complete (``progress``).
OpenAI's and Mistral's output and error files come into being the first time a finished batch is seen.

Answers come from ``wire.compose_answer``, the code the live routes answer with (text,
tool calls, usage, the model's output range, max_tokens); each wire module renders them
(``render_success`` / ``render_tool_call``) and renders a request that errors inside a
batch as its live refusal (``render_error``). Batch requests never touch the live limit
windows (providers give batches their own quota): the ledger counts them apart.

Formats, and where they come from:

- OpenAI: the batch object, request counts, errors and file objects are the official SDK's
  types (openai-python ``types/batch.py``, ``batch_request_counts.py``, ``batch_error.py``,
  ``batch_usage.py``, ``file_object.py``, ``file_deleted.py``); status lifecycle, the output
  line ``{"id": "batch_req_...", "custom_id", "response": {"status_code", "request_id",
  "body"}, "error": null}``, the expired line (``error.code`` ``batch_expired``, "This request
  could not be executed before the completion window expired."), one model per input file,
  50,000 requests / 200 MB per batch, cancelling "up to 10 minutes": the batch guide,
  https://platform.openai.com/docs/guides/batch. A request the API refuses is an error-file
  line whose ``response`` carries the refusal's status and body, ``error`` null
  (github.com/openai/openai-openapi/issues/302, community.openai.com/t/911076); an unknown
  model is such a 404 ``model_not_found`` line (github.com/openai/openai-python/issues/3071).
  A bad input file fails the batch with ``errors.data[]`` (code, message, param, line);
  ``invalid_json_line`` "This line is not parseable as valid JSON." is quoted in
  github.com/stdapi-ai/stdapi.ai/issues/240, which also lists the codes ``duplicate_custom_id``,
  ``url_mismatch``, ``model_mismatch``, ``empty_file``, ``too_many_tasks`` (their messages
  here are the sandbox's own wording, as is ``file_too_large``). Requests never run because
  of a cancel get ``batch_cancelled`` (the sandbox's assumption, by analogy with expiry).
- Anthropic: the message batch, request counts (succeeded / errored / canceled / expired
  stay 0 until the batch ends), the four result types and ``DeletedMessageBatch`` are the
  anthropic SDK's ``types/messages/*``; 100,000 requests or 256 MB per batch, a 413
  ``request_too_large`` past it, params validated asynchronously (errors come back as
  ``errored`` results in the standard error shape), 24 h expiry:
  https://docs.anthropic.com/en/docs/build-with-claude/batch-processing; ``custom_id``
  "String should have at most 64 characters" (github.com/anthropics/anthropic-sdk-python/issues/984),
  pattern ``^[a-zA-Z0-9_-]{1,64}$`` (Anthropic's OpenAPI spec). The duplicate-id, cancel and
  delete refusals are the sandbox's wording.
- Gemini: ``models.batchGenerateContent``, ``batches.get/list/cancel/delete``, the
  Operation, ``GenerateContentBatch`` (``batchStats`` counts as strings), ``InlinedRequest``
  (``request``, ``metadata``) and ``InlinedResponse`` (``response`` or ``error``, a
  google.rpc Status): https://ai.google.dev/api/batch-api; inline batches up to 20 MB:
  https://ai.google.dev/gemini-api/docs/batch-api. The ``@type`` names
  (``google.ai.generativelanguage.v1main.GenerateContentBatch`` / ``...Output``), the
  output repeated in ``metadata.output`` and zero counts left out follow responses
  recorded from the API. Not confirmed there, so the sandbox's choice: a cancelled batch is
  ``done`` with error code 1 (the Operation docs say so for cancelled operations), an
  expired one keeps its finished answers and gives the rest error code 4, a failed one
  error code 3; an errored request's Status carries the gRPC code of its HTTP error.
- Mistral: the job (``BatchJobIn`` / ``BatchJobOut``, ``errors: [{message, count}]``), its statuses
  QUEUED / RUNNING / SUCCESS / FAILED / TIMEOUT_EXCEEDED / CANCELLATION_REQUESTED / CANCELLED and the
  file object (``sample_type``, ``source``, ``num_lines``) are mistralai/client-python's models; the
  input line ``{"custom_id", "body"}`` (a body's ``model`` optional: the job's is used), uploads with
  purpose ``batch``, results read from ``output_file`` / ``error_file`` with
  ``GET /v1/files/{id}/content``: https://docs.mistral.ai/capabilities/batch; 100,000 requests and
  512 MB per batch file: https://docs.mistral.ai/resources/known-limitations. Output lines are
  OpenAI's ``{"id", "custom_id", "response": {"status_code", "body"}, "error": null}`` (litellm's
  Mistral batches, Mistral's cookbook code read ``response.body``); ``total_requests`` is 0 until
  the job is validated (github.com/BerriAI/litellm/pull/40484). Not documented, so the sandbox's
  choice: a refused request is an error-file line in that shape with the refusal's status and body;
  a request that never ran (TIMEOUT_EXCEEDED, CANCELLED) has no line; a bad input file or the
  ``fail_validation`` fault is a FAILED job with ``errors``, and every message is the sandbox's own.
- OpenRouter: the submit body (``endpoint`` and ``model`` before ``requests``, which the API
  stream-parses: openrouter-batch 0.1.2), ``202`` with ``validating``, the statuses, the batch
  object (``request_counts``, ``error.message``, ``results`` inline once terminal, ``usage``), the
  result rows (``response`` or ``error {message, type, param, error_type}``) and ``error_type``
  values are from https://openrouter.ai/docs/guides/features/batch-api,
  https://openrouter.ai/docs/batch-quickstart and the SDK model pages (BatchObject, Result,
  ResultError, ApiErrorType); 5,000 requests and 200 MB per batch; a batch being cancelled stays
  ``in_progress``, a cancelled one returns no rows, a cancel on an ended one is a 409:
  https://openrouter.ai/docs/api/api-reference/batch/cancel-a-batch. The sandbox's choices: the
  size limits and an unknown model are refused at submit (the model in OpenRouter's live 400
  words), a bad request line or the ``fail_validation`` fault fails the batch after validating;
  a request the window closed on has no row; ``usage.cost`` and the per-organization 403 on
  cancel are left out; the list envelope is OpenAI's.
"""

from __future__ import annotations

import email.policy
import json
import math
import re
import string
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from email.parser import BytesParser
from types import ModuleType
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nbfanout.sandbox import wire_anthropic, wire_gemini, wire_openai
from nbfanout.sandbox.ledger import Ledger
from nbfanout.sandbox.scenario import BatchSpec, ModelSpec, ProviderSpec, Scenario, mask_key
from nbfanout.sandbox.text import rng
from nbfanout.sandbox.wire import Answer, BadRequest, CallContext, ChatCall, Denial, compose_answer, rejected_parameter

__all__ = [
    "ANTHROPIC_MAX_BYTES",
    "ANTHROPIC_MAX_REQUESTS",
    "Batch",
    "BatchBook",
    "GEMINI_INLINE_MAX_BYTES",
    "MISTRAL_MAX_BYTES",
    "MISTRAL_MAX_REQUESTS",
    "OPENAI_MAX_BYTES",
    "OPENAI_MAX_REQUESTS",
    "OPENROUTER_MAX_BYTES",
    "OPENROUTER_MAX_REQUESTS",
    "ROUTES",
    "gemini_create",
]

#: OpenAI: "A single batch may include up to 50,000 requests, and a batch input file can be up to
#: 200 MB in size" (https://platform.openai.com/docs/guides/batch, "Rate limits").
OPENAI_MAX_REQUESTS = 50_000
OPENAI_MAX_BYTES = 200 * 1024 * 1024
#: Anthropic: "limited to either 100,000 Message requests or 256 MB in size, whichever is reached
#: first" (https://docs.anthropic.com/en/docs/build-with-claude/batch-processing, "Batch limitations").
ANTHROPIC_MAX_REQUESTS = 100_000
ANTHROPIC_MAX_BYTES = 256 * 1024 * 1024
#: Gemini: inline requests "suitable for smaller batches that keep the total request size under
#: 20MB" (https://ai.google.dev/gemini-api/docs/batch-api); larger ones go through its Files API.
GEMINI_INLINE_MAX_BYTES = 20 * 1024 * 1024
#: Mistral: "Maximum batch file size: 512 MB. Maximum requests per batch: 100,000."
#: (https://docs.mistral.ai/resources/known-limitations, "Batch processing").
MISTRAL_MAX_REQUESTS = 100_000
MISTRAL_MAX_BYTES = 512 * 1024 * 1024
#: OpenRouter: "Up to 5,000 requests and 200 MB per batch" (https://openrouter.ai/docs/guides/features/batch-api).
OPENROUTER_MAX_REQUESTS = 5_000
OPENROUTER_MAX_BYTES = 200 * 1024 * 1024

#: The endpoints a sandbox batch may target (OpenAI also batches responses, embeddings, ...).
OPENAI_ENDPOINTS = ("/v1/chat/completions",)
OPENAI_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
#: Mistral's FilePurpose (mistralai/client-python models/filepurpose.py); an upload without one is "fine-tune".
MISTRAL_PURPOSES = ("fine-tune", "batch", "ocr")
#: The window every provider gives a batch (OpenAI's only completion_window, Anthropic's expiry).
WINDOW_S = 86400
#: OpenAI: "files with purpose=batch expire after 30 days" (openai-python file_create_params.py).
FILE_TTL_S = 30 * 86400
ANTHROPIC_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")

GEMINI_BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
GEMINI_OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
#: google.rpc.Code numbers for the statuses a Gemini error carries.
GRPC_CODES = {"CANCELLED": 1, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5, "PERMISSION_DENIED": 7,
              "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "INTERNAL": 13, "UNAVAILABLE": 14}

#: Phases in OpenAI's words; each wire renders them as its own status.
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_ANTHROPIC_STATUS = {"validating": "in_progress", "in_progress": "in_progress", "finalizing": "in_progress",
                     "cancelling": "canceling"}
_GEMINI_STATE = {"validating": "BATCH_STATE_PENDING", "in_progress": "BATCH_STATE_RUNNING",
                 "finalizing": "BATCH_STATE_RUNNING", "cancelling": "BATCH_STATE_RUNNING",
                 "completed": "BATCH_STATE_SUCCEEDED", "failed": "BATCH_STATE_FAILED",
                 "expired": "BATCH_STATE_EXPIRED", "cancelled": "BATCH_STATE_CANCELLED"}
#: Mistral's BatchJobStatus for each phase (docs.mistral.ai/capabilities/batch; there is no finalizing).
_MISTRAL_STATUS = {"validating": "QUEUED", "in_progress": "RUNNING", "finalizing": "RUNNING",
                   "cancelling": "CANCELLATION_REQUESTED", "completed": "SUCCESS", "failed": "FAILED",
                   "expired": "TIMEOUT_EXCEEDED", "cancelled": "CANCELLED"}
#: OpenRouter's statuses are OpenAI's words, but a batch being cancelled "stays in_progress until the
#: provider confirms" (openrouter.ai/docs/api/api-reference/batch/cancel-a-batch).
_OPENROUTER_CANCELLING = "in_progress"
#: OpenRouter's canonical error type (ApiErrorType) for a request refused inside a batch, by the refusal.
_OPENROUTER_ERROR_TYPE = {"bad_request": "invalid_request", "not_found": "not_found", "server_error": "server",
                          "overloaded": "provider_overloaded", "unavailable": "provider_unavailable",
                          "quota_exhausted": "payment_required", "auth": "authentication",
                          "permission_denied": "permission_denied"}
_EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
_CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."
_B62 = string.digits + string.ascii_letters


# --------------------------------------------------------------------------- state


@dataclass(slots=True)
class Item:
    """One request of a batch: its parsed call, or why it fails inside the batch."""

    index: int
    custom_id: str
    model_id: str | None
    call: ChatCall | None = None
    model: ModelSpec | None = None
    denial: Denial | None = None  # invalid params, unknown model, refused parameter or a scenario fault
    metadata: Any = None  # Gemini's per-request metadata, echoed in its response
    answer: Answer | None = None  # composed the first time it is needed

    @property
    def fails(self) -> bool:
        return self.denial is not None


@dataclass(slots=True)
class StoredFile:
    """An OpenAI or Mistral file: an upload, or a batch's output / error file."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int
    flavour: str = "openai"  # whose file object it is: "openai" or "mistral"
    sample_type: str = "batch_request"  # Mistral's: batch_request (an upload), batch_result, batch_error
    source: str = "upload"  # Mistral's: upload, or "mistral" for what a job wrote

    def as_object(self) -> dict[str, Any]:
        """OpenAI's ``FileObject`` (``status`` is deprecated but still sent), or Mistral's."""
        if self.flavour == "mistral":
            # UploadFileOut / FileSchema (mistralai/client-python models/uploadfileout.py, sampletype.py, source.py)
            return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
                    "filename": self.filename, "purpose": self.purpose, "sample_type": self.sample_type,
                    "source": self.source, "num_lines": len([x for x in self.data.split(b"\n") if x.strip()])}
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": self.created_at + FILE_TTL_S if self.purpose in ("batch", "batch_output") else None,
        }


@dataclass(slots=True)
class Batch:
    """One batch of any wire; its phase and progress are functions of the sandbox clock.

    ``t_ip`` (validating ends), ``t_work`` (the last request is done, or the window closes
    when ``expire``) and ``t_done`` (OpenAI's finalizing ends) are clock times.
    """

    id: str
    wire: str
    provider: ProviderSpec
    spec: BatchSpec
    key_id: str
    created: float
    created_wall: float
    t_ip: float
    t_work: float
    t_done: float
    cancel_s: float
    items: list[Item]
    failure: list[dict[str, Any]] | None = None  # validation errors: the batch fails
    cancel_at: float | None = None
    model: str | None = None
    endpoint: str = OPENAI_ENDPOINTS[0]
    input_file_id: str = ""
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    display_name: str = ""
    input_files: tuple[str, ...] = ()  # Mistral's job reads several files
    timeout_hours: int = 24  # Mistral's job window (reported, never reached by a sandbox batch)
    output_file_id: str | None = None
    error_file_id: str | None = None
    settled: bool = False  # OpenAI's (or Mistral's) result files exist

    def __repr__(self) -> str:
        return f"Batch({self.id!r}, {self.provider.id}, {len(self.items)} requests, cancel_at={self.cancel_at})"

    @property
    def end(self) -> float:
        """When the batch reaches its terminal phase."""
        if self.failure is not None:
            return self.t_ip
        if self.cancel_at is not None:
            return self.cancel_at + self.cancel_s
        return self.t_work if self.spec.expire else self.t_done

    def phase(self, now: float) -> str:
        """validating, in_progress, finalizing, completed, failed, expired, cancelling or cancelled."""
        if self.failure is not None:
            return "validating" if now < self.t_ip else "failed"
        if self.cancel_at is not None:
            return "cancelling" if now < self.end else "cancelled"
        if now < self.t_ip:
            return "validating"
        if now < self.t_work:
            return "in_progress"
        if self.spec.expire:
            return "expired"
        return "finalizing" if now < self.t_done else "completed"

    @property
    def final_count(self) -> int:
        """How many requests get done if nothing stops the batch (all, or the expire_fraction)."""
        n = len(self.items)
        return math.floor(n * self.spec.expire_fraction) if self.spec.expire else n

    def processed(self, now: float) -> int:
        """How many requests (the first ones, in input order) are done at ``now``."""
        if self.failure is not None:
            return 0
        if self.cancel_at is not None:
            now = min(now, self.cancel_at)  # a cancel stops the work at once
        final = self.final_count
        if now >= self.t_work:
            return final
        if now < self.t_ip or not self.spec.progress:
            return 0
        return min(final, math.floor(final * (now - self.t_ip) / (self.t_work - self.t_ip)))

    def wall(self, clock_time: float) -> float:
        """A clock time as unix seconds (the wall clock at creation, moved on by the sandbox clock)."""
        return self.created_wall + (clock_time - self.created)

    def counts(self, now: float) -> Counter[str]:
        """Wire-neutral counts: processing, succeeded, errored, expired, canceled."""
        k = self.processed(now)
        done = self.items[:k]
        errored = sum(1 for it in done if it.fails)
        out: Counter[str] = Counter(succeeded=k - errored, errored=errored)
        rest = len(self.items) - k
        ph = self.phase(now)
        if ph == "expired":
            out["expired"] = rest
        elif ph == "cancelled":
            out["canceled"] = rest
        elif ph != "failed":
            out["processing"] = rest
        return out


class BatchBook:
    """Every provider's files and batches; cleared by ``/_sandbox/reset``."""

    def __init__(self, scenario: Scenario, clock: Callable[[], float], wall: Callable[[], float], ledger: Ledger) -> None:
        self.scenario, self.clock, self.wall, self.ledger = scenario, clock, wall, ledger
        self.files: dict[str, dict[str, StoredFile]] = {}
        self.batches: dict[str, dict[str, Batch]] = {}
        self._n = 0  # never reset: an id handed out before a reset is never handed out again

    def __repr__(self) -> str:
        n_batches = sum(len(b) for b in self.batches.values())
        n_files = sum(len(f) for f in self.files.values())
        return f"BatchBook(batches={n_batches}, files={n_files})"

    def reset(self) -> None:
        self.files.clear()
        self.batches.clear()

    def ident(self, kind: str) -> str:
        """A fresh, seeded id in the provider's own format."""
        self._n += 1
        r = rng(self.scenario.seed, "batch-ids", kind, self._n)
        if kind == "openai":
            return f"batch_{r.getrandbits(128):032x}"
        if kind == "file":
            return "file-" + "".join(r.choice(_B62) for _ in range(22))
        if kind == "anthropic":
            return "msgbatch_01" + "".join(r.choice(_B62) for _ in range(22))
        if kind in ("mistral", "uuid"):  # Mistral's jobs and files are UUIDs
            return str(uuid.UUID(int=r.getrandbits(128), version=4))
        if kind == "openrouter":  # as in "batch-1790584823-viV1KTi3dSpvTgQ29B6i"
            return f"batch-{int(self.wall())}-" + "".join(r.choice(_B62) for _ in range(20))
        return "".join(r.choice(string.ascii_lowercase + string.digits) for _ in range(36))

    def add_file(self, provider: str, filename: str, purpose: str, data: bytes, created_at: int,
                 flavour: str = "openai", **fields: str) -> StoredFile:
        ident = self.ident("uuid" if flavour == "mistral" else "file")
        f = StoredFile(ident, filename, purpose, data, created_at, flavour, **fields)
        self.files.setdefault(provider, {})[f.id] = f
        return f

    def open_batch(self, provider: ProviderSpec, wire: str, key_id: str, items: list[Item], **fields: Any) -> Batch:
        """Register a new batch now, its times scaled by ``time_scale``; counted in the ledger."""
        spec = provider.batch
        assert spec is not None
        scale = self.scenario.time_scale
        now = self.clock()
        t_ip = now + spec.in_progress_after_s * scale
        t_work = now + spec.complete_after_s * scale
        batch = Batch(
            id=self.ident(wire),
            wire=wire,
            provider=provider,
            spec=spec,
            key_id=key_id,
            created=now,
            created_wall=self.wall(),
            t_ip=t_ip,
            t_work=t_work,
            t_done=t_work + (spec.finalizing_s * scale if wire in ("openai", "openrouter") else 0.0),
            cancel_s=spec.cancel_after_s * scale,
            items=items,
            **fields,
        )
        self.batches.setdefault(provider.id, {})[batch.id] = batch
        self.ledger.batch(provider.id, Counter(it.model_id or "(none)" for it in items), failed=batch.failure is not None)
        return batch

    def listed(self, provider: str) -> list[Batch]:
        """A provider's batches, newest first (as every provider lists them)."""
        return list(reversed(self.batches.get(provider, {}).values()))

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per provider: batches by phase, requests by outcome, files kept (merged into /_sandbox/stats)."""
        now = self.clock()
        out: dict[str, dict[str, Any]] = {}
        for pid in sorted(set(self.batches) | set(self.files)):
            phases: Counter[str] = Counter()
            results: Counter[str] = Counter()
            for b in self.batches.get(pid, {}).values():
                phases[b.phase(now)] += 1
                results.update(b.counts(now))
            out[pid] = {
                "live": len(self.batches.get(pid, {})),
                "status": dict(sorted(phases.items())),
                "results": {k: results.get(k, 0) for k in ("processing", "succeeded", "errored", "expired", "canceled")},
                "files": len(self.files.get(pid, {})),
            }
        return out


# --------------------------------------------------------------------------- answers


def _fault(spec: BatchSpec, index: int, key: str) -> Denial | None:
    """The scenario's error for this request inside a batch, if it is one of the errored ones."""
    hit = key in spec.errored_custom_ids or (spec.errored_every_nth is not None and (index + 1) % spec.errored_every_nth == 0)
    return Denial(spec.error_kind, message=spec.error_message) if hit else None


def _item(provider: ProviderSpec, index: int, custom_id: str, body: Any, parse: Callable[[Any], ChatCall],
          fault_key: str | None = None, metadata: Any = None) -> Item:
    """Parse one request the way the live route does; a request it would refuse fails inside the batch."""
    model_id = body.get("model") if isinstance(body, dict) and isinstance(body.get("model"), str) else None
    item = Item(index, custom_id, model_id, metadata=metadata)
    try:
        item.call = parse(body)
        item.model_id = item.call.model
    except BadRequest as exc:
        item.denial = Denial("bad_request", message=exc.message, param=exc.param, code=exc.code)
        return item
    model = provider.model(item.call.model)
    if model is None or model.kind != "chat":
        item.denial = Denial("not_found", message=item.call.model)
        return item
    item.model = model
    bad = rejected_parameter(model, body) if isinstance(body, dict) else None
    if bad is not None:
        item.denial = Denial("bad_request", message=bad.message, param=bad.param, code=bad.code)
        return item
    assert provider.batch is not None
    item.denial = _fault(provider.batch, index, custom_id if fault_key is None else fault_key)
    return item


def _answer(batch: Batch, seed: int, item: Item) -> Answer:
    """The request's answer, composed once, by the code live answers come from."""
    if item.answer is None:
        assert item.call is not None and item.model is not None
        item.answer = compose_answer(item.call, item.model, batch.provider.id, seed)
    return item.answer


def _ctx(batch: Batch, item: Item, at: float) -> CallContext:
    """The rendering context of one request, done at clock time ``at``; ids are seeded per request."""
    r = rng(batch.id, "request", item.index)
    wall = batch.wall(at)
    max_tokens = item.call.max_tokens if item.call is not None else None
    return CallContext(batch.provider, item.model_id, batch.key_id, f"{r.getrandbits(64):016x}", int(wall), wall, max_tokens)


def _render(mod: ModuleType, batch: Batch, seed: int, item: Item, at: float) -> tuple[int, Any]:
    """(HTTP status, body) of a done request: the live route's success or refusal body."""
    ctx = _ctx(batch, item, at)
    if item.denial is not None:
        reply = mod.render_error(ctx, item.denial, None)
        return reply.status, reply.body
    answer = _answer(batch, seed, item)
    if answer.tool is not None:
        return 200, mod.render_tool_call(ctx, answer.tool, answer.usage)
    return 200, mod.render_success(ctx, answer.text, answer.usage)


# --------------------------------------------------------------------------- HTTP helpers


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status_code=status, media_type="application/json")


def _openai_error(message: str, status: int = 400, *, param: str | None = None, code: str | None = None) -> Response:
    return _json({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}, status)


def _anthropic_error(message: str, status: int = 400, kind: str = "invalid_request_error") -> Response:
    return _json({"type": "error", "error": {"type": kind, "message": message}}, status)


def _gemini_error(message: str, status: int = 400, code: str = "INVALID_ARGUMENT") -> Response:
    return _json({"error": {"code": status, "message": message, "status": code}}, status)


_MODS: dict[str, ModuleType] = {"openai": wire_openai, "anthropic": wire_anthropic, "gemini": wire_gemini}


@dataclass(slots=True)
class _Caller:
    """A batch route's provider, wire module, key and a context for rendering refusals."""

    book: BatchBook
    provider: ProviderSpec
    mod: ModuleType
    key_id: str
    ctx: CallContext
    quota_exhausted: bool = False


def _caller(request: Request, wire: str, apis: tuple[str, ...] | None = None) -> _Caller | Response:
    """Provider, wire and key checks every batch route makes (the key first, as providers do).

    ``apis``: the batch APIs the route belongs to (default the wire's own): OpenAI's file routes
    serve Mistral too, its batch routes OpenRouter; a provider whose batch API is another one
    answers as one without a batch API does."""
    state = request.app.state.sandbox
    pid = request.path_params["provider"]
    provider: ProviderSpec | None = state.scenario.provider(pid)
    if provider is None:
        known = ", ".join(p.id for p in state.scenario.providers)
        msg = f"Unknown sandbox provider {pid!r} in scenario {state.scenario.name!r} (known: {known})."
        return _openai_error(msg, 404, code="unknown_url")
    if provider.wire != wire:
        msg = f"Provider {provider.id!r} speaks the {provider.wire} wire format; this is a {wire} route."
        return _openai_error(msg, 404, code="unknown_url")
    path = request.url.path[len(pid) + 1:]
    if provider.batch is None or provider.batch_api not in (apis or (wire,)):  # its own "no such route"
        if wire == "anthropic":
            return _anthropic_error("Not Found", 404, "not_found_error")
        if wire == "gemini":
            return _gemini_error(f"Provider {provider.id!r} of this sandbox serves no batch API.", 404, "NOT_FOUND")
        return _openai_error(f"Invalid URL ({request.method} {path})", 404)
    mod = _MODS[wire]
    key = mod.extract_key(request.headers, request.query_params)
    keyspec = provider.key(key)
    wall = state.wall()
    ctx = CallContext(provider, None, keyspec.key_id if keyspec else mask_key(key), state.next_id(), int(wall), wall)
    if keyspec is None or keyspec.invalid:
        reply = mod.render_error(ctx, Denial("auth", missing_key=key is None), key)
        return Response(reply.content(), status_code=reply.status, media_type="application/json")
    if wire == "anthropic":
        try:
            wire_anthropic.check_version(request.headers)
        except BadRequest as exc:
            return _anthropic_error(exc.message)
    return _Caller(state.batches, provider, mod, keyspec.key_id, ctx, keyspec.quota_exhausted)


def _refuse(c: _Caller, denial: Denial) -> Response:
    reply = c.mod.render_error(c.ctx, denial, None)
    return Response(reply.content(), status_code=reply.status, media_type="application/json")


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw or b"null"), len(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, len(raw)


def _page(items: list[Any], ident: Callable[[Any], str], after: str | None, before: str | None, limit: int) -> tuple[list[Any], bool]:
    """A page of a newest-first list after (or before) a cursor id: (page, has_more)."""
    ids = [ident(x) for x in items]
    if after is not None:
        items = items[ids.index(after) + 1:] if after in ids else []
    elif before is not None:
        items = items[: ids.index(before)] if before in ids else []
        return items[-limit:], len(items) > limit
    return items[:limit], len(items) > limit


def _limit(request: Request, default: int, hi: int, name: str = "limit") -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if 1 <= value <= hi else None


# --------------------------------------------------------------------------- OpenAI files


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """multipart/form-data fields: {name: (filename or None, bytes)}."""
    if "multipart/form-data" not in content_type:
        return {}
    msg = BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n" + body
    )
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in msg.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


#: The batch APIs whose providers upload their input files through OpenAI's file routes.
_FILE_APIS = ("openai", "mistral")


async def openai_file_create(request: Request) -> Response:
    c = _caller(request, "openai", _FILE_APIS)
    if isinstance(c, Response):
        return c
    fields = _multipart(request.headers.get("content-type", ""), await request.body())
    if "file" not in fields:
        return _openai_error("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    mistral = c.provider.batch_api == "mistral"
    purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace") or ("fine-tune" if mistral else "")
    if not purpose:
        return _openai_error("Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter")
    purposes = MISTRAL_PURPOSES if mistral else OPENAI_PURPOSES
    if purpose not in purposes:
        allowed = ", ".join(f"'{p}'" for p in purposes)
        return _openai_error(f"Invalid value: '{purpose}'. Supported values are: {allowed}.", param="purpose",
                             code="invalid_value")
    filename, data = fields["file"]
    stored = c.book.add_file(c.provider.id, filename or "upload", purpose, data, c.ctx.created,
                             "mistral" if mistral else "openai")
    return _json(stored.as_object())


def _settle_all(c: _Caller) -> None:
    """Give every finished OpenAI (or Mistral) batch of the provider its output and error files."""
    now = c.book.clock()
    for batch in c.book.batches.get(c.provider.id, {}).values():
        _settle(c.book, batch, now)


def _file(c: _Caller, file_id: str) -> StoredFile | Response:
    _settle_all(c)
    f = c.book.files.get(c.provider.id, {}).get(file_id)
    if f is None:
        return _openai_error(f"No such File object: {file_id}", 404, param="id")
    return f


async def openai_file_list(request: Request) -> Response:
    c = _caller(request, "openai", _FILE_APIS)
    if isinstance(c, Response):
        return c
    _settle_all(c)
    limit = _limit(request, 10000, 10000)
    if limit is None:
        return _openai_error("Invalid 'limit': expected an integer between 1 and 10000.", param="limit", code="invalid_value")
    files = list(reversed(c.book.files.get(c.provider.id, {}).values()))
    if request.query_params.get("order") == "asc":
        files.reverse()
    purpose = request.query_params.get("purpose")
    if purpose:
        files = [f for f in files if f.purpose == purpose]
    if c.provider.batch_api == "mistral":  # ListFilesOut: data, object, total (pages by page / page_size)
        return _json({"data": [f.as_object() for f in files], "object": "list", "total": len(files)})
    page, more = _page(files, lambda f: f.id, request.query_params.get("after"), None, limit)
    data = [f.as_object() for f in page]
    return _json({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                  "last_id": data[-1]["id"] if data else None, "has_more": more})


async def openai_file_get(request: Request) -> Response:
    c = _caller(request, "openai", _FILE_APIS)
    if isinstance(c, Response):
        return c
    f = _file(c, request.path_params["file_id"])
    return f if isinstance(f, Response) else _json(f.as_object())


async def openai_file_content(request: Request) -> Response:
    c = _caller(request, "openai", _FILE_APIS)
    if isinstance(c, Response):
        return c
    f = _file(c, request.path_params["file_id"])
    return f if isinstance(f, Response) else Response(f.data, media_type="application/octet-stream")


async def openai_file_delete(request: Request) -> Response:
    c = _caller(request, "openai", _FILE_APIS)
    if isinstance(c, Response):
        return c
    f = _file(c, request.path_params["file_id"])
    if isinstance(f, Response):
        return f
    del c.book.files[c.provider.id][f.id]
    return _json({"id": f.id, "object": "file", "deleted": True})


# --------------------------------------------------------------------------- OpenAI batches


def _line_error(code: str, message: str, line: int | None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _input_lines(data: bytes, max_requests: int, max_bytes: int) -> tuple[list[str], list[dict[str, Any]]]:
    """A JSONL input file's lines, or the one error that fails its batch (too large, empty, too many)."""
    if len(data) > max_bytes:
        return [], [_line_error("file_too_large", f"The input file is {len(data)} bytes; a batch input file may be at "
                                f"most {max_bytes} bytes.", None)]
    lines = data.decode("utf-8", "replace").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()  # a final newline (or several) ends the file
    if not lines:
        return [], [_line_error("empty_file", "The batch input file is empty.", None)]
    if len(lines) > max_requests:
        return [], [_line_error("too_many_tasks", f"The batch input file has {len(lines)} requests; a batch may "
                                f"contain at most {max_requests}.", None)]
    return lines, []


def _openai_items(c: _Caller, data: bytes, endpoint: str) -> tuple[list[Item], list[dict[str, Any]], str | None]:
    """Validate an input file as OpenAI does: (items, the errors that fail the batch, its model)."""
    spec = c.provider.batch
    assert spec is not None
    lines, errors = _input_lines(data, spec.max_requests or OPENAI_MAX_REQUESTS, spec.max_bytes or OPENAI_MAX_BYTES)
    if errors:
        return [], errors, None
    seen: set[str] = set()
    model: str | None = None
    parsed: list[tuple[int, str, Any]] = []
    for n, text in enumerate(lines, start=1):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            errors.append(_line_error("invalid_json_line", "This line is not parseable as valid JSON.", n))
            continue
        cid, method, url, body = obj.get("custom_id"), obj.get("method"), obj.get("url"), obj.get("body")
        if not isinstance(cid, str) or not cid:
            errors.append(_line_error("missing_required_parameter", "Missing required parameter: 'custom_id'.", n, "custom_id"))
            continue
        if cid in seen:
            errors.append(_line_error("duplicate_custom_id", f"The custom_id '{cid}' is used by more than one request; "
                                      "custom_id must be unique for each request in a batch.", n, "custom_id"))
            continue
        seen.add(cid)
        if method != "POST":
            errors.append(_line_error("invalid_value", f"Invalid value: {method!r}. Supported values are: 'POST'.", n, "method"))
        elif url != endpoint:
            errors.append(_line_error("url_mismatch", f"The url '{url}' of this request does not match the batch's "
                                      f"endpoint '{endpoint}'.", n, "url"))
        elif not isinstance(body, dict):
            errors.append(_line_error("missing_required_parameter", "Missing required parameter: 'body'.", n, "body"))
        elif not isinstance(body.get("model"), str) or not body["model"]:
            errors.append(_line_error("missing_required_parameter", "Missing required parameter: 'body.model'.", n, "body.model"))
        elif model is not None and body["model"] != model:
            errors.append(_line_error("model_mismatch", f"The model '{body['model']}' differs from the model '{model}' of "
                                      "the batch's other requests; a batch input file may only use one model.", n, "body.model"))
        else:
            model = model or body["model"]
            parsed.append((n - 1, cid, body))
    if spec.fail_validation is not None:
        errors.append(_line_error("invalid_request", spec.fail_validation, None))
    if errors:
        return [], errors, model
    return [_item(c.provider, i, cid, body, wire_openai.parse_chat) for i, cid, body in parsed], [], model


#: The batch APIs served at OpenAI's ``/v1/batches`` routes: OpenAI's, and OpenRouter's inline shape.
_BATCHES_APIS = ("openai", "openrouter")


async def openai_batch_create(request: Request) -> Response:
    c = _caller(request, "openai", _BATCHES_APIS)
    if isinstance(c, Response):
        return c
    if c.quota_exhausted:
        return _refuse(c, Denial("quota_exhausted"))
    if c.provider.batch_api == "openrouter":
        return await openrouter_batch_create(request, c)
    body, _ = await _json_body(request)
    if not isinstance(body, dict):
        return _openai_error("We could not parse the JSON body of your request.")
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(name), str) or not body[name]:
            return _openai_error(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    endpoint, window = body["endpoint"], body["completion_window"]
    if endpoint not in OPENAI_ENDPOINTS:  # OpenAI batches more endpoints; the sandbox answers chat only
        allowed = ", ".join(f"'{e}'" for e in OPENAI_ENDPOINTS)
        return _openai_error(f"Invalid value: '{endpoint}'. Supported values are: {allowed}.", param="endpoint",
                             code="invalid_value")
    if window != "24h":
        return _openai_error(f"Invalid value: '{window}'. Supported values are: '24h'.", param="completion_window",
                             code="invalid_value")
    metadata = body.get("metadata")
    if metadata is not None and not _metadata_ok(metadata):
        return _openai_error("Invalid 'metadata': at most 16 pairs of string keys (64 characters at most) and string "
                             "values (512 characters at most).", param="metadata", code="invalid_value")
    f = _file(c, body["input_file_id"])
    if isinstance(f, Response):
        return f
    if f.purpose != "batch":
        return _openai_error(f"The input file {f.id} has purpose '{f.purpose}'; a batch input file must be uploaded "
                             "with purpose 'batch'.", param="input_file_id")
    items, errors, model = _openai_items(c, f.data, endpoint)
    batch = c.book.open_batch(c.provider, "openai", c.key_id, items, failure=errors or None, model=model,
                              endpoint=endpoint, input_file_id=f.id, completion_window=window, metadata=metadata)
    return _json(_openai_batch(c.book, batch))


def _metadata_ok(metadata: Any) -> bool:
    """OpenAI's metadata: 16 pairs, keys up to 64 and values up to 512 characters (openai-python shared/metadata)."""
    return (isinstance(metadata, dict) and len(metadata) <= 16
            and all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in metadata.items()))


def _settle(book: BatchBook, batch: Batch, now: float) -> None:
    """A finished OpenAI or Mistral batch's output and error files (made once, the first time it is seen finished).

    Mistral's files hold the requests that ran; one that never ran (the job timed out or was
    cancelled first) has no line there (the sandbox's reading: Mistral documents no such line)."""
    if batch.wire not in ("openai", "mistral") or batch.settled or batch.phase(now) not in TERMINAL:
        return
    batch.settled = True
    if batch.failure is not None:
        return
    seed = book.scenario.seed
    k = batch.processed(batch.end)
    at = min(batch.end, batch.t_work)
    out, err = [], []
    expired = batch.phase(now) == "expired"
    mistral = batch.wire == "mistral"
    for item in batch.items:
        r = rng(batch.id, "batch_req", item.index)
        ident = str(uuid.UUID(int=r.getrandbits(128), version=4)) if mistral else f"batch_req_{r.getrandbits(128):032x}"
        line: dict[str, Any] = {"id": ident, "custom_id": item.custom_id}
        if item.index < k:
            status, body = _render(wire_openai, batch, seed, item, at)
            line["response"] = ({"status_code": status, "body": body} if mistral else
                                {"status_code": status, "request_id": f"{r.getrandbits(128):032x}", "body": body})
            line["error"] = None
            (out if status == 200 else err).append(line)
        elif not mistral:  # never run: the window closed, or the batch was cancelled first
            line["response"] = None
            line["error"] = {"code": "batch_expired" if expired else "batch_cancelled",
                             "message": _EXPIRED_MESSAGE if expired else _CANCELLED_MESSAGE}
            err.append(line)
    created = int(batch.wall(batch.end))
    for lines, suffix in ((out, "output"), (err, "error")):
        if lines:
            data = "".join(json.dumps(x) + "\n" for x in lines).encode()
            if mistral:
                f = book.add_file(batch.provider.id, f"{batch.id}_{suffix}.jsonl", "batch", data, created, "mistral",
                                  sample_type=f"batch_{'result' if suffix == 'output' else 'error'}", source="mistral")
            else:
                f = book.add_file(batch.provider.id, f"{batch.id}_{suffix}.jsonl", "batch_output", data, created)
            if suffix == "output":
                batch.output_file_id = f.id
            else:
                batch.error_file_id = f.id


def _usage_sum(book: BatchBook, batch: Batch, k: int) -> tuple[int, int]:
    """Input and output tokens of the answers among the first ``k`` requests."""
    usage_in = usage_out = 0
    for item in batch.items[:k]:
        if not item.fails:
            u = _answer(batch, book.scenario.seed, item).usage
            usage_in, usage_out = usage_in + u.input_tokens, usage_out + u.output_tokens
    return usage_in, usage_out


def _openai_batch(book: BatchBook, batch: Batch) -> dict[str, Any]:
    """OpenAI's ``Batch`` object at the current clock."""
    now = book.clock()
    _settle(book, batch, now)
    ph = batch.phase(now)

    def at(t: float, reached: bool) -> int | None:
        return int(batch.wall(t)) if reached else None

    counts = batch.counts(now)
    started = batch.failure is None and now >= batch.t_ip and (batch.cancel_at is None or batch.cancel_at >= batch.t_ip)
    usage_in, usage_out = _usage_sum(book, batch, batch.processed(now))
    total = 0 if ph == "validating" or batch.failure is not None else len(batch.items)
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": batch.model,
        "errors": {"object": "list", "data": batch.failure} if batch.failure is not None and ph == "failed" else None,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": ph,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": int(batch.created_wall),
        "in_progress_at": at(batch.t_ip, started),
        "expires_at": int(batch.created_wall) + WINDOW_S,
        "finalizing_at": at(batch.t_work, batch.cancel_at is None and not batch.spec.expire and ph in ("finalizing", "completed")),
        "completed_at": at(batch.t_done, ph == "completed"),
        "failed_at": at(batch.t_ip, ph == "failed"),
        "expired_at": at(batch.t_work, ph == "expired"),
        "cancelling_at": at(batch.cancel_at, True) if batch.cancel_at is not None else None,
        "cancelled_at": at(batch.end, ph == "cancelled"),
        "request_counts": {"total": total, "completed": counts["succeeded"],
                           "failed": counts["errored"] + counts["expired"] + counts["canceled"]},
        "usage": {"input_tokens": usage_in, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": usage_out,
                  "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": usage_in + usage_out},
        "metadata": batch.metadata,
    }


def _find(c: _Caller, batch_id: str) -> Batch | None:
    return c.book.batches.get(c.provider.id, {}).get(batch_id)


def _cancel(c: _Caller, batch: Batch) -> str | None:
    """Start cancelling ``batch`` now (asking again changes nothing); its phase instead when it has ended."""
    ph = batch.phase(c.book.clock())
    if ph in TERMINAL:
        return ph
    if batch.cancel_at is None:
        batch.cancel_at = c.book.clock()
    return None


async def openai_batch_get(request: Request) -> Response:
    c = _caller(request, "openai", _BATCHES_APIS)
    if isinstance(c, Response):
        return c
    if c.provider.batch_api == "openrouter":
        return openrouter_batch_get(c, request.path_params["batch_id"])
    batch = _find(c, request.path_params["batch_id"])
    if batch is None:
        return _openai_error(f"No batch found with id '{request.path_params['batch_id']}'.", 404, param="batch_id")
    return _json(_openai_batch(c.book, batch))


async def openai_batch_cancel(request: Request) -> Response:
    c = _caller(request, "openai", _BATCHES_APIS)
    if isinstance(c, Response):
        return c
    if c.provider.batch_api == "openrouter":
        return openrouter_batch_cancel(c, request.path_params["batch_id"])
    batch = _find(c, request.path_params["batch_id"])
    if batch is None:
        return _openai_error(f"No batch found with id '{request.path_params['batch_id']}'.", 404, param="batch_id")
    ph = batch.phase(c.book.clock())
    if ph in ("validating", "in_progress"):
        batch.cancel_at = c.book.clock()
    elif ph != "cancelling":
        return _openai_error(f"Cannot cancel a batch with status '{ph}'.", 409 if ph == "finalizing" else 400)
    return _json(_openai_batch(c.book, batch))


async def openai_batch_list(request: Request) -> Response:
    c = _caller(request, "openai", _BATCHES_APIS)
    if isinstance(c, Response):
        return c
    limit = _limit(request, 20, 100)
    if limit is None:
        return _openai_error("Invalid 'limit': expected an integer between 1 and 100.", param="limit", code="invalid_value")
    page, more = _page(c.book.listed(c.provider.id), lambda b: b.id, request.query_params.get("after"), None, limit)
    if c.provider.batch_api == "openrouter":  # "results is always null in list responses" (BatchListItem)
        data = [{**_openrouter_batch(c, b), "results": None} for b in page]
    else:
        data = [_openai_batch(c.book, b) for b in page]
    return _json({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                  "last_id": data[-1]["id"] if data else None, "has_more": more})


# --------------------------------------------------------------------------- Anthropic message batches


def _rfc3339(unix: float) -> str:
    """Anthropic's timestamps: RFC 3339 in UTC with microseconds ("2024-08-20T18:37:24.100435Z")."""
    return datetime.fromtimestamp(unix, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _results_url(request: Request, provider: ProviderSpec, batch: Batch) -> str:
    """Where this sandbox serves the results (the real API's is https://api.anthropic.com/v1/...)."""
    return f"{str(request.base_url).rstrip('/')}/{provider.id}/v1/messages/batches/{batch.id}/results"


def _anthropic_batch(request: Request, c: _Caller, batch: Batch) -> dict[str, Any]:
    """Anthropic's ``MessageBatch`` at the current clock."""
    now = c.book.clock()
    ph = batch.phase(now)
    ended = ph in TERMINAL
    counts = batch.counts(now)
    n = len(batch.items)
    # Anthropic: every request is "processing" until the whole batch ends.
    request_counts = ({k: counts[k] for k in ("processing", "succeeded", "errored", "canceled", "expired")} if ended
                      else {"processing": n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0})
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": "ended" if ended else _ANTHROPIC_STATUS[ph],
        "request_counts": request_counts,
        "ended_at": _rfc3339(batch.wall(batch.end)) if ended else None,
        "created_at": _rfc3339(batch.created_wall),
        "expires_at": _rfc3339(batch.created_wall + WINDOW_S),
        "archived_at": None,
        "cancel_initiated_at": _rfc3339(batch.wall(batch.cancel_at)) if batch.cancel_at is not None else None,
        "results_url": _results_url(request, c.provider, batch) if ended else None,
    }


def _anthropic_requests(c: _Caller, raw: Any) -> list[Item] | Response:
    """The ``requests`` list, checked now as Anthropic checks it (params are checked inside the batch)."""
    if not isinstance(raw, dict):
        return _anthropic_error("There was an error parsing the body of your request.")
    reqs = raw.get("requests")
    if reqs is None:
        return _anthropic_error("requests: Field required")
    if not isinstance(reqs, list):
        return _anthropic_error("requests: Input should be a valid list")
    if not reqs:
        return _anthropic_error("requests: List should have at least 1 item after validation, not 0")
    spec = c.provider.batch
    assert spec is not None
    max_requests = spec.max_requests or ANTHROPIC_MAX_REQUESTS
    if len(reqs) > max_requests:
        return _anthropic_error(f"requests: List should have at most {max_requests} items after validation, not {len(reqs)}")
    seen: dict[str, int] = {}
    for i, r in enumerate(reqs):
        if not isinstance(r, dict):
            return _anthropic_error(f"requests.{i}: Input should be a valid dictionary")
        cid = r.get("custom_id")
        if cid is None:
            return _anthropic_error(f"requests.{i}.custom_id: Field required")
        if not isinstance(cid, str):
            return _anthropic_error(f"requests.{i}.custom_id: Input should be a valid string")
        if len(cid) > 64:
            return _anthropic_error(f"requests.{i}.custom_id: String should have at most 64 characters")
        if not ANTHROPIC_CUSTOM_ID.fullmatch(cid):
            return _anthropic_error(f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        if cid in seen:
            return _anthropic_error(f"requests.{i}.custom_id: custom_id '{cid}' is already used by requests.{seen[cid]}; "
                                    "each request in a Message Batch needs a unique custom_id")
        seen[cid] = i
        if "params" not in r:
            return _anthropic_error(f"requests.{i}.params: Field required")
        if not isinstance(r["params"], dict):
            return _anthropic_error(f"requests.{i}.params: Input should be a valid dictionary")
    if spec.fail_validation is not None:
        return _anthropic_error(spec.fail_validation)
    return [_item(c.provider, i, r["custom_id"], r["params"], _anthropic_params) for i, r in enumerate(reqs)]


def _anthropic_params(params: Any) -> ChatCall:
    """A request's params, as /v1/messages reads them; streaming has no place in a batch."""
    call = wire_anthropic.parse_chat(params)
    if call.stream:
        raise BadRequest("stream: streaming is not supported in the Message Batches API")
    return call


async def anthropic_batch_create(request: Request) -> Response:
    c = _caller(request, "anthropic")
    if isinstance(c, Response):
        return c
    if c.quota_exhausted:
        return _refuse(c, Denial("quota_exhausted"))
    body, size = await _json_body(request)
    spec = c.provider.batch
    assert spec is not None
    max_bytes = spec.max_bytes or ANTHROPIC_MAX_BYTES
    if size > max_bytes:
        return _anthropic_error(f"Request exceeds the maximum allowed number of bytes ({max_bytes}).", 413, "request_too_large")
    items = _anthropic_requests(c, body)
    if isinstance(items, Response):
        return items
    batch = c.book.open_batch(c.provider, "anthropic", c.key_id, items)
    return _json(_anthropic_batch(request, c, batch))


def _anthropic_find(c: _Caller, request: Request) -> Batch | Response:
    batch = _find(c, request.path_params["batch_id"])
    if batch is None:
        return _anthropic_error(f"No Message Batch with id {request.path_params['batch_id']!r} was found.", 404,
                                "not_found_error")
    return batch


async def anthropic_batch_get(request: Request) -> Response:
    c = _caller(request, "anthropic")
    if isinstance(c, Response):
        return c
    batch = _anthropic_find(c, request)
    return batch if isinstance(batch, Response) else _json(_anthropic_batch(request, c, batch))


async def anthropic_batch_list(request: Request) -> Response:
    c = _caller(request, "anthropic")
    if isinstance(c, Response):
        return c
    limit = _limit(request, 20, 1000)
    if limit is None:
        return _anthropic_error("limit: Input should be greater than or equal to 1 and less than or equal to 1000")
    q = request.query_params
    page, more = _page(c.book.listed(c.provider.id), lambda b: b.id, q.get("after_id"), q.get("before_id"), limit)
    data = [_anthropic_batch(request, c, b) for b in page]
    return _json({"data": data, "has_more": more, "first_id": data[0]["id"] if data else None,
                  "last_id": data[-1]["id"] if data else None})


async def anthropic_batch_cancel(request: Request) -> Response:
    c = _caller(request, "anthropic")
    if isinstance(c, Response):
        return c
    batch = _anthropic_find(c, request)
    if isinstance(batch, Response):
        return batch
    if _cancel(c, batch) is not None:
        return _anthropic_error(f"Message Batch {batch.id} has already ended and can no longer be canceled.")
    return _json(_anthropic_batch(request, c, batch))


async def anthropic_batch_delete(request: Request) -> Response:
    c = _caller(request, "anthropic")
    if isinstance(c, Response):
        return c
    batch = _anthropic_find(c, request)
    if isinstance(batch, Response):
        return batch
    if batch.phase(c.book.clock()) not in TERMINAL:
        return _anthropic_error(f"Message Batch {batch.id} is still processing; cancel it and wait for it to end before "
                                "deleting it.")
    del c.book.batches[c.provider.id][batch.id]
    return _json({"id": batch.id, "type": "message_batch_deleted"})


async def anthropic_batch_results(request: Request) -> Response:
    c = _caller(request, "anthropic")
    if isinstance(c, Response):
        return c
    batch = _anthropic_find(c, request)
    if isinstance(batch, Response):
        return batch
    now = c.book.clock()
    ph = batch.phase(now)
    if ph not in TERMINAL:
        return _anthropic_error(f"Message Batch {batch.id} has not ended yet; its results are available once its "
                                "processing_status is 'ended'.")
    k = batch.processed(batch.end)
    at = min(batch.end, batch.t_work)
    lines = []
    for item in batch.items:
        result: dict[str, Any]
        if item.index < k:
            status, body = _render(wire_anthropic, batch, c.book.scenario.seed, item, at)
            result = {"type": "succeeded", "message": body} if status == 200 else {"type": "errored", "error": body}
        else:
            result = {"type": "expired" if ph == "expired" else "canceled"}
        lines.append(json.dumps({"custom_id": item.custom_id, "result": result}, separators=(",", ":")) + "\n")
    return Response("".join(lines), media_type="application/binary")


# --------------------------------------------------------------------------- Gemini batch mode


def _timestamp(unix: float) -> str:
    """Google's timestamps: RFC 3339 in UTC with nine fractional digits."""
    return datetime.fromtimestamp(unix, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def _status(reply_body: Any) -> dict[str, Any]:
    """A live Gemini error body ({"error": {code, message, status}}) as the google.rpc Status a batch carries."""
    err = reply_body.get("error", {}) if isinstance(reply_body, dict) else {}
    out: dict[str, Any] = {"code": GRPC_CODES.get(err.get("status", ""), 2), "message": err.get("message", "")}
    if err.get("details"):
        out["details"] = err["details"]
    return out


def _gemini_batch_name(batch: Batch) -> str:
    return f"batches/{batch.id}"


def _gemini_operation(c: _Caller, batch: Batch) -> dict[str, Any]:
    """The long-running operation ``batches.get`` returns, at the current clock."""
    now = c.book.clock()
    ph = batch.phase(now)
    name = _gemini_batch_name(batch)
    counts = batch.counts(now)
    n = len(batch.items)
    stats = {"requestCount": n, "successfulRequestCount": counts["succeeded"],
             "failedRequestCount": counts["errored"] + counts["expired"] + counts["canceled"],
             "pendingRequestCount": counts["processing"]}
    changed = [batch.created]
    if ph != "validating":
        changed.append(min(now, batch.t_ip))
    if batch.cancel_at is not None:
        changed.append(batch.cancel_at)
    if ph in TERMINAL:
        changed.append(batch.end)
    meta: dict[str, Any] = {
        "@type": GEMINI_BATCH_TYPE,
        "model": f"models/{batch.model}",
        "displayName": batch.display_name,
        "createTime": _timestamp(batch.created_wall),
        "updateTime": _timestamp(batch.wall(max(changed))),
        "batchStats": {k: str(v) for k, v in stats.items() if v},  # proto3 JSON leaves zeros out
        "state": _GEMINI_STATE[ph],
        "name": name,
    }
    op: dict[str, Any] = {"name": name, "metadata": meta}
    if ph not in TERMINAL:
        return op
    meta["endTime"] = _timestamp(batch.wall(batch.end))
    op["done"] = True
    if ph == "failed":
        op["error"] = {"code": GRPC_CODES["INVALID_ARGUMENT"], "message": batch.failure[0]["message"] if batch.failure else ""}
    elif ph == "cancelled":
        op["error"] = {"code": GRPC_CODES["CANCELLED"], "message": "The batch was cancelled."}
    else:
        output = {"inlinedResponses": {"inlinedResponses": _gemini_responses(c, batch)}}
        meta["output"] = output
        op["response"] = {"@type": GEMINI_OUTPUT_TYPE, **output}
    return op


def _gemini_responses(c: _Caller, batch: Batch) -> list[dict[str, Any]]:
    k = batch.processed(batch.end)
    at = min(batch.end, batch.t_work)
    out = []
    for item in batch.items:
        entry: dict[str, Any]
        if item.index < k:
            status, body = _render(wire_gemini, batch, c.book.scenario.seed, item, at)
            entry = {"response": body} if status == 200 else {"error": _status(body)}
        else:
            entry = {"error": {"code": GRPC_CODES["DEADLINE_EXCEEDED"], "message": _EXPIRED_MESSAGE}}
        if item.metadata is not None:
            entry["metadata"] = item.metadata
        out.append(entry)
    return out


def _get(obj: Mapping[str, Any], camel: str) -> Any:
    """A field by its camelCase or snake_case name (the API's JSON parser takes both)."""
    snake = re.sub(r"(?<!^)([A-Z])", r"_\1", camel).lower()
    return obj.get(camel, obj.get(snake))


async def gemini_create(request: Request, model_id: str) -> Response:
    """``models/{model}:batchGenerateContent`` with inlined requests (the dispatch is in app.gemini_post)."""
    c = _caller(request, "gemini")
    if isinstance(c, Response):
        return c
    if c.quota_exhausted:
        return _refuse(c, Denial("quota_exhausted"))
    model = c.provider.model(model_id)
    if model is None or model.kind != "chat":
        return _refuse(c, Denial("not_found", message=model_id))
    raw, size = await _json_body(request)
    spec = c.provider.batch
    assert spec is not None
    max_bytes = spec.max_bytes or GEMINI_INLINE_MAX_BYTES
    if size > max_bytes:
        return _gemini_error(f"Request payload size exceeds the limit: {max_bytes} bytes.")
    batch_t = raw.get("batch") if isinstance(raw, dict) else None
    if not isinstance(batch_t, dict):
        return _gemini_error("* BatchGenerateContentRequest.batch: batch is required\n")
    config = _get(batch_t, "inputConfig")
    if not isinstance(config, dict):
        return _gemini_error("* BatchGenerateContentRequest.batch.input_config: input_config is required\n")
    if _get(config, "fileName") is not None:  # the sandbox has no Gemini Files API
        return _gemini_error("The sandbox serves inlined requests only (input_config.requests), not input files.")
    reqs = config.get("requests")
    reqs = reqs.get("requests") if isinstance(reqs, dict) else None
    if not isinstance(reqs, list) or not reqs:
        return _gemini_error("* BatchGenerateContentRequest.batch.input_config.requests.requests: requests is required\n")
    items = []
    for i, r in enumerate(reqs):
        if not isinstance(r, dict) or not isinstance(r.get("request"), dict):
            return _gemini_error(f"* BatchGenerateContentRequest.batch.input_config.requests.requests[{i}].request: "
                                 "request is required\n")
        metadata = r.get("metadata")
        key = metadata.get("key") if isinstance(metadata, dict) and isinstance(metadata.get("key"), str) else str(i)
        item = _item(c.provider, i, key, r["request"], lambda body: wire_gemini.parse_chat(body, model_id, False),
                     fault_key=key, metadata=metadata)
        item.model_id = model_id
        items.append(item)
    failure = [_line_error("invalid_request", spec.fail_validation, None)] if spec.fail_validation is not None else None
    display = _get(batch_t, "displayName")
    batch = c.book.open_batch(c.provider, "gemini", c.key_id, items, failure=failure, model=model_id,
                              display_name=display if isinstance(display, str) else "")
    return _json(_gemini_operation(c, batch))


def _gemini_target(request: Request) -> tuple[str, str]:
    """``{id}`` or ``{id}:cancel`` -> (id, method)."""
    rest = request.path_params["rest"]
    ident, _, method = rest.partition(":")
    return ident, method


async def gemini_batch(request: Request) -> Response:
    """GET / DELETE ``batches/{id}``, POST ``batches/{id}:cancel``."""
    c = _caller(request, "gemini")
    if isinstance(c, Response):
        return c
    ident, method = _gemini_target(request)
    batch = _find(c, ident)
    if batch is None:
        return _gemini_error(f"Batch batches/{ident} was not found.", 404, "NOT_FOUND")
    if request.method == "GET" and not method:
        return _json(_gemini_operation(c, batch))
    if request.method == "DELETE" and not method:
        del c.book.batches[c.provider.id][batch.id]
        return _json({})
    if request.method == "POST" and method == "cancel":
        ended = _cancel(c, batch)
        if ended is not None:
            return _gemini_error(f"Batch batches/{ident} has already ended ({_GEMINI_STATE[ended]}).", 400,
                                 "FAILED_PRECONDITION")
        return _json({})
    return _gemini_error(f"Method {method or request.method!r} is not supported on batches.", 404, "NOT_FOUND")


async def gemini_batch_list(request: Request) -> Response:
    c = _caller(request, "gemini")
    if isinstance(c, Response):
        return c
    size = _limit(request, 50, 1000, "pageSize")
    if size is None:
        return _gemini_error("pageSize must be between 1 and 1000.")
    token = request.query_params.get("pageToken")
    page, more = _page(c.book.listed(c.provider.id), lambda b: b.id, token, None, size)
    out: dict[str, Any] = {"operations": [_gemini_operation(c, b) for b in page]}
    if more and page:
        out["nextPageToken"] = page[-1].id
    return _json(out)


# --------------------------------------------------------------------------- Mistral batch jobs


def _counted(messages: list[str]) -> list[dict[str, Any]]:
    """Mistral's job ``errors``: ``[{message, count}]`` (BatchError), each message once."""
    return [{"message": m, "count": n} for m, n in Counter(messages).items()]


def _mistral_items(c: _Caller, files: list[StoredFile], model: str) -> tuple[list[Item], list[dict[str, Any]]]:
    """The job's requests from its input files' lines ``{"custom_id", "body"}``, or the errors that fail it.

    The job's model answers every line (a body's ``model`` is optional, docs.mistral.ai/capabilities/batch);
    the wording of every error is the sandbox's own."""
    spec = c.provider.batch
    assert spec is not None
    max_requests = spec.max_requests or MISTRAL_MAX_REQUESTS
    lines: list[str] = []
    for f in files:
        got, errors = _input_lines(f.data, max_requests, spec.max_bytes or MISTRAL_MAX_BYTES)
        if errors:
            return [], _counted([errors[0]["message"] if len(files) == 1 else f"{f.id}: {errors[0]['message']}"])
        lines += got
    if len(lines) > max_requests:
        return [], _counted([f"The job has {len(lines)} requests; a batch job may contain at most {max_requests}."])
    problems: list[str] = []
    seen: set[str] = set()
    parsed: list[tuple[int, str, dict[str, Any]]] = []
    for n, text in enumerate(lines, start=1):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        cid, body = (obj.get("custom_id"), obj.get("body")) if isinstance(obj, dict) else (None, None)
        if not isinstance(obj, dict):
            problems.append("A line of the input file is not a valid JSON object.")
        elif not isinstance(cid, str) or not cid:
            problems.append("A request of the input file has no custom_id.")
        elif cid in seen:
            problems.append(f"The custom_id '{cid}' is used by more than one request.")
        elif not isinstance(body, dict):
            problems.append("A request of the input file has no body.")
        else:
            seen.add(cid)
            parsed.append((n - 1, cid, {**body, "model": model}))
    if spec.fail_validation is not None:
        problems.append(spec.fail_validation)
    if problems:
        return [], _counted(problems)
    return [_item(c.provider, i, cid, body, wire_openai.parse_chat) for i, cid, body in parsed], []


def _mistral_job(book: BatchBook, batch: Batch) -> dict[str, Any]:
    """Mistral's ``BatchJobOut`` at the current clock (mistralai/client-python models/batchjobout.py).

    ``total_requests`` stays 0 until the job is validated, as litellm's review of its Mistral
    support records (github.com/BerriAI/litellm/pull/40484)."""
    now = book.clock()
    _settle(book, batch, now)
    ph = batch.phase(now)
    counts = batch.counts(now)
    started = batch.failure is None and now >= batch.t_ip and (batch.cancel_at is None or batch.cancel_at >= batch.t_ip)
    return {
        "id": batch.id,
        "object": "batch",
        "input_files": list(batch.input_files),
        "metadata": batch.metadata,
        "endpoint": batch.endpoint,
        "model": batch.model,
        "agent_id": None,
        "output_file": batch.output_file_id,
        "error_file": batch.error_file_id,
        "errors": batch.failure if batch.failure is not None and ph == "failed" else [],
        "status": _MISTRAL_STATUS[ph],
        "created_at": int(batch.created_wall),
        "total_requests": 0 if ph == "validating" or batch.failure is not None else len(batch.items),
        "completed_requests": counts["succeeded"] + counts["errored"],
        "succeeded_requests": counts["succeeded"],
        "failed_requests": counts["errored"],
        "started_at": int(batch.wall(batch.t_ip)) if started else None,
        "completed_at": int(batch.wall(batch.end)) if ph in TERMINAL else None,
    }


async def mistral_job_create(request: Request) -> Response:
    """``POST /v1/batch/jobs`` ``{input_files, endpoint, model, metadata, timeout_hours}`` (BatchJobIn)."""
    c = _caller(request, "openai", ("mistral",))
    if isinstance(c, Response):
        return c
    if c.quota_exhausted:
        return _refuse(c, Denial("quota_exhausted"))
    body, _ = await _json_body(request)
    if not isinstance(body, dict):
        return _openai_error("We could not parse the JSON body of your request.")
    endpoint, model, file_ids = body.get("endpoint"), body.get("model"), body.get("input_files")
    if not isinstance(endpoint, str) or not endpoint:
        return _openai_error("Missing required parameter: 'endpoint'.", param="endpoint", code="missing_required_parameter")
    if endpoint not in OPENAI_ENDPOINTS:  # Mistral batches more endpoints; the sandbox answers chat only
        allowed = ", ".join(f"'{e}'" for e in OPENAI_ENDPOINTS)
        return _openai_error(f"Invalid value: '{endpoint}'. Supported values are: {allowed}.", param="endpoint",
                             code="invalid_value")
    if not isinstance(model, str) or not model:  # or agent_id, which the sandbox does not serve
        return _openai_error("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    if body.get("requests") is not None:
        return _openai_error("The sandbox serves batch jobs on input_files, not inline requests.", param="requests")
    if not isinstance(file_ids, list) or not file_ids or not all(isinstance(x, str) and x for x in file_ids):
        return _openai_error("Missing required parameter: 'input_files'.", param="input_files",
                             code="missing_required_parameter")
    hours = body.get("timeout_hours", 24)
    if not isinstance(hours, int) or isinstance(hours, bool) or not 1 <= hours < 168:
        return _openai_error("Invalid 'timeout_hours': an integer number of hours, lower than 7 days.",
                             param="timeout_hours", code="invalid_value")
    metadata = body.get("metadata")
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        return _openai_error("Invalid 'metadata': a map of strings.", param="metadata", code="invalid_value")
    files = []
    for file_id in file_ids:
        f = _file(c, file_id)
        if isinstance(f, Response):
            return f
        if f.purpose != "batch":
            return _openai_error(f"The input file {f.id} has purpose '{f.purpose}'; a batch input file must be uploaded "
                                 "with purpose 'batch'.", param="input_files")
        files.append(f)
    items, errors = _mistral_items(c, files, model)
    batch = c.book.open_batch(c.provider, "mistral", c.key_id, items, failure=errors or None, model=model,
                              endpoint=endpoint, input_files=tuple(file_ids), metadata=metadata, timeout_hours=hours)
    return _json(_mistral_job(c.book, batch))


def _mistral_find(c: _Caller, job_id: str) -> Batch | Response:
    batch = _find(c, job_id)
    return _openai_error(f"Batch job {job_id} not found.", 404, param="job_id") if batch is None else batch


async def mistral_job_get(request: Request) -> Response:
    c = _caller(request, "openai", ("mistral",))
    if isinstance(c, Response):
        return c
    batch = _mistral_find(c, request.path_params["job_id"])
    return batch if isinstance(batch, Response) else _json(_mistral_job(c.book, batch))


async def mistral_job_list(request: Request) -> Response:
    """``GET /v1/batch/jobs?page=0&page_size=100``: ``{data, object, total}``, newest first."""
    c = _caller(request, "openai", ("mistral",))
    if isinstance(c, Response):
        return c
    try:
        page, size = int(request.query_params.get("page", 0)), int(request.query_params.get("page_size", 100))
    except ValueError:
        page, size = -1, 0
    if page < 0 or size < 1:
        return _openai_error("Invalid 'page' or 'page_size': non-negative and positive integers.", param="page")
    jobs = c.book.listed(c.provider.id)
    status = request.query_params.getlist("status")
    if status:
        jobs = [b for b in jobs if _MISTRAL_STATUS[b.phase(c.book.clock())] in status]
    return _json({"data": [_mistral_job(c.book, b) for b in jobs[page * size:(page + 1) * size]], "object": "list",
                  "total": len(jobs)})


async def mistral_job_cancel(request: Request) -> Response:
    """``POST /v1/batch/jobs/{id}/cancel``: CANCELLATION_REQUESTED, then CANCELLED (refusing an ended job
    is the sandbox's wording)."""
    c = _caller(request, "openai", ("mistral",))
    if isinstance(c, Response):
        return c
    batch = _mistral_find(c, request.path_params["job_id"])
    if isinstance(batch, Response):
        return batch
    ended = _cancel(c, batch)
    if ended is not None:
        return _openai_error(f"Cannot cancel a batch job with status '{_MISTRAL_STATUS[ended]}'.")
    return _json(_mistral_job(c.book, batch))


# --------------------------------------------------------------------------- OpenRouter batches


def _openrouter_error(message: str, status: int = 400) -> Response:
    """OpenRouter's error body, ``{"error": {"code", "message"}}`` (as its live refusals are)."""
    return _json({"error": {"code": status, "message": message}}, status)


def _top_keys(raw: bytes) -> tuple[Any, list[str]]:
    """The JSON body and the order of its top-level keys (json calls the hook for the outermost object last)."""
    keys: list[str] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys[:] = [k for k, _ in pairs]
        return dict(pairs)

    try:
        return json.loads(raw or b"null", object_pairs_hook=hook), keys
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, []


def _openrouter_requests(c: _Caller, reqs: list[Any], model: str) -> tuple[list[Item], list[dict[str, Any]] | None]:
    """The batch's requests ``{"custom_id", "body"}``, or why it fails once validated: "A 202 means
    OpenRouter stored the batch, not that the batch is valid ... If a check fails, the batch moves
    to failed and error.message says why" (openrouter.ai/docs/guides/features/batch-api). The
    wording of each problem is the sandbox's own."""
    spec = c.provider.batch
    assert spec is not None
    problems: list[str] = []
    seen: set[str] = set()
    parsed: list[tuple[int, str, dict[str, Any]]] = []
    for i, r in enumerate(reqs):
        cid = r.get("custom_id") if isinstance(r, dict) else None
        body = r.get("body") if isinstance(r, dict) else None
        if not isinstance(cid, str) or not cid:
            problems.append(f"requests[{i}].custom_id: a non-empty string is required")
        elif cid in seen:
            problems.append(f"requests[{i}].custom_id: '{cid}' is used by more than one request")
        elif not isinstance(body, dict):
            problems.append(f"requests[{i}].body: an object is required")
        elif body.get("model", model) != model:
            problems.append(f"requests[{i}].body.model: '{body['model']}' is not the batch's model '{model}'")
        else:
            seen.add(cid)
            parsed.append((i, cid, {**body, "model": model}))
    if spec.fail_validation is not None:
        problems.append(spec.fail_validation)
    if problems:
        return [], [{"message": "; ".join(problems)}]
    return [_item(c.provider, i, cid, body, wire_openai.parse_chat) for i, cid, body in parsed], None


async def openrouter_batch_create(request: Request, c: _Caller) -> Response:
    """``POST /v1/batches`` ``{endpoint, model, completion_window?, requests}``: 202, ``validating``.

    Refused at once, as the API stream-parses the body (openrouter-batch's wire notes): ``requests``
    before ``endpoint`` or ``model``, a model this provider does not serve (a 400 in OpenRouter's own
    words), more requests or bytes than one batch holds (the sandbox's reading of the 5,000 / 200 MB
    limits; its wording too)."""
    raw = await request.body()
    spec = c.provider.batch
    assert spec is not None
    max_bytes = spec.max_bytes or OPENROUTER_MAX_BYTES
    if len(raw) > max_bytes:
        return _openrouter_error(f"The batch is {len(raw)} bytes; a batch may be at most {max_bytes} bytes.", 413)
    body, keys = _top_keys(raw)
    if not isinstance(body, dict):
        return _openrouter_error("Invalid JSON body")
    for name in ("endpoint", "model"):
        if not isinstance(body.get(name), str) or not body[name]:
            return _openrouter_error(f"{name}: Required")
    reqs = body.get("requests")
    if not isinstance(reqs, list) or not reqs:
        return _openrouter_error("requests: a non-empty array is required")
    if keys.index("requests") < max(keys.index("endpoint"), keys.index("model")):
        return _openrouter_error("endpoint and model must come before requests in the request body")
    endpoint, model, window = body["endpoint"], body["model"], body.get("completion_window", "24h")
    if endpoint not in OPENAI_ENDPOINTS:  # OpenRouter batches responses, messages and embeddings too
        return _openrouter_error(f"endpoint: '{endpoint}' is not supported here (the sandbox answers "
                                 f"{', '.join(OPENAI_ENDPOINTS)})")
    if window != "24h":
        return _openrouter_error(f"completion_window: '{window}' is not supported (24h)")
    served = c.provider.model(model)
    if served is None or served.kind != "chat":
        return _refuse(c, Denial("not_found", message=model))
    max_requests = spec.max_requests or OPENROUTER_MAX_REQUESTS
    if len(reqs) > max_requests:
        return _openrouter_error(f"requests: a batch holds at most {max_requests} requests, not {len(reqs)}")
    items, failure = _openrouter_requests(c, reqs, model)
    batch = c.book.open_batch(c.provider, "openrouter", c.key_id, items, failure=failure, model=model,
                              endpoint=endpoint, completion_window=window)
    return _json(_openrouter_batch(c, batch), 202)


def _openrouter_results(c: _Caller, batch: Batch) -> list[dict[str, Any]]:
    """The requests that ran, in input order: ``{id, custom_id, response: {status_code, request_id, body}, error}``
    or ``{..., response: null, error: {message, type, param, error_type}}`` (the SDKs' Result and
    ResultError). A request the window closed on first has no row (the sandbox's reading)."""
    k = batch.processed(batch.end)
    at = min(batch.end, batch.t_work)
    out = []
    for item in batch.items[:k]:
        r = rng(batch.id, "result", item.index)
        status, body = _render(wire_openai, batch, c.book.scenario.seed, item, at)
        entry: dict[str, Any] = {"id": f"gen-batch-{r.getrandbits(64):016x}", "custom_id": item.custom_id}
        if status == 200:
            entry["response"] = {"status_code": 200, "request_id": f"{r.getrandbits(128):032x}", "body": body}
            entry["error"] = None
        else:
            err = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), dict) else {}
            reason = item.denial.reason if item.denial is not None else "server_error"
            entry["response"] = None
            entry["error"] = {"message": str(err.get("message") or ""), "param": None,
                              "type": "server_error" if status >= 500 else "invalid_request_error",
                              "error_type": _OPENROUTER_ERROR_TYPE.get(reason, "unmapped")}
        out.append(entry)
    return out


def _openrouter_batch(c: _Caller, batch: Batch) -> dict[str, Any]:
    """OpenRouter's ``BatchObject`` at the current clock (openrouter.ai/docs/client-sdks/*/batchobject).

    Results are inline once the batch is terminal; a cancelled batch returns none ("OpenRouter
    returns no result rows for a cancelled batch"), nor does a failed one. ``usage.cost`` is left
    out: the sandbox knows no prices."""
    now = c.book.clock()
    ph = batch.phase(now)
    counts = batch.counts(now)
    validated = ph != "validating" and batch.failure is None
    status = ph if ph != "cancelling" else _OPENROUTER_CANCELLING if now >= batch.t_ip else "validating"
    results = (_openrouter_results(c, batch) if ph in ("completed", "expired") else []) if ph in TERMINAL else None
    usage_in, usage_out = _usage_sum(c.book, batch, batch.processed(now))
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": batch.model,
        "provider": wire_openai._upstream(batch.model) if validated else None,  # the upstream the live route names
        "status": status,
        "completion_window": batch.completion_window,
        "created_at": int(batch.created_wall),
        "expires_at": int(batch.created_wall) + WINDOW_S,
        "finalized_at": int(batch.wall(batch.end)) if ph in TERMINAL else None,
        "error": {"message": batch.failure[0]["message"]} if batch.failure is not None and ph == "failed" else None,
        "request_counts": {"total": len(batch.items) if validated else 0, "completed": counts["succeeded"],
                           "failed": counts["errored"] + counts["expired"] + counts["canceled"]},
        "results": results,
        "usage": {"prompt_tokens": usage_in, "completion_tokens": usage_out, "total_tokens": usage_in + usage_out}
        if validated else None,
    }


def _openrouter_find(c: _Caller, batch_id: str) -> Batch | Response:
    batch = _find(c, batch_id)
    return _openrouter_error(f"Batch {batch_id} not found", 404) if batch is None else batch


def openrouter_batch_get(c: _Caller, batch_id: str) -> Response:
    batch = _openrouter_find(c, batch_id)
    return batch if isinstance(batch, Response) else _json(_openrouter_batch(c, batch))


def openrouter_batch_cancel(c: _Caller, batch_id: str) -> Response:
    """The batch "in its current status": it stays in_progress until the cancel takes (``cancel_after_s``);
    "once it has a final status the call returns 409" (openrouter.ai/docs/api/api-reference/batch/cancel-a-batch).
    The per-organization 403 is not simulated."""
    batch = _openrouter_find(c, batch_id)
    if isinstance(batch, Response):
        return batch
    ended = _cancel(c, batch)
    if ended is not None:
        return _openrouter_error(f"Batch {batch.id} has already ended ({ended}) and can no longer be cancelled.", 409)
    return _json(_openrouter_batch(c, batch))


ROUTES: list[Route] = [
    Route("/{provider}/v1/files", openai_file_create, methods=["POST"]),
    Route("/{provider}/v1/files", openai_file_list, methods=["GET"]),
    Route("/{provider}/v1/files/{file_id}", openai_file_get, methods=["GET"]),
    Route("/{provider}/v1/files/{file_id}", openai_file_delete, methods=["DELETE"]),
    Route("/{provider}/v1/files/{file_id}/content", openai_file_content, methods=["GET"]),
    Route("/{provider}/v1/batches", openai_batch_create, methods=["POST"]),
    Route("/{provider}/v1/batches", openai_batch_list, methods=["GET"]),
    Route("/{provider}/v1/batches/{batch_id}", openai_batch_get, methods=["GET"]),
    Route("/{provider}/v1/batches/{batch_id}/cancel", openai_batch_cancel, methods=["POST"]),
    Route("/{provider}/v1/batch/jobs", mistral_job_create, methods=["POST"]),
    Route("/{provider}/v1/batch/jobs", mistral_job_list, methods=["GET"]),
    Route("/{provider}/v1/batch/jobs/{job_id}", mistral_job_get, methods=["GET"]),
    Route("/{provider}/v1/batch/jobs/{job_id}/cancel", mistral_job_cancel, methods=["POST"]),
    Route("/{provider}/v1/messages/batches", anthropic_batch_create, methods=["POST"]),
    Route("/{provider}/v1/messages/batches", anthropic_batch_list, methods=["GET"]),
    Route("/{provider}/v1/messages/batches/{batch_id}", anthropic_batch_get, methods=["GET"]),
    Route("/{provider}/v1/messages/batches/{batch_id}", anthropic_batch_delete, methods=["DELETE"]),
    Route("/{provider}/v1/messages/batches/{batch_id}/cancel", anthropic_batch_cancel, methods=["POST"]),
    Route("/{provider}/v1/messages/batches/{batch_id}/results", anthropic_batch_results, methods=["GET"]),
    Route("/{provider}/v1beta/batches", gemini_batch_list, methods=["GET"]),
    Route("/{provider}/v1beta/batches/{rest}", gemini_batch, methods=["GET", "POST", "DELETE"]),
]
