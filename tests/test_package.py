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
