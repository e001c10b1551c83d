"""nbfanout/progress.py: provider batches folded from the events of real batch maps against the sandbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _batch_helpers import BATCH_MODELS, FAULTS_SCENARIO, TIME_SCALE, record_batch_map, batch_sb, faults_sb  # type: ignore[import-not-found]  # noqa: F401 (fixtures)

from nbfanout import Fanout
from nbfanout.core.batch import BatchJob, BatchState
from nbfanout.core.events import BatchProgress, ModelCompleted, RequestStarted, RunStarted
from nbfanout.progress import BatchNews, DashboardModel, saved_batches



async def test_each_provider_batch_of_a_real_map_is_a_row_with_its_providers_words_and_counts(
        batch_sb: Any, tmp_path: Path) -> None:
    run = await record_batch_map(batch_sb.config, tmp_path / "map.json")
    m = run.model
    jobs = BatchState.load(run.path).jobs
    assert list(m.batches) == [j.batch_id for j in jobs] and len(jobs) == 3  # one row per batch, in creation order
    for b in m.batches.values():
        assert (b.state, b.total, b.succeeded, b.failed) == ("fetched", 8, 8, 0)
        assert b.polls >= 2 and b.elapsed_s > 0 and b.next_poll_at is None and not b.open
    seen = {(e.model, e.status) for e in run.events if isinstance(e, BatchProgress)}
    assert ("openai/gpt-4o-mini", "in_progress") in seen and ("gemini/gemini-2.5-flash", "BATCH_STATE_RUNNING") in seen
    # the provider's counts as they grew (OpenAI's and Gemini's do; Anthropic's stay 0 until the end)
    grew = {e.model for e in run.events if isinstance(e, BatchProgress) and e.state == "running" and 0 < e.succeeded < 8}
    assert {"openai/gpt-4o-mini", "gemini/gemini-2.5-flash"} <= grew
    for row in m.rows.values():
        assert (row.state, row.answered, row.via, row.in_batch) == ("done", 8, "batch", 0)
        assert row.detail == "8 answered by batch"
    assert m.totals()["in_batch"] == 0 and m.totals()["batches"] == 0 and m.totals()["done"] == 24


async def test_requests_inside_a_batch_read_in_batch_never_queued_or_waiting(batch_sb: Any, tmp_path: Path) -> None:
    run = await record_batch_map(batch_sb.config, tmp_path / "map.json")
    for name in BATCH_MODELS:
        created = next(k for k, e in enumerate(run.events) if isinstance(e, BatchProgress) and e.model == name)
        after = [s[name] for s in run.states[created:]]
        assert {state for state, _, _ in after} <= {"in_batch", "done"}, after
        held = [(n, detail) for state, n, detail in after if state == "in_batch"]
        assert held and held[0][0] == 8  # all eight prompts, from the moment the batch exists
        assert all(detail.startswith("in batch ") for _, detail in held)
    # the words are the provider's own: every status a running batch reported is its row's detail
    for name in BATCH_MODELS:
        reported = {e.status for e in run.events if isinstance(e, BatchProgress) and e.model == name
                    and e.state == "running" and e.status}
        shown = {detail for s in run.states for state, _, detail in [s[name]] if state == "in_batch"}
        assert reported and {f"in batch {w}" for w in reported} <= shown, (name, reported, shown)
    assert any("in batch in_progress" == s["openai/gpt-4o-mini"][2] for s in run.states)
    assert run.mid_page, "no moment with two batches reporting counts"


async def test_a_batch_the_provider_refuses_carries_its_message_to_the_row(faults_sb: Any, tmp_path: Path) -> None:
    run = await record_batch_map(faults_sb.config, tmp_path / "bad.json", models=["oai-invalid/gpt-4o-mini"], n=3)
    (b,) = run.model.batches.values()
    assert b.state == "failed" and b.status == "failed" and "The sandbox refused this input file." in b.message
    row = run.model.rows["oai-invalid/gpt-4o-mini"]
    assert row.state == "failed" and row.failed == 3 and "The sandbox refused this input file." in row.last_error


def test_pace_takes_live_answers_per_second_and_batches_at_their_providers_reported_pace() -> None:
    m = DashboardModel(["openai/live", "openai/batched", "anthropic/batched"])
    m.apply(RunStarted(0.0, "r", models=tuple(m.rows), prompts=100))
    for i in range(100):
        m.apply(ModelCompleted(1.0, "r", request=f"{i}:openai/live", requested="openai/live", model="openai/live"))
    m.apply(BatchProgress(50.0, "r", model="openai/batched", batch_id="batch_a", status="in_progress", total=100,
                          succeeded=20, failed=5, elapsed_s=50.0, next_poll_s=4.0))
    p = m.pace()
    # the live model is done; the batch's 75 left at its 25 per 50 s
    assert p.eta_s == pytest.approx(150.0, abs=1.0) and not p.batch_unknown
    assert m.rows["openai/batched"].in_batch == 100 and m.rows["openai/batched"].state == "in_batch"
    assert m.progress(m.rows["openai/batched"]) == pytest.approx(0.25)  # the provider's count moves the bar
    # Anthropic counts nothing until a batch ends: no rate, so no ETA rather than "never"
    m.apply(BatchProgress(50.0, "r", model="anthropic/batched", batch_id="msgbatch_b", status="in_progress", total=100,
                          elapsed_s=50.0, next_poll_s=4.0))
    p = m.pace()
    assert p.eta_s is None and p.batch_unknown
    assert m.totals()["in_batch"] == 200 and m.totals()["batches"] == 2
    b = m.batches["batch_a"]
    assert b.next_poll_in(52.0) == pytest.approx(2.0) and b.elapsed(52.0) == pytest.approx(52.0)


def test_a_one_prompt_batch_row_goes_from_queued_to_in_batch_to_done_by_batch() -> None:
    m = DashboardModel(["openai/m", "gemini/g"])
    m.apply(RunStarted(0.0, "r", models=("openai/m", "gemini/g")))
    m.apply(RequestStarted(0.1, "r", request="0:gemini/g", requested="gemini/g", model="gemini/g", attempt=1))
    m.apply(BatchProgress(0.2, "r", model="openai/m", batch_id="batch_1", total=1))
    row = m.rows["openai/m"]
    assert (row.state, row.detail, row.in_batch) == ("in_batch", "in batch created", 1)
    assert 0.3 <= m.progress(row) < 0.95
    m.apply(BatchProgress(0.5, "r", model="openai/m", batch_id="batch_1", status="in_progress", total=1, next_poll_s=1))
    assert row.detail == "in batch in_progress" and m.rows["gemini/g"].state == "running"
    m.apply(ModelCompleted(1.0, "r", request="0:openai/m", requested="openai/m", model="openai/m", latency_s=0.8))
    assert (row.state, row.detail, row.in_batch) == ("done", "done by batch", 0)
    assert m.totals()["running"] == 1 and m.totals()["in_batch"] == 0


def test_batch_news_says_each_status_once() -> None:
    m = DashboardModel(["openai/m"])
    news = BatchNews()
    m.apply(RunStarted(0.0, "r", models=("openai/m",), prompts=4))
    m.apply(BatchProgress(0.1, "r", model="openai/m", batch_id="batch_1", total=4))
    assert [b.word for b in news(m)] == ["created"]
    m.apply(BatchProgress(0.3, "r", model="openai/m", batch_id="batch_1", status="in_progress", total=4, next_poll_s=1))
    m.apply(BatchProgress(1.3, "r", model="openai/m", batch_id="batch_1", status="in_progress", total=4, succeeded=2,
                          next_poll_s=1.5))
    assert [b.word for b in news(m)] == ["in_progress"] and news(m) == []  # counts alone are no news


def test_a_resumed_view_shows_the_state_files_batches_before_any_report() -> None:
    m = DashboardModel(["openai/m", "gemini/g"])
    m.seed_batches([
        BatchJob("openai/m", "openai", "d", "…0b01", "batch_1", (0, 1, 2), 0.0, status="in_progress", total=3,
                 succeeded=1),
        BatchJob("gemini/g", "gemini", "d", "…0b03", "batches/x", (0, 1, 2), 0.0, status="BATCH_STATE_SUCCEEDED",
                 state="ended", total=3, succeeded=3),
    ])
    m.apply(RunStarted(0.0, "r", models=("openai/m", "gemini/g"), prompts=3))
    assert [b.batch_id for b in m.batches.values()] == ["batch_1", "batches/x"]
    assert m.rows["openai/m"].in_batch == 3 and m.rows["openai/m"].state == "in_batch"
    assert m.rows["gemini/g"].detail == "in batch BATCH_STATE_SUCCEEDED"
    assert m.batches["batch_1"].elapsed_s > 1e9  # since its creation, however long ago (epoch 0 here)


async def test_saved_batches_lists_state_files_and_says_which_cannot_be_read(batch_sb: Any, tmp_path: Path) -> None:
    run = await record_batch_map(batch_sb.config, tmp_path / "done.json", n=2)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"nbfanout_batch_state": 1, "prompts": []}))
    entries = await saved_batches(None, [run.path, broken, tmp_path / "gone.json"], ask=False)
    assert [e.path for e in entries] == [run.path, broken, tmp_path / "gone.json"]
    done, bad, gone = entries
    assert done.done and not done.error and done.prompts == 2 and done.models == tuple(BATCH_MODELS)
    assert [j.state for j in done.jobs] == ["fetched"] * 3 and not done.asked
    assert "damaged batch state file" in bad.error and "no such batch state file" in gone.error
    # asking the providers: nothing is open, so nothing is asked
    async with Fanout(batch_sb.config) as fx:
        (again,) = await saved_batches(fx, [run.path])
    assert not again.asked and again.done
