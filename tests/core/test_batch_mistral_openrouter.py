"""Maps sent through Mistral's batch jobs and OpenRouter's batches (core/batch.py), against the sandbox over HTTP.

The sandbox serves both with those providers' bodies and statuses (nbfanout/sandbox/batches.py);
the client reads them with MistralBatches and OpenRouterBatches on the OpenAI chat adapter, as
live calls are read. Batches here end about a second after creation and the client polls at
the sandbox config's pace, so each test takes a few seconds.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from nbfanout import Fanout
from nbfanout.core.batch import BatchState
from nbfanout.core.errors import ErrorCategory
from nbfanout.core.events import BatchProgress, Event
from nbfanout.sandbox import Sandbox, start_sandbox
from _batch_helpers import prompts  # the prompts the other batch tests send

MIS = "sk-sbx-core-batch-mistral-0c01"
ORK = "sk-or-sbx-core-batch-0c02"
FAST = {"output_tokens": [5, 20], "latency": {"base_ms": 5}, "limits": {"rpm": 6000}}
MIS_MODEL = "mistral-small-latest"
OR_MODEL = "deepseek/deepseek-chat-v3-0324"
#: Catalog models (with prices) of the two providers, served by the sandbox under the same names.
MODELS = [f"mistral/{MIS_MODEL}", f"openrouter/{OR_MODEL}"]


def _mis(batch: dict[str, Any]) -> dict[str, Any]:
    return {"style": "mistral", "keys": [MIS], "models": {MIS_MODEL: FAST}, "batch": batch}


def _or(batch: dict[str, Any]) -> dict[str, Any]:
    return {"style": "openrouter", "keys": [ORK], "models": {OR_MODEL: FAST}, "batch": batch}


def _refusing(make: Any) -> dict[str, Any]:
    return make({"complete_after_s": 0.5, "errored_custom_ids": ["p2"], "error_kind": "bad_request",
                 "error_message": "The sandbox refused this one request."})


SCENARIO: dict[str, Any] = {
    "name": "core-batch-mistral-openrouter",
    "seed": 37,
    "time_scale": 1.0,
    "providers": {
        "mistral": _mis({"in_progress_after_s": 0.2, "complete_after_s": 1.0}),
        "openrouter": _or({"in_progress_after_s": 0.2, "complete_after_s": 1.0, "finalizing_s": 0.2}),
        "mis-faults": _mis({"complete_after_s": 0.5, "errored_custom_ids": ["p3"], "errored_every_nth": 5}),
        "or-faults": _or({"complete_after_s": 0.5, "errored_custom_ids": ["p1"], "error_kind": "overloaded"}),
        "mis-refuse": _refusing(_mis),
        "or-refuse": _refusing(_or),
        "mis-expire": _mis({"complete_after_s": 1.0, "expire": True, "expire_fraction": 0.5}),
        "or-expire": _or({"complete_after_s": 1.0, "expire": True, "expire_fraction": 0.5}),
        "mis-invalid": _mis({"in_progress_after_s": 0.2, "fail_validation": "The sandbox refused this job."}),
        "or-invalid": _or({"in_progress_after_s": 0.2, "fail_validation": "The sandbox refused this batch."}),
        "mis-small": _mis({"complete_after_s": 0.5, "max_requests": 2}),
        "or-small": _or({"complete_after_s": 0.5, "max_requests": 2}),
        "mis-slow": _mis({"in_progress_after_s": 0.2, "complete_after_s": 30.0, "cancel_after_s": 0.3}),
        "or-slow": _or({"in_progress_after_s": 0.2, "complete_after_s": 30.0, "cancel_after_s": 0.3}),
    },
}


@pytest.fixture(scope="module")
def sb() -> Any:
    with start_sandbox(SCENARIO) as server:
        yield server


def _batches(sb: Sandbox, provider: str) -> int:
    """How many batches the sandbox holds for a provider (none are deleted)."""
    return int(sb.stats()["batches"].get(provider, {}).get("live", 0))


async def test_a_map_via_batch_over_mistral_and_openrouter_returns_every_answer_in_order_at_the_batch_price(
        sb: Sandbox, tmp_path: Path) -> None:
    asked = prompts(20)
    events: list[Event] = []
    async with Fanout(sb.config) as fx:
        fx.subscribe(events.append)
        batch = await fx.map(asked, models=MODELS, via="batch", batch_state=tmp_path / "both.json", max_tokens=40)
        live = await fx.map(asked, models=MODELS, max_tokens=40)  # the sandbox answers a prompt alike either way
    assert len(batch.results) == 40 and all(r.ok for r in batch.results)
    assert [(r.prompt_index, r.requested) for r in batch.results] == [(i, m) for i in range(20) for m in MODELS]
    assert {r.via for r in batch.results} == {"batch"} and {r.via for r in live.results} == {"live"}
    for b, lv in zip(batch.results, live.results):
        assert (b.text, b.input_tokens, b.output_tokens) == (lv.text, lv.input_tokens, lv.output_tokens)
        assert lv.cost and b.cost == pytest.approx(lv.cost * 0.5)  # the catalog's batch price for both
    state = BatchState.load(tmp_path / "both.json")
    assert sorted(j.model for j in state.jobs) == sorted(MODELS) and state.done
    assert all(j.state == "fetched" and j.total == 20 for j in state.jobs)
    statuses = {(e.model, e.status) for e in events if isinstance(e, BatchProgress) and e.state == "fetched"}
    assert statuses == {(MODELS[0], "SUCCESS"), (MODELS[1], "completed")}  # each provider's own word
    assert {p: _batches(sb, p) >= 1 for p in ("mistral", "openrouter")} == {"mistral": True, "openrouter": True}


async def test_requests_that_error_inside_a_batch_fail_with_the_live_taxonomy(sb: Sandbox, tmp_path: Path) -> None:
    models = [f"mis-faults/{MIS_MODEL}", f"or-faults/{OR_MODEL}", f"mis-refuse/{MIS_MODEL}", f"or-refuse/{OR_MODEL}"]
    async with Fanout(sb.config) as fx:
        batch = await fx.map(prompts(6), models=models, via="batch", batch_state=tmp_path / "faults.json",
                             max_tokens=40)
    by = {(r.prompt_index, r.requested): r for r in batch.results}
    failed = {k for k, r in by.items() if not r.ok}
    assert failed == {(3, models[0]), (4, models[0]), (1, models[1]), (2, models[2]), (2, models[3])}
    # what the same refusal is when a live call gets it: Mistral's 500 server error, OpenRouter's 503, a 400
    assert [(by[k].error.category, by[k].error.status) for k in [(3, models[0]), (1, models[1])]] == [
        (ErrorCategory.SERVER_ERROR, 500), (ErrorCategory.OVERLOADED, 503)]
    for refused in (by[(2, models[2])].error, by[(2, models[3])].error):
        assert (refused.category, refused.status) == (ErrorCategory.BAD_REQUEST, 400)
        assert "refused this one request" in refused.message
    assert by[(1, models[1])].error.retryable and not by[(2, models[3])].error.retryable
    assert all(r.via == "batch" and r.attempts for r in by.values())


@pytest.mark.parametrize("model", [f"mis-expire/{MIS_MODEL}", f"or-expire/{OR_MODEL}"])
async def test_an_expired_batch_keeps_its_answers_and_its_expired_requests_rerun_live(
        sb: Sandbox, tmp_path: Path, model: str) -> None:
    async with Fanout(sb.config) as fx:
        batch = await fx.map(prompts(8), models=[model], via="batch", batch_state=tmp_path / "expire.json",
                             max_tokens=40)
        again = await fx.rerun(batch, max_tokens=40)
    errors = {r.prompt_index: r.error for r in batch.results if not r.ok}
    assert sorted(errors) == [4, 5, 6, 7]  # the first half ran before the window closed
    assert {(e.category, e.provider_code) for e in errors.values()} == {(ErrorCategory.TIMEOUT, "batch_expired")}
    assert all("rerun" in e.message for e in errors.values()) and all(r.ok for r in again.results)
    assert [r.via for r in again.results] == ["batch"] * 4 + ["live"] * 4


async def test_a_batch_that_fails_validation_fails_with_the_providers_message(sb: Sandbox, tmp_path: Path) -> None:
    models = [f"mis-invalid/{MIS_MODEL}", f"or-invalid/{OR_MODEL}", MODELS[0]]
    async with Fanout(sb.config) as fx:
        batch = await fx.map(prompts(3), models=models, via="batch", batch_state=tmp_path / "invalid.json",
                             max_tokens=40)
    said = {m: {r.error.message for r in batch.results if r.requested == m and not r.ok} for m in models[:2]}
    assert said == {models[0]: {"The sandbox refused this job."}, models[1]: {"The sandbox refused this batch."}}
    assert all(r.ok for r in batch.results if r.requested == MODELS[0])  # the other model is kept
    assert [j.state for j in BatchState.load(tmp_path / "invalid.json").jobs] == ["failed", "failed", "fetched"]


async def test_a_map_larger_than_one_batch_is_split_and_a_batch_too_large_fails_with_the_providers_message(
        sb: Sandbox, tmp_path: Path) -> None:
    models = [f"mis-small/{MIS_MODEL}", f"or-small/{OR_MODEL}"]
    before = {p: _batches(sb, p) for p in ("mis-small", "or-small")}
    async with Fanout(sb.config) as fx:
        batch = await fx.map(prompts(5), models=models, via="batch", batch_state=tmp_path / "split.json",
                             max_tokens=40)
    assert all(r.ok for r in batch.results)
    assert [(r.prompt_index, r.requested) for r in batch.results] == [(i, m) for i in range(5) for m in models]
    assert {p: _batches(sb, p) - before[p] for p in before} == {"mis-small": 3, "or-small": 3}
    jobs = BatchState.load(tmp_path / "split.json").jobs
    assert {m: [j.prompts for j in jobs if j.model == m] for m in models} == {m: [(0, 1), (2, 3), (4,)] for m in models}

    config = json.loads(json.dumps(sb.config))
    for provider in ("mis-small", "or-small"):  # the client thinks more fit in one batch than do
        config["providers"][provider]["batch"]["max_requests"] = 1000
    async with Fanout(config) as fx:
        refused = await fx.map(prompts(5), models=models, via="batch", batch_state=tmp_path / "toolarge.json",
                               max_tokens=40)
    assert not any(r.ok for r in refused.results)
    said = {m: {r.error.message for r in refused.results if r.requested == m} for m in models}
    # Mistral creates the job and fails it in validation; OpenRouter refuses the submission
    assert said[models[0]] == {"The batch input file has 5 requests; a batch may contain at most 2."}
    assert said[models[1]] == {"the or-small batch could not be created: requests: a batch holds at most 2 requests, "
                               "not 5"}


async def test_cancel_is_asked_for_explicitly_and_a_resume_then_returns_the_cancelled_requests(
        sb: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "cancel.json"
    models = [f"mis-slow/{MIS_MODEL}", f"or-slow/{OR_MODEL}"]
    async with Fanout(sb.config) as fx:
        task = asyncio.ensure_future(fx.map(prompts(4), models=models, via="batch", batch_state=path, max_tokens=40))
        while not (path.exists() and len(BatchState.load(path).jobs) == 2):
            await asyncio.sleep(0.02)
        task.cancel()  # stopping the run leaves the providers' batches alone
        await asyncio.gather(task, return_exceptions=True)
        assert {j.model: j.status in ("QUEUED", "RUNNING", "validating", "in_progress")
                for j in await fx.batch_status(path)} == dict.fromkeys(models, True)
        cancelled = {j.model: j.status for j in await fx.cancel_batches(path)}
        assert cancelled[models[0]] == "CANCELLATION_REQUESTED"
        assert cancelled[models[1]] in ("validating", "in_progress")  # OpenRouter's word stays until the cancel takes
        result = await fx.resume(path)
    assert [(r.requested, r.error.category) for r in result.results] == [
        (m, ErrorCategory.CANCELLED) for _ in range(4) for m in models]
    assert [j.status for j in BatchState.load(path).jobs] == ["CANCELLED", "cancelled"] and BatchState.load(path).done


async def test_the_state_file_never_holds_a_key(sb: Sandbox, tmp_path: Path) -> None:
    async with Fanout(sb.config) as fx:
        await fx.map(prompts(2), models=MODELS, via="batch", batch_state=tmp_path / "keys.json", max_tokens=40)
    text = (tmp_path / "keys.json").read_text()
    for key in (MIS, ORK):
        assert key not in text and key[-4:] in text
