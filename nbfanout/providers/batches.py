"""Provider batch APIs on the wire: create a batch of chat requests, read its status and results, cancel it.

One class per API, each on top of its wire format's chat adapter, which writes every request's
body and reads every answer exactly as a live call does (so a batch answer and a live answer
of the same model are the same ``ChatResponse``, and a failure inside a batch is classified by
the same ``classify_error``):

- ``OpenAIBatches``: a JSONL file uploaded with ``POST /files`` (``purpose=batch``), then
  ``POST /batches``; ``GET /batches/{id}``; the results in the files named by ``output_file_id``
  and ``error_file_id`` (``GET /files/{id}/content``); ``POST /batches/{id}/cancel``. OpenAI
  (developers.openai.com/api/docs/guides/batch, api/reference/resources/batches) and the
  providers that copy it: Groq (console.groq.com/docs/batch), Together
  (docs.together.ai/docs/inference/batch/overview).
- ``AnthropicBatches``: ``POST /messages/batches`` with the requests inline; ``GET
  /messages/batches/{id}``; ``GET .../{id}/results`` (JSONL); ``POST .../{id}/cancel``
  (docs.anthropic.com/en/api/creating-message-batches, .../retrieving-message-batch-results).
- ``GeminiBatches``: Gemini's batch mode with inlined requests, ``POST
  models/{model}:batchGenerateContent``; ``GET batches/{id}`` (a long-running operation whose
  ``metadata.state`` is a ``BATCH_STATE_*``); the answers inline in the ended operation, in the
  order of the requests; ``POST batches/{id}:cancel`` (ai.google.dev/api/batch-api,
  ai.google.dev/gemini-api/docs/batch-api: inline batches up to 20 MB).
- ``MistralBatches``: the JSONL file uploaded as OpenAI's is (``POST /files``, ``purpose=batch``), lines
  ``{"custom_id", "body"}``; ``POST /batch/jobs`` ``{input_files, endpoint, model, metadata,
  timeout_hours}``; ``GET /batch/jobs/{id}`` (``status`` QUEUED / RUNNING / SUCCESS / FAILED /
  TIMEOUT_EXCEEDED / CANCELLATION_REQUESTED / CANCELLED, ``total_requests``, ``succeeded_requests``,
  ``failed_requests``, ``output_file``, ``error_file``, ``errors: [{message, count}]``); the files
  read with ``GET /files/{id}/content``; ``POST /batch/jobs/{id}/cancel``
  (docs.mistral.ai/studio-api/batch-processing, docs.mistral.ai/capabilities/batch; the job and error
  objects are mistralai/client-python's ``BatchJobIn`` / ``BatchJobOut`` / ``BatchError``). Output
  lines are OpenAI's shape, ``{"custom_id", "response": {"status_code", "body"}}`` (read so by
  litellm's ``llms/mistral/batches/transformation.py``, Mistral's own cookbook code and
  bespokelabsai/curator); the error file's lines are not documented: they are read as OpenAI's are
  (a ``response`` with the refusal's status and body, or an ``error`` object).
- ``OpenRouterBatches``: ``POST /batches`` under the chat base URL (``https://openrouter.ai/api/v1``)
  with ``endpoint`` and ``model`` before an inline ``requests`` array of ``{"custom_id", "body"}``
  (the API parses the body as a stream: openrouter-batch's wire notes; ``callback_url`` "must appear
  before requests", BatchSubmitBody); answered ``202`` with ``status: "validating"``; ``GET
  /batches/{id}`` carries ``request_counts {total, completed, failed}``, ``error.message`` when it
  failed and, once terminal, ``results: [{id, custom_id, response: {status_code, request_id, body},
  error: {message, type, param, error_type}}]`` inline (there is no download endpoint);
  ``POST /batches/{id}/cancel`` answers the batch as it is (``in_progress`` until the provider
  confirms), and a cancelled batch returns no result rows (openrouter.ai/docs/guides/features/batch-api,
  openrouter.ai/docs/batch-quickstart, openrouter.ai/docs/api/api-reference/batch/cancel-a-batch,
  the SDKs' BatchObject / Result / ResultError / ApiErrorType pages). The path is the one the current
  guide and API reference give, ``/api/v1/batches`` (the chat base URL's own ``/batches``); clients
  written in 2026 also call ``/api/beta/batches`` (openrouter-batch 0.1.2, "verified against the live
  API on 2026-08-29"), which is not confirmed to answer still and which this client does not call.
  Not confirmed either: whether a model's base slug is taken or only its ``:batch`` variant (the
  guide lists "models with a batch variant"); a refusal fails the batch with OpenRouter's message.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from nbfanout.core.errors import ErrorCategory, ErrorInfo, ProviderError, classify_error
from nbfanout.providers._http import HTTPAdapter, join_url
from nbfanout.providers.base import ChatRequest, ChatResponse, Endpoint

__all__ = ["BatchAPI", "BatchItem", "BatchStatus", "batch_api_for"]


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """A batch as the provider reports it: its own status word, nbfanout's ``state`` and the counts."""

    state: str  # "running"; "ended": results can be read; "failed": the batch never ran (``message`` says why)
    provider_status: str
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    message: str = ""
    expired: bool = False  # ended because its completion window passed: requests without a result expired
    cancelled: bool = False  # ended because it was cancelled: requests without a result were cancelled

    @property
    def done(self) -> bool:
        return self.state != "running"

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One request's outcome inside a batch: an answer, or why there is none."""

    custom_id: str
    response: ChatResponse | None = None
    error: ErrorInfo | None = None


def _jsonl(text: str) -> list[Mapping[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def expired_error(provider: str) -> ErrorInfo:
    """A request the provider did not run before its batch's completion window passed."""
    return ErrorInfo(ErrorCategory.TIMEOUT, True, "the batch's completion window passed before this request ran "
                     "(expired); rerun it live or in a new batch", provider=provider, provider_code="batch_expired")


def cancelled_error(provider: str) -> ErrorInfo:
    return ErrorInfo(ErrorCategory.CANCELLED, False, "the batch was cancelled before this request ran",
                     provider=provider, provider_code="batch_cancelled")


class BatchAPI(abc.ABC):
    """What every batch API does; ``adapter`` is the wire's chat adapter."""

    #: The adapter's wire format this API belongs to.
    wire: str = ""

    def __init__(self, adapter: HTTPAdapter) -> None:
        self.adapter = adapter

    @abc.abstractmethod
    def entry(self, custom_id: str, request: ChatRequest) -> dict[str, Any]:
        """One request as the batch's input holds it."""

    def entry_size(self, entry: Mapping[str, Any]) -> int:
        """Bytes this entry adds to the batch's input (a JSONL line, or an element of a JSON body)."""
        return len(json.dumps(entry, ensure_ascii=False).encode("utf-8")) + 1

    @abc.abstractmethod
    async def create(self, client: httpx.AsyncClient, endpoint: Endpoint, entries: Sequence[Mapping[str, Any]],
                     *, model: str, label: str, timeout: float | None = None) -> tuple[str, dict[str, Any]]:
        """Create the batch of ``model``'s requests; returns its id and what else must be kept to read it later."""

    @abc.abstractmethod
    async def status(self, client: httpx.AsyncClient, endpoint: Endpoint, batch_id: str,
                     *, timeout: float | None = None) -> BatchStatus: ...

    @abc.abstractmethod
    async def results(self, client: httpx.AsyncClient, endpoint: Endpoint, batch_id: str,
                      requests: Mapping[str, ChatRequest], *, timeout: float | None = None) -> list[BatchItem]:
        """Every result the provider holds for an ended batch (``requests`` by custom id, to read answers)."""

    @abc.abstractmethod
    async def cancel(self, client: httpx.AsyncClient, endpoint: Endpoint, batch_id: str,
                     *, timeout: float | None = None) -> BatchStatus: ...

    # --- shared -----------------------------------------------------------------------------
    def _id(self, endpoint: Endpoint, answer: Any, what: str, key: str = "id") -> str:
        """The id the provider gave what was just created; a server error when its answer has none."""
        ident = str(answer.get(key) or "") if isinstance(answer, Mapping) else ""
        if not ident:
            raise self.adapter._invalid(endpoint, 200, f"{what} has no {key!r}")
        return ident

    async def _json(self, client: httpx.AsyncClient, endpoint: Endpoint, method: str, url: str,
                    timeout: float | None, **kwargs: Any) -> Any:
        response = await self.adapter._send(client, endpoint, method, url, timeout=timeout, **kwargs)
        return self.adapter._json(endpoint, response)

    def _answer(self, endpoint: Endpoint, request: ChatRequest | None, custom_id: str, status: int,
                body: Any) -> BatchItem:
        """A result line's response body read as the live call reads its own; any failure classified alike."""
        if request is None:
            return BatchItem(custom_id, error=ErrorInfo(ErrorCategory.SERVER_ERROR, False,
                                                        f"the provider returned a result for {custom_id!r}, "
                                                        "which this batch never sent", provider=endpoint.provider))
        try:
            return BatchItem(custom_id, response=self.adapter.read_body(endpoint, request, body, status))
        except ProviderError as exc:
            return BatchItem(custom_id, error=exc.info)


class OpenAIBatches(BatchAPI):
    """OpenAI's files + batches, and the providers that copy them (see the module docstring).

    Mistral's and OpenRouter's batch APIs differ from it in a few places only, which the class
    attributes and the ``_job_body`` / ``_counts`` / ``_message`` / ``_lines`` hooks say."""

    wire = "openai"
    #: One batch's input lines all call this endpoint (the batch object's ``endpoint``).
    endpoint_path = "/v1/chat/completions"
    #: Where the batch objects live under the provider's base URL.
    jobs_path = "batches"
    #: Whether each input line names its method and URL (Mistral's and OpenRouter's hold only custom_id and body).
    line_routes = True
    #: The batch object's fields that name its result files, output first.
    file_fields: tuple[str, ...] = ("output_file_id", "error_file_id")
    # https://developers.openai.com/api/reference/resources/batches: the batch object's statuses
    _STATE = {"validating": "running", "in_progress": "running", "finalizing": "running", "cancelling": "running",
              "completed": "ended", "expired": "ended", "cancelled": "ended", "failed": "failed"}
    _EXPIRED, _CANCELLED = "expired", "cancelled"

    def entry(self, custom_id: str, request: ChatRequest) -> dict[str, Any]:
        entry: dict[str, Any] = {"custom_id": custom_id}
        if self.line_routes:
            entry.update(method="POST", url=self.endpoint_path)
        entry["body"] = self.adapter.chat_body(request, stream=False)
        return entry

    async def create(self, client: httpx.AsyncClient, endpoint: Endpoint, entries: Sequence[Mapping[str, Any]],
                     *, model: str, label: str, timeout: float | None = None) -> tuple[str, dict[str, Any]]:
        data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode("utf-8")
        uploaded = await self._json(client, endpoint, "POST", join_url(endpoint.base_url, "files"), timeout,
                                    data={"purpose": "batch"},
                                    files={"file": (f"{label}.jsonl", data, "application/jsonl")})
        file_id = self._id(endpoint, uploaded, "the file upload's answer")
        batch = await self._json(client, endpoint, "POST", join_url(endpoint.base_url, self.jobs_path), timeout,
                                 json=self._job_body(file_id, model, label))
        return self._id(endpoint, batch, "the batch's answer"), {"input_file_id": file_id}

    def _job_body(self, file_id: str, model: str, label: str) -> dict[str, Any]:
        return {"input_file_id": file_id, "endpoint": self.endpoint_path, "completion_window": "24h",
                "metadata": {"nbfanout": label}}

    def _counts(self, batch: Mapping[str, Any]) -> tuple[int, int, int]:
        """(total, succeeded, failed) as the batch object reports them."""
        counts = batch.get("request_counts") or {}
        return int(counts.get("total") or 0), int(counts.get("completed") or 0), int(counts.get("failed") or 0)

    def _message(self, batch: Mapping[str, Any]) -> str:
        """Why the batch failed, in the provider's words."""
        errors = ((batch.get("errors") or {}).get("data") or []) if isinstance(batch.get("errors"), Mapping) else []
        return "; ".join(
            f"{e.get('message') or e.get('code')}" + (f" (line {e['line']})" if e.get("line") else "")
            for e in errors if isinstance(e, Mapping))

    def _state(self, word: str, batch: Mapping[str, Any]) -> str:
        return self._STATE.get(word, "running")

    def _status(self, batch: Any) -> BatchStatus:
        batch = batch if isinstance(batch, Mapping) else {}
        word = str(batch.get("status") or "")
        return BatchStatus(self._state(word, batch), word, *self._counts(batch), self._message(batch),
                           expired=word == self._EXPIRED, cancelled=word == self._CANCELLED)

    async def _get(self, client: httpx.AsyncClient, endpoint: Endpoint, batch_id: str, timeout: float | None) -> Any:
        return await self._json(client, endpoint, "GET", join_url(endpoint.base_url, f"{self.jobs_path}/{batch_id}"),
                                timeout)

    async def status(self, client: httpx.AsyncClient, endpoint: Endpoint, batch_id: str,
                     *, timeout: float | None = None) -> BatchStatus:
        return self._status(await self._get(client, endpoint, batch_id, timeout))

    async def results(self, client: httpx.AsyncClient, endpoint: Endpoint, batch_id: str,
                      requests: Mapping[str, ChatRequest], *, timeout: float | None = None) -> list[BatchItem]:
        batch = await self._get(client, endpoint, batch_id, timeout)
        lines = await self._lines(client, endpoint, batch if isinstance(batch, Mapping) else {}, timeout)
        return [self._item(endpoint, line, requests) for line in lines if isinstance(line, Mapping)]

    async def _lines(self, client: httpx.AsyncClient, endpoint: Endpoint, batch: Mapping[str, Any],
                     timeout: float | None) -> list[Any]:
        """Every result line of an ended batch: here, the lines of its output and error files."""
        lines: list[Any] = []
        for key in self.file_fields:
            file_id = batch.get(key)
            if not file_id:
                continue
            response = await self.adapter._send(client, endpoint, "GET",
                                                join_url(endpoint.base_url, f"files/{file_id}/content"),
                                                timeout=timeout)
            lines.extend(_jsonl(response.text))
        return lines

    def _item(self, endpoint: Endpoint, line: Mapping[str, Any], requests: Mapping[str, ChatRequest]) -> BatchItem:
        """One output or error line: ``{"custom_id", "response": {"status_code", "body"}, "error"}``."""
        custom_id = str(line.get("custom_id") or "")
        response = line.get("response") if isinstance(line.get("response"), Mapping) else None
        error = line.get("error") if isinstance(line.get("error"), Mapping) else None
        if isinstance(line.get("error"), str) and line["error"]:  # a bare message (an undocumented error line)
            error = {"message": line["error"]}
        if response is not None and int(response.get("status_code") or 0) // 100 == 2 and not error:
            return self._answer(endpoint, requests.get(custom_id), custom_id, int(response["status_code"]),
                                response.get("body"))
        if error is not None and error.get("code") == "batch_expired":
            return BatchItem(custom_id, error=expired_error(endpoint.provider))
        if error is not None and error.get("code") == "batch_cancelled":
            return BatchItem(custom_id, error=cancelled_error(endpoint.provider))
        status = int(response.get("status_code") or 0) if response is not None else None
        body = response.get("body") if response is not None and response.get("body") else {"error": error or {}}
        return BatchItem(custom_id, error=self.adapter._safe(endpoint, classify_error(
            endpoint.provider, status or None, None, json.dumps(body).encode())).info)

    async def cancel(self, client: httpx.AsyncClient, endpoint: Endpoint, batch_id: str,
                     *, timeout: float | None = None) -> BatchStatus:
        batch = await self._json(client, endpoint, "POST",
                                 join_url(endpoint.base_url, f"{self.jobs_path}/{batch_id}/cancel"), timeout)
        return self._status(batch)


class MistralBatches(OpenAIBatches):
    """Mistral's batch jobs: OpenAI's file upload and result lines, its own job object (module docstring)."""

    jobs_path = "batch/jobs"
    line_routes = False  # {"custom_id", "body"}: the endpoint is the job's
    file_fields = ("output_file", "error_file")
    # BatchJobStatus (mistralai/client-python); CANCELLATION_REQUESTED is still running
    _STATE = {"QUEUED": "running", "RUNNING": "running", "CANCELLATION_REQUESTED": "running",
              "SUCCESS": "ended", "TIMEOUT_EXCEEDED": "ended", "CANCELLED": "ended", "FAILED": "failed"}
    _EXPIRED, _CANCELLED = "TIMEOUT_EXCEEDED", "CANCELLED"
    #: Mistral's default, and below its limit of 7 days (docs.mistral.ai/capabilities/batch, FAQ).
    timeout_hours = 24

    def _job_body(self, file_id: str, model: str, label: str) -> dict[str, Any]:
        return {"input_files": [file_id], "endpoint": self.endpoint_path, "model": model,
                "metadata": {"nbfanout": label}, "timeout_hours": self.timeout_hours}

    def _counts(self, batch: Mapping[str, Any]) -> tuple[int, int, int]:
        return (int(batch.get("total_requests") or 0), int(batch.get("succeeded_requests") or 0),
                int(batch.get("failed_requests") or 0))

    def _message(self, batch: Mapping[str, Any]) -> str:
        errors = batch.get("errors") if isinstance(batch.get("errors"), list) else []
        return "; ".join(f"{e.get('message')}" + (f" (x{e['count']})" if int(e.get("count") or 1) > 1 else "")
                         for e in errors if isinstance(e, Mapping) and e.get("message"))

    def _state(self, word: str, batch: Mapping[str, Any]) -> str:
        state = super()._state(word, batch)
        # A FAILED job that still wrote result files ran some requests: read them (Mistral does not
        # document what a FAILED job leaves; a job refused in validation has neither file).
        return "ended" if state == "failed" and any(batch.get(k) for k in self.file_fields) else state


class OpenRouterBatches(OpenAIBatches):
    """OpenRouter's batches: requests inline, results inline in the batch object (module docstring)."""

    line_routes = False  # {"custom_id", "body"}
    file_fields = ()
    # ApiErrorType (openrouter.ai/docs/client-sdks/*/apierrortype) -> the HTTP status a live call fails with
    _STATUS_OF = {"context_length_exceeded": 400, "max_tokens_exceeded": 400, "token_limit_exceeded": 400,
                  "string_too_long": 400, "authentication": 401, "payment_required": 402, "permission_denied": 403,
                  "not_found": 404, "precondition_failed": 412, "payload_too_large": 413, "unprocessable": 422,
                  "rate_limit_exceeded": 429, "invalid_request": 400, "invalid_prompt": 400,
                  "content_policy_violation": 400, "refusal": 400, "invalid_image": 400, "image_too_large": 400,
                  "image_too_small": 400, "unsupported_image_format": 400, "image_not_found": 400,
                  "image_download_failed": 400, "server": 500, "unmapped": 500, "provider_unavailable": 503,
                  "provider_overloaded": 503, "timeout": 504}

    async def create(self, client: httpx.AsyncClient, endpoint: Endpoint, entries: Sequence[Mapping[str, Any]],
                     *, model: str, label: str, timeout: float | None = None) -> tuple[str, dict[str, Any]]:
        # endpoint and model come before requests: OpenRouter reads the body as a stream and answers
        # 400 otherwise (httpx writes a dict's keys in this order)
        body = {"endpoint": self.endpoint_path, "model": model, "completion_window": "24h", "requests": list(entries)}
        batch = await self._json(client, endpoint, "POST", join_url(endpoint.base_url, self.jobs_path), timeout,
                                 json=body)
        return self._id(endpoint, batch, "the batch's answer"), {}

    def _message(self, batch: Mapping[str, Any]) -> str:
        error = batch.get("error")
        return str(error.get("message") or "") if isinstance(error, Mapping) else ""

    async def _lines(self, client: httpx.AsyncClient, endpoint: Endpoint, batch: Mapping[str, Any],
                     timeout: float | None) -> list[Any]:
        return list(batch.get("results") or ())  # inline; none for a cancelled batch

    def _item(self, endpoint: Endpoint, line: Mapping[str, Any], requests: Mapping[str, ChatRequest]) -> BatchItem:
        """A result: ``response`` or ``error`` ``{message, type, param, error_type}``, never both."""
        error = line.get("error")
        if not isinstance(error, Mapping) or not error:
            return super()._item(endpoint, line, requests)
        kind = str(error.get("error_type") or "")
        body = {"error": {"message": str(error.get("message") or ""), "code": kind or error.get("type"),
                          **({"param": error["param"]} if error.get("param") else {})}}
        return BatchItem(str(line.get("custom_id") or ""), error=self.adapter._safe(endpoint, classify_error(
            endpoint.provider, self._STATUS_OF.get(kind), None, json.dumps(body).encode())).info)


class AnthropicBatches(BatchAPI):
    """Anthropic's Message Batches (see the module docstring)."""

    wire = "anthropic"
    # docs.anthropic.com/en/api/errors: an errored result's error type, as the HTTP status it stands for
    _STATUS_OF = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
                  "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
                  "rate_limit_error": 429, "api_error": 500, "overloaded_error": 529}

    def entry(self, custom_id: str, request: ChatRequest) -> dict[str, Any]:
        params = self.adapter.chat_body(request, stream=False)
        params.pop("stream", None)
        return {"custom_id": custom_id, "params": params}

    async def create(self, client: httpx.AsyncClient, endpoint: Endpoint, entries: Sequence[Mapping[str, Any]],
                     *, model: str, label: str, timeout: float | None = None) -> tuple[str, dict[str, Any]]:
        batch = await self._json(client, endpoint, "POST", join_url(endpoint.base_url, "messages/batches"), timeout,
                                 json={"requests": list(entries)})
        return self._id(endpoint, batch, "the message batch's answer"), {}

    @staticmethod
    def _status(batch: Any) -> BatchStatus:
        batch = batch if isinstance(batch, Mapping) else {}
        word = str(batch.get("processing_status") or "")
        c = {k: int(v or 0) for k, v in (batch.get("request_counts") or {}).items()}
        total = sum(c.get(k, 0) for k in ("processing", "succeeded", "errored", "canceled", "expired"))
        return BatchStatus("ended" if word == "ended" else "running", word, total, c.get("succeeded", 0),
                           c.get("errored", 0) + c.get("canceled", 0) + c.get("expired", 0),
                           expired=c.get("expired", 0) > 0, cancelled=batch.get("cancel_initiated_at") is not None)

    async def status(self, client: httpx.AsyncClient, endpoint: Endpoint, batch_id: str,
                     *, timeout: float | None = None) -> BatchStatus:
        return self._status(await self._json(client, endpoint, "GET",
                                             join_url(endpoint.base_url, f"messages/batches/{batch_id}"), timeout))

    async def results(self, client: httpx.AsyncClient, endpoint: Endpoint, batch_id: str,
                      requests: Mapping[str, ChatRequest], *, timeout: float | None = None) -> list[BatchItem]:
        batch = await self._json(client, endpoint, "GET",
                                 join_url(endpoint.base_url, f"messages/batches/{batch_id}"), timeout)
        url = batch.get("results_url") if isinstance(batch, Mapping) else None
        url = str(url) if url else join_url(endpoint.base_url, f"messages/batches/{batch_id}/results")
        response = await self.adapter._send(client, endpoint, "GET", url, timeout=timeout)
        return [self._item(endpoint, line, requests) for line in _jsonl(response.text)]

    def _item(self, endpoint: Endpoint, line: Mapping[str, Any], requests: Mapping[str, ChatRequest]) -> BatchItem:
        """``{"custom_id", "result": {"type": "succeeded" | "errored" | "canceled" | "expired", ...}}``."""
        custom_id = str(line.get("custom_id") or "")
        result = line.get("result") if isinstance(line.get("result"), Mapping) else {}
        kind = result.get("type")
        if kind == "succeeded":
            return self._answer(endpoint, requests.get(custom_id), custom_id, 200, result.get("message"))
        if kind == "expired":
            return BatchItem(custom_id, error=expired_error(endpoint.provider))
        if kind == "canceled":
            return BatchItem(custom_id, error=cancelled_error(endpoint.provider))
        envelope = result.get("error") if isinstance(result.get("error"), Mapping) else {}
        inner = envelope.get("error") if isinstance(envelope.get("error"), Mapping) else envelope
        status = self._STATUS_OF.get(str(inner.get("type") or ""), 500)
        return BatchItem(custom_id, error=self.adapter._safe(endpoint, classify_error(
            endpoint.provider, status, None, json.dumps(envelope or {"error": inner}).encode())).info)

    async def cancel(self, client: httpx.AsyncClient, endpoint: Endpoint, batch_id: str,
                     *, timeout: float | None = None) -> BatchStatus:
        return self._status(await self._json(client, endpoint, "POST",
                                             join_url(endpoint.base_url, f"messages/batches/{batch_id}/cancel"),
                                             timeout))


class GeminiBatches(BatchAPI):
    """Gemini's batch mode with inlined requests (see the module docstring)."""

    wire = "gemini"
    # BatchState (ai.google.dev/api/batch-api#BatchState); the SDKs also show JOB_STATE_* for the same states
    _STATE = {"SUCCEEDED": "ended", "CANCELLED": "ended", "EXPIRED": "ended", "FAILED": "failed"}
    # google.rpc.Code -> the HTTP status a live call fails with (cloud.google.com/apis/design/errors)
    _HTTP_OF = {1: 499, 3: 400, 4: 504, 5: 404, 7: 403, 8: 429, 9: 400, 13: 500, 14: 503, 16: 401}
    _NAME_OF = {1: "CANCELLED", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND", 7: "PERMISSION_DENIED",
                8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION", 13: "INTERNAL", 14: "UNAVAILABLE",
                16: "UNAUTHENTICATED"}

    def entry(self, custom_id: str, request: ChatRequest) -> dict[str, Any]:
        return {"request": self.adapter.chat_body(request, stream=False), "metadata": {"key": custom_id}}

    @staticmethod
    def _name(batch_id: str) -> str:
        return batch_id if batch_id.startswith("batches/") else f"batches/{batch_id}"

    async def create(self, client: httpx.AsyncClient, endpoint: Endpoint, entries: Sequence[Mapping[str, Any]],
                     *, model: str, label: str, timeout: float | None = None) -> tuple[str, dict[str, Any]]:
        path = model if model.startswith("models/") else f"models/{model}"
        op = await self._json(client, endpoint, "POST", join_url(endpoint.base_url, f"{path}:batchGenerateContent"),
                              timeout, json={"batch": {"displayName": label,
                                                       "inputConfig": {"requests": {"requests": list(entries)}}}})
        name = str((op.get("metadata") or {}).get("name") or op.get("name") or "") if isinstance(op, Mapping) else ""
        if not name:
            raise self.adapter._invalid(endpoint, 200, "the batch operation's answer has no 'name'")
        return name, {}

    def _word(self, op: Mapping[str, Any]) -> str:
        word = str((op.get("metadata") or {}).get("state") or "")
        return word.removeprefix("BATCH_STATE_").removeprefix("JOB_STATE_")

    def _status(self, op: Any) -> BatchStatus:
        op = op if isinstance(op, Mapping) else {}
        word = self._word(op)
        stats = (op.get("metadata") or {}).get("batchStats") or {}
        count = lambda k: int(stats.get(k) or 0)  # noqa: E731 -- int64 fields come as strings
        state = self._STATE.get(word, "running")
        if op.get("done") and state == "running":  # a finished operation is final whatever its state says
            state = "failed" if op.get("error") and not op.get("response") else "ended"
        error = op.get("error") if isinstance(op.get("error"), Mapping) else {}
        return BatchStatus(state, f"BATCH_STATE_{word}" if word else "", count("requestCount"),
                           count("successfulRequestCount"), count("failedRequestCount"),
                           str(error.get("message") or "") if state == "failed" else "",
                           expired=word == "EXPIRED", cancelled=word == "CANCELLED")

    async def status(self, client: httpx.AsyncClient, endpoint: Endpoint, batch_id: str,
                     *, timeout: float | None = None) -> BatchStatus:
        return self._status(await self._json(client, endpoint, "GET", join_url(endpoint.base_url,
                                                                                self._name(batch_id)), timeout))

    async def results(self, client: httpx.AsyncClient, endpoint: Endpoint, batch_id: str,
                      requests: Mapping[str, ChatRequest], *, timeout: float | None = None) -> list[BatchItem]:
        op = await self._json(client, endpoint, "GET", join_url(endpoint.base_url, self._name(batch_id)), timeout)
        op = op if isinstance(op, Mapping) else {}
        output = op.get("response") or (op.get("metadata") or {}).get("output") or {}
        inlined = (output.get("inlinedResponses") or {}).get("inlinedResponses") or []
        expired = self._word(op) == "EXPIRED"
        ids = list(requests)  # the answers come in the order of the requests; metadata is not always echoed
        items = []
        for k, entry in enumerate(inlined):
            if not isinstance(entry, Mapping):
                continue
            key = (entry.get("metadata") or {}).get("key") if isinstance(entry.get("metadata"), Mapping) else None
            custom_id = str(key) if key else ids[k] if k < len(ids) else f"#{k}"
            items.append(self._item(endpoint, custom_id, entry, requests, expired))
        return items

    def _item(self, endpoint: Endpoint, custom_id: str, entry: Mapping[str, Any],
              requests: Mapping[str, ChatRequest], expired: bool) -> BatchItem:
        """``{"response": GenerateContentResponse}`` or ``{"error": google.rpc.Status}``."""
        if entry.get("response") is not None:
            return self._answer(endpoint, requests.get(custom_id), custom_id, 200, entry["response"])
        error = entry.get("error") if isinstance(entry.get("error"), Mapping) else {}
        code = int(error.get("code") or 2)
        if code == 4 and expired:
            return BatchItem(custom_id, error=expired_error(endpoint.provider))
        if code == 1:
            return BatchItem(custom_id, error=cancelled_error(endpoint.provider))
        status = self._HTTP_OF.get(code, 500)
        body = {"error": {"code": status, "message": str(error.get("message") or ""),
                          "status": self._NAME_OF.get(code, "UNKNOWN"), **({"details": error["details"]}
                                                                           if error.get("details") else {})}}
        return BatchItem(custom_id, error=self.adapter._safe(endpoint, classify_error(
            endpoint.provider, status, None, json.dumps(body).encode())).info)

    async def cancel(self, client: httpx.AsyncClient, endpoint: Endpoint, batch_id: str,
                     *, timeout: float | None = None) -> BatchStatus:
        await self._json(client, endpoint, "POST", join_url(endpoint.base_url, f"{self._name(batch_id)}:cancel"),
                         timeout)
        return await self.status(client, endpoint, batch_id, timeout=timeout)


_APIS: dict[str, type[BatchAPI]] = {"openai": OpenAIBatches, "anthropic": AnthropicBatches, "gemini": GeminiBatches,
                                    "mistral": MistralBatches, "openrouter": OpenRouterBatches}


def batch_api_for(api: str, adapter: HTTPAdapter) -> BatchAPI | None:
    """The batch API called ``api`` (a catalog ``batch.api``) on ``adapter``; None where none is implemented."""
    cls = _APIS.get(api)
    return None if cls is None else cls(adapter)
