"""``%%fanout --batch``, ``%fanout resume`` and ``%fanout batches`` through a real IPython InteractiveShell
against the sandbox's batch APIs, and the live dashboard's widget messages during a batch map."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _batch_helpers import BATCH_MODELS, FAULTS_SCENARIO, TIME_SCALE, prompts, batch_sb, faults_sb  # type: ignore[import-not-found]  # noqa: F401 (fixtures)
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic_arguments import parse_argstring

from nbfanout import BatchResult, Fanout, FanoutResult
from nbfanout.core.batch import BatchState
from nbfanout.notebook._runner import LoopJob
from nbfanout.notebook.dashboard import Dashboard
from nbfanout.notebook.magics import FanoutMagics

LINE = "--config sb.config --models " + " ".join(BATCH_MODELS)



@pytest.fixture
def ip(batch_sb: Any, faults_sb: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    """The shell with the extension loaded, ``sb`` (batch_api) and ``faults`` in its namespace, in a scratch
    working directory (where .nbfanout/batches/ goes)."""
    monkeypatch.chdir(tmp_path)
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbfanout")
    shell.user_ns.update(sb=batch_sb, faults=faults_sb)
    yield shell
    for name in ("sb", "faults", "r", "b"):
        shell.user_ns.pop(name, None)


def _held(sb: Any) -> int:
    """Batches the sandbox holds for every provider, and live requests it has seen."""
    stats = sb.stats()
    return sum(int(v.get("live", 0)) for v in stats.get("batches", {}).values()) + stats["totals"]["requests"]


def _interrupted_map(config: Any, path: Path, models: list[str], n: int = 4) -> BatchState:
    """A batch map stopped once its batches exist, as a kernel restart would stop it: the state file stays."""
    async def go() -> None:
        async with Fanout(config) as fx:
            task = asyncio.ensure_future(fx.map(prompts(n), models=models, via="batch", batch_state=path,
                                                max_tokens=30))
            while not (path.exists() and len(BatchState.load(path).jobs) == len(models)):
                await asyncio.sleep(0.02)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())
    state = BatchState.load(path)
    assert not state.done and all(j.state == "running" for j in state.jobs)
    return state


def test_cell_batch_answers_every_model_by_batch_with_a_line_per_batch(ip: InteractiveShell, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    result = ip.run_cell_magic("fanout", LINE + " --batch --batch-state cell.json --max-tokens 30 --out r",
                               "Name a colour and a number.")
    assert isinstance(result, FanoutResult) and ip.user_ns["r"] is result
    assert [r.requested for r in result] == BATCH_MODELS and all(r.ok and r.via == "batch" for r in result)
    state = BatchState.load(tmp_path / "cell.json")
    assert state.done and sorted(j.model for j in state.jobs) == sorted(BATCH_MODELS)
    out = capsys.readouterr().out
    for job in state.jobs:  # the plain-text view outside a kernel: each batch's news
        assert re.search(rf"batch {re.escape(job.model)} \S+ created · 0/1 ✓", out), out
        assert re.search(rf"batch {re.escape(job.model)} \S+ \S+ · 1/1 ✓ · .* · results read", out), out
    assert all(f"{m}: done by batch" in out for m in BATCH_MODELS)
    assert all(re.search(rf"^{re.escape(m)}\s+ok\s+200 .*batch$", out, re.M) for m in BATCH_MODELS), out
    # without --batch-state, a new file under .nbfanout/batches/
    again = ip.run_cell_magic("fanout", "--config sb.config --models openai/gpt-4o-mini --via batch --no-dashboard",
                              "Hi")
    assert again["openai/gpt-4o-mini"].via == "batch"
    (made,) = (tmp_path / ".nbfanout" / "batches").glob("*.json")
    assert BatchState.load(made).done


@pytest.mark.parametrize(("line", "message"), [
    (LINE + " --batch --stream", "--stream needs live requests"),
    (LINE + " --batch --one", "--one needs live requests"),
    (LINE + " --batch --image https://example.com/cat.png", "--image needs live requests"),
    (LINE + " --batch --via live", "--batch means --via batch"),
    (LINE + " --batch-state x.json", "add --batch"),
    (LINE + " --batch --batch-after 5", "--batch-after is the threshold of --via auto"),
    (LINE + " --via sometimes", "invalid choice: 'sometimes'"),
    (LINE + " --batch --batch-state taken.json", "--batch-state taken.json: exists"),
])
def test_bad_batch_options_fail_clearly_before_anything_is_sent(ip: InteractiveShell, tmp_path: Path, line: str,
                                                                message: str) -> None:
    (tmp_path / "taken.json").write_text("{}")
    before = _held(ip.user_ns["sb"])
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("fanout", line, "Hi")
    assert message in str(info.value)
    assert _held(ip.user_ns["sb"]) == before, "a request or a batch was sent although the cell was wrong"


def test_resume_picks_up_a_stopped_map_and_returns_every_answer(ip: InteractiveShell, batch_sb: Any, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "left.json"
    state = _interrupted_map(batch_sb.config, path, BATCH_MODELS)
    batches = sum(int(v.get("live", 0)) for v in batch_sb.stats()["batches"].values())
    capsys.readouterr()
    result = ip.run_line_magic("fanout", f"resume {path} --config sb.config --out b")
    assert isinstance(result, BatchResult) and ip.user_ns["b"] is result
    assert [(r.prompt_index, r.requested) for r in result.results] == [(i, m) for i in range(4) for m in BATCH_MODELS]
    assert all(r.ok and r.via == "batch" for r in result.results)
    assert sum(int(v.get("live", 0)) for v in batch_sb.stats()["batches"].values()) == batches  # no batch sent again
    out = capsys.readouterr().out
    assert f"resuming {path}: 4 prompts × 3 models, 3 batch(es), 3 not read yet" in out
    assert all(f"batch {j.model} " in out for j in state.jobs)
    assert "4 prompts × 3 models: 12/12 succeeded in" in out and "(12 by batch)" in out
    assert BatchState.load(path).done


def test_batches_lists_with_status_now_and_cancel_cancels_then_resume_returns_them_cancelled(
        ip: InteractiveShell, faults_sb: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / ".nbfanout" / "batches"
    path = folder / "slow.json"
    _interrupted_map(faults_sb.config, path, ["oai-slow/gpt-4o-mini"], n=3)
    (folder / "junk.json").write_text("not json")
    capsys.readouterr()
    ip.run_line_magic("fanout", "batches --config faults.config")
    shown = capsys.readouterr().out
    assert re.search(r"\.nbfanout/batches/slow\.json  3 prompts × 1 model · created .* · 1 of 1 batches open · "
                     r"status asked now", shown), shown
    assert re.search(r"oai-slow/gpt-4o-mini\s+batch_\w{4}…\w{4}\s+(validating|in_progress)\s+\d/3 ✓\s+running", shown)
    assert "pick it up: %fanout resume .nbfanout/batches/slow.json" in shown and "junk.json  unreadable" in shown
    ip.run_line_magic("fanout", f"batches --cancel {path} --config faults.config")
    said = capsys.readouterr().out
    assert re.search(r"asked oai-slow to cancel oai-slow/gpt-4o-mini batch_\w+…\w+: (cancelling|cancelled)", said)
    assert f"%fanout resume {path} returns them" in said
    result = ip.run_line_magic("fanout", f"resume {path} --config faults.config --no-dashboard")
    assert [r.category for r in result.results] == ["cancelled"] * 3 and {r.via for r in result.results} == {"batch"}
    ip.run_line_magic("fanout", "batches --saved")
    assert re.search(r"slow\.json  .* · done · status as saved", capsys.readouterr().out)


@pytest.mark.parametrize(("line", "message"), [
    ("resume", "%fanout resume needs the state file"),
    ("resume nope.json --config sb.config", "nope.json: no such batch state file (`%fanout batches` lists them)"),
    ("resume broken.json --config sb.config", "broken.json: a damaged batch state file"),
    ("resume broken.json --out 1st", "--out 1st: not a valid Python variable name"),
    ("models --cancel x.json", "--cancel goes with %fanout batches"),
    ("batches --out b", "--out goes with %fanout resume"),
    ("status somewhere.json", "PATH goes with %fanout resume"),
    ("batches --dir nowhere", "--dir nowhere: no such directory"),
    ("batches --cancel nope.json --config sb.config", "nope.json: no such batch state file"),
])
def test_resume_and_batches_misuse_is_one_clear_line(ip: InteractiveShell, tmp_path: Path, line: str,
                                                     message: str) -> None:
    (tmp_path / "broken.json").write_text('{"nbfanout_batch_state": 1}')
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("fanout", line)
    assert message in str(info.value), str(info.value)


def test_help_lists_the_batch_options_and_every_line_example_parses(ip: InteractiveShell,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_cell("%%fanout?")
    cell = capsys.readouterr().out
    for option in ("--batch", "--via", "--batch-state", "--batch-after", "%fanout resume"):
        assert option in cell, option
    ip.run_cell("%fanout?")
    line = capsys.readouterr().out
    for word in ("resume", "batches", "--cancel", "--dir", "--saved", "--judge", "--no-dashboard"):
        assert word in line, word
    examples = [ln.strip()[len("%fanout "):].split("  (")[0] for ln in line.split("examples:", 1)[1].splitlines()
                if ln.strip().startswith("%fanout ")]
    assert any(e.startswith("resume ") for e in examples) and any(e.startswith("batches --cancel") for e in examples)
    for example in examples:
        parse_argstring(FanoutMagics.fanout_line, example)


def test_the_live_dashboard_shows_the_batches_as_they_move_and_ends_with_them_read(batch_sb: Any, tmp_path: Path,
                                                                                  recording_comm: list) -> None:
    dash = Dashboard(BATCH_MODELS)
    dash.model.state_path = str(tmp_path / "live.json")
    opened = len(recording_comm)

    async def drive() -> BatchResult:
        async with Fanout(batch_sb.config) as fx:
            unsubscribe = fx.subscribe(dash.on_event)
            try:
                return await fx.map(prompts(6), models=BATCH_MODELS, via="batch", batch_state=tmp_path / "live.json",
                                    max_tokens=30)
            finally:
                unsubscribe()
                await dash.aclose()

    result = LoopJob(drive()).wait(timeout=60)
    assert all(r.via == "batch" for r in result.results)
    values = [data["state"]["value"] for _, kind, data, _ in recording_comm[opened:]
              if kind == "comm_msg" and data.get("method") == "update" and "value" in data.get("state", {})]
    moving = [v for v in values if 'class="nbf-batch"' in v and "3 open of 3" in v]
    assert moving, "no update showed the three batches open"
    assert any('data-state="in_batch"' in v and "6 in batch in_progress" in v for v in moving)
    assert any(re.search(r">[1-5]/6 ✓<", v) for v in moving), "the providers' counts never showed"
    assert f"state file {tmp_path / 'live.json'}" in moving[0]
    final = dash.html.value
    assert final.count('data-state="fetched"') == 3 and "all read" in final and final.count('data-state="done"') == 3
