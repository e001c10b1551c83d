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

Mistral's ``/v1/batch/jobs`` and OpenRouter's ``/api/v1/batches`` take other shapes and are not
implemented: their models run live.
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
    """OpenAI's files + batches, and the providers that copy them (see the module docstring)."""

    wire = "openai"
    #: One batch's input lines all call this endpoint (the batch object's ``endpoint``).
    endpoint_path = "/v1/chat/completions"
    # https://developers.openai.com/api/reference/resources/batches: the batch object's statuses
    _STATE = {"validating": "running", "in_progress": "running", "finalizing": "running", "cancelling": "running",
              "completed": "ended", "expired": "ended", "cancelled": "ended", "failed": "failed"}

    def entry(self, custom_id: str, request: ChatRequest) -> dict[str, Any]:
        return {"custom_id": custom_id, "method": "POST", "url": self.endpoint_path,
                "body": self.adapter.chat_body(request, stream=False)}

    async def create(self, client: httpx.AsyncClient, endpoint: Endpoint, entries: Sequence[Mapping[str, Any]],
                     *, model: str, label: str, timeout: float | None = None) -> tuple[str, dict[str, Any]]:
        data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode("utf-8")
        uploaded = await self._json(client, endpoint, "POST", join_url(endpoint.base_url, "files"), timeout,
                                    data={"purpose": "batch"},
                                    files={"file": (f"{label}.jsonl", data, "application/jsonl")})
        file_id = str(uploaded.get("id") or "") if isinstance(uploaded, Mapping) else ""
        if not file_id:
            raise self.adapter._invalid(endpoint, 200, "the file upload's answer has no 'id'")
        batch = await self._json(client, endpoint, "POST", join_url(endpoint.base_url, "batches"), timeout,
                                 json={"input_file_id": file_id, "endpoint": self.endpoint_path,
                                       "completion_window": "24h", "metadata": {"nbfanout": label}})
        batch_id = str(batch.get("id") or "") if isinstance(batch, Mapping) else ""
        if not batch_id:
            raise self.adapter._invalid(endpoint, 200, "the batch's answer has no 'id'")
        return batch_id, {"input_file_id": file_id}

    def _status(self, batch: Any) -> BatchStatus:
        batch = batch if isinstance(batch, Mapping) else {}
        word = str(batch.get("status") or "")
        counts = batch.get("request_counts") or {}
        errors = ((batch.get("errors") or {}).get("data") or []) if isinstance(batch.get("errors"), Mapping) else []
        message = "; ".join(
            f"{e.get('message') or e.get('code')}" + (f" (line {e['line']})" if e.get("line") else "")
            for e in errors if isinstance(e, Mapping))
        return BatchStatus(self._STATE.get(word, "running"), word, int(counts.get("total") or 0),
                           int(counts.get("completed") or 0), int(counts.get("failed") or 0), message,
                           expired=word == "expired", cancelled=word == "cancelled")

    async def status(self, client: httpx.AsyncClient, endpoint: Endpoint, batch_id: str,
                     *, timeout: float | None = None) -> BatchStatus:
        batch = await self._json(client, endpoint, "GET", join_url(endpoint.base_url, f"batches/{batch_id}"), timeout)
        return self._status(batch)

    async def results(self, client: httpx.AsyncClient, endpoint: Endpoint, batch_id: str,
                      requests: Mapping[str, ChatRequest], *, timeout: float | None = None) -> list[BatchItem]:
        batch = await self._json(client, endpoint, "GET", join_url(endpoint.base_url, f"batches/{batch_id}"), timeout)
        items: list[BatchItem] = []
        for key in ("output_file_id", "error_file_id"):
            file_id = batch.get(key) if isinstance(batch, Mapping) else None
            if not file_id:
                continue
            response = await self.adapter._send(client, endpoint, "GET",
                                                join_url(endpoint.base_url, f"files/{file_id}/content"),
                                                timeout=timeout)
            for line in _jsonl(response.text):
                items.append(self._item(endpoint, line, requests))
        return items

    def _item(self, endpoint: Endpoint, line: Mapping[str, Any], requests: Mapping[str, ChatRequest]) -> BatchItem:
        """One output or error line: ``{"custom_id", "response": {"status_code", "body"}, "error"}``."""
        custom_id = str(line.get("custom_id") or "")
        response = line.get("response") if isinstance(line.get("response"), Mapping) else None
        error = line.get("error") if isinstance(line.get("error"), Mapping) else None
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
                                 join_url(endpoint.base_url, f"batches/{batch_id}/cancel"), timeout)
        return self._status(batch)


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
        batch_id = str(batch.get("id") or "") if isinstance(batch, Mapping) else ""
        if not batch_id:
            raise self.adapter._invalid(endpoint, 200, "the message batch's answer has no 'id'")
        return batch_id, {}

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


_APIS: dict[str, type[BatchAPI]] = {"openai": OpenAIBatches, "anthropic": AnthropicBatches, "gemini": GeminiBatches}


def batch_api_for(api: str, adapter: HTTPAdapter) -> BatchAPI | None:
    """The batch API called ``api`` (a catalog ``batch.api``) on ``adapter``; None where none is implemented."""
    cls = _APIS.get(api)
    return None if cls is None else cls(adapter)
