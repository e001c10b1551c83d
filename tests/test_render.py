"""nbfanout/render.py: provider batches and batch answers in HTML and text, from real batch maps."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from _batch_helpers import BATCH_MODELS, FAULTS_SCENARIO, TIME_SCALE, record_batch_map, batch_sb, faults_sb  # type: ignore[import-not-found]  # noqa: F401 (fixtures)

from nbfanout import render
from nbfanout.core.batch import BatchState
from nbfanout.core.events import BatchProgress, RunStarted
from nbfanout.progress import DashboardModel, saved_batches



def _unstyled(page: str) -> str:
    return re.sub(r' style="[^"]*"', "", page)


def _head(page: str) -> str:
    """The dashboard's header line as text."""
    found = re.search(r'class="nbf-head nbf-run">(.*?)<table', _unstyled(page), re.S)
    assert found
    return re.sub(r"<[^>]+>", "", found.group(1))


def _cells(page: str, batch_id: str) -> list[str]:
    """The text of each cell of the batch table's row for ``batch_id``."""
    row = re.search(rf'<tr class="nbf-batch" data-batch="{re.escape(batch_id)}"[^>]*>(.*?)</tr>', _unstyled(page))
    assert row, f"no row for {batch_id}"
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))]


@pytest.mark.parametrize(("seconds", "said"), [
    (4.24, "4.2 s"), (59.9, "59.9 s"), (60.0, "1 min"), (125.2, "2 min 5 s"), (3599.4, "59 min 59 s"),
    (3725, "1 h 2 min"), (7200, "2 h"), (90000, "1 d 1 h"), (float("inf"), "–"),
])
def test_elapsed_time_reads_as_people_say_it(seconds: float, said: str) -> None:
    assert render.elapsed_text(seconds) == said


@pytest.mark.parametrize(("batch_id", "shown"), [
    ("batch_40e1d3be6d7f53d8583b90f12e04cea2", "batch_40e1…cea2"),
    ("msgbatch_01gmL9TXA7b5hTs8G2r5KyLf", "msgbatch_01gm…KyLf"),
    ("batches/e53k67zc8wpfv3a2wqmywc999t4m6pqga9ug", "batches/e53k…a9ug"),
    ("batch_abc123", "batch_abc123"),
    ("", "–"),
])
def test_batch_ids_are_shortened_keeping_their_prefix_and_both_ends(batch_id: str, shown: str) -> None:
    assert render.short_batch_id(batch_id) == shown


async def test_the_dashboard_shows_each_batch_with_its_status_counts_elapsed_and_next_poll(
        batch_sb: Any, tmp_path: Path) -> None:
    run = await record_batch_map(batch_sb.config, tmp_path / "map.json")
    page = run.mid_page
    assert page, "the map never had two batches reporting counts at once"
    jobs = {j.model: j for j in BatchState.load(run.path).jobs}
    for name in BATCH_MODELS:
        cells = _cells(page, jobs[name].batch_id)
        model, short, status, _bar, counts, elapsed, poll = cells
        assert model == name and short == render.short_batch_id(jobs[name].batch_id) and "…" in short
        assert status.lstrip("● ") in ("validating", "in_progress", "finalizing", "BATCH_STATE_PENDING",
                                       "BATCH_STATE_RUNNING")
        assert re.fullmatch(r"\d/8 ✓", counts), counts
        assert re.fullmatch(r"\d\.\d s", elapsed) and re.fullmatch(r"in \d\.\d s|now", poll), (elapsed, poll)
        assert f'title="{jobs[name].batch_id}"' in page  # the whole id in the tooltip
    text = _unstyled(page)
    assert "provider batches · 3 open of 3" in text and "24 in 3 batches" in text
    # the models' rows say where their requests are, not that they wait for capacity
    for name in BATCH_MODELS:
        row = re.search(rf'data-model="{re.escape(name)}" data-state="([a-z_]+)".*?nbf-msg">([^<]*)<', text)
        assert row and row.group(1) == "in_batch" and re.match(r"0/8 answered · 8 in batch \S+", row.group(2)), row
        assert "queued" not in row.group(2) and "waiting" not in row.group(2)
    # the same lines in text, for the terminal
    lines = run.mid_text.splitlines()
    assert len(lines) == 3 and all(re.search(r" · \d/8 ✓ · \d\.\d s · (next poll in \d\.\d s|polling…)$", ln)
                                   for ln in lines), lines


async def test_the_batch_table_keeps_fixed_columns_inline_for_untrusted_notebooks(batch_sb: Any, tmp_path: Path) -> None:
    run = await record_batch_map(batch_sb.config, tmp_path / "map.json", n=2)
    page = render.dashboard_html(run.model)  # as a saved notebook keeps it
    table = re.search(r'<table class="nbf-batches nbf-fixed" style="([^"]*)">(.*?)</table>', page, re.S)
    assert table and "table-layout:fixed" in table.group(1)
    assert re.findall(r'<col style="width:([^"]*)">', table.group(2)) == ["24%", "130px", "128px", "110px", "84px", "80px"]
    ids = re.findall(r'<td class="nbf-cut" title="([^"]+)" style="([^"]*)"><code>', table.group(2))
    assert len(ids) == 3 and all("text-overflow:ellipsis" in style and "overflow:hidden" in style for _, style in ids)
    assert "provider batches · 3, all read" in _unstyled(page)


async def test_a_failed_batch_shows_the_providers_message_in_red_with_the_whole_of_it_in_the_title(
        faults_sb: Any, tmp_path: Path) -> None:
    run = await record_batch_map(faults_sb.config, tmp_path / "bad.json", models=["oai-invalid/gpt-4o-mini"], n=3)
    page = render.dashboard_html(run.model)
    (b,) = run.model.batches.values()
    status = _cells(page, b.batch_id)[2]
    assert "failed" in status and "The sandbox refused this input file." in status
    assert re.search(r'title="failed: [^"]*The sandbox refused this input file\.[^"]*"', page)
    assert 'data-state="failed"><td' in page and f"color:{render.RED}" in page
    assert "— " in render.batch_line(b, run.model.now()) and "The sandbox refused" in render.batch_line(b, 0.0)


async def test_answers_that_came_by_batch_say_so_in_every_view(batch_sb: Any, tmp_path: Path) -> None:
    run = await record_batch_map(batch_sb.config, tmp_path / "map.json", n=2)
    batch = run.result
    assert {r.via for r in batch.results} == {"batch"}
    table = _unstyled(render.batch_html(batch))
    assert "6/6 succeeded" in table and "(6 by batch)" in table and table.count("by batch</span>") == 6
    one = batch.rows[0]
    text = render.result_text(one)
    assert all(re.search(rf"^{re.escape(m)}\s+ok\s+200 .* batch$", text, re.M) for m in BATCH_MODELS), text
    cards = _unstyled(render.answers_html(one))
    assert cards.count("· by batch") == 3
    summary = render.batch_result_text(batch)
    assert re.search(r"openai/gpt-4o-mini\s+2/2\s+0\s+batch", summary) and "6/6 succeeded" in summary


async def test_saved_batch_maps_list_with_their_batches_and_how_to_pick_up_the_unfinished(
        batch_sb: Any, tmp_path: Path) -> None:
    run = await record_batch_map(batch_sb.config, tmp_path / "done.json", n=2)
    unfinished = BatchState.load(run.path)
    unfinished.path = tmp_path / "open.json"
    unfinished.jobs = [j.__class__(**{**j.to_json(), "prompts": j.prompts, "state": "running", "status": "in_progress",
                                      "succeeded": 1}) for j in unfinished.jobs]
    unfinished.save()
    (tmp_path / "junk.json").write_text("not json")
    entries = await saved_batches(None, [run.path, unfinished.path, tmp_path / "junk.json"], ask=False)
    text = render.saved_batches_text(entries, now=unfinished.created_at + 125)
    lines = text.splitlines()
    assert lines[0].startswith(f"{run.path}  2 prompts × 3 models · created 2 min 5 s ago · done · status as saved")
    assert f"pick it up: nbfanout resume {unfinished.path}" in text and f"pick it up: nbfanout resume {run.path}" not in text
    assert "3 of 3 batches open" in text and re.search(r"batch_\w{4}…\w{4}\s+in_progress\s+1/2 ✓\s+running", text)
    assert f"{tmp_path / 'junk.json'}  unreadable: " in text and "not a readable batch state file" in text
    page = _unstyled(render.saved_batches_html(entries, resume="%fanout resume"))
    assert f"%fanout resume {unfinished.path}" in page and page.count('<tr class="nbf-batch"') == 6
    assert render.saved_batches_text([]).startswith("no batch state files")


def test_the_header_counts_requests_in_batches_and_gives_no_eta_until_a_batch_reports_progress() -> None:
    m = DashboardModel(["anthropic/a"])
    m.apply(RunStarted(0.0, "r", models=("anthropic/a",), prompts=50))
    m.apply(BatchProgress(1.0, "r", model="anthropic/a", batch_id="msgbatch_1", status="in_progress", total=50,
                          elapsed_s=1.0, next_poll_s=2.0))
    head = _head(render.dashboard_html(m))
    assert "0/50 done" in head and "50 in 1 batch ·" in head and "ETA – (a batch has reported no progress yet)" in head
    m.apply(BatchProgress(11.0, "r", model="anthropic/a", batch_id="msgbatch_1", status="in_progress", total=50,
                          succeeded=10, elapsed_s=11.0, next_poll_s=3.0))
    head = _head(render.dashboard_html(m))
    assert re.search(r"ETA 4\d\.\d s", head) and "/s" not in head  # 40 left at 10 per 11 s; no live rate
