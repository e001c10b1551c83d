"""The sandbox serves Mistral's batch jobs and OpenRouter's inline batches with those providers' bodies.

There is no Mistral or OpenRouter SDK among the project's dependencies, so these tests speak
the wire with httpx, as their documentation shows it (the sources are in the docstring of
nbfanout/sandbox/batches.py). One loopback server on a fake clock serves every test (each test
resets it first): a batch's status is a function of that clock, so tests move time instead of
sleeping.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from nbfanout.sandbox import Sandbox, load_scenario, parse_scenario, start_sandbox
from nbfanout.sandbox.batches import MISTRAL_MAX_BYTES, MISTRAL_MAX_REQUESTS, OPENROUTER_MAX_BYTES, OPENROUTER_MAX_REQUESTS
from nbfanout.sandbox.scenario import BATCH_STYLES, BatchSpec
from test_sandbox_batch_api import Clock  # the same fake clock (pytest puts this folder on the path)

MIS_KEY = "sk-sbx-bt-mistral-0011"
BAD_KEY = "sk-sbx-bt-mistral-bad-0012"
OR_KEY = "sk-or-sbx-bt-0013"
FAST = {"output_tokens": [5, 12]}
MIS_MODEL = "mistral-small-latest"
OR_MODEL = "openai/gpt-4o-mini"


def _mistral(batch: dict[str, Any]) -> dict[str, Any]:
    return {"style": "mistral", "keys": [MIS_KEY, {"key": BAD_KEY, "invalid": True}],
            "models": {MIS_MODEL: {**FAST, "limits": {"rpm": 2}}}, "batch": batch}


def _openrouter(batch: dict[str, Any]) -> dict[str, Any]:
    return {"style": "openrouter", "keys": [OR_KEY], "models": {OR_MODEL: {**FAST, "limits": {"rpm": 2}}}, "batch": batch}


SCENARIO: dict[str, Any] = {
    "name": "batch-mistral-openrouter-test",
    "seed": 41,
    "providers": {
        # QUEUED 0-1 s, RUNNING 1-4 s (requests finish evenly), SUCCESS; a cancel takes 2 s
        "mistral": _mistral({"in_progress_after_s": 1.0, "complete_after_s": 4.0, "cancel_after_s": 2.0}),
        "mis-faults": _mistral({"complete_after_s": 2.0, "errored_custom_ids": ["r-2"], "errored_every_nth": 4}),
        "mis-expire": _mistral({"complete_after_s": 2.0, "expire": True, "expire_fraction": 0.5}),
        "mis-invalid": _mistral({"in_progress_after_s": 1.0, "fail_validation": "The sandbox refused this job."}),
        "mis-small": _mistral({"max_requests": 2}),
        # validating 0-1 s, in_progress 1-4 s, finalizing 4-5 s, completed; a cancel takes 2 s
        "openrouter": _openrouter({"in_progress_after_s": 1.0, "complete_after_s": 4.0, "finalizing_s": 1.0,
                                   "cancel_after_s": 2.0}),
        "or-faults": _openrouter({"complete_after_s": 2.0, "errored_custom_ids": ["r-1"], "error_kind": "overloaded"}),
        "or-expire": _openrouter({"complete_after_s": 2.0, "expire": True, "expire_fraction": 0.5}),
        "or-invalid": _openrouter({"in_progress_after_s": 1.0, "fail_validation": "The sandbox refused this batch."}),
        "or-small": _openrouter({"max_requests": 2, "max_bytes": 3000}),
        "openai": {"style": "openai", "keys": [MIS_KEY], "models": {"gpt-4o-mini": FAST}, "batch": {}},
    },
}


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Sandbox, Clock]]:
    clock = Clock()
    with start_sandbox(parse_scenario(SCENARIO, source="<batch-mistral-openrouter-test>"), clock=clock) as sb:
        yield sb, clock


@pytest.fixture
def world(server: tuple[Sandbox, Clock]) -> tuple[Sandbox, Clock]:
    server[0].reset()
    return server


def http(sb: Sandbox, provider: str, key: str = MIS_KEY) -> httpx.Client:
    return httpx.Client(base_url=sb.base_url(provider), headers={"Authorization": f"Bearer {key}"}, timeout=20)


def body(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": prompt}], "max_tokens": 64, **extra}


def jsonl(lines: list[Any]) -> bytes:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()


def upload(client: httpx.Client, lines: list[Any], purpose: str | None = "batch") -> dict[str, Any]:
    data = {"purpose": purpose} if purpose is not None else {}
    made = client.post("/files", data=data, files={"file": ("batch.jsonl", jsonl(lines), "application/jsonl")})
    assert made.status_code == 200, made.text
    return made.json()


def job(client: httpx.Client, lines: list[Any], **fields: Any) -> dict[str, Any]:
    f = upload(client, lines)
    made = client.post("/batch/jobs", json={"input_files": [f["id"]], "endpoint": "/v1/chat/completions",
                                            "model": MIS_MODEL, "metadata": {"run": "t"}, **fields})
    assert made.status_code == 200, made.text
    return made.json()


def lines_of(client: httpx.Client, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(x) for x in client.get(f"/files/{file_id}/content").text.splitlines()]


def submit(client: httpx.Client, requests: list[dict[str, Any]], model: str = OR_MODEL) -> httpx.Response:
    return client.post("/batches", json={"endpoint": "/v1/chat/completions", "model": model, "requests": requests})


# --------------------------------------------------------------------------- Mistral


def test_mistral_job_statuses_over_time_and_its_output_file(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    client = http(sb, "mistral")
    prompts = [f"Name {n} prime numbers." for n in range(6)]
    f = upload(client, [{"custom_id": f"r-{i}", "body": body(p)} for i, p in enumerate(prompts)])
    assert (f["object"], f["purpose"], f["sample_type"], f["source"], f["num_lines"]) == (
        "file", "batch", "batch_request", "upload", 6)
    made = client.post("/batch/jobs", json={"input_files": [f["id"]], "endpoint": "/v1/chat/completions",
                                            "model": MIS_MODEL, "metadata": {"run": "t1"}, "timeout_hours": 12})
    created = made.json()
    assert made.status_code == 200 and created["object"] == "batch" and created["status"] == "QUEUED"
    assert len(created["id"]) == 36 and created["input_files"] == [f["id"]] and created["metadata"] == {"run": "t1"}
    assert created["total_requests"] == 0 and created["errors"] == []  # counted once validated
    assert created["output_file"] is None and created["started_at"] is None and created["completed_at"] is None

    clock.advance(1.0)  # RUNNING; requests finish evenly over the next 3 s
    running = client.get(f"/batch/jobs/{created['id']}").json()
    assert running["status"] == "RUNNING" and running["started_at"] == created["created_at"] + 1
    assert (running["total_requests"], running["succeeded_requests"]) == (6, 0)
    clock.advance(1.5)
    running = client.get(f"/batch/jobs/{created['id']}").json()
    assert running["status"] == "RUNNING" and running["succeeded_requests"] == running["completed_requests"] == 3
    assert running["output_file"] is None  # results exist once the whole job is done
    clock.advance(1.5)
    done = client.get(f"/batch/jobs/{created['id']}").json()
    assert done["status"] == "SUCCESS" and done["completed_at"] == created["created_at"] + 4
    assert [done[k] for k in ("total_requests", "completed_requests", "succeeded_requests", "failed_requests")] == [
        6, 6, 6, 0]
    assert done["error_file"] is None and done["model"] == MIS_MODEL

    out = lines_of(client, done["output_file"])
    assert [x["custom_id"] for x in out] == [f"r-{i}" for i in range(6)]
    assert out[0]["response"]["status_code"] == 200 and out[0]["error"] is None
    answer = out[0]["response"]["body"]
    assert answer["object"] == "chat.completion" and answer["model"] == MIS_MODEL
    live = client.post("/chat/completions", json={"model": MIS_MODEL, **body(prompts[0])}).json()
    assert answer["choices"][0]["message"]["content"] == live["choices"][0]["message"]["content"]
    assert answer["usage"] == live["usage"]
    out_file = client.get(f"/files/{done['output_file']}").json()
    assert (out_file["sample_type"], out_file["source"], out_file["purpose"]) == ("batch_result", "mistral", "batch")
    listed = client.get("/batch/jobs").json()
    assert listed["object"] == "list" and listed["total"] == 1 and [j["id"] for j in listed["data"]] == [created["id"]]
    assert client.get("/batch/jobs", params={"status": "RUNNING"}).json()["total"] == 0
    stats = sb.stats()
    assert stats["batches"]["mistral"]["requests"] == 6 and stats["batches"]["mistral"]["status"] == {"completed": 1}
    assert stats["models"]["mistral/mistral-small-latest"]["requests"] == 1  # the live call only: its own quota


def test_mistral_requests_erroring_inside_the_job_go_to_the_error_file(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    client = http(sb, "mis-faults")
    created = job(client, [{"custom_id": f"r-{i}", "body": body(f"Q{i}")} for i in range(5)])  # r-2 named, r-3 4th
    clock.advance(2.0)
    done = client.get(f"/batch/jobs/{created['id']}").json()
    assert done["status"] == "SUCCESS"
    assert (done["succeeded_requests"], done["failed_requests"], done["completed_requests"]) == (3, 2, 5)
    assert [x["custom_id"] for x in lines_of(client, done["output_file"])] == ["r-0", "r-1", "r-4"]
    errors = lines_of(client, done["error_file"])
    assert [x["custom_id"] for x in errors] == ["r-2", "r-3"]
    assert all(x["response"]["status_code"] == 500 and x["response"]["body"]["error"]["type"] == "server_error"
               for x in errors)
    assert client.get(f"/files/{done['error_file']}").json()["sample_type"] == "batch_error"


def test_mistral_timeout_and_cancel(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    expiring = http(sb, "mis-expire")
    timed = job(expiring, [{"custom_id": f"r-{i}", "body": body(f"Q{i}")} for i in range(4)])
    client = http(sb, "mistral")
    doomed = job(client, [{"custom_id": f"c-{i}", "body": body(f"Q{i}")} for i in range(4)])
    clock.advance(2.0)  # RUNNING since 1 s, 4 requests over 3 s: 1 done; the other job's window has closed
    out = expiring.get(f"/batch/jobs/{timed['id']}").json()
    assert out["status"] == "TIMEOUT_EXCEEDED" and out["succeeded_requests"] == 2 and out["total_requests"] == 4
    assert [x["custom_id"] for x in lines_of(expiring, out["output_file"])] == ["r-0", "r-1"]
    assert out["error_file"] is None  # the requests that never ran have no line
    cancelling = client.post(f"/batch/jobs/{doomed['id']}/cancel").json()
    assert cancelling["status"] == "CANCELLATION_REQUESTED" and cancelling["succeeded_requests"] == 1
    clock.advance(1.0)
    assert client.get(f"/batch/jobs/{doomed['id']}").json()["status"] == "CANCELLATION_REQUESTED"
    clock.advance(1.0)
    cancelled = client.get(f"/batch/jobs/{doomed['id']}").json()
    assert cancelled["status"] == "CANCELLED" and cancelled["completed_at"] == doomed["created_at"] + 4
    assert [x["custom_id"] for x in lines_of(client, cancelled["output_file"])] == ["c-0"]
    again = client.post(f"/batch/jobs/{doomed['id']}/cancel")
    assert again.status_code == 400 and "CANCELLED" in again.json()["error"]["message"]


def test_mistral_failed_validation_limits_and_refusals(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    invalid = http(sb, "mis-invalid")
    refused = job(invalid, [{"custom_id": "a", "body": body("fine")}])
    clock.advance(0.5)
    assert invalid.get(f"/batch/jobs/{refused['id']}").json()["status"] == "QUEUED"
    clock.advance(0.5)
    failed = invalid.get(f"/batch/jobs/{refused['id']}").json()
    assert failed["status"] == "FAILED" and failed["errors"] == [{"message": "The sandbox refused this job.", "count": 1}]
    assert failed["total_requests"] == 0 and failed["output_file"] is None and failed["error_file"] is None
    assert sb.stats()["batches"]["mis-invalid"]["failed_validation"] == 1

    client = http(sb, "mistral")
    bad = job(client, [{"custom_id": "a", "body": body("x")}, {"custom_id": "a", "body": body("y")}, "{not json",
                       {"body": body("z")}, {"custom_id": "b"}, {"custom_id": "c", "body": body("w")}])
    clock.advance(1.0)
    assert {(e["message"], e["count"]) for e in client.get(f"/batch/jobs/{bad['id']}").json()["errors"]} == {
        ("The custom_id 'a' is used by more than one request.", 1),
        ("A line of the input file is not a valid JSON object.", 1),
        ("A request of the input file has no custom_id.", 1), ("A request of the input file has no body.", 1)}
    small = http(sb, "mis-small")
    over = job(small, [{"custom_id": f"r{i}", "body": body("x")} for i in range(3)])
    fits = job(small, [{"custom_id": f"r{i}", "body": body("x")} for i in range(2)])
    clock.advance(1.0)
    assert small.get(f"/batch/jobs/{fits['id']}").json()["status"] == "SUCCESS"
    too_many = small.get(f"/batch/jobs/{over['id']}").json()
    assert too_many["status"] == "FAILED" and "may contain at most 2" in too_many["errors"][0]["message"]
    assert (MISTRAL_MAX_REQUESTS, MISTRAL_MAX_BYTES) == (100_000, 512 * 1024 * 1024)

    untagged = upload(client, [{"custom_id": "a", "body": body("x")}], purpose=None)
    assert untagged["purpose"] == "fine-tune"  # Mistral's default purpose
    wrong = client.post("/batch/jobs", json={"input_files": [untagged["id"]], "endpoint": "/v1/chat/completions",
                                             "model": MIS_MODEL})
    assert wrong.status_code == 400 and "purpose 'batch'" in wrong.json()["error"]["message"]
    tagged = upload(client, [{"custom_id": "a", "body": body("x")}])
    for fields, status, param in [({"model": None}, 400, "model"), ({"timeout_hours": 168}, 400, "timeout_hours"),
                                  ({"endpoint": "/v1/ocr"}, 400, "endpoint"), ({"input_files": ["nosuch"]}, 404, "id")]:
        sent = {"input_files": [tagged["id"]], "endpoint": "/v1/chat/completions", "model": MIS_MODEL, **fields}
        answer = client.post("/batch/jobs", json={k: v for k, v in sent.items() if v is not None})
        assert (answer.status_code, answer.json()["error"]["param"]) == (status, param)
    assert client.get("/batch/jobs/nosuch").status_code == 404
    assert http(sb, "mistral", BAD_KEY).post("/batch/jobs", json={}).status_code == 401
    assert http(sb, "openai").post("/batch/jobs", json={}).status_code == 404  # OpenAI's style serves no jobs
    assert http(sb, "mistral").post("/batches", json={}).status_code == 404  # nor Mistral's OpenAI's batches


# --------------------------------------------------------------------------- OpenRouter


def test_openrouter_batch_statuses_over_time_and_its_inline_results(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    client = http(sb, "openrouter", OR_KEY)
    prompts = [f"Name {n} prime numbers." for n in range(6)]
    made = submit(client, [{"custom_id": f"r-{i}", "body": body(p)} for i, p in enumerate(prompts)])
    created = made.json()
    assert made.status_code == 202 and created["status"] == "validating" and created["object"] == "batch"
    assert created["id"].startswith("batch-") and created["results"] is None and created["error"] is None
    assert created["request_counts"] == {"total": 0, "completed": 0, "failed": 0} and created["usage"] is None
    assert created["expires_at"] == created["created_at"] + 86400 and created["completion_window"] == "24h"

    clock.advance(1.0)
    running = client.get(f"/batches/{created['id']}").json()
    assert running["status"] == "in_progress" and running["request_counts"]["total"] == 6
    assert running["provider"] and running["results"] is None
    clock.advance(1.5)
    assert client.get(f"/batches/{created['id']}").json()["request_counts"]["completed"] == 3
    clock.advance(1.5)
    finalizing = client.get(f"/batches/{created['id']}").json()
    assert finalizing["status"] == "finalizing" and finalizing["results"] is None
    clock.advance(1.0)
    done = client.get(f"/batches/{created['id']}").json()
    assert done["status"] == "completed" and done["finalized_at"] == created["created_at"] + 5
    assert done["request_counts"] == {"total": 6, "completed": 6, "failed": 0}
    results = done["results"]
    assert [r["custom_id"] for r in results] == [f"r-{i}" for i in range(6)]
    assert all(r["error"] is None and r["response"]["status_code"] == 200 and r["response"]["request_id"]
               for r in results)
    answer = results[0]["response"]["body"]
    assert answer["id"].startswith("gen-") and answer["model"] == OR_MODEL
    live = client.post("/chat/completions", json={"model": OR_MODEL, **body(prompts[0])}).json()
    assert answer["choices"][0]["message"]["content"] == live["choices"][0]["message"]["content"]
    assert answer["usage"] == live["usage"] and answer["provider"] == live["provider"] == done["provider"]
    assert done["usage"]["total_tokens"] == sum(r["response"]["body"]["usage"]["total_tokens"] for r in results)
    listed = client.get("/batches").json()
    assert [b["id"] for b in listed["data"]] == [created["id"]] and listed["data"][0]["results"] is None
    assert sb.stats()["batches"]["openrouter"]["requests"] == 6
    assert sb.stats()["models"]["openrouter/openai/gpt-4o-mini"]["requests"] == 1  # the live call only


def test_openrouter_submit_refusals(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    client = http(sb, "openrouter", OR_KEY)
    requests = [{"custom_id": "a", "body": body("x")}]
    late = client.post("/batches", content=json.dumps({"endpoint": "/v1/chat/completions", "requests": requests,
                                                       "model": OR_MODEL}),
                       headers={"content-type": "application/json"})
    assert late.status_code == 400 and "before requests" in late.json()["error"]["message"]
    unknown = submit(client, requests, model="openai/gpt-9")
    assert unknown.status_code == 400 and unknown.json()["error"]["message"] == "openai/gpt-9 is not a valid model ID"
    assert client.post("/batches", json={"model": OR_MODEL, "requests": requests}).status_code == 400
    assert submit(client, []).status_code == 400
    small = http(sb, "or-small", OR_KEY)
    too_many = submit(small, [{"custom_id": f"r{i}", "body": body("x")} for i in range(3)])
    assert too_many.status_code == 400 and "at most 2 requests" in too_many.json()["error"]["message"]
    assert submit(small, [{"custom_id": "big", "body": body("x" * 4000)}]).status_code == 413
    assert http(sb, "openrouter", "sk-or-wrong-9999").get("/batches").status_code == 401
    assert client.post("/files", files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "batch"}).status_code == 404
    assert sb.stats()["batches"] == {}  # nothing was created
    assert (OPENROUTER_MAX_REQUESTS, OPENROUTER_MAX_BYTES) == (5_000, 200 * 1024 * 1024)


def test_openrouter_errored_rows_expiry_and_failed_validation(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    faults = http(sb, "or-faults", OR_KEY)
    mixed = submit(faults, [{"custom_id": f"r-{i}", "body": body(f"Q{i}")} for i in range(3)]).json()
    expiring = http(sb, "or-expire", OR_KEY)
    timed = submit(expiring, [{"custom_id": f"r-{i}", "body": body(f"Q{i}")} for i in range(4)]).json()
    invalid = http(sb, "or-invalid", OR_KEY)
    refused = submit(invalid, [{"custom_id": "a", "body": body("x")}]).json()
    duplicates = submit(faults, [{"custom_id": "a", "body": body("x")}, {"custom_id": "a", "body": body("y")}]).json()
    clock.advance(0.5)
    assert invalid.get(f"/batches/{refused['id']}").json()["status"] == "validating"
    clock.advance(1.5)
    done = faults.get(f"/batches/{mixed['id']}").json()
    assert done["status"] == "completed" and done["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    errored = {r["custom_id"]: r for r in done["results"]}["r-1"]
    assert errored["response"] is None and errored["error"]["error_type"] == "provider_overloaded"
    assert errored["error"]["message"] == "Service Unavailable"  # the live route's words for it
    expired = expiring.get(f"/batches/{timed['id']}").json()
    assert expired["status"] == "expired" and [r["custom_id"] for r in expired["results"]] == ["r-0", "r-1"]
    assert expired["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
    failed = invalid.get(f"/batches/{refused['id']}").json()
    assert failed["status"] == "failed" and failed["error"] == {"message": "The sandbox refused this batch."}
    assert failed["results"] == [] and failed["request_counts"]["total"] == 0
    dup = faults.get(f"/batches/{duplicates['id']}").json()
    assert dup["status"] == "failed" and "'a' is used by more than one request" in dup["error"]["message"]


def test_openrouter_cancel(world: tuple[Sandbox, Clock]) -> None:
    sb, clock = world
    client = http(sb, "openrouter", OR_KEY)
    created = submit(client, [{"custom_id": f"r-{i}", "body": body(f"Q{i}")} for i in range(4)]).json()
    clock.advance(2.0)  # in_progress since 1 s: 1 of 4 done
    cancelling = client.post(f"/batches/{created['id']}/cancel")
    assert cancelling.status_code == 200 and cancelling.json()["status"] == "in_progress"  # until it takes
    clock.advance(1.0)
    assert client.post(f"/batches/{created['id']}/cancel").json()["status"] == "in_progress"  # safe to repeat
    clock.advance(1.0)
    cancelled = client.get(f"/batches/{created['id']}").json()
    assert cancelled["status"] == "cancelled" and cancelled["results"] == []  # no result rows for a cancelled batch
    assert cancelled["request_counts"] == {"total": 4, "completed": 1, "failed": 3}
    again = client.post(f"/batches/{created['id']}/cancel")
    assert again.status_code == 409
    assert client.get("/batches/batch-nosuch").status_code == 404


# --------------------------------------------------------------------------- scenarios


def test_styles_mistral_and_openrouter_batch_by_default_and_name_their_api() -> None:
    assert {"mistral", "openrouter"} <= BATCH_STYLES and "deepseek" not in BATCH_STYLES
    openrouter = load_scenario("seed15").provider("openrouter")  # a built-in scenario's: on by default
    assert openrouter is not None and openrouter.batch == BatchSpec() and openrouter.batch_api == "openrouter"
    config = parse_scenario(SCENARIO).client_config("http://127.0.0.1:9")
    assert {p: config["providers"][p]["batch"]["api"] for p in ("mistral", "openrouter", "openai", "mis-small")} == {
        "mistral": "mistral", "openrouter": "openrouter", "openai": "openai", "mis-small": "mistral"}
    assert config["providers"]["or-small"]["batch"]["max_requests"] == 2
