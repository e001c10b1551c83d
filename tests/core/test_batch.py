"""Maps sent through the providers' batch APIs (core/batch.py), against the sandbox over real HTTP.

The sandbox serves OpenAI's files + batches, Anthropic's message batches and Gemini's batch
mode with the providers' bodies and statuses; the client reads them with the same adapters as
live calls. Batches here finish about a second after creation; the client's status poll is
the sandbox config's (a fifth of that), so each test takes seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nbfanout import Fanout
from nbfanout.core.batch import BatchState
from nbfanout.core.errors import ErrorCategory, UsageError
from nbfanout.core.events import BatchProgress, Event, ModelCompleted
from nbfanout.sandbox import Sandbox, start_sandbox

OAI = "sk-sbx-core-batch-openai-0a01"
ANT = "sk-ant-sbx-core-batch-0a02"
GEM = "AIzaSbx-core-batch-0a03"
FAST = {"output_tokens": [5, 20], "latency": {"base_ms": 5}, "limits": {"rpm": 6000}}
MODELS = ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5-20251001", "gemini/gemini-2.5-flash"]


def _oai(batch: Any, provider_id: str = "") -> dict[str, Any]:
    return {"style": "openai", "keys": [OAI], "models": {"gpt-4o-mini": FAST}, "batch": batch}


SCENARIO: dict[str, Any] = {
    "name": "core-batch",
    "seed": 31,
    "time_scale": 1.0,
    "providers": {
        "openai": _oai({"in_progress_after_s": 0.2, "complete_after_s": 1.0, "finalizing_s": 0.2}),
        "anthropic": {"style": "anthropic", "keys": [ANT], "tokens_counted": "usage",
                      "models": {"claude-haiku-4-5-20251001": FAST}, "batch": {"complete_after_s": 1.0}},
        "gemini": {"style": "gemini", "keys": [GEM], "models": {"gemini-2.5-flash": FAST},
                   "batch": {"in_progress_after_s": 0.2, "complete_after_s": 1.0}},
        "oai-faults": _oai({"complete_after_s": 0.5, "errored_custom_ids": ["p3"], "errored_every_nth": 5}),
        "ant-faults": {"style": "anthropic", "keys": [ANT], "models": {"claude-haiku-4-5-20251001": FAST},
                       "batch": {"complete_after_s": 0.5, "errored_custom_ids": ["p1"], "error_kind": "overloaded"}},
        "gem-faults": {"style": "gemini", "keys": [GEM], "models": {"gemini-2.5-flash": FAST},
                       "batch": {"complete_after_s": 0.5, "errored_custom_ids": ["p2"], "error_kind": "bad_request",
                                 "error_message": "The sandbox refused this one request."}},
        "oai-expire": _oai({"complete_after_s": 1.0, "expire": True, "expire_fraction": 0.5}),
        "ant-expire": {"style": "anthropic", "keys": [ANT], "models": {"claude-haiku-4-5-20251001": FAST},
                       "batch": {"complete_after_s": 1.0, "expire": True, "expire_fraction": 0.5}},
        "oai-invalid": _oai({"in_progress_after_s": 0.2, "fail_validation": "The sandbox refused this input file."}),
        "oai-small": _oai({"complete_after_s": 0.5, "max_requests": 2}),
        "ant-small": {"style": "anthropic", "keys": [ANT], "models": {"claude-haiku-4-5-20251001": FAST},
                      "batch": {"complete_after_s": 0.5, "max_requests": 2}},
        "oai-slow": _oai({"in_progress_after_s": 0.2, "complete_after_s": 30.0, "cancel_after_s": 0.3}),
        "nobatch": {**_oai(False)},
        "deepseek": {"style": "deepseek", "keys": [OAI], "models": {"deepseek-chat": FAST}},  # a style with no batch API
    },
}


@pytest.fixture(scope="module")
def sb() -> Any:
    with start_sandbox(SCENARIO) as server:
        yield server


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "batches"


def _prompts(n: int) -> list[str]:
    return [f"question {i}: name a colour and a number" for i in range(n)]


def _batches(sb: Sandbox, provider: str) -> int:
    """How many batches the sandbox holds for a provider (created by any test of this module; none are deleted)."""
    return int(sb.stats().get("batches", {}).get(provider, {}).get("live", 0))


async def test_300_prompts_by_3_models_via_batch_come_back_in_order_at_half_the_live_price(sb: Sandbox,
                                                                                           state_dir: Path) -> None:
    prompts = _prompts(300)
    events: list[Event] = []
    async with Fanout(sb.config) as fx:
        fx.subscribe(events.append)
        batch = await fx.map(prompts, models=MODELS, via="batch", batch_state=state_dir / "big.json", max_tokens=40)
        # the same first ten live: the sandbox answers a prompt alike either way, so the tokens match
        live = await fx.map(prompts[:10], models=MODELS, max_tokens=40)
    assert len(batch.results) == 900 and all(r.ok for r in batch.results)
    assert [(r.prompt_index, r.requested) for r in batch.results] == [(i, m) for i in range(300) for m in MODELS]
    assert {r.via for r in batch.results} == {"batch"} and {r.via for r in live.results} == {"live"}
    for b, lv in zip(batch.results[:30], live.results):
        assert (b.text, b.input_tokens, b.output_tokens) == (lv.text, lv.input_tokens, lv.output_tokens)
        assert b.cost == pytest.approx(lv.cost / 2)
    by_model = {m: sum(r.cost for r in batch.results if r.requested == m) for m in MODELS}
    assert all(c > 0 for c in by_model.values())
    # one batch per model, and the provider's counts seen on the way
    state = BatchState.load(state_dir / "big.json")
    assert sorted(j.model for j in state.jobs) == sorted(MODELS) and state.done
    assert all(j.state == "fetched" and j.total == 300 for j in state.jobs)
    progress = [e for e in events if isinstance(e, BatchProgress)]
    assert {e.model for e in progress if e.state == "fetched"} == set(MODELS)
    assert any(e.state == "running" and e.status in ("in_progress", "BATCH_STATE_RUNNING") for e in progress)


def _live_requests(sb: Sandbox, provider: str) -> int:
    return int(sb.stats()["providers"].get(provider, {}).get("requests", 0))


async def test_a_process_killed_after_creating_its_batches_is_resumed_from_the_state_file(sb: Sandbox,
                                                                                          tmp_path: Path) -> None:
    """300 prompts × 3 batched models and one live one; the process is SIGKILLed once its batches
    exist and its live answers are in the file; a new process resumes without sending anything twice."""
    path = tmp_path / "killed.json"
    config = json.loads(json.dumps(sb.config))
    config["providers"]["openai"]["batch"]["poll_s"] = 30.0  # the first process must not get far
    models = [*MODELS, "nobatch/gpt-4o-mini"]
    spec = {"config": config, "models": models, "prompts": 300, "path": str(path)}
    before = {p: _batches(sb, p) for p in ("openai", "anthropic", "gemini")}
    live_before = _live_requests(sb, "nobatch")
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, json.dumps(spec)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if path.exists():
                seen = BatchState.load(path)
                if len(seen.jobs) == 3 and len(seen.live) == 300:
                    break
            assert worker.poll() is None, worker.stderr.read().decode() if worker.stderr else ""
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the worker did not create its three batches and answer live within 60 s")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert worker.returncode == -signal.SIGKILL
    assert not BatchState.load(path).done
    sent_live = _live_requests(sb, "nobatch") - live_before
    events: list[Event] = []
    async with Fanout(sb.config) as fx:
        fx.subscribe(events.append)
        resumed = await fx.resume(path)
    # the answers kept from the file are reported as any answer is, so views count them
    kept = {e.request for e in events if isinstance(e, ModelCompleted) and e.requested == "nobatch/gpt-4o-mini"}
    assert kept == {f"{i}:nobatch/gpt-4o-mini" for i in range(300)}
    assert len(resumed.results) == 1200 and all(r.ok for r in resumed.results)
    assert [(r.prompt_index, r.requested) for r in resumed.results] == [(i, m) for i in range(300) for m in models]
    assert {p: _batches(sb, p) - before[p] for p in before} == {"openai": 1, "anthropic": 1, "gemini": 1}
    assert sent_live == 300 and _live_requests(sb, "nobatch") - live_before == 300  # none asked twice
    assert {r.via for r in resumed.results if r.requested == "nobatch/gpt-4o-mini"} == {"live"}
    assert BatchState.load(path).done


_WORKER = """
import asyncio, json, sys
from nbfanout import Fanout
spec = json.loads(sys.argv[1])
async def main():
    async with Fanout(spec["config"]) as fx:
        await fx.map([f"question {i}: name a colour and a number" for i in range(spec["prompts"])],
                     models=spec["models"], via="batch", batch_state=spec["path"], max_tokens=40)
asyncio.run(main())
"""


async def test_requests_that_error_inside_a_batch_fail_with_the_live_taxonomy(sb: Sandbox, state_dir: Path) -> None:
    models = ["oai-faults/gpt-4o-mini", "ant-faults/claude-haiku-4-5-20251001", "gem-faults/gemini-2.5-flash"]
    async with Fanout(sb.config) as fx:
        batch = await fx.map(_prompts(6), models=models, via="batch", batch_state=state_dir / "faults.json",
                             max_tokens=40)
    by = {(r.prompt_index, r.requested): r for r in batch.results}
    failed = {k for k, r in by.items() if not r.ok}
    assert failed == {(3, models[0]), (4, models[0]), (1, models[1]), (2, models[2])}
    assert by[(3, models[0])].error.category is ErrorCategory.SERVER_ERROR
    assert by[(1, models[1])].error.category is ErrorCategory.OVERLOADED
    refused = by[(2, models[2])].error
    assert refused.category is ErrorCategory.BAD_REQUEST and "refused this one request" in refused.message
    assert all(r.via == "batch" and r.attempts for r in by.values())


@pytest.mark.parametrize("model", ["oai-expire/gpt-4o-mini", "ant-expire/claude-haiku-4-5-20251001"])
async def test_an_expired_batch_keeps_its_answers_and_can_be_rerun_live_or_in_a_new_batch(
        sb: Sandbox, state_dir: Path, model: str) -> None:
    async with Fanout(sb.config) as fx:
        batch = await fx.map(_prompts(8), models=[model], via="batch", batch_state=state_dir / "expire.json",
                             max_tokens=40)
        expired = [r for r in batch.results if not r.ok]
        assert 0 < len(expired) < 8 and any(r.ok for r in batch.results)
        assert all(r.error.category is ErrorCategory.TIMEOUT and r.error.provider_code == "batch_expired"
                   and "rerun" in r.error.message for r in expired)
        again = await fx.rerun(batch, max_tokens=40)
        assert all(r.ok for r in again.results)
        assert [r.via for r in again.results] == ["live" if not r.ok else "batch" for r in batch.results]
        assert [r.prompt_index for r in again.results] == list(range(8))
        kept = [a.text for a, b in zip(again.results, batch.results) if b.ok]
        assert kept == [b.text for b in batch.results if b.ok]
        # in a new batch (this provider expires every batch: the same requests expire again, by batch)
        rebatched = await fx.rerun(batch, via="batch", max_tokens=40, batch_state=state_dir / "rebatch.json")
        assert [r.via for r in rebatched.results] == ["batch"] * 8
        assert BatchState.load(state_dir / "rebatch.json").prompts == [batch.prompts[r.prompt_index] for r in expired]


async def test_a_batch_the_provider_refuses_fails_with_the_providers_message(sb: Sandbox, state_dir: Path) -> None:
    async with Fanout(sb.config) as fx:
        batch = await fx.map(_prompts(3) + ["fine"], models=["oai-invalid/gpt-4o-mini", "openai/gpt-4o-mini"],
                             via="batch", batch_state=state_dir / "invalid.json", max_tokens=40)
    refused = [r for r in batch.results if r.requested.startswith("oai-invalid")]
    assert len(refused) == 4 and not any(r.ok for r in refused)
    assert all("refused this input file" in r.error.message for r in refused)
    assert all(r.ok for r in batch.results if r.requested == "openai/gpt-4o-mini")  # the other model is kept


async def test_a_batch_that_cannot_be_created_fails_with_the_providers_message(sb: Sandbox, state_dir: Path) -> None:
    config = json.loads(json.dumps(sb.config))
    for provider in ("oai-small", "ant-small"):  # the client thinks more fit in one batch than do
        config["providers"][provider]["batch"]["max_requests"] = 1000
    async with Fanout(config) as fx:
        batch = await fx.map(_prompts(5), models=["oai-small/gpt-4o-mini", "ant-small/claude-haiku-4-5-20251001"],
                             via="batch", batch_state=state_dir / "toolarge.json", max_tokens=40)
    assert not any(r.ok for r in batch.results)
    openai_says = {r.error.message for r in batch.results if r.requested.startswith("oai")}
    anthropic_says = {r.error.message for r in batch.results if r.requested.startswith("ant")}
    # OpenAI creates the batch, then fails it in validation; Anthropic refuses to create it (413)
    assert openai_says == {"The batch input file has 5 requests; a batch may contain at most 2."}
    assert len(anthropic_says) == 1 and anthropic_says.pop().startswith("the ant-small batch could not be created: ")
    assert [j.state for j in BatchState.load(state_dir / "toolarge.json").jobs] == ["failed", "failed"]


async def test_a_map_larger_than_one_batch_is_split_by_the_providers_limits(sb: Sandbox, state_dir: Path) -> None:
    before = _batches(sb, "oai-small")
    async with Fanout(sb.config) as fx:
        batch = await fx.map(_prompts(5), models=["oai-small/gpt-4o-mini"], via="batch", judge="openai/gpt-4o-mini",
                             batch_state=state_dir / "split.json", max_tokens=40)
    assert all(r.ok for r in batch.results) and [r.prompt_index for r in batch.results] == list(range(5))
    assert sorted(batch.scores) == [(i, "oai-small/gpt-4o-mini") for i in range(5)]  # judged live as they came
    assert _batches(sb, "oai-small") - before == 3
    assert [j.prompts for j in BatchState.load(state_dir / "split.json").jobs] == [(0, 1), (2, 3), (4,)]
    async with Fanout(sb.config) as fx:  # a finished map resumed: its results read again, nothing sent
        again = await fx.resume(state_dir / "split.json")
    assert [r.text for r in again.results] == [r.text for r in batch.results]
    assert _batches(sb, "oai-small") - before == 3


async def test_cancel_is_asked_for_explicitly_and_a_resume_then_returns_the_cancelled_requests(
        sb: Sandbox, state_dir: Path) -> None:
    path = state_dir / "cancel.json"
    async with Fanout(sb.config) as fx:
        task = asyncio.ensure_future(fx.map(_prompts(4), models=["oai-slow/gpt-4o-mini"], via="batch",
                                            batch_state=path, max_tokens=40))
        while not (path.exists() and BatchState.load(path).jobs):
            await asyncio.sleep(0.02)
        task.cancel()  # stopping the run leaves the provider's batch alone
        await asyncio.gather(task, return_exceptions=True)
        written = path.read_bytes()
        assert [j.status for j in await fx.batch_status(path)][0] in ("validating", "in_progress")
        cancelled = await fx.cancel_batches(path)
        assert [j.status for j in cancelled] == ["cancelling"]
        assert path.read_bytes() == written  # only the map that follows a batch writes its file
        result = await fx.resume(path)
    assert [r.error.category for r in result.results] == [ErrorCategory.CANCELLED] * 4
    assert BatchState.load(path).done


async def test_via_auto_batches_only_what_the_live_limits_make_slow_and_providers_without_one_run_live(
        sb: Sandbox, state_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = json.loads(json.dumps(sb.config))
    config["models"]["openai/gpt-4o-mini"] = {"rpm": 2}  # 6 prompts: well over a minute live
    async with Fanout(config) as fx:
        auto = await fx.map(_prompts(6), models=["openai/gpt-4o-mini", "gemini/gemini-2.5-flash"], via="auto",
                            batch_after_s=30, batch_state=state_dir / "auto.json", max_tokens=40)
        forced = await fx.map(_prompts(2), models=["nobatch/gpt-4o-mini", "deepseek/deepseek-chat"],
                              via="batch", max_tokens=40, batch_state=state_dir / "live.json")
    assert {r.requested: r.via for r in auto.results} == {"openai/gpt-4o-mini": "batch",
                                                         "gemini/gemini-2.5-flash": "live"}
    assert all(r.ok and r.via == "live" for r in forced.results)
    assert "nobatch/gpt-4o-mini runs live" in caplog.text and "deepseek/deepseek-chat runs live" in caplog.text


async def test_bad_batch_input_is_refused_before_anything_is_sent(sb: Sandbox, tmp_path: Path) -> None:
    async with Fanout(sb.config) as fx:
        with pytest.raises(UsageError, match="via must be one of"):
            await fx.map(["q"], models=["openai/gpt-4o-mini"], via="bulk")
        with pytest.raises(UsageError, match="route=True"):
            await fx.map(["q"], models=["openai/gpt-4o-mini"], via="batch", route=True)
        with pytest.raises(UsageError, match="no such batch state file"):
            await fx.resume(tmp_path / "missing.json")
        (tmp_path / "other.json").write_text('{"hello": 1}')
        with pytest.raises(UsageError, match="not an nbfanout batch state file"):
            await fx.resume(tmp_path / "other.json")


async def test_the_state_file_never_holds_a_key(sb: Sandbox, state_dir: Path) -> None:
    async with Fanout(sb.config) as fx:
        await fx.map(_prompts(2), models=MODELS, via="batch", batch_state=state_dir / "keys.json", max_tokens=40)
    text = (state_dir / "keys.json").read_text()
    for key in (OAI, ANT, GEM):
        assert key not in text and key[-4:] in text  # named by its last four characters only


async def test_a_provider_that_stops_answering_status_requests_is_reported_not_waited_on_quietly(
        tmp_path: Path) -> None:
    events: list[Event] = []
    server = start_sandbox(SCENARIO)
    async with Fanout(server.config) as fx:
        fx.subscribe(events.append)
        task = asyncio.ensure_future(fx.map(_prompts(2), models=["oai-slow/gpt-4o-mini"], via="batch",
                                            batch_state=tmp_path / "gone.json", max_tokens=40))
        while not any(isinstance(e, BatchProgress) and e.batch_id for e in events):
            await asyncio.sleep(0.02)
        server.stop()
        while not any(isinstance(e, BatchProgress) and e.poll_error for e in events):
            await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    failed = next(e for e in events if isinstance(e, BatchProgress) and e.poll_error)
    assert failed.state == "running" and failed.next_poll_s and failed.state_path == str(tmp_path / "gone.json")
    assert [e.state for e in events if isinstance(e, BatchProgress)][0] == "creating"


async def test_a_missing_key_fails_only_its_models_batches_and_a_resume_with_it_back_reads_them(
        sb: Sandbox, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    keyless = json.loads(json.dumps(sb.config))
    del keyless["providers"]["openai"]["api_key"]
    async with Fanout(keyless) as fx:
        batch = await fx.map(_prompts(3), models=["openai/gpt-4o-mini", "gemini/gemini-2.5-flash"], via="batch",
                             batch_state=state_dir / "nokey.json", max_tokens=40)
    by = {r.requested: [x for x in batch.results if x.requested == r.requested] for r in batch.results}
    assert all(r.ok for r in by["gemini/gemini-2.5-flash"])
    missing = by["openai/gpt-4o-mini"]
    assert [r.error.category for r in missing] == [ErrorCategory.MISSING_KEY] * 3
    assert "OPENAI_API_KEY" in missing[0].error.message
    # a batch created with a key that is gone cannot be read until it is back, and says so
    async with Fanout(sb.config) as fx:
        created = await fx.map(_prompts(2), models=["openai/gpt-4o-mini", "gemini/gemini-2.5-flash"], via="batch",
                               batch_state=state_dir / "key.json", max_tokens=40)
    assert all(r.ok for r in created.results)
    async with Fanout(keyless) as fx:
        stuck = await fx.resume(state_dir / "key.json")
    assert [r.ok for r in stuck.results] == [False, True, False, True]
    assert "OPENAI_API_KEY" in stuck.results[0].error.message
    async with Fanout(sb.config) as fx:
        again = await fx.resume(state_dir / "key.json")
    assert [r.text for r in again.results] == [r.text for r in created.results]
