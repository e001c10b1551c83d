"""Notebooks executed in a real kernel (nbclient): the seed15 dashboard, and a kernel interrupt mid-run."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

HERE = Path(__file__).parent
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def _execute(name: str, tmp_path: Path, **kwargs: Any) -> Any:
    """Run a copy of a committed notebook in a fresh kernel whose working directory is ``tmp_path``."""
    path = tmp_path / name
    shutil.copy(HERE / name, path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                            iopub_timeout=30, **kwargs)
    client.execute()
    nbformat.write(nb, path)
    return nb


def _outputs(cell: Any) -> list[dict[str, Any]]:
    return [dict(o) for o in cell.outputs]


def _text(cell: Any) -> str:
    return "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in cell.outputs)


def _dashboard_html(nb: Any) -> list[str]:
    """The final value of every HTML widget that holds a dashboard, from the saved widget state."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    return [m["state"]["value"] for m in state.values()
            if m.get("model_name") == "HTMLModel" and 'class="nbf-row"' in m["state"].get("value", "")]


def _snapshot(cell: Any) -> str:
    """The HTML a finished ``%%fanout`` cell leaves: its one display, updated to the static snapshot."""
    (html,) = [o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {}) and 'class="nbf-row"'
               in o["data"]["text/html"]]
    return html


def test_a_saved_seed15_notebook_keeps_its_dashboard_timeline_and_answers_without_widgets(tmp_path: Path) -> None:
    nb = _execute("nb_seed15_dashboard.ipynb", tmp_path)
    run = nb.cells[2]
    outputs = _outputs(run)
    assert not [o for o in outputs if o["output_type"] == "error"], outputs
    # the live widget was replaced: nothing in the saved cell needs a widget manager (or a kernel)
    assert not [o for o in outputs if WIDGET_VIEW in o.get("data", {})], "a widget view is left in the saved cell"
    assert [o["output_type"] for o in outputs] == ["display_data"], "one output: no summary table repeating it"
    final = _snapshot(run)
    assert final.count('class="nbf-row"') == 15
    states = re.findall(r'data-state="(\w+)"', final)
    assert set(states) <= {"done", "failed"} and len(states) == 15
    (png,) = re.findall(r'<img class="nbf-timeline"[^>]*src="data:image/png;base64,([^"]+)"', final)
    assert png.startswith("iVBOR")  # base64 of the PNG signature
    # fifteen answers: one row each, the full text inside, the answer's own words escaped
    assert final.count('class="nbf-answer-row"') == 15
    assert all(html.escape(x.text, quote=True) in final for x in _saved_result(nb).succeeded)
    assert "ok: 15" in _text(nb.cells[3]) or "results: 15" in _text(nb.cells[3])
    assert "in flight at the sandbox: 0" in _text(nb.cells[3])
    # the saved file itself, read back as a viewer would: the snapshot is there
    saved = nbformat.read(tmp_path / "nb_seed15_dashboard.ipynb", as_version=4)
    assert _snapshot(saved.cells[2]) == final
    from nbfanout.sandbox import load_scenario

    keys = [k.key for p in load_scenario("seed15").providers for k in p.keys] + ["sk-revoked-by-the-browser-test-0000"]
    _assert_no_key_saved(tmp_path / "nb_seed15_dashboard.ipynb", keys)


def _assert_no_key_saved(path: Path, keys: list[str]) -> None:
    """Canary: no key, whole or in any of the forms redaction catches, in what the saved notebook holds
    besides its code: outputs, widget state and metadata (the last four characters are allowed)."""
    from urllib.parse import quote

    nb = json.loads(path.read_text(encoding="utf-8"))
    held = json.dumps([c.get("outputs", []) for c in nb["cells"]]) + json.dumps(nb.get("metadata", {}))
    for key in keys:
        for form in (key, key.upper(), quote(key, safe=""), key[:-4]):
            assert form not in held, f"a key ({form[:6]}…) was saved in {path.name}"


def _saved_result(nb: Any) -> Any:
    """The FanoutResult the cell stored (``--out r``), rebuilt from the JSON the next cell can print."""
    from nbfanout import FanoutResult

    (blob,) = [o["text"] for o in nb.cells[4].outputs if o.get("name") == "stdout"]
    return FanoutResult.from_json(blob)


def test_kernel_interrupt_then_a_background_run(tmp_path: Path) -> None:
    # nbclient interrupts the kernel when the tagged cell exceeds its timeout
    nb = _execute("nb_interrupt_background.ipynb", tmp_path, interrupt_on_timeout=True, shell_timeout_interval=1,
                  timeout_func=lambda cell: 3 if "interrupt" in cell.metadata.get("tags", []) else 120)
    run = nb.cells[2]
    outputs = _outputs(run)
    assert not [o for o in outputs if o["output_type"] == "error"], "the interrupt left a traceback in the cell"
    assert "KeyboardInterrupt" not in json.dumps(outputs)
    assert "interrupted: 2 of 4 models had answered" in _text(run)
    report = _text(nb.cells[3])
    assert "answered: ['openai/quick-a', 'openai/quick-b']" in report
    assert "cancelled: ['openai/slow-a', 'openai/slow-b']" in report
    assert "sandbox in flight: 0 accepted: 2 requests: 4" in report
    interrupted = _snapshot(run)  # the interrupted run's dashboard, frozen in place
    assert not [o for o in outputs if WIDGET_VIEW in o.get("data", {})]
    assert interrupted.count('data-state="cancelled"') == 2
    assert interrupted.count('data-state="done"') == 2
    # --background: the cell returned at once, the dashboard kept updating, the result arrived in rb;
    # then the dashboard became its static snapshot (timeline and answers) and the handle's line says done
    assert "background: 2 of 2" in _text(nb.cells[5])
    background = nb.cells[4]
    assert "<BackgroundRun 2 models, done; stored as 'rb'>" in _text(background), _text(background)
    assert not [o for o in _outputs(background) if WIDGET_VIEW in o.get("data", {})], "a widget is left in the cell"
    snapshot = _snapshot(background)
    assert snapshot.count('data-state="done"') == 2 and 'data-model="openai/medium"' in snapshot
    assert 'class="nbf-timeline"' in snapshot and snapshot.count('class="nbf-card"') == 2
    _assert_no_key_saved(tmp_path / "nb_interrupt_background.ipynb", ["sk-sbx-interrupt-key-i001"])


@pytest.fixture(autouse=True)
def _no_outputs_committed() -> None:
    """The committed notebooks carry no outputs (they are executed here, into tmp copies)."""
    for path in HERE.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code"), path


def test_watch_shows_a_map_live_and_leaves_its_snapshot(tmp_path: Path) -> None:
    nb = _execute("nb_watch_map.ipynb", tmp_path)
    run = nb.cells[2]
    assert not [o for o in _outputs(run) if o["output_type"] == "error"], _outputs(run)
    assert not [o for o in _outputs(run) if WIDGET_VIEW in o.get("data", {})], "a widget view is left in the saved cell"
    final = _snapshot(run)
    assert final.count('class="nbf-row"') == 2  # one row per model, not one per request
    assert final.count("6/6 answered") == 4  # each row's state and its tooltip
    assert "6 prompts × 2 models: 12/12 succeeded" in final  # the batch's table follows
    assert "answered: 12 of 12" in _text(nb.cells[3])


def _snapshots(cell: Any) -> list[str]:
    """Every HTML output of a cell that holds a dashboard (a static snapshot once the run is over)."""
    return [o["data"]["text/html"] for o in cell.outputs
            if "text/html" in o.get("data", {}) and 'class="nbf-row"' in o["data"]["text/html"]]


def test_a_batch_cell_and_a_resume_leave_snapshots_with_their_provider_batches(tmp_path: Path) -> None:
    nb = _execute("nb_batch_dashboard.ipynb", tmp_path)
    for cell in nb.cells[1:]:
        assert not [o for o in _outputs(cell) if o["output_type"] == "error"], _outputs(cell)
        assert not [o for o in _outputs(cell) if WIDGET_VIEW in o.get("data", {})], "a widget view is left in the cell"
    names = ("openai/gpt-4o-mini", "anthropic/claude-haiku-4-5-20251001", "gemini/gemini-2.5-flash")
    # %%fanout --batch: the dashboard, its batch table and the answers, each saying how it came
    (cell,) = _snapshots(nb.cells[2])
    plain = re.sub(r' style="[^"]*"', "", cell)
    assert plain.count('<tr class="nbf-batch"') == 3 and plain.count('data-state="fetched"') == 3
    assert "provider batches · 3, all read" in plain and "state file one.json" in plain
    assert plain.count("done by batch") >= 3 and plain.count("· by batch") == 3  # the rows' state, the cards
    assert all(f'data-model="{m}" data-state="done"' in plain for m in names)
    assert 'table-layout:fixed' in cell  # its layout inline, for a notebook opened untrusted
    assert "open: 3" in _text(nb.cells[3])
    # %fanout resume: one row per model counting its six requests, the batches, then the batch's table
    (resumed,) = _snapshots(nb.cells[4])
    plain = re.sub(r' style="[^"]*"', "", resumed)
    assert plain.count('class="nbf-row"') == 3 and plain.count("6/6 answered by batch") >= 3
    assert "state file left.json" in plain and plain.count('data-state="fetched"') == 3
    assert "6 prompts × 3 models: 18/18 succeeded" in plain and "(18 by batch)" in plain
    listing = _text(nb.cells[5])
    assert "left.json  6 prompts × 3 models" in listing and "one.json  1 prompt × 3 models" in listing
    assert "· done ·" in listing and "pick it up" not in listing
    assert "cell: ['batch', 'batch', 'batch'] resumed: 18 of 18 ['batch']" in _text(nb.cells[6])
