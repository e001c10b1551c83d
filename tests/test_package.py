"""The package surface: sorted __all__, no UI imports in the core, the command's entry points."""

from __future__ import annotations

import subprocess
import sys

import nbfanout


def test_all_is_sorted_and_every_name_exists():
    assert nbfanout.__all__ == sorted(nbfanout.__all__)
    for name in nbfanout.__all__:
        assert hasattr(nbfanout, name), name


def test_core_never_imports_ui_libraries():
    code = (
        "import sys, nbfanout, nbfanout.core.fanout, nbfanout.sandbox;"
        "bad = [m for m in ('ipywidgets', 'IPython', 'matplotlib') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_python_dash_m_is_the_command():
    out = subprocess.run([sys.executable, "-m", "nbfanout", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("run", "models", "doctor", "sandbox", "demo"):
        assert command in out.stdout


def test_bad_provider_rpm_fails_before_sending_with_the_fix():
    out = subprocess.run(
        [sys.executable, "-m", "nbfanout", "run", "--models", "openai/gpt-4.1", "--prompt", "hi", "--provider-rpm", "openai=5"],
        capture_output=True, text=True,
    )
    assert out.returncode == 2
    assert "provider:N pairs like openai:500" in out.stderr


def test_unknown_model_on_the_command_line_suggests_close_names():
    out = subprocess.run(
        [sys.executable, "-m", "nbfanout", "run", "--models", "openai/gpt-4.1-mnii", "--prompt", "hi"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )
    assert out.returncode == 2
    assert "openai/gpt-4.1-mini" in out.stderr


def test_run_sync_from_nbfanouts_own_loop_refuses_instead_of_deadlocking():
    import asyncio

    import pytest

    from nbfanout.core.errors import UsageError
    from nbfanout.core.sync import LoopJob, run_coroutine_sync

    async def noop() -> int:
        return 1

    async def nested() -> None:
        run_coroutine_sync(noop())

    with pytest.raises(UsageError, match="await fx.run"):
        LoopJob(nested()).wait(timeout=5)
    assert LoopJob(noop()).wait(timeout=5) == 1  # the loop is still alive
    assert asyncio.run(noop()) == 1


def test_provider_rpm_rejects_unknown_providers_and_non_finite_values():
    import pytest

    from nbfanout import Fanout
    from nbfanout.config import parse_provider_rpm
    from nbfanout.core.errors import UsageError

    for text in ("openai:nan", "openai:inf", "openai:0.5"):
        with pytest.raises(UsageError):
            parse_provider_rpm(text)
    with pytest.raises(UsageError, match="opnai"):
        Fanout({}, env={}, provider_rpm={"opnai": 10})
    with pytest.raises(UsageError, match="at least 1"):
        Fanout({}, env={}, concurrency=-1)


def _imports(path) -> list[tuple[str, bool, bool]]:
    """(module imported, at module level?, under TYPE_CHECKING?) for every nbfanout import in ``path``."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, bool, bool]] = []

    def visit(node, top: bool, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, top, True)
                continue
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("nbfanout") and child.level == 0:
                found.append((child.module, top, typing_only))
            elif isinstance(child, ast.Import):
                found.extend((a.name, top, typing_only) for a in child.names if a.name.startswith("nbfanout"))
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner, typing_only)

    visit(tree, True, False)
    return found


def test_modules_import_only_what_their_layer_allows():
    """The base layer imports nothing of ours; the core, providers, catalog and config never import the
    notebook, the CLI or the sandbox (and the presentation layer only lazily, for ``_repr_*``); the
    sandbox, a reference for providers' behaviour, uses none of the client's core but its errors; progress
    and render, shared by the notebook and the CLI, import neither."""
    from pathlib import Path

    root = Path(nbfanout.__file__).parent
    base = {"nbfanout._secrets", "nbfanout._argtypes", "nbfanout.core.error_types", "nbfanout.core.headers",
            "nbfanout.core.shapes", "nbfanout.core.clock"}
    problems = []
    for path in sorted(root.rglob("*.py")):
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        for module, top, typing_only in _imports(path):
            if typing_only:
                continue
            if name in base:
                problems.append(f"{name} imports {module}")
            core_side = name.startswith(("nbfanout.core", "nbfanout.providers", "nbfanout.catalog", "nbfanout.config"))
            if core_side and module.startswith(("nbfanout.notebook", "nbfanout.cli", "nbfanout.sandbox")):
                problems.append(f"{name} imports {module}")
            if core_side and module.startswith(("nbfanout.render", "nbfanout.progress")) and top:
                problems.append(f"{name} imports {module} at module level")
            # the presentation layer is shared by the notebook and the CLI: it uses neither
            if name in ("nbfanout.render", "nbfanout.progress") and module.startswith(
                    ("nbfanout.notebook", "nbfanout.cli", "nbfanout.sandbox")):
                problems.append(f"{name} imports {module}")
            if name.startswith("nbfanout.sandbox") and module.startswith("nbfanout.") and not module.startswith(
                    ("nbfanout.sandbox", "nbfanout._secrets", "nbfanout.core.errors", "nbfanout.core.error_types")):
                problems.append(f"{name} imports {module}")
    assert problems == []
