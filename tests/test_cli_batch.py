"""``nbfanout run|map --batch``, ``nbfanout resume`` and ``nbfanout batches`` against real sandboxes over
loopback, as a user would run them (a subprocess each, in a scratch working directory)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _batch_helpers import BATCH_MODELS, FAULTS_SCENARIO, TIME_SCALE  # type: ignore[import-not-found]

from nbfanout.core.batch import BatchState
from nbfanout.sandbox import start_sandbox

MODELS = ",".join(BATCH_MODELS)


def _env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "NBFANOUT_STATE": os.devnull}


def nbfanout(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nbfanout", *args], capture_output=True, text=True, env=_env(),
                          cwd=cwd, timeout=120)


def background(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "nbfanout", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**_env(), "PYTHONUNBUFFERED": "1"}, cwd=cwd)


def wait_for_jobs(path: Path, n: int, proc: subprocess.Popen[str], timeout: float = 60) -> BatchState:
    """The state file once it holds ``n`` created batches (the process still running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            state = BatchState.load(path)
            if len(state.jobs) >= n:
                return state
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.05)
    pytest.fail(f"{path} did not get {n} batches within {timeout} s")


@pytest.fixture(scope="module")
def batch_sb(sandbox_factory: Any) -> Any:
    return sandbox_factory("batch_api", time_scale=TIME_SCALE)


@pytest.fixture(scope="module")
def config(batch_sb: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return batch_sb.write_config(tmp_path_factory.mktemp("cli-batch") / "nbfanout.toml")


@pytest.fixture(scope="module")
def faults_sb() -> Any:
    with start_sandbox(FAULTS_SCENARIO) as server:
        yield server


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"question {i}: name a colour and a number\n" for i in range(5)), encoding="utf-8")
    return path


def _batches_held(sb: Any) -> dict[str, int]:
    return {p: int(v.get("live", 0)) for p, v in sb.stats().get("batches", {}).items()}


def test_map_batch_prints_every_answer_in_order_via_batch_with_a_line_per_batch_status(
        config: Path, prompts_file: Path, tmp_path: Path) -> None:
    out = nbfanout("map", "--config", str(config), "--prompts", str(prompts_file), "--models", MODELS, "--batch",
                   "--max-tokens", "30", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["prompt_index"], r["requested"]) for r in rows] == [(i, m) for i in range(5) for m in BATCH_MODELS]
    assert all(r["status"] == "ok" and r["text"] and r["via"] == "batch" for r in rows)
    err = out.stderr
    assert "5 prompts × 3 models, via batch" in err and "15/15 succeeded in" in err and "(15 via batch)" in err
    said = re.search(r"batch state: (\S+) \(after an interruption: nbfanout resume \1\)", err)
    assert said and said.group(1).startswith(".nbfanout/batches/"), err
    state = BatchState.load(tmp_path / said.group(1))
    assert state.done and sorted(j.model for j in state.jobs) == sorted(BATCH_MODELS)
    for job in state.jobs:  # each batch said when created, as its status moved on, and when read
        mine = [ln for ln in err.splitlines() if ln.strip().startswith(f"batch {job.model} ")]
        assert "creating · 0/5 ✓" in mine[0] and "created · 0/5 ✓" in mine[1] and "results read" in mine[-1] and "5/5 ✓" in mine[-1], mine
        assert len(mine) >= 3
    assert any("batch openai/gpt-4o-mini batch_" in ln and " in_progress · " in ln for ln in err.splitlines())
    # a batch's answers arrive together: one "Completed" line per model, not a burst of ten
    for name in BATCH_MODELS:
        assert [ln.strip() for ln in err.splitlines() if ln.strip().startswith(f"{name}: Completed")] == [
            f"{name}: Completed 5/5"]


def test_run_batch_shows_batch_as_how_each_answer_came(config: Path, tmp_path: Path) -> None:
    out = nbfanout("run", "--config", str(config), "--models", MODELS, "--prompt", "Say hi", "--batch",
                   "--batch-state", "one.json", "--max-tokens", "20", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    table = {line.split()[0]: line for line in out.stdout.splitlines()
             if line.split() and line.split()[0] in BATCH_MODELS}
    assert set(table) == set(BATCH_MODELS)
    assert all(re.search(r"\bok\s+200\s+1\s.*\bbatch$", table[m]) for m in BATCH_MODELS), out.stdout
    assert "3/3 succeeded" in out.stdout and BatchState.load(tmp_path / "one.json").done
    assert "batch state: one.json" in out.stderr and "in batch" not in out.stderr.split("batch state")[0]
    as_json = nbfanout("run", "--config", str(config), "--models", "openai/gpt-4o-mini", "--prompt", "Say hi",
                       "--via", "batch", "--json", "--max-tokens", "20", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    assert [m["via"] for m in json.loads(as_json.stdout)["models"]] == ["batch"]


def test_via_auto_batches_only_past_the_threshold(config: Path, prompts_file: Path, tmp_path: Path) -> None:
    """gpt-4o-mini has 30 requests a minute here: 5 prompts go live at once; 40 would take a minute live."""
    args = ("map", "--config", str(config), "--models", "openai/gpt-4o-mini", "--via", "auto", "--max-tokens", "20")
    live = nbfanout(*args, "--prompts", str(prompts_file), "--batch-after", "10", cwd=tmp_path)
    assert live.returncode == 0, live.stderr
    assert {json.loads(ln)["via"] for ln in live.stdout.splitlines()} == {"live"} and "batch state" not in live.stderr
    many = tmp_path / "many.txt"
    many.write_text("".join(f"question {i}\n" for i in range(40)), encoding="utf-8")
    batched = nbfanout(*args, "--prompts", str(many), "--batch-after", "10", cwd=tmp_path)
    assert batched.returncode == 0, batched.stderr
    assert {json.loads(ln)["via"] for ln in batched.stdout.splitlines()} == {"batch"} and "batch state" in batched.stderr
    assert "(40 via batch)" in batched.stderr


def test_resume_picks_up_a_map_killed_after_creating_its_batches(batch_sb: Any, config: Path, prompts_file: Path,
                                                                 tmp_path: Path) -> None:
    slow = tmp_path / "slow.toml"  # the first process asks for status only after 30 s: it must not get far
    slow.write_text(config.read_text().replace("poll_s = 0.1", "poll_s = 30.0"), encoding="utf-8")
    path = tmp_path / "killed.json"
    held = _batches_held(batch_sb)
    proc = background("map", "--config", str(slow), "--prompts", str(prompts_file), "--models", MODELS, "--batch",
                      "--batch-state", str(path), "--max-tokens", "30", cwd=tmp_path)
    try:
        wait_for_jobs(path, 3, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert not BatchState.load(path).done
    out = nbfanout("resume", str(path), "--config", str(config), "--out", "res", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in (tmp_path / "res" / "results.jsonl").read_text().splitlines()]
    assert [(r["prompt_index"], r["requested"]) for r in rows] == [(i, m) for i in range(5) for m in BATCH_MODELS]
    assert all(r["status"] == "ok" and r["via"] == "batch" for r in rows)
    assert f"resuming {path}: 5 prompts × 3 models, 3 batch(es), 3 not read yet" in out.stderr
    assert all(f"batch {m} " in out.stderr for m in BATCH_MODELS) and "15/15 succeeded" in out.stderr
    after = _batches_held(batch_sb)
    assert {p: after[p] - held.get(p, 0) for p in ("openai", "anthropic", "gemini")} == {
        "openai": 1, "anthropic": 1, "gemini": 1}  # created once, by the killed process; none sent again
    assert BatchState.load(path).done


def test_batches_lists_the_state_files_with_status_asked_now_and_cancel_cancels(faults_sb: Any,
                                                                                 tmp_path: Path) -> None:
    config = faults_sb.write_config(tmp_path / "nbfanout.toml")
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\nthree\n", encoding="utf-8")
    path = tmp_path / ".nbfanout" / "batches" / "slow.json"
    proc = background("map", "--config", str(config), "--prompts", str(prompts), "--models", "oai-slow/gpt-4o-mini",
                      "--batch", "--batch-state", str(path), cwd=tmp_path)
    try:
        state = wait_for_jobs(path, 1, proc)
        (job,) = state.jobs
        deadline = time.monotonic() + 30  # until the provider says in_progress (0.2 s after creation)
        while BatchState.load(path).jobs[0].status != "in_progress" and time.monotonic() < deadline:
            time.sleep(0.05)
        listed = nbfanout("batches", "--config", str(config), cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert lines[0].startswith(".nbfanout/batches/slow.json  3 prompts × 1 model · created ")
        assert "1 of 1 batches open · status asked now" in lines[0]
        short = job.batch_id[:10]
        assert re.search(rf"oai-slow/gpt-4o-mini\s+{short}\w*…\w{{4}}\s+in_progress\s+\d/3 ✓\s+running", lines[1]), lines
        assert "pick it up: nbfanout resume .nbfanout/batches/slow.json" in listed.stdout
        cancel = nbfanout("batches", "--cancel", str(path), "--config", str(config), cwd=tmp_path)
        assert cancel.returncode == 0, cancel.stderr
        assert re.search(r"asked oai-slow to cancel: oai-slow/gpt-4o-mini batch_\w+…\w+ (cancelling|cancelled)",
                         cancel.stdout), cancel.stdout
        assert "returns them, the others as cancelled" in cancel.stdout
        # the map that was waiting ends: its requests cancelled inside the batch
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, stderr
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [r["error_category"] for r in rows] == ["cancelled"] * 3 and {r["via"] for r in rows} == {"batch"}
    assert "batch oai-slow/gpt-4o-mini" in stderr and "cancelled" in stderr
    again = nbfanout("batches", "--cancel", str(path), "--config", str(config), cwd=tmp_path)
    assert again.returncode == 0 and "nothing to cancel" in again.stdout
    as_json = json.loads(nbfanout("batches", "--saved", "--json", cwd=tmp_path).stdout)
    assert [(e["path"], e["done"], e["jobs"][0]["state"]) for e in as_json] == [
        (".nbfanout/batches/slow.json", True, "fetched")]
    assert "key_digest" not in as_json[0]["jobs"][0]


def test_ctrl_c_leaves_the_batches_running_and_says_how_to_resume_or_cancel_them(faults_sb: Any,
                                                                                tmp_path: Path) -> None:
    config = faults_sb.write_config(tmp_path / "nbfanout.toml")
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n", encoding="utf-8")
    path = tmp_path / "slow.json"
    proc = background("map", "--config", str(config), "--prompts", str(prompts), "--models", "oai-slow/gpt-4o-mini",
                      "--batch", "--batch-state", str(path), cwd=tmp_path)
    try:
        wait_for_jobs(path, 1, proc)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130 and stdout == "", stderr
    assert (f"the provider batches go on; `nbfanout resume {path}` picks them up, "
            f"`nbfanout batches --cancel {path}` cancels them") in stderr
    assert "Traceback" not in stderr and stderr.rstrip().endswith("nbfanout: interrupted")
    (job,) = BatchState.load(path).jobs
    assert job.state == "running"  # stopping the wait cancelled nothing at the provider
    assert nbfanout("batches", "--cancel", str(path), "--config", str(config), cwd=tmp_path).returncode == 0
    resumed = nbfanout("resume", str(path), "--config", str(config), cwd=tmp_path)
    assert resumed.returncode == 1, resumed.stderr  # every request cancelled inside the batch
    assert [json.loads(ln)["error_category"] for ln in resumed.stdout.splitlines()] == ["cancelled", "cancelled"]
    assert "0/2 succeeded" in resumed.stderr
    assert nbfanout("resume", str(path), "--config", str(config), "--partial-success-ok", cwd=tmp_path).returncode == 1


def test_a_missing_or_broken_state_file_and_bad_batch_flags_are_one_clean_line(config: Path, prompts_file: Path,
                                                                               tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{"nbfanout_batch_state": 1, "prompts": ["a"]}', encoding="utf-8")
    (tmp_path / "other.json").write_text('{"results": []}', encoding="utf-8")
    (tmp_path / "taken.json").write_text("{}", encoding="utf-8")
    base = ["--config", str(config)]
    cases = [
        (["resume", "nope.json", *base], "nope.json: no such batch state file (`nbfanout batches` lists them)"),
        (["resume", "broken.json", *base], "broken.json: a damaged batch state file"),
        (["resume", "other.json", *base], "other.json: not an nbfanout batch state file"),
        (["resume", str(tmp_path), *base], "not a readable batch state file"),
        (["batches", "--cancel", "nope.json", *base], "nope.json: no such batch state file"),
        (["batches", "--dir", "nowhere", *base], "--dir nowhere: no such directory"),
        (["map", "--prompts", str(prompts_file), "--models", MODELS, "--batch", "--batch-state", "taken.json", *base],
         "--batch-state taken.json: exists"),
        (["map", "--prompts", str(prompts_file), "--models", MODELS, "--batch", "--route", *base], "--route"),
        (["run", "--prompt", "hi", "--models", MODELS, "--batch", "--via", "live", *base], "--batch means --via batch"),
        (["run", "--prompt", "hi", "--models", MODELS, "--batch", "--stream", *base], "--stream needs live requests"),
        (["run", "--prompt", "hi", "--models", MODELS, "--batch-state", "x.json", *base], "add --batch"),
        (["run", "--rerun", str(tmp_path), "--batch", *base], "--rerun resends one prompt's failed models live"),
        (["run", "--prompt", "hi", "--models", MODELS, "--batch", "--batch-after", "5", *base], "--via auto"),
    ]
    for argv, expected in cases:
        out = nbfanout(*argv, cwd=tmp_path)
        assert out.returncode == 2, (argv, out.stdout, out.stderr)
        assert out.stderr.startswith("nbfanout: ") and expected in out.stderr, (argv, out.stderr)
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 2, out.stderr
    assert not (tmp_path / ".nbfanout").exists()  # nothing was sent, nothing written
    listed = nbfanout("batches", "--dir", str(tmp_path), "--saved", cwd=tmp_path)
    assert listed.returncode == 0 and "broken.json  unreadable: " in listed.stdout
    empty = nbfanout("batches", cwd=tmp_path)
    assert empty.returncode == 0 and "no batch state files in .nbfanout/batches" in empty.stdout


@pytest.mark.looptime
async def test_a_quiet_batch_wait_says_each_open_batch_every_heartbeat() -> None:
    """A provider batch may take hours: the plain-text progress must not go silent meanwhile."""
    import asyncio

    from nbfanout.cli import MapProgress, TerminalProgress, with_heartbeat
    from nbfanout.core.events import BatchProgress, RunStarted

    out = io.StringIO()
    progress = MapProgress(["openai/m", "anthropic/a"], 10, out, clock=asyncio.get_running_loop().time)
    progress(RunStarted(0.0, "r", models=("openai/m", "anthropic/a"), prompts=10))
    progress(BatchProgress(0.1, "r", model="openai/m", batch_id="batch_0123456789abcdef", status="in_progress",
                           total=10, succeeded=3, elapsed_s=0.1, next_poll_s=30.0))
    progress(BatchProgress(0.2, "r", model="anthropic/a", batch_id="msgbatch_0123456789abcdef", status="in_progress",
                           total=10, elapsed_s=0.2, next_poll_s=30.0))
    said = out.getvalue().splitlines()
    assert len(said) == 2 and "batch openai/m batch_0123…cdef in_progress · 3/10 ✓" in said[0]

    async def slow() -> str:
        await asyncio.sleep(25)
        return "answered"

    assert await with_heartbeat(slow(), progress, every_s=10) == "answered"
    beats = out.getvalue().splitlines()[2:]
    assert len(beats) == 6, beats  # at 10 s and 20 s: what is open, then each open batch
    assert "still open: openai/m: Completed 0/10, 10 in batch in_progress (provider: 3 ended)" in beats[0]
    assert beats[1].strip().startswith("batch openai/m batch_0123…cdef in_progress · 3/10 ✓ · ")
    assert beats[2].strip().startswith("batch anthropic/a msgbatch_0123…cdef in_progress · 0/10 ✓ · ")
    # the run command's view too: its rows read "in batch", its heartbeat lists the batches
    out = io.StringIO()
    run_view = TerminalProgress(["openai/m"], out, clock=asyncio.get_running_loop().time)
    run_view(RunStarted(0.0, "r", models=("openai/m",)))
    run_view(BatchProgress(0.1, "r", model="openai/m", batch_id="batch_1", status="validating", total=1,
                           next_poll_s=30.0))
    assert run_view.state("openai/m") == "in batch validating"
    await with_heartbeat(slow(), run_view, every_s=10)
    beat = out.getvalue().splitlines()[-2:]
    assert "still open: openai/m in batch validating" in beat[0] and "batch openai/m batch_1 validating" in beat[1]
