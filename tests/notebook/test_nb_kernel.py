"""Notebooks executed in a real kernel (nbclient): the seed15 dashboard, and a kernel interrupt mid-run."""

from __future__ import annotations

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


def test_seed15_notebook_shows_widgets_results_and_timeline(tmp_path: Path) -> None:
    nb = _execute("nb_seed15_dashboard.ipynb", tmp_path)
    run = nb.cells[2]
    outputs = _outputs(run)
    assert not [o for o in outputs if o["output_type"] == "error"], outputs
    views = [o for o in outputs if WIDGET_VIEW in o.get("data", {})]
    assert len(views) >= 2, "expected the live dashboard and the answer tabs as widget views"
    assert "nbfanout dashboard for 15 models" in views[0]["data"]["text/plain"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 1, "the retry timeline image was not produced"
    assert pngs[0]["data"]["image/png"].startswith("iVBOR")  # base64 of the PNG signature
    assert "results: 15" in _text(nb.cells[3])
    assert "in flight at the sandbox: 0" in _text(nb.cells[3])
    # the dashboard's last state, as the kernel sent it: 15 rows, all final
    (final,) = _dashboard_html(nb)
    assert final.count('class="nbf-row"') == 15
    states = re.findall(r'data-state="(\w+)"', final)
    assert set(states) <= {"done", "failed"} and len(states) == 15


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
    interrupted, background = _dashboard_html(nb)
    assert interrupted.count('data-state="cancelled"') == 2
    assert interrupted.count('data-state="done"') == 2
    # --background: the cell returned at once, the dashboard kept updating, the result arrived in rb
    assert "BackgroundRun 2 models, running in the background; stored as 'rb' when done" in _text(nb.cells[4])
    assert "background: 2 of 2" in _text(nb.cells[5])
    assert background.count('data-state="done"') == 2
    state = nb.metadata["widgets"][WIDGET_STATE]["state"]
    finals = [m for m in state.values() if m.get("model_name") == "OutputModel"
              and any("image/png" in o.get("data", {}) for o in m["state"].get("outputs", []))]
    assert len(finals) == 1, "the background run's timeline was not appended to its dashboard"


@pytest.fixture(autouse=True)
def _no_outputs_committed() -> None:
    """The committed notebooks carry no outputs (they are executed here, into tmp copies)."""
    for path in HERE.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code"), path
