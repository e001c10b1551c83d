"""The nbfanout command against a real sandbox over loopback, as a user would run it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

MODELS = "openai/gpt-4.1,gemini/gemini-2.5-flash,openrouter/meta-llama/llama-4-scout"


def nbfanout(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "NBFANOUT_STATE": os.devnull}
    return subprocess.run([sys.executable, "-m", "nbfanout", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=120)


@pytest.fixture(scope="module")
def config_file(sandbox, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "nbfanout.toml"
    sandbox.write_config(path)
    return path


def test_run_json_reports_every_model_with_status_tokens_and_attempts(config_file):
    out = nbfanout("run", "--config", str(config_file), "--models", MODELS, "--prompt", "Say hi", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [m["requested"] for m in doc["models"]] == MODELS.split(",")
    for m in doc["models"]:
        assert m["status"] == "ok" and m["output_tokens"] > 0 and m["attempts"] == 1 and m["error_category"] is None


def test_run_one_answers_once_from_the_first_model_that_can(config_file, tmp_path):
    # the first model has no key here: --one moves on to the next and answers once
    path = tmp_path / "nbfanout.toml"
    path.write_text(re.sub(r'api_key = \[?"sk-sbx-openai[^\n]*', 'api_key_env = "NO_SUCH_VAR"', config_file.read_text()))
    out = nbfanout("run", "--config", str(path), "--models", MODELS, "--prompt", "Say hi", "--one", "--json")
    assert out.returncode == 0, out.stderr
    (only,) = json.loads(out.stdout)["models"]
    assert only["requested"] == "openai/gpt-4.1" and only["model"] == "gemini/gemini-2.5-flash" and only["status"] == "ok"
    both = nbfanout("run", "--config", str(path), "--models", MODELS, "--prompt", "hi", "--one", "--synthesize", "openai/gpt-4.1")
    assert both.returncode == 2 and "drop --synthesize or --one" in both.stderr


def test_dry_run_sends_nothing_and_names_missing_keys(config_file, sandbox, tmp_path):
    without_gemini_key = re.sub(r'api_key = "AIza[^"]*"', 'api_key_env = "NO_SUCH_VAR"', config_file.read_text())
    path = tmp_path / "nbfanout.toml"
    path.write_text(without_gemini_key)
    sandbox.reset()
    out = nbfanout("run", "--config", str(path), "--models", MODELS, "--prompt", "hi", "--dry-run")
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()}
    assert "NO KEY (set NO_SUCH_VAR" in lines["gemini/gemini-2.5-flash"]
    assert "key …" in lines["openai/gpt-4.1"]
    assert "dry run, nothing sent" in out.stdout and ("by the known limits" in out.stdout or "no known limit" in out.stdout)
    assert sandbox.stats()["totals"]["requests"] == 0


def test_a_model_without_a_key_fails_alone_and_partial_success_sets_the_exit_status(config_file, tmp_path):
    path = tmp_path / "nbfanout.toml"
    path.write_text(re.sub(r'api_key = "AIza[^"]*"', 'api_key_env = "NO_SUCH_VAR"', config_file.read_text()))
    args = ("run", "--config", str(path), "--models", MODELS, "--prompt", "hi", "--json")
    strict = nbfanout(*args)
    assert strict.returncode == 1
    doc = {m["requested"]: m for m in json.loads(strict.stdout)["models"]}
    assert doc["gemini/gemini-2.5-flash"]["error_category"] == "missing_key"
    assert "NO_SUCH_VAR" in doc["gemini/gemini-2.5-flash"]["provider_message"]
    assert doc["openai/gpt-4.1"]["status"] == "ok"
    assert nbfanout(*args, "--partial-success-ok").returncode == 0


def test_unknown_model_fails_before_anything_is_sent(config_file):
    out = nbfanout("run", "--config", str(config_file), "--models", MODELS + ",openai/gpt-4.1-nope", "--prompt", "x")
    assert out.returncode == 2 and "openai/gpt-4.1" in out.stderr and "nbfanout models" in out.stderr


def test_models_lists_usability_and_the_variable_to_set():
    out = nbfanout("models", "--json", env={"OPENAI_API_KEY": "sk-test-abcd1234"})
    rows = {r["model"]: r for r in json.loads(out.stdout)}
    assert rows["openai/gpt-4.1"]["usable"] and "…1234" in rows["openai/gpt-4.1"]["why"]
    assert "sk-test-abcd1234" not in out.stdout
    assert not rows["gemini/gemini-2.5-flash"]["usable"] if "gemini/gemini-2.5-flash" in rows else True
    anthropic = next(r for name, r in rows.items() if name.startswith("anthropic/"))
    assert not anthropic["usable"] and "ANTHROPIC_API_KEY" in anthropic["why"]


def test_doctor_validates_every_key_with_a_cheap_call_and_names_the_bad_ones(storm_sandbox, tmp_path):
    path = storm_sandbox.write_config(tmp_path / "nbfanout.toml")
    out = nbfanout("doctor", "--config", str(path))
    assert out.returncode == 1  # storm has revoked and exhausted keys
    lines = out.stdout.splitlines()
    revoked = [line for line in lines if "…oa03" in line]
    assert revoked and "✗" in revoked[0] and "auth" in revoked[0]
    good = [line for line in lines if "…oa01" in line]
    assert good and "✓" in good[0] and "valid" in good[0]
    assert "sk-sbx-storm-openai-revoked" not in out.stdout  # only the last four characters are shown
    # seen: a key whose quota was gone was reported valid, because listing models still works
    broke = [line for line in lines if "…oa04" in line]
    assert broke and "✗" in broke[0] and "quota_exhausted" in broke[0], out.stdout
    listed_only = nbfanout("doctor", "--config", str(path), "--no-request").stdout
    assert "✓" in next(line for line in listed_only.splitlines() if "…oa04" in line)  # what a listing alone says


def test_synthesize_without_any_answer_still_prints_every_result(config_file, tmp_path):
    path = tmp_path / "nbfanout.toml"
    path.write_text(re.sub(r'api_key = "AIza[^"]*"', 'api_key_env = "NO_SUCH_VAR"', config_file.read_text()))
    out = nbfanout("run", "--config", str(path), "--models", "gemini/gemini-2.5-flash", "--prompt", "hi",
                   "--synthesize", "gemini/gemini-2.5-pro", "--json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["models"][0]["error_category"] == "missing_key"
    assert "nothing was synthesized" in out.stderr


def test_limits_and_cooldowns_list_what_is_saved_and_clear_it(tmp_path):
    from nbfanout.core.state import LearnedLimits

    path = tmp_path / "state.json"
    state = LearnedLimits(path)
    state.record("key:openai …k1a7", "rpm", 3)
    state.record("model-key:gemini/gemini-2.5-pro …g3c9", "tpm", 250000)
    state.record_cooldown("model-key:openai/gpt-4.1 …k1a7", 600, "rate limited: retry in 600.0s")
    state.save()
    env = {"NBFANOUT_STATE": str(path)}
    limits = nbfanout("limits", env=env)
    assert limits.returncode == 0, limits.stderr
    assert re.search(r"key:openai …k1a7\s+rpm\s+3\s+learned \d+ s ago, expires in 2[34]\.\d h", limits.stdout), limits.stdout
    assert "250,000" in limits.stdout
    cool = json.loads(nbfanout("cooldowns", "--json", env=env).stdout)
    assert [c["scope"] for c in cool] == ["model-key:openai/gpt-4.1 …k1a7"] and 590 < cool[0]["seconds_left"] <= 600
    assert "cleared 1 cooldown(s)" in nbfanout("cooldowns", "--clear", env=env).stdout
    assert json.loads(nbfanout("cooldowns", "--json", env=env).stdout) == []
    assert "forgot 1 learned limit(s) matching 'gemini'" in nbfanout("limits", "--forget", "gemini", env=env).stdout
    assert [e["scope"] for e in json.loads(nbfanout("limits", "--json", env=env).stdout)] == ["key:openai …k1a7"]


def test_map_sends_a_prompts_file_to_many_models_and_writes_ordered_jsonl(config_file, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("First question?\n\nSecond question?\nThird question?\n")
    out = nbfanout("map", "--config", str(config_file), "--prompts", str(prompts),
                   "--models", "openai/gpt-4.1,gemini/gemini-2.5-flash", "--max-tokens", "40")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["prompt"], r["requested"]) for r in rows] == [
        (p, m) for p in ("First question?", "Second question?", "Third question?")
        for m in ("openai/gpt-4.1", "gemini/gemini-2.5-flash")]
    assert all(r["status"] == "ok" for r in rows)
    assert "openai/gpt-4.1: Completed 3/3" in out.stderr and "gemini/gemini-2.5-flash: Completed 3/3" in out.stderr
    assert re.search(r"openai/gpt-4\.1: Completed 3/3, \d+\.\d/s", out.stderr), out.stderr  # with its pace
    assert "6/6 succeeded" in out.stderr


def test_map_reads_csv_and_jsonl_and_names_a_missing_column(config_file, tmp_path):
    table = tmp_path / "evals.csv"
    table.write_text('id,question\n1,"Is 7 prime, or not?"\n2,Name a prime above 10.\n')
    wrong = nbfanout("map", "--config", str(config_file), "--prompts", str(table), "--models", "openai/gpt-4.1")
    assert wrong.returncode == 2 and "no column 'prompt'; its columns are id, question" in wrong.stderr
    out_dir = tmp_path / "out"
    ok = nbfanout("map", "--config", str(config_file), "--prompts", str(table), "--column", "question",
                  "--models", "openai/gpt-4.1", "--out", str(out_dir), "--max-tokens", "40")
    assert ok.returncode == 0, ok.stderr
    rows = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Is 7 prime, or not?", "Name a prime above 10."]
    lines = tmp_path / "p.jsonl"
    lines.write_text('"plain string"\n{"prompt": "an object"}\n{"text": 3}\n')
    bad = nbfanout("map", "--config", str(config_file), "--prompts", str(lines), "--models", "openai/gpt-4.1")
    assert bad.returncode == 2 and "line 3: expected a string or an object with a 'prompt' string" in bad.stderr


def test_models_shows_prices_limits_with_dates_and_capabilities_grouped_and_filtered(config_file):
    rows = json.loads(nbfanout("models", "--config", str(config_file), "--provider", "openai", "--json").stdout)
    assert rows and {r["provider"] for r in rows} == {"openai"}
    gpt = next(r for r in rows if r["model"] == "openai/gpt-4.1")
    assert gpt["input_price"] == 2.0 and gpt["output_price"] == 8.0 and gpt["max_output_tokens"] == 32768
    assert "tools" in gpt["capabilities"] and gpt["price_read_on"]
    text = nbfanout("models", "--config", str(config_file), "--capability", "reasoning").stdout
    headers = [line.split()[0] for line in text.splitlines() if not line.startswith(" ")]
    assert headers == sorted(set(headers)) and "openai" in headers  # one header per provider, in order
    assert "openai/o3" in text and "openai/gpt-4o-mini " not in text
    assert re.search(r"openai/o3\s+\$2 / \$8\s+ctx 200,000\s+out 100,000", text), text
    bad = nbfanout("models", "--config", str(config_file), "--pool", "nope")
    assert bad.returncode == 2 and "unknown pool 'nope'; known pools:" in bad.stderr


def test_run_stream_prints_one_models_answer_as_it_arrives(config_file):
    streamed = nbfanout("run", "--config", str(config_file), "--models", "openai/gpt-4.1", "--prompt", "Say hi",
                        "--stream", "--max-tokens", "60")
    assert streamed.returncode == 0, streamed.stderr
    as_json = nbfanout("run", "--config", str(config_file), "--models", "openai/gpt-4.1", "--prompt", "Say hi",
                       "--stream", "--max-tokens", "60", "--json")
    text = json.loads(as_json.stdout)["models"][0]["text"]
    assert text and streamed.stdout.startswith(text)  # the answer first, streamed, then the table
    assert "\nmodel " in streamed.stdout[len(text):]


def test_run_rerun_dir_asks_only_the_failed_models_again_and_merges(config_file, tmp_path):
    no_gemini = tmp_path / "nbfanout.toml"
    no_gemini.write_text(re.sub(r'api_key = "AIza[^"]*"', 'api_key_env = "NO_SUCH_VAR"', config_file.read_text()))
    out_dir = tmp_path / "run1"
    first = nbfanout("run", "--config", str(no_gemini), "--models", MODELS, "--prompt", "hi", "--out", str(out_dir))
    assert first.returncode == 1
    before = json.loads((out_dir / "results.json").read_text())
    assert [m["status"] for m in before["models"]] == ["ok", "failed", "ok"]
    # the terminal's summary is the one the notebook's text view prints, row for row
    from nbfanout import FanoutResult, render

    summary = render.result_text(FanoutResult.from_json((out_dir / "results.json").read_text()))
    assert summary in first.stdout and "missing_key" in summary
    again = nbfanout("run", "--config", str(config_file), "--rerun", str(out_dir), "--json")
    assert again.returncode == 0, again.stderr
    assert "rerunning 1 of 3 models: gemini/gemini-2.5-flash" in again.stderr
    doc = json.loads(again.stdout)
    assert [m["status"] for m in doc["models"]] == ["ok", "ok", "ok"]
    assert doc["models"][0]["text"] == before["models"][0]["text"]  # kept, not asked again
    assert json.loads((out_dir / "results.json").read_text())["succeeded"] == 3
    mixed = nbfanout("run", "--config", str(config_file), "--rerun", str(out_dir), "--models", "openai/gpt-4.1")
    assert mixed.returncode == 2 and "leave out --models" in mixed.stderr
    empty = nbfanout("run", "--config", str(config_file), "--rerun", str(tmp_path))
    assert empty.returncode == 2 and "no results.json in it" in empty.stderr


@pytest.mark.parametrize(("flag", "value", "expected"), [
    ("--timeout", "-1", "expected a number above 0, found -1"),
    ("--timeout", "0", "expected a number above 0, found 0"),
    ("--max-tokens", "0", "expected a number above 0, found 0"),
    ("--max-tokens", "-5", "expected a number above 0, found -5"),
    ("--concurrency", "many", "expected a whole number, found 'many'"),
])
def test_values_no_provider_takes_are_usage_errors_naming_the_flag(config_file, flag, value, expected):
    """Seen: --timeout -1 made six instant attempts; --timeout 0 and --max-tokens 0 silently meant "default"."""
    out = nbfanout("run", "--config", str(config_file), "--models", MODELS, "--prompt", "Say hi", flag, value)
    assert out.returncode == 2 and flag in out.stderr and expected in out.stderr, out.stderr


def test_files_that_are_missing_binary_or_directories_are_usage_errors_before_any_request(config_file, tmp_path):
    """Seen: a missing --prompt-file, --file or --prompts path, or --out naming a file, ended in a traceback
    (the last one after the run, with every answer lost)."""
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x89PNG\x00\x00\x01")
    taken = tmp_path / "taken.txt"
    taken.write_text("x", encoding="utf-8")
    base = ["run", "--config", str(config_file), "--models", MODELS]
    cases = [
        (base + ["--prompt-file", str(tmp_path / "nope.txt")], "--prompt-file", "no such file"),
        (base + ["--prompt", "hi", "--file", str(tmp_path)], "--file", "is a directory"),
        (base + ["--prompt", "hi", "--file", str(binary)], "--file", "looks binary"),
        (base + ["--prompt", "hi", "--out", str(taken)], "--out", "exists and is not a directory"),
        (["map", "--config", str(config_file), "--models", MODELS, "--prompts", str(tmp_path / "none.jsonl")],
         "--prompts", "no such file"),
    ]
    for argv, flag, expected in cases:
        out = nbfanout(*argv)
        assert out.returncode == 2 and flag in out.stderr and expected in out.stderr, (argv, out.stderr)
        assert "Traceback" not in out.stderr


def test_the_sandbox_command_refuses_a_busy_port_a_missing_directory_and_a_public_address(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = nbfanout("sandbox", "--port", str(port))
        assert out.returncode == 2 and f"--port {port}: already in use" in out.stderr, out.stderr
    out = nbfanout("sandbox", "--port", "0", "--write-config", str(tmp_path / "missing" / "nbfanout.toml"))
    assert out.returncode == 2 and "its directory does not exist" in out.stderr, out.stderr
    out = nbfanout("sandbox", "--host", "0.0.0.0", "--port", "0")
    assert out.returncode == 2 and "--allow-remote" in out.stderr and "loopback only" in out.stderr, out.stderr


def test_a_key_echoed_back_by_a_server_never_reaches_the_cli_output(tmp_path):
    """The canary key a server puts in its 401 and 429 bodies, a header and its answer is not in the
    CLI's table, its --json, its stderr, nor the --out directory, beyond its last four characters."""
    import http.server
    import threading
    from urllib.parse import quote

    canary = "sk-clicanary-" + "Q7w" * 9 + "k3y9"
    calls = {"n": 0}

    class Echo(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_POST(self):  # noqa: N802 - the stdlib's name
            self.rfile.read(int(self.headers.get("content-length") or 0))
            key = self.headers.get("authorization", "").removeprefix("Bearer ")
            echo = f"{key} {key.upper()} {quote(key, safe='')}"
            calls["n"] += 1
            if "/denied/" in self.path:
                status, body = 401, {"error": {"message": f"Invalid key {echo}", "type": "invalid_request_error"}}
            elif calls["n"] == 1:
                status, body = 429, {"error": {"message": f"Slow down, {echo}", "type": "requests"}}
            else:
                status, body = 200, {"id": "c", "object": "chat.completion", "model": "m", "created": 0, "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": f"I saw {echo}"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("x-echo", key)
            if status == 429:
                self.send_header("retry-after", "0")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    config = tmp_path / "nbfanout.toml"
    config.write_text(f'''[defaults]
learn_limits = false
base_backoff_s = 0.01
[providers.echo]
kind = "openai"
base_url = "{base}/v1"
api_key_env = "ECHO_KEY"
models = ["m"]
[providers.denied]
kind = "openai"
base_url = "{base}/denied/v1"
api_key_env = "ECHO_KEY"
models = ["m"]
''', encoding="utf-8")
    try:
        env = {"ECHO_KEY": canary}
        runs = [nbfanout("run", "--config", str(config), "--models", "echo/m,denied/m", "--prompt", "hi", *extra, env=env)
                for extra in ([], ["--json"], ["--out", str(tmp_path / "out")])]
    finally:
        server.shutdown()
    leaks = [canary, canary.upper(), canary.lower(), quote(canary, safe=""), canary[:-4]]
    assert "k3y9" in runs[1].stdout  # the answer came, with the key's last four to tell it
    for out in runs:
        assert out.returncode == 1, out.stderr  # one model answered, one was refused
        for text in (out.stdout, out.stderr):
            assert not any(leak in text for leak in leaks), text[:400]
    for path in sorted((tmp_path / "out").iterdir()):
        assert not any(leak.encode() in path.read_bytes() for leak in leaks), path


@pytest.mark.looptime
async def test_a_quiet_run_says_what_is_still_open_every_heartbeat() -> None:
    """Seen: the text progress went silent for the whole of a long wait."""
    import asyncio
    import io

    from nbfanout.cli import TerminalProgress, with_heartbeat
    from nbfanout.core.events import ModelCompleted, RateLimited, RequestStarted

    out = io.StringIO()  # not a terminal: plain lines
    progress = TerminalProgress(["openai/a", "gemini/b"], out, clock=asyncio.get_running_loop().time)
    progress(RequestStarted(0.0, "r", request="0:openai/a", requested="openai/a", model="openai/a", attempt=1))
    progress(RateLimited(0.1, "r", request="0:gemini/b", requested="gemini/b", model="gemini/b", retry_after_s=25))
    progress(ModelCompleted(0.2, "r", request="0:openai/a", requested="openai/a", model="openai/a", latency_s=0.2))
    said = out.getvalue().count("\n")

    async def slow() -> str:
        await asyncio.sleep(25)
        return "answered"

    assert await with_heartbeat(slow(), progress, every_s=10) == "answered"
    beats = out.getvalue().splitlines()[said:]
    assert len(beats) == 2  # at 10 s and 20 s; none once the work is done
    assert all("[1/2]" in b and "gemini/b rate-limited" in b and "openai/a" not in b for b in beats)


@pytest.mark.looptime
async def test_cancelling_a_heartbeat_run_cancels_the_work() -> None:
    import asyncio

    from nbfanout.cli import with_heartbeat

    started = asyncio.Event()
    cancelled = False

    async def work() -> None:
        nonlocal cancelled
        started.set()
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            cancelled = True
            raise

    outer = asyncio.ensure_future(with_heartbeat(work(), None, every_s=1))
    await started.wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert cancelled
