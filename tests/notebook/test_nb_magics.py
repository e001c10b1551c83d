"""%%fanout and %fanout through a real IPython InteractiveShell (run_cell_magic) against the sandbox."""

from __future__ import annotations

import re

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.magic_arguments import parse_argstring
from _nb_helpers import many_models_scenario  # type: ignore[import-not-found]
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from nbfanout import FanoutResult
from nbfanout.notebook.magics import BackgroundRun, FanoutMagics, fill_prompt, split_models

FAST = "--config sb.config --models openai/gpt-4o-mini gemini/gemini-2.5-flash"


@pytest.fixture
def ip(fast_sandbox: Any) -> Iterator[InteractiveShell]:
    """The IPython shell with the extension loaded and ``sb`` (the "fast" sandbox) in its namespace."""
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbfanout")
    shell.user_ns["sb"] = fast_sandbox
    yield shell
    for name in ("sb", "r", "r2", "topic", "rb"):
        shell.user_ns.pop(name, None)


def _magics(ip: InteractiveShell) -> FanoutMagics:
    return ip.magics_manager.registry["FanoutMagics"]


def _requests(sb: Any) -> int:
    return sb.stats()["totals"]["requests"]


def test_cell_runs_fills_variables_and_stores_out(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.user_ns["topic"] = "token buckets"
    result = ip.run_cell_magic("fanout", FAST + " --max-tokens 50 --temperature 0.2 --out r", "Explain {topic}; keep {{braces}}.")
    assert isinstance(result, FanoutResult) and ip.user_ns["r"] is result
    assert result.prompt == "Explain token buckets; keep {braces}."
    assert [r.requested for r in result] == ["openai/gpt-4o-mini", "gemini/gemini-2.5-flash"]
    assert all(r.ok for r in result)
    out = capsys.readouterr().out
    assert "openai/gpt-4o-mini: done" in out  # the plain-text progress outside a kernel
    assert "2/2 succeeded" in out


def test_one_gives_a_single_answer_from_the_first_model_that_can(ip: InteractiveShell) -> None:
    sb = ip.user_ns["sb"]
    before = _requests(sb)
    result = ip.run_cell_magic("fanout", FAST + " --one --no-dashboard", "Hi")
    assert isinstance(result, FanoutResult) and len(result.results) == 1
    (only,) = result.results
    assert only.ok and only.requested == only.model == "openai/gpt-4o-mini"
    assert _requests(sb) == before + 1


def test_comma_and_space_separated_models_and_a_list_variable(ip: InteractiveShell) -> None:
    assert split_models(["a,b c", "d"]) == ["a", "b", "c", "d"]
    ip.user_ns["pair"] = ["openai/gpt-4o-mini", "gemini/gemini-2.5-flash"]
    result = ip.run_cell_magic("fanout", "--config sb.config --models {pair} --no-dashboard", "Hi")
    assert [r.requested for r in result] == ip.user_ns.pop("pair")


@pytest.mark.parametrize(
    ("line", "body", "message"),
    [
        (FAST, "Summarise {paper} and {year}.", "{paper}, {year} are used but the notebook defines no such variables"),
        (FAST, "Unclosed {brace", "unmatched brace"),
        (FAST + " --temperature 5", "Hi", "expected a number from 0 to 2"),
        (FAST + " --max-tokens 0", "Hi", "expected a number above 0"),
        (FAST + " --timeout soon", "Hi", "expected a number of seconds"),
        ("--config sb.config --models openai/gpt-4o-mni", "Hi", "Did you mean"),
        ("--config sb.config --models openai/gpt-4o-mini --pool fast", "Hi", "not both"),
        ("--config sb.config", "Hi", "no models"),
        (FAST + " --out 1st", "Hi", "not a valid Python variable name"),
        (FAST + " --rerun nothing_here", "Hi", "expected a FanoutResult"),
        (FAST + " --file /no/such/file.txt", "Hi", "--file /no/such/file.txt: no such file"),
        (FAST + " --image /no/such.png", "Hi", "--image /no/such.png: no such file"),
        (FAST + " --provider-rpm openai:many", "Hi", "provider:N pairs"),
        (FAST + " --synthesize openai/nope", "Hi", "Unknown model"),
        ("--config sb.config --models openai/nope", "Hi", "Run `%fanout models` to list every model"),
        ("--config missing.toml --models openai/gpt-4o-mini", "Hi", "--config missing.toml: no such file"),
        (FAST + " --bogus", "Hi", "unrecognized arguments"),
        (FAST + " --one --synthesize openai/gpt-4o-mini", "Hi", "--one asks for one answer"),
        (FAST, "   ", "the cell is empty"),
    ],
)
def test_bad_input_fails_clearly_before_any_request(ip: InteractiveShell, line: str, body: str, message: str) -> None:
    sb = ip.user_ns["sb"]
    before = _requests(sb)
    with pytest.raises(UsageError, match=None) as info:
        ip.run_cell_magic("fanout", line, body)
    assert message in str(info.value)
    assert _requests(sb) == before, "a request was sent although the cell was wrong"


def test_fill_prompt_reports_every_missing_name_and_escapes_braces() -> None:
    assert fill_prompt("{a} {{b}} {c.real}", {"a": 1, "c": 2}) == "1 {b} 2"
    with pytest.raises(UsageError, match=r"\{x\}, \{y\} are used"):
        fill_prompt("{x} {y} {x}", {})


def test_help_lists_every_option(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_cell("%%fanout?")
    shown = capsys.readouterr().out
    for option in ("--models", "--pool", "--config", "--system", "--max-tokens", "--temperature", "--provider-rpm",
                   "--concurrency", "--timeout", "--file", "--image", "--synthesize", "--out", "--rerun", "--stream",
                   "--dry-run", "--no-dashboard", "--background"):
        assert option in shown, option
    assert "%%fanout [--models" in shown and "%fanout_cell" not in shown  # named as typed
    # every example is a line the magic accepts, naming models the catalog knows
    from nbfanout.config import load_config
    from nbfanout.notebook.magics import FanoutMagics

    examples = [ln.strip()[len("%%fanout "):].split("  (")[0] for ln in shown.split("examples:", 1)[1].splitlines()
                if ln.strip().startswith("%%fanout ")]
    assert len(examples) >= 3
    catalog = load_config(None)
    for line in examples:
        args = parse_argstring(FanoutMagics.fanout_cell, line)
        for name in args.models or []:
            catalog.model(name)


def test_dry_run_shows_the_plan_and_sends_nothing(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    sb = ip.user_ns["sb"]
    before = _requests(sb)
    assert ip.run_cell_magic("fanout", FAST + " --dry-run --max-tokens 64", "Plan me") is None
    shown = capsys.readouterr().out
    assert "dry run, nothing sent" in shown and "openai/gpt-4o-mini" in shown
    assert _requests(sb) == before


def test_line_magics_show_models_config_and_status_without_keys(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    sb = ip.user_ns["sb"]
    ip.run_cell_magic("fanout", FAST + " --no-dashboard", "Warm the budgets up.")
    capsys.readouterr()
    ip.run_line_magic("fanout", "models --config sb.config")
    ip.run_line_magic("fanout", "config --config sb.config")
    ip.run_line_magic("fanout", "status")
    shown = capsys.readouterr().out
    assert "✓ openai/gpt-4o-mini" in shown
    assert "defaults: concurrency=" in shown and "pools:" in shown
    assert "provider openai" in shown and "rpm " in shown  # live budgets
    keys = [k for p in sb.config["providers"].values()
            for k in ([p["api_key"]] if isinstance(p["api_key"], str) else p["api_key"])]
    for key in keys:
        assert key not in shown, "a full API key was shown"
        assert "…" + key[-4:] in shown
    with pytest.raises(UsageError, match="invalid choice"):
        ip.run_line_magic("fanout", "budgets")


def test_one_fanout_per_config_keeps_budgets_across_cells(ip: InteractiveShell) -> None:
    magics = _magics(ip)
    ip.run_cell_magic("fanout", FAST + " --no-dashboard", "One")
    fx = magics.fanout_for("sb.config")
    ip.run_cell_magic("fanout", FAST + " --no-dashboard", "Two")
    assert magics.fanout_for("sb.config") is fx
    assert magics.fanout_for("sb.config", concurrency=3) is not fx
    assert fx.last_result is not None and fx.last_result.prompt == "Two"


def test_synthesize_stream_and_system(ip: InteractiveShell) -> None:
    ip.user_ns["role"] = "a terse reviewer"
    result = ip.run_cell_magic("fanout", FAST + ' --stream --system "You are {role}." --synthesize openai/gpt-4o-mini --out r',
                               "Review this plan.")
    ip.user_ns.pop("role")
    assert result.synthesis is not None and result.synthesis.ok
    assert all(r.ok and r.text for r in result)


def test_rerun_sends_only_the_failed_models(sandbox_factory: Any, ip: InteractiveShell) -> None:
    scenario = many_models_scenario(2, base_ms=20, tokens=(10, 20))
    scenario["providers"]["openai"]["models"]["m01"]["faults"] = [{"kind": "server_error", "first_n": 1}]
    sb = sandbox_factory(scenario)
    ip.user_ns["cfg"] = {**sb.config, "defaults": {"max_attempts": 1}}
    first = ip.run_cell_magic("fanout", "--config cfg --models openai/m00 openai/m01 --out r", "Hello")
    assert [r.ok for r in first] == [True, False] and first["openai/m01"].category == "server_error"
    models_before = sb.stats()["models"]
    again = ip.run_cell_magic("fanout", "--config cfg --rerun r --out r2", "Hello")
    models_after = sb.stats()["models"]
    ip.user_ns.pop("cfg")
    assert models_after["openai/m00"]["requests"] == models_before["openai/m00"]["requests"]
    assert models_after["openai/m01"]["requests"] == models_before["openai/m01"]["requests"] + 1
    assert again["openai/m00"] is first["openai/m00"]  # kept, not resent
    assert again["openai/m01"].ok


def test_cooldowns_line_magic_lists_and_clears_what_a_provider_asked_to_wait(
        sandbox_factory: Any, ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = many_models_scenario(1, base_ms=20, tokens=(10, 20))
    scenario["providers"]["openai"]["models"]["m00"]["faults"] = [
        {"kind": "rate_limit_burst", "first_n": 1, "retry_after_s": 900}]
    sb = sandbox_factory(scenario)
    ip.user_ns["cool"] = {**sb.config, "defaults": {"max_wait_s": 5}}
    result = ip.run_cell_magic("fanout", "--config cool --models openai/m00 --no-dashboard", "Hello")
    assert result["openai/m00"].category == "rate_limit"
    capsys.readouterr()
    ip.run_line_magic("fanout", "cooldowns --config cool")
    shown = capsys.readouterr().out
    assert re.search(r"1 cooldown\(s\)\n  \S+ openai\S* .*: (89\d|900)s left \(rate limited: retry in 900\.0s\)", shown), shown
    ip.run_line_magic("fanout", "cooldowns --clear --config cool")
    assert "cleared 1 cooldown(s)" in capsys.readouterr().out
    ip.run_line_magic("fanout", "cooldowns --config cool")
    assert "no cooldowns" in capsys.readouterr().out
    with pytest.raises(UsageError, match="--clear goes with %fanout cooldowns"):
        ip.run_line_magic("fanout", "status --clear")
    ip.user_ns.pop("cool")


def test_background_returns_at_once_and_stores_the_result(ip: InteractiveShell) -> None:
    handle = ip.run_cell_magic("fanout", FAST + " --background --out rb", "In the background")
    assert isinstance(handle, BackgroundRun)
    result = handle.result(timeout=60)
    assert handle.done() and "done" in repr(handle)
    assert ip.user_ns["rb"] is result and len(result.succeeded) == 2


def test_ctrl_c_cancels_in_flight_requests_and_returns_what_finished(sandbox_factory: Any, ip: InteractiveShell,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    scenario = many_models_scenario(4, base_ms=50, tokens=(20, 30))
    for name in ("m02", "m03"):  # these stream for about a minute
        scenario["providers"]["openai"]["models"][name]["latency"] = {"base_ms": 100, "per_output_token_ms": 300, "jitter": 0}
        scenario["providers"]["openai"]["models"][name]["output_tokens"] = [200, 220]
    sb = sandbox_factory(scenario)
    ip.user_ns["cfg"] = sb.config
    # a real SIGINT, as a kernel interrupt sends; the magic must turn it into a partial result
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    line = "--config cfg --stream --models openai/m00 openai/m01 openai/m02 openai/m03 --out r"
    result = ip.run_cell_magic("fanout", line, "Go")
    elapsed = time.monotonic() - started
    timer.join()
    assert elapsed < 10, "the interrupt did not stop the run"
    assert [r.requested for r in result.succeeded] == ["openai/m00", "openai/m01"]
    assert [r.category for r in result.failed] == ["cancelled", "cancelled"]
    assert ip.user_ns["r"] is result
    fx = _magics(ip).fanout_for("cfg")
    assert fx.last_result is not None  # the core keeps the partial batch after a cancellation
    deadline = time.monotonic() + 5
    while sb.stats()["totals"]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    totals = sb.stats()["totals"]
    assert totals["in_flight"] == 0 and totals["accepted"] == 2, "the sandbox still holds cancelled requests"
    assert "interrupted: 2 of 4 models had answered" in capsys.readouterr().err
    ip.user_ns.pop("cfg")


def test_the_cli_and_the_notebook_print_the_same_models_and_plan(ip: InteractiveShell, capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Any) -> None:
    """One presentation layer: `nbfanout models` and `%fanout models`, `nbfanout run --dry-run` and
    `%%fanout --dry-run` show the same rows for the same configuration."""
    import subprocess
    import sys

    path = ip.user_ns["sb"].write_config(tmp_path / "nbfanout.toml")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "NBFANOUT_STATE": os.devnull}

    def cli(*args: str) -> set[str]:
        out = subprocess.run([sys.executable, "-m", "nbfanout", *args, "--config", str(path)], capture_output=True,
                             text=True, env=env, timeout=120, check=True).stdout
        return {line.rstrip() for line in out.splitlines() if line.strip()}

    def notebook(run: Any) -> set[str]:
        capsys.readouterr()
        run()
        return {line.rstrip() for line in capsys.readouterr().out.splitlines() if line.strip()}

    models = "openai/gpt-4o-mini gemini/gemini-2.5-flash"
    shown = notebook(lambda: ip.run_line_magic("fanout", f"models --config {path}"))
    assert shown == cli("models") and any("openai/gpt-4o-mini" in line for line in shown)
    planned = notebook(lambda: ip.run_cell_magic("fanout", f"--config {path} --models {models} --dry-run", "Hello"))
    assert planned == cli("run", "--models", models, "--prompt", "Hello", "--dry-run") and len(planned) >= 3


def test_shared_keeps_the_cells_budgets_in_redis_and_status_says_so(
        ip: InteractiveShell, capsys: pytest.CaptureFixture[str], redis_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBFANOUT_REDIS_URL", redis_server.url)
    result = ip.run_cell_magic("fanout", FAST + " --shared --no-dashboard", "Shared hello")
    assert all(r.ok for r in result)
    fx = _magics(ip).fanout_for("sb.config", shared=True)
    assert fx.shared is not None and fx.shared.config.url == redis_server.url and fx.last_result is result
    import redis

    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:  # both of the cell's requests were reserved in the store
        assert len(client.keys("nbfanout:r:*")) >= 2
    finally:
        client.close()
    capsys.readouterr()
    ip.run_line_magic("fanout", "status")
    assert f"budgets shared through {redis_server.url}" in capsys.readouterr().out
