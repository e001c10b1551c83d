"""The sandbox serves the providers' batch APIs: the official SDKs run batches against it unchanged.

One real loopback server on a fake clock serves every test here (each test resets it
first); a batch's status is a function of that clock, so tests move time instead of
sleeping. Providers of the scenario below each carry one batch behaviour or fault.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from nbfanout.sandbox import Sandbox, ScenarioError, load_scenario, parse_scenario, start_sandbox
from nbfanout.sandbox.batches import ANTHROPIC_MAX_REQUESTS, OPENAI_MAX_BYTES, OPENAI_MAX_REQUESTS
from nbfanout.sandbox.scenario import BatchSpec

OAI_KEY = "sk-sbx-bt-openai-0001"
BAD_OAI_KEY = "sk-sbx-bt-openai-bad-0002"
ANT_KEY = "sk-ant-sbx-bt-0003"
GEM_KEY = "AIzaSbx-bt-gemini-0004"
FAST = {"output_tokens": [5, 12]}


def _openai(batch: dict[str, Any], models: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"style": "openai", "organization": "org-bt", "keys": [OAI_KEY, {"key": BAD_OAI_KEY, "invalid": True}],
            "models": models or {"gpt-4o-mini": FAST}, "batch": batch}


def _anthropic(batch: dict[str, Any]) -> dict[str, Any]:
    return {"style": "anthropic", "keys": [ANT_KEY], "models": {"claude-haiku-4-5": {**FAST, "limits": {"rpm": 2}}},
            "batch": batch}


SCENARIO: dict[str, Any] = {
    "name": "batch-api-test",
    "seed": 21,
    "providers": {
        # validating 0-1 s, in_progress 1-4 s, finalizing 4-5 s, completed; a cancel takes 2 s
        "openai": _openai(
            {"in_progress_after_s": 1.0, "complete_after_s": 4.0, "finalizing_s": 1.0, "cancel_after_s": 2.0},
            {"gpt-4o-mini": {**FAST, "limits": {"rpm": 2}}, "o4-mini": {**FAST, "rejects": ["temperature"]}},
        ),
        "oai-faults": _openai({"complete_after_s": 2.0, "errored_custom_ids": ["r-2"], "errored_every_nth": 4}),
        "oai-expire": _openai({"complete_after_s": 2.0, "expire": True, "expire_fraction": 0.5}),
        "oai-invalid": _openai({"in_progress_after_s": 1.0, "fail_validation": "The sandbox refused this input file."}),
        "oai-small": _openai({"max_requests": 2}),
        "groq": {**_openai({}), "style": "groq"},
        "nobatch": {"style": "openai", "keys": [OAI_KEY], "models": {"gpt-4o-mini": FAST}, "batch": False},
        "defaults": {"style": "together", "keys": [OAI_KEY], "models": {"gpt-4o-mini": FAST}},
        "deepseek": {"style": "deepseek", "keys": [OAI_KEY], "models": {"gpt-4o-mini": FAST}},
        "anthropic": _anthropic({"complete_after_s": 3.0, "cancel_after_s": 1.0}),
        "ant-faults": _anthropic({"complete_after_s": 2.0, "errored_custom_ids": ["q1"], "error_kind": "overloaded"}),
        "ant-expire": _anthropic({"complete_after_s": 2.0, "expire": True, "expire_fraction": 0.5}),
        "ant-invalid": _anthropic({"fail_validation": "The sandbox refused this batch."}),
        "ant-small": _anthropic({"max_requests": 2, "max_bytes": 3000}),
        "gemini": {"style": "gemini", "keys": [GEM_KEY], "models": {"gemini-2.5-flash": FAST},
                   "batch": {"in_progress_after_s": 1.0, "complete_after_s": 3.0, "cancel_after_s": 1.0,
                             "errored_custom_ids": ["bad"]}},
    },
}


class Clock:
    """The sandbox's clock: it moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Sandbox, Clock]]:
    clock = Clock()
    sb = start_sandbox(parse_scenario(SCENARIO, source="<batch-api-test>"), clock=clock)
    yield sb, clock
    sb.stop()


@pytest.fixture
def world(server: tuple[Sandbox, Clock]) -> tuple[Sandbox, Clock]:
    server[0].reset()
    return server


def oai(sb: Sandbox, provider: str = "openai", key: str = OAI_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=sb.base_url(provider), api_key=key, max_retries=0, timeout=20)


def ant(sb: Sandbox, provider: str = "anthropic", key: str = ANT_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{sb.url}/{provider}", api_key=key, max_retries=0, timeout=20)


def line(custom_id: str, prompt: str, model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 64, **extra}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(lines: list[Any]) -> bytes:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()


def submit(client: openai.OpenAI, lines: list[Any]) -> Any:
    f = client.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


def ant_request(custom_id: str, prompt: str, **params: Any) -> dict[str, Any]:
    p = {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": prompt}], **params}
    return {"custom_id": custom_id, "params": p}


# --------------------------------------------------------------------------- OpenAI


def test_openai_sdk_runs_a_batch_unchanged(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    client = oai(sb)
    prompts = [f"Name {n} prime numbers." for n in range(6)]
    f = client.files.create(file=("in.jsonl", jsonl([line(f"r-{i}", p) for i, p in enumerate(prompts)])), purpose="batch")
    assert f.object == "file" and f.purpose == "batch" and f.filename == "in.jsonl" and f.bytes > 0
    assert client.files.retrieve(f.id).id == f.id
    assert client.files.content(f.id).content == jsonl([line(f"r-{i}", p) for i, p in enumerate(prompts)])

    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  metadata={"run": "t1"})
    assert batch.id.startswith("batch_") and batch.object == "batch" and batch.status == "validating"
    assert batch.request_counts is not None and batch.request_counts.total == 0  # counted once validated
    assert batch.metadata == {"run": "t1"} and batch.expires_at == batch.created_at + 86400
    assert batch.in_progress_at is None and batch.output_file_id is None and batch.errors is None

    clock.advance(1.0)  # in_progress; requests finish evenly over the next 3 s
    b = client.batches.retrieve(batch.id)
    assert b.status == "in_progress" and b.in_progress_at == batch.created_at + 1
    assert (b.request_counts.total, b.request_counts.completed) == (6, 0)
    clock.advance(1.5)
    b = client.batches.retrieve(batch.id)
    assert b.status == "in_progress" and b.request_counts.completed == 3 and b.output_file_id is None
    clock.advance(1.5)
    b = client.batches.retrieve(batch.id)
    assert b.status == "finalizing" and b.finalizing_at == batch.created_at + 4 and b.request_counts.completed == 6
    clock.advance(1.0)
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.completed_at == batch.created_at + 5
    assert done.request_counts.model_dump() == {"total": 6, "completed": 6, "failed": 0}
    assert done.model == "gpt-4o-mini" and done.error_file_id is None
    assert done.usage is not None and done.usage.output_tokens > 0

    out = read_lines(client, done.output_file_id)
    assert [x["custom_id"] for x in out] == [f"r-{i}" for i in range(6)]
    first = out[0]
    assert first["id"].startswith("batch_req_") and first["error"] is None
    assert first["response"]["status_code"] == 200 and first["response"]["request_id"]
    body = first["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == "gpt-4o-mini"
    assert body["usage"]["total_tokens"] == done.usage.total_tokens - sum(
        x["response"]["body"]["usage"]["total_tokens"] for x in out[1:])
    # The same answer the live route gives for the same prompt.
    live = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompts[0]}],
                                          max_tokens=64)
    assert body["choices"][0]["message"]["content"] == live.choices[0].message.content
    assert body["usage"] == live.usage.model_dump(exclude_none=True)

    out_file = client.files.retrieve(done.output_file_id)
    assert out_file.purpose == "batch_output" and out_file.filename == f"{batch.id}_output.jsonl"
    assert [b.id for b in client.batches.list()] == [batch.id]
    assert {x.id for x in client.files.list()} == {f.id, done.output_file_id}
    assert client.files.delete(f.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)


def test_batch_requests_do_not_count_against_live_limits(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    client = oai(sb)
    batch = submit(client, [line(f"r-{i}", f"Question {i}") for i in range(5)])  # the model allows 2 a minute live
    clock.advance(5.0)
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts.completed == 5
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    stats = sb.stats()
    live = stats["models"]["openai/gpt-4o-mini"]
    assert (live["requests"], live["admitted"], live["rejected"]) == (3, 2, {"rpm": 1})
    assert stats["batches"]["openai"]["requests"] == 5 and stats["batches"]["openai"]["batches"] == 1
    assert stats["batches"]["openai"]["models"] == {"gpt-4o-mini": 5}
    assert stats["batches"]["openai"]["results"]["succeeded"] == 5
    assert stats["batches"]["openai"]["status"] == {"completed": 1}


def test_openai_requests_erroring_inside_the_batch_go_to_the_error_file(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    client = oai(sb, "oai-faults")
    batch = submit(client, [line(f"r-{i}", f"Q{i}") for i in range(5)])  # r-2 named, r-3 every 4th
    clock.advance(2.0)
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed"
    assert done.request_counts.model_dump() == {"total": 5, "completed": 3, "failed": 2}
    assert [x["custom_id"] for x in read_lines(client, done.output_file_id)] == ["r-0", "r-1", "r-4"]
    errors = read_lines(client, done.error_file_id)
    assert [x["custom_id"] for x in errors] == ["r-2", "r-3"]
    for x in errors:
        assert x["error"] is None and x["response"]["status_code"] == 500
        assert x["response"]["body"]["error"]["type"] == "server_error"
    assert client.files.retrieve(done.error_file_id).filename == f"{batch.id}_error.jsonl"
    assert sb.stats()["batches"]["oai-faults"]["results"]["errored"] == 2


def test_openai_unknown_model_and_refused_parameter_fail_per_request(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    client = oai(sb)
    unknown = submit(client, [line("a", "hi", model="gpt-9"), line("b", "ho", model="gpt-9")])
    refused = submit(client, [line("c", "hi", model="o4-mini", temperature=0.2)])
    clock.advance(5.0)
    done = client.batches.retrieve(unknown.id)
    assert done.status == "completed" and done.output_file_id is None
    assert done.request_counts.model_dump() == {"total": 2, "completed": 0, "failed": 2}
    err = read_lines(client, done.error_file_id)[0]
    assert err["response"]["status_code"] == 404 and err["error"] is None
    assert err["response"]["body"]["error"]["code"] == "model_not_found"
    assert "The model `gpt-9` does not exist" in err["response"]["body"]["error"]["message"]
    bad = read_lines(client, client.batches.retrieve(refused.id).error_file_id)[0]
    assert bad["response"]["status_code"] == 400
    assert bad["response"]["body"]["error"]["code"] == "unsupported_parameter"


def test_openai_bad_input_file_fails_the_batch(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    client = oai(sb)
    batch = submit(client, [
        line("a", "one"),
        line("a", "duplicate id"),
        "{not json",
        {**line("d", "wrong url"), "url": "/v1/embeddings"},
        line("e", "another model", model="o4-mini"),
        {"custom_id": "f", "method": "GET", "url": "/v1/chat/completions", "body": {}},
    ])
    assert batch.status == "validating"
    clock.advance(1.0)
    failed = client.batches.retrieve(batch.id)
    assert failed.status == "failed" and failed.failed_at == failed.created_at + 1 and failed.in_progress_at is None
    assert failed.errors is not None and failed.errors.object == "list"
    got = [(e.code, e.line) for e in failed.errors.data or []]
    assert got == [("duplicate_custom_id", 2), ("invalid_json_line", 3), ("url_mismatch", 4), ("model_mismatch", 5),
                   ("invalid_value", 6)]
    assert failed.errors.data[1].message == "This line is not parseable as valid JSON."
    assert failed.request_counts.total == 0 and failed.output_file_id is None and failed.error_file_id is None
    assert sb.stats()["batches"]["openai"]["failed_validation"] == 1

    empty = submit(client, [])
    clock.advance(1.0)
    assert [e.code for e in client.batches.retrieve(empty.id).errors.data] == ["empty_file"]
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=empty.input_file_id, endpoint="/v1/chat/completions", completion_window="48h")
    assert info.value.code == "invalid_value" and info.value.param == "completion_window"
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nosuch", endpoint="/v1/chat/completions", completion_window="24h")


def test_openai_fail_validation_fault_and_per_batch_limit(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    invalid = oai(sb, "oai-invalid")
    batch = submit(invalid, [line("a", "fine")])
    clock.advance(0.5)
    assert invalid.batches.retrieve(batch.id).status == "validating"
    clock.advance(0.5)
    failed = invalid.batches.retrieve(batch.id)
    assert failed.status == "failed"
    assert [(e.message, e.line) for e in failed.errors.data] == [("The sandbox refused this input file.", None)]

    small = oai(sb, "oai-small")  # max_requests = 2; the default complete_after_s of 1 s
    fits = submit(small, [line("a", "x"), line("b", "y")])
    over = submit(small, [line(f"r{i}", "x") for i in range(3)])
    clock.advance(1.0)
    assert small.batches.retrieve(fits.id).status == "completed"
    too_many = small.batches.retrieve(over.id)
    assert too_many.status == "failed" and [e.code for e in too_many.errors.data] == ["too_many_tasks"]
    assert (OPENAI_MAX_REQUESTS, OPENAI_MAX_BYTES) == (50_000, 200 * 1024 * 1024)


def test_openai_expiry_keeps_finished_answers_and_expires_the_rest(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    client = oai(sb, "oai-expire")
    batch = submit(client, [line(f"r-{i}", f"Q{i}") for i in range(4)])
    clock.advance(1.0)
    assert client.batches.retrieve(batch.id).request_counts.completed == 1  # half done by the end, evenly
    clock.advance(1.0)
    expired = client.batches.retrieve(batch.id)
    assert expired.status == "expired" and expired.expired_at == expired.created_at + 2 and expired.completed_at is None
    assert expired.request_counts.model_dump() == {"total": 4, "completed": 2, "failed": 2}
    assert [x["custom_id"] for x in read_lines(client, expired.output_file_id)] == ["r-0", "r-1"]
    lines = read_lines(client, expired.error_file_id)
    assert [x["custom_id"] for x in lines] == ["r-2", "r-3"]
    assert lines[0]["response"] is None and lines[0]["error"] == {
        "code": "batch_expired", "message": "This request could not be executed before the completion window expired."}
    assert sb.stats()["batches"]["oai-expire"]["results"]["expired"] == 2


def test_openai_cancel(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    client = oai(sb)
    batch = submit(client, [line(f"r-{i}", f"Q{i}") for i in range(4)])
    clock.advance(2.0)  # in_progress since 1 s, 4 requests over 3 s: 1 done
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at == batch.created_at + 2
    assert cancelling.request_counts.completed == 1
    clock.advance(1.0)
    assert client.batches.retrieve(batch.id).status == "cancelling"  # a cancel takes 2 s here
    clock.advance(1.0)
    cancelled = client.batches.retrieve(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at == batch.created_at + 4
    assert cancelled.finalizing_at is None and cancelled.completed_at is None
    assert cancelled.request_counts.model_dump() == {"total": 4, "completed": 1, "failed": 3}
    assert [x["custom_id"] for x in read_lines(client, cancelled.output_file_id)] == ["r-0"]
    assert {x["error"]["code"] for x in read_lines(client, cancelled.error_file_id)} == {"batch_cancelled"}
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a batch with status 'cancelled'"):
        client.batches.cancel(batch.id)


def test_openai_keys_routes_and_paging(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    bad = oai(sb, key=BAD_OAI_KEY)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.files.create(file=("in.jsonl", jsonl([line("a", "x")])), purpose="batch")
    assert info.value.code == "invalid_api_key" and "0002" in info.value.message
    client = oai(sb)
    f = client.files.create(file=("in.jsonl", jsonl([line("a", "x")])), purpose="batch")
    with pytest.raises(openai.AuthenticationError):
        bad.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nosuch")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-nosuch")
    for off in ("nobatch", "deepseek"):
        with pytest.raises(openai.NotFoundError, match=r"Invalid URL \(POST /v1/files\)"):
            oai(sb, off).files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
    with pytest.raises(openai.BadRequestError) as purpose:
        client.files.create(file=("in.jsonl", b"{}\n"), purpose="nonsense")  # type: ignore[arg-type]
    assert purpose.value.param == "purpose"
    ids = [client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id
           for _ in range(3)]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]  # the SDK pages on with `after`
    # An OpenAI-compatible provider (Groq's style) serves the same routes.
    groq = oai(sb, "groq")
    on_groq = submit(groq, [line("g", "x")])
    clock.advance(1.0)
    assert groq.batches.retrieve(on_groq.id).status == "completed"


# --------------------------------------------------------------------------- Anthropic


def test_anthropic_sdk_runs_a_batch_unchanged(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    client = ant(sb)
    prompts = ["What is two plus two?", "Name a colour.", "Say hello."]
    created = client.messages.batches.create(requests=[ant_request(f"q{i}", p) for i, p in enumerate(prompts)])
    assert created.id.startswith("msgbatch_") and created.type == "message_batch"
    assert created.processing_status == "in_progress" and created.results_url is None and created.ended_at is None
    assert created.request_counts.model_dump() == {"processing": 3, "succeeded": 0, "errored": 0, "canceled": 0,
                                                   "expired": 0}
    assert (created.expires_at - created.created_at).total_seconds() == 86400
    with pytest.raises(anthropic.AnthropicError, match="No `results_url`"):
        client.messages.batches.results(created.id)
    clock.advance(2.0)  # requests are done, but Anthropic counts them only when the batch ends
    middle = client.messages.batches.retrieve(created.id)
    assert middle.processing_status == "in_progress" and middle.request_counts.processing == 3
    clock.advance(1.0)
    ended = client.messages.batches.retrieve(created.id)
    assert ended.processing_status == "ended" and (ended.ended_at - ended.created_at).total_seconds() == 3
    assert ended.request_counts.model_dump() == {"processing": 0, "succeeded": 3, "errored": 0, "canceled": 0,
                                                 "expired": 0}
    assert ended.results_url == f"{sb.url}/anthropic/v1/messages/batches/{created.id}/results"
    results = list(client.messages.batches.results(created.id))
    assert [r.custom_id for r in results] == ["q0", "q1", "q2"]
    first = results[0].result
    assert isinstance(first, anthropic.types.messages.MessageBatchSucceededResult)
    live = client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": prompts[0]}])
    assert first.message.type == "message" and first.message.model == "claude-haiku-4-5"
    assert first.message.content[0].text == live.content[0].text  # type: ignore[union-attr]
    assert first.message.usage.output_tokens == live.usage.output_tokens and first.message.stop_reason == "end_turn"

    page = client.messages.batches.list(limit=1)
    assert [b.id for b in page.data] == [created.id] and page.has_more is False
    assert page.first_id == page.last_id == created.id
    deleted = client.messages.batches.delete(created.id)
    assert (deleted.id, deleted.type) == (created.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(created.id)
    stats = sb.stats()
    assert stats["batches"]["anthropic"]["requests"] == 3 and stats["batches"]["anthropic"]["live"] == 0
    assert stats["models"]["anthropic/claude-haiku-4-5"]["requests"] == 1  # only the live call


def test_anthropic_errored_results_carry_the_providers_error_shape(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    client = ant(sb, "ant-faults")
    batch = client.messages.batches.create(requests=[
        ant_request("q0", "fine"),
        ant_request("q1", "errors by the scenario"),
        ant_request("q2", "unknown model", model="claude-9"),
        {"custom_id": "q3", "params": {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "x"}]}},
    ])
    clock.advance(2.0)
    ended = client.messages.batches.retrieve(batch.id)
    assert ended.request_counts.succeeded == 1 and ended.request_counts.errored == 3
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert results["q0"].type == "succeeded"
    errored = {cid: r for cid, r in results.items() if isinstance(r, anthropic.types.messages.MessageBatchErroredResult)}
    assert set(errored) == {"q1", "q2", "q3"}
    assert errored["q1"].error.type == "error" and errored["q1"].error.error.type == "overloaded_error"
    assert errored["q2"].error.error.type == "not_found_error"
    assert errored["q3"].error.error.type == "invalid_request_error"
    assert errored["q3"].error.error.message == "max_tokens: Field required"


def test_anthropic_expiry_and_cancel(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    expiring = ant(sb, "ant-expire").messages.batches.create(requests=[ant_request(f"q{i}", "x") for i in range(4)])
    client = ant(sb)
    doomed = client.messages.batches.create(requests=[ant_request(f"c{i}", "x") for i in range(3)])
    with pytest.raises(anthropic.BadRequestError, match="still processing"):
        client.messages.batches.delete(doomed.id)
    clock.advance(1.5)  # 1 of 3 done
    canceling = client.messages.batches.cancel(doomed.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
    clock.advance(0.5)
    expired = ant(sb, "ant-expire").messages.batches.retrieve(expiring.id)
    assert expired.processing_status == "ended"
    assert (expired.request_counts.succeeded, expired.request_counts.expired) == (2, 2)
    assert [r.result.type for r in ant(sb, "ant-expire").messages.batches.results(expiring.id)] == [
        "succeeded", "succeeded", "expired", "expired"]
    clock.advance(0.5)
    ended = client.messages.batches.retrieve(doomed.id)
    assert ended.processing_status == "ended"
    assert (ended.request_counts.succeeded, ended.request_counts.canceled) == (1, 2)
    assert [r.result.type for r in client.messages.batches.results(doomed.id)] == ["succeeded", "canceled", "canceled"]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.cancel(doomed.id)


def test_anthropic_create_refusals(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    client = ant(sb)
    with pytest.raises(anthropic.BadRequestError, match="unique custom_id"):
        client.messages.batches.create(requests=[ant_request("same", "a"), ant_request("same", "b")])
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.batches.create(requests=[ant_request("x" * 65, "a")])
    assert info.value.body == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "requests.0.custom_id: String should have at most 64 characters"}}
    with pytest.raises(anthropic.BadRequestError, match="The sandbox refused this batch."):
        ant(sb, "ant-invalid").messages.batches.create(requests=[ant_request("a", "b")])
    with pytest.raises(anthropic.BadRequestError, match="at most 2 items"):
        ant(sb, "ant-small").messages.batches.create(requests=[ant_request(f"q{i}", "x") for i in range(3)])
    with pytest.raises(anthropic.APIStatusError) as big:
        ant(sb, "ant-small").messages.batches.create(requests=[ant_request("q", "x" * 4000)])
    assert big.value.status_code == 413 and big.value.body["error"]["type"] == "request_too_large"
    with pytest.raises(anthropic.AuthenticationError):
        ant(sb, key="sk-ant-wrong-9999").messages.batches.create(requests=[ant_request("a", "b")])
    raw = httpx.get(f"{sb.url}/anthropic/v1/messages/batches", headers={"x-api-key": ANT_KEY})
    assert raw.status_code == 400 and raw.json()["error"]["message"] == "anthropic-version: header is required"
    assert sb.stats()["batches"] == {}  # nothing was created
    assert ANTHROPIC_MAX_REQUESTS == 100_000


# --------------------------------------------------------------------------- Gemini


def test_gemini_batch_mode(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    base, headers = f"{sb.url}/gemini/v1beta", {"x-goog-api-key": GEM_KEY}
    requests = [{"request": {"contents": [{"parts": [{"text": f"Prompt {k}"}], "role": "user"}]}, "metadata": {"key": k}}
                for k in ("k1", "bad", "k3")]
    body = {"batch": {"display_name": "t", "input_config": {"requests": {"requests": requests}}}}
    made = httpx.post(f"{base}/models/gemini-2.5-flash:batchGenerateContent", headers=headers, json=body)
    assert made.status_code == 200
    op = made.json()
    name = op["name"]
    assert name.startswith("batches/") and "done" not in op
    meta = op["metadata"]
    assert meta["@type"] == "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
    assert (meta["state"], meta["model"], meta["displayName"], meta["name"]) == (
        "BATCH_STATE_PENDING", "models/gemini-2.5-flash", "t", name)
    assert meta["batchStats"] == {"requestCount": "3", "pendingRequestCount": "3"}

    clock.advance(2.5)  # running since 1 s: 2 of 3 done, the second errored
    running = httpx.get(f"{base}/{name}", headers=headers).json()
    assert running["metadata"]["state"] == "BATCH_STATE_RUNNING" and "done" not in running
    assert running["metadata"]["batchStats"] == {"requestCount": "3", "successfulRequestCount": "1",
                                                 "failedRequestCount": "1", "pendingRequestCount": "1"}
    clock.advance(0.5)
    done = httpx.get(f"{base}/{name}", headers=headers).json()
    assert done["done"] is True and done["metadata"]["state"] == "BATCH_STATE_SUCCEEDED" and "endTime" in done["metadata"]
    assert done["response"]["@type"] == "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
    inlined = done["response"]["inlinedResponses"]["inlinedResponses"]
    assert done["metadata"]["output"] == {"inlinedResponses": {"inlinedResponses": inlined}}
    assert [r["metadata"] for r in inlined] == [{"key": "k1"}, {"key": "bad"}, {"key": "k3"}]
    assert inlined[1]["error"]["code"] == 13 and "response" not in inlined[1]  # INTERNAL: a server error
    live = httpx.post(f"{base}/models/gemini-2.5-flash:generateContent", headers=headers, json=requests[0]["request"]).json()
    assert inlined[0]["response"]["candidates"] == live["candidates"]
    assert inlined[0]["response"]["usageMetadata"] == live["usageMetadata"]

    second = httpx.post(f"{base}/models/gemini-2.5-flash:batchGenerateContent", headers=headers, json=body).json()["name"]
    assert httpx.post(f"{base}/{second}:cancel", headers=headers).json() == {}
    assert httpx.get(f"{base}/{second}", headers=headers).json()["metadata"]["state"] == "BATCH_STATE_RUNNING"
    clock.advance(1.0)
    cancelled = httpx.get(f"{base}/{second}", headers=headers).json()
    assert cancelled["metadata"]["state"] == "BATCH_STATE_CANCELLED" and cancelled["done"] is True
    assert cancelled["error"]["code"] == 1
    listed = httpx.get(f"{base}/batches", headers=headers).json()
    assert [o["name"] for o in listed["operations"]] == [second, name]
    assert httpx.delete(f"{base}/{second}", headers=headers).json() == {}
    assert httpx.get(f"{base}/{second}", headers=headers).status_code == 404

    nosuch = httpx.post(f"{base}/models/gemini-9:batchGenerateContent", headers=headers, json=body)
    assert nosuch.status_code == 404 and nosuch.json()["error"]["status"] == "NOT_FOUND"
    badkey = httpx.post(f"{base}/models/gemini-2.5-flash:batchGenerateContent", headers={"x-goog-api-key": "AIza-wrong-1"},
                        json=body)
    assert badkey.status_code == 400 and badkey.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    assert sb.stats()["batches"]["gemini"]["requests"] == 6
    assert "gemini/gemini-2.5-flash" in sb.stats()["models"]  # the live call only
    assert sb.stats()["models"]["gemini/gemini-2.5-flash"]["requests"] == 1


# --------------------------------------------------------------------------- time, reset, scenarios


async def test_time_scale_zero_ends_every_batch_at_once(sandbox_app_factory: Callable[..., Any]) -> None:
    app = sandbox_app_factory(SCENARIO, time_scale=0.0)
    async with app.client() as http:
        auth = {"Authorization": f"Bearer {OAI_KEY}"}
        up = await http.post("/openai/v1/files", headers=auth, data={"purpose": "batch"},
                             files={"file": ("in.jsonl", jsonl([line("a", "x"), line("b", "y")]))})
        assert up.status_code == 200
        made = await http.post("/openai/v1/batches", headers=auth, json={
            "input_file_id": up.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"})
        batch = made.json()
        assert batch["status"] == "completed" and batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
        out = await http.get(f"/openai/v1/files/{batch['output_file_id']}/content", headers=auth)
        assert len(out.text.splitlines()) == 2
        anth = await http.post("/anthropic/v1/messages/batches", json={"requests": [ant_request("a", "x")]},
                               headers={"x-api-key": ANT_KEY, "anthropic-version": "2023-06-01"})
        assert anth.json()["processing_status"] == "ended"
        assert app.stats()["batches"]["openai"]["files"] == 2
        await http.post("/_sandbox/reset")
        assert app.stats()["batches"] == {}
        gone = await http.get(f"/openai/v1/batches/{batch['id']}", headers=auth)
        assert gone.status_code == 404
        assert (await http.get(f"/openai/v1/files/{up.json()['id']}", headers=auth)).status_code == 404


def test_scenario_batch_fields_are_validated() -> None:
    def problems(batch: Any, style: str = "openai") -> str:
        data = {"providers": {"p": {"style": style, "keys": ["sk-sbx-valid-0001"], "models": {"m": {}}, "batch": batch}}}
        with pytest.raises(ScenarioError) as info:
            parse_scenario(data, source="<t>")
        return "\n".join(info.value.problems)

    text = problems({"in_progress_after_s": 3, "complete_after_s": 1, "error_kind": "explode", "expire": "yes",
                     "expire_fraction": 2, "errored_custom_ids": "r1", "errored_every_nth": 0, "max_requests": -1,
                     "fail_validation": "", "speed": 1})
    for fragment in [
        "key 'providers.p.batch.complete_after_s': found 1.0, expected a number >= in_progress_after_s (3)",
        "key 'providers.p.batch.error_kind': found 'explode', expected one of ['server_error', 'overloaded', "
        "'unavailable', 'bad_request']",
        "key 'providers.p.batch.expire': found 'yes', expected true or false",
        "key 'providers.p.batch.expire_fraction': found 2, expected a number >= 0.0 and <= 1.0",
        "key 'providers.p.batch.errored_custom_ids': found 'r1', expected a list of custom_id strings",
        "key 'providers.p.batch.errored_every_nth': found 0, expected a positive integer",
        "key 'providers.p.batch.max_requests': found -1, expected a positive integer",
        "key 'providers.p.batch.fail_validation': found '', expected a non-empty string",
        "key 'providers.p.batch.speed': found 'speed', expected one of",
    ]:
        assert fragment in text, fragment
    assert "expected a batch API only on providers whose style has one" in problems({}, style="deepseek")
    assert "expected a batch API only on providers whose style has one" in problems(True, style="deepseek")
    assert "found [], expected true, false or a [batch] table" in problems([])
    sc = parse_scenario(SCENARIO)
    assert sc.provider("nobatch").batch is None  # type: ignore[union-attr]  # batch = false
    assert sc.provider("deepseek").batch is None  # type: ignore[union-attr]  # its style has no batch API
    assert sc.provider("defaults").batch == BatchSpec()  # type: ignore[union-attr]  # a style with one: on by default
    assert load_scenario("seed15").provider("openai").batch == BatchSpec()  # type: ignore[union-attr]
    assert sc.public_dict()["providers"]["oai-faults"]["batch"]["errored_custom_ids"] == ["r-2"]


def test_builtin_batch_api_scenario() -> None:
    sc = load_scenario("batch_api")
    by_wire = {p.wire: p for p in sc.providers}
    assert [m.id for m in by_wire["openai"].models] == ["gpt-4o-mini", "gpt-4.1-nano"]
    assert len(by_wire["anthropic"].models) == len(by_wire["gemini"].models) == 1
    for p in sc.providers:
        spec = p.batch
        assert spec is not None and 0 < spec.complete_after_s <= 5
        assert not spec.expire and spec.fail_validation is None and not spec.errored_custom_ids
        assert spec.errored_every_nth is None
        assert all(m.limits.rpm is not None and m.limits.rpm <= 30 for m in p.models)  # modest live limits
