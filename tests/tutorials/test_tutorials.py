"""The tutorial notebooks and Binder: committed clean, installable from binder/ alone, runnable with no keys.

* every notebook in notebooks/ is committed without outputs or execution counts, with an
  nbmake timeout in its metadata;
* binder/requirements.txt installs the project itself (Binder does not install pyproject.toml
  when binder/ exists) and everything the notebooks import;
* ``jupyter-repo2docker --no-build --debug .`` (Binder's builder; prints the Dockerfile, needs
  no Docker) installs binder/requirements.txt after copying the repository, from its root;
* the README's local equivalent works: a fresh venv with only ``pip install -r
  binder/requirements.txt`` executes every notebook, each in under a minute, with no API keys.

``pytest --nbmake notebooks/`` (in ``make test``) runs the notebooks in the development venv too.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
REQUIREMENTS = ROOT / "binder" / "requirements.txt"
EXPECTED = [
    "01_quickstart.ipynb",
    "02_rate_limits.ipynb",
    "03_failover_pools.ipynb",
    "04_batch_evaluation.ipynb",
    "05_synthesis.ipynb",
    "06_vision_audio.ipynb",
    "07_real_providers.ipynb",
    "08_agents_tools.ipynb",
    "09_batch_api.ipynb",
]
PER_NOTEBOOK_LIMIT_S = 60.0  # the promise: each runs top to bottom in under a minute


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def _requirement_lines() -> list[str]:
    lines = []
    for raw in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def _project_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


# --- the notebooks as committed ------------------------------------------------------------------
def test_the_nine_tutorials_exist_in_order() -> None:
    assert [p.name for p in _notebooks()] == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_is_committed_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{name}: cells {dirty} have outputs or execution counts; clear them before committing"
    assert "widgets" not in nb.metadata, f"{name}: saved widget state in the metadata; clear outputs before committing"
    timeout = nb.metadata.get("execution", {}).get("timeout")
    assert isinstance(timeout, int) and 0 < timeout <= 300, f"{name}: metadata.execution.timeout (nbmake) is {timeout!r}"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), f"{name}: starts with a title"


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_starts_its_own_sandbox_and_keeps_learned_limits_private(name: str) -> None:
    """No keys and no state from earlier runs: each notebook starts a sandbox and uses a fresh state file."""
    code = "\n".join(c.source for c in nbformat.read(NOTEBOOKS / name, as_version=4).cells if c.cell_type == "code")
    assert "start_sandbox(" in code
    assert 'os.environ["NBFANOUT_STATE"]' in code, f"{name}: point NBFANOUT_STATE at a temporary file"
    assert "sandbox.stop()" in code


# --- Binder ------------------------------------------------------------------------------------------
def test_binder_requirements_install_the_project_itself() -> None:
    lines = _requirement_lines()
    # Binder runs `pip install -r binder/requirements.txt` from the repository root, so "." is the root.
    # A file whose only line is "." is misread by repo2docker; "-e ." is what we use.
    assert "-e ." in lines, f"binder/requirements.txt must install the project with '-e .'; found {lines}"
    names = {_project_name(line) for line in lines if not line.startswith("-")}
    assert {"jupyterlab", "ipykernel"} <= names, "Binder and the local equivalent need JupyterLab and a kernel"


def _third_party_imports(source: str) -> set[str]:
    from IPython.core.inputtransformer2 import TransformerManager

    tree = ast.parse(TransformerManager().transform_cell(source))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names}


def test_everything_the_notebooks_import_is_installed_by_binder() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    provided = {"nbfanout"} | {_project_name(d) for d in project["dependencies"]}
    provided |= {_project_name(line) for line in _requirement_lines() if not line.startswith("-")}
    for path in _notebooks():
        nb = nbformat.read(path, as_version=4)
        imports = set().union(*(_third_party_imports(c.source) for c in nb.cells if c.cell_type == "code"))
        missing = {m for m in imports if m.replace("_", "-") not in provided} - {"IPython"}  # IPython: ipykernel's
        assert not missing, f"{path.name} imports {sorted(missing)}: add them to binder/requirements.txt"


def test_repo2docker_dockerfile_installs_binder_requirements_from_the_repository_root() -> None:
    """What Binder would build, read from its own builder (no Docker, no network: --no-build)."""
    pytest.importorskip("repo2docker", reason="pip install jupyter-repo2docker (part of the dev extra)")
    exe = Path(sys.executable).with_name("jupyter-repo2docker")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "repo2docker"]
    done = subprocess.run([*cmd, "--no-build", "--debug", "."], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    dockerfile = done.stdout
    lines = dockerfile.splitlines()

    def where(pattern: str) -> int:
        hits = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert hits, f"no line matching {pattern!r} in the Dockerfile repo2docker printed:\n{dockerfile[-3000:]}"
        return hits[-1]

    installs = [i for i, line in enumerate(lines) if re.search(r'pip install .*-r "?binder/requirements\.txt', line)]
    assert installs, f"the Dockerfile repo2docker printed never installs binder/requirements.txt:\n{dockerfile[-3000:]}"
    copy_repo = where(r"^COPY .*src/ \$\{REPO_DIR\}/?$")
    workdir = where(r"^WORKDIR \$\{REPO_DIR\}")
    # "-e ." needs the whole repository in place (repo2docker installs requirements that name no local
    # path *before* copying the repository, for its cache), and pip resolves "." against the working
    # directory, which must be the repository root
    assert all(workdir < copy_repo < i for i in installs), (
        "binder/requirements.txt is installed before the repository is copied in: "
        f"WORKDIR at line {workdir}, COPY of the repository at {copy_repo}, installs at {installs}")
    # the Python Binder picks must satisfy requires-python
    version = re.search(r"using Python version (\d+)\.(\d+)", done.stderr + done.stdout)
    if version:
        minimum = re.search(r">=\s*(\d+)\.(\d+)", tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
        assert minimum is not None
        assert tuple(map(int, version.groups())) >= tuple(map(int, minimum.groups()))


# --- the README ---------------------------------------------------------------------------------------
BINDER_URL = "https://mybinder.org/v2/gh/nbfanout/nbfanout/main?urlpath=lab/tree/notebooks"
LOCAL_EQUIVALENT = [
    "python3 -m venv .binder-venv",
    ".binder-venv/bin/pip install -r binder/requirements.txt",
    ".binder-venv/bin/jupyter lab notebooks/",
]


def test_readme_has_the_binder_badge_the_local_equivalent_and_every_tutorial() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"[![Binder](https://mybinder.org/badge_logo.svg)]({BINDER_URL})" in readme
    for line in LOCAL_EQUIVALENT:
        assert f"\n{line}\n" in readme, f"README lacks the local-equivalent command {line!r}"
    for name in EXPECTED:
        assert f"(notebooks/{name})" in readme, f"README does not link {name}"
    first_screen = readme.split("\n## ", 1)[0]
    assert "make demo" in first_screen and "make test" in first_screen


def test_every_toml_example_in_the_readme_is_a_valid_config(tmp_path: Path) -> None:
    from nbfanout import load_config

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.DOTALL)
    assert blocks
    for i, block in enumerate(blocks):
        path = tmp_path / f"example{i}.toml"
        path.write_text(block, encoding="utf-8")
        load_config(path, env={})  # raises ConfigError listing every problem


def test_the_readme_notebook_example_runs(tmp_path: Path) -> None:
    """The README's "notebook in ten lines", cell by cell, in a real kernel."""
    from nbclient import NotebookClient

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- readme-notebook-example", 1)[1].split("<!-- /readme-notebook-example -->", 1)[0]
    cells = re.findall(r"```python\n(.*?)```", block, re.DOTALL)
    assert len(cells) >= 2
    assert sum(len(c.strip().splitlines()) for c in cells) <= 12, "the example promises about ten lines"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c.strip()) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    env_state = tmp_path / "learned_limits.json"
    nb.cells.insert(0, nbformat.v4.new_code_cell(f"import os; os.environ['NBFANOUT_STATE'] = {str(env_state)!r}"))
    nb.cells.append(nbformat.v4.new_code_cell("sandbox.stop()"))
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells for o in c.outputs if o.output_type == "error" or o.get("name") == "stderr"]
    assert not errors, errors
    last = "".join(o.get("data", {}).get("text/plain", "") for o in nb.cells[-2].outputs)
    assert last.startswith("[('openai/gpt-4.1', 'ok'"), last
    assert last.count("'ok'") == 3, last


# --- the local equivalent: a fresh venv from binder/requirements.txt runs every notebook ---------
_RUNNER = r'''
import json, sys, time
from pathlib import Path
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

report = {}
for name in sys.argv[2:]:
    path = Path(sys.argv[1]) / name
    nb = nbformat.read(path, as_version=4)
    timeout = nb.metadata.get("execution", {}).get("timeout", 120)
    t0 = time.monotonic()
    error = None
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    except CellExecutionError as exc:
        error = str(exc)[-3000:]
    except Exception as exc:  # a kernel that died, a timeout: report it like a cell error
        error = f"{type(exc).__name__}: {exc}"[-3000:]
    report[name] = {"seconds": round(time.monotonic() - t0, 1), "error": error}
print(json.dumps(report))
'''


def _binder_python() -> str:
    """An interpreter like Binder's (its default is Python 3.10) when one is at hand, else this one."""
    override = os.environ.get("NBFANOUT_BINDER_PYTHON")
    candidates = [override] if override else [shutil.which("python3.10"), sys.executable]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import venv, ensurepip"], capture_output=True, check=False)
        if probe.returncode == 0:
            return candidate
    return sys.executable


def _clean_env(tmp: Path) -> dict[str, str]:
    """No API keys, no nbfanout settings, and no user Jupyter / IPython / matplotlib configuration."""
    env = {k: v for k, v in os.environ.items()
           if not re.search(r"API_KEY|^NBFANOUT_|^JUPYTER|^IPYTHONDIR$|^VIRTUAL_ENV$|^PYTHON(PATH|HOME)$|^MPL", k)}
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "MPLCONFIGDIR",
                 "XDG_CACHE_HOME"):
        (tmp / name.lower()).mkdir(exist_ok=True)
        env[name] = str(tmp / name.lower())
    return env


@pytest.mark.timeout(1200)
def test_a_fresh_venv_with_only_binder_requirements_runs_every_notebook(tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    venv = tmp_path / "binder-venv"
    python = _binder_python()
    subprocess.run([python, "-m", "venv", str(venv)], check=True, env=env, timeout=300)
    vpython = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    t0 = time.monotonic()
    # exactly the README's local equivalent: from the repository root, as Binder does
    install = subprocess.run([str(vpython), "-m", "pip", "install", "--quiet", "-r", "binder/requirements.txt"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-4000:]
    installed_s = time.monotonic() - t0

    runner = tmp_path / "run_notebooks.py"
    runner.write_text(_RUNNER, encoding="utf-8")
    done = subprocess.run([str(vpython), str(runner), str(NOTEBOOKS), *EXPECTED], cwd=NOTEBOOKS, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    version = subprocess.run([str(vpython), "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True, check=False).stdout.strip()
    summary = ", ".join(f"{n[:2]} {r['seconds']}s" for n, r in report.items())
    print(f"\nfresh venv (Python {version}): pip install {installed_s:.0f}s; notebooks: {summary}")
    failed = {n: r["error"] for n, r in report.items() if r["error"]}
    assert not failed, "\n\n".join(f"{n}:\n{e}" for n, e in failed.items())
    slow = {n: r["seconds"] for n, r in report.items() if r["seconds"] > PER_NOTEBOOK_LIMIT_S}
    assert not slow, f"notebooks over {PER_NOTEBOOK_LIMIT_S:.0f}s: {slow}"
    # the runs left nothing behind in the repository's notebooks folder
    assert sorted(p.name for p in NOTEBOOKS.iterdir() if not p.name.startswith(".")) == EXPECTED
