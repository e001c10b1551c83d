"""The server: loopback start/stop, /_sandbox routes, auth per wire, routing errors, run_server."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from nbfanout.sandbox import Sandbox, start_sandbox
from sandbox_helpers import chat_request


def test_start_on_a_free_port_and_stop() -> None:
    with start_sandbox("fast") as sb:
        assert sb.url.startswith("http://127.0.0.1:") and not sb.url.endswith(":0")
        assert sb.running and "fast" in repr(sb)
        assert httpx.get(f"{sb.url}/_sandbox/health").json() == {"ok": True, "scenario": "fast"}
    assert not sb.running
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{sb.url}/_sandbox/health", timeout=2)


def test_stats_and_reset_over_http(fast_sandbox: Sandbox) -> None:
    sb = fast_sandbox
    sb.reset()
    for _ in range(3):
        assert httpx.request(**chat_request(sb.config, "local/m1")).status_code == 200
    stats = sb.stats()
    assert stats["scenario"] == "fast"
    assert stats["totals"]["accepted"] == 3 and stats["models"]["local/m1"]["max_requests_60s"] == 3
    assert list(stats["keys"]) == ["local:…f005"]
    sb.reset()
    assert sb.stats()["totals"]["requests"] == 0


def test_scenario_route_masks_keys(storm_sandbox: Sandbox) -> None:
    r = httpx.get(f"{storm_sandbox.url}/_sandbox/scenario")
    text = r.text
    assert r.json()["providers"]["openai"]["keys"][0]["key"] == "…oa01"
    for p in storm_sandbox.scenario.providers:
        for k in p.keys:
            assert k.key not in text


def test_each_wire_checks_its_own_auth(fast_sandbox: Sandbox) -> None:
    sb = fast_sandbox
    gem = f"{sb.url}/gemini/v1beta/models/gemini-2.5-flash:generateContent"
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    assert httpx.post(gem, params={"key": "AIzaSbx-gemini-fast-f003"}, json=body).status_code == 200
    assert httpx.post(gem, headers={"x-goog-api-key": "AIzaSbx-gemini-fast-f003"}, json=body).status_code == 200
    missing = httpx.post(gem, json=body)
    assert missing.status_code == 403 and missing.json()["error"]["status"] == "PERMISSION_DENIED"

    msgs = f"{sb.url}/anthropic/v1/messages"
    req = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    no_version = httpx.post(msgs, headers={"x-api-key": "sk-ant-sbx-fast-f002"}, json=req)
    assert no_version.status_code == 400 and "anthropic-version" in no_version.json()["error"]["message"]
    ok = httpx.post(msgs, headers={"x-api-key": "sk-ant-sbx-fast-f002", "anthropic-version": "2023-06-01"}, json=req)
    assert ok.status_code == 200 and ok.json()["type"] == "message"
    no_max = httpx.post(msgs, headers={"x-api-key": "sk-ant-sbx-fast-f002", "anthropic-version": "2023-06-01"}, json={**req, "max_tokens": None})
    assert no_max.status_code == 400 and no_max.json()["error"]["type"] == "invalid_request_error"

    chat = f"{sb.url}/openai/v1/chat/completions"
    missing = httpx.post(chat, json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert missing.status_code == 401 and "didn't provide an API key" in missing.json()["error"]["message"]


def test_model_lists_and_routing_errors(fast_sandbox: Sandbox) -> None:
    sb = fast_sandbox
    openai = httpx.get(f"{sb.url}/openai/v1/models", headers={"Authorization": "Bearer sk-sbx-openai-fast-f001"}).json()
    assert openai["object"] == "list" and {m["id"] for m in openai["data"]} >= {"gpt-4o-mini", "whisper-1"}
    ant = httpx.get(f"{sb.url}/anthropic/v1/models", headers={"x-api-key": "sk-ant-sbx-fast-f002"}).json()
    assert ant["data"][0] == {**ant["data"][0], "type": "model", "id": "claude-haiku-4-5"}
    gem = httpx.get(f"{sb.url}/gemini/v1beta/models", params={"key": "AIzaSbx-gemini-fast-f003"}).json()
    assert gem["models"][0]["name"] == "models/gemini-2.5-flash"
    assert httpx.get(f"{sb.url}/openai/v1/models").status_code == 401

    unknown = httpx.post(f"{sb.url}/nosuch/v1/chat/completions", json={})
    assert unknown.status_code == 404 and "Unknown sandbox provider 'nosuch'" in unknown.json()["error"]["message"]
    wrong = httpx.post(f"{sb.url}/anthropic/v1/chat/completions", json={})
    assert wrong.status_code == 404 and "speaks the anthropic wire format" in wrong.json()["error"]["message"]
    bad_json = httpx.post(
        f"{sb.url}/openai/v1/chat/completions",
        headers={"Authorization": "Bearer sk-sbx-openai-fast-f001", "content-type": "application/json"},
        content=b"{not json",
    )
    assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "invalid_request_error"


def test_gemini_stream_without_alt_is_a_json_array(fast_sandbox: Sandbox) -> None:
    url = f"{fast_sandbox.url}/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    r = httpx.post(url, params={"key": "AIzaSbx-gemini-fast-f003"}, json={"contents": [{"parts": [{"text": "hi"}]}]})
    chunks = r.json()
    assert isinstance(chunks, list) and chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_anthropic_stream_event_sequence(fast_sandbox: Sandbox) -> None:
    req = chat_request(fast_sandbox.config, "anthropic/claude-haiku-4-5", stream=True)
    text = httpx.request(**req).text
    events = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert events[:3] == ["message_start", "content_block_start", "ping"]
    assert set(events[3:-3]) == {"content_block_delta"}
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_streams_release_concurrency_when_done(sandbox_factory: Callable[..., Sandbox]) -> None:
    sb = sandbox_factory("storm", time_scale=0.2)
    sb.reset()
    name = "openrouter/meta-llama/llama-3.3-70b-instruct:free"
    for _ in range(3):
        r = httpx.request(**chat_request(sb.config, name, stream=True), timeout=10)
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
        assert r.text.startswith(": OPENROUTER PROCESSING")
    m = sb.stats()["models"][name]
    assert m["accepted"] == 3 and m["in_flight"] == 0 and m["peak_concurrency"] == 1


def test_run_server_prints_url_and_writes_config(tmp_path: Path) -> None:
    cfg = tmp_path / "nbfanout.toml"
    code = (
        "from nbfanout.sandbox import run_server; "
        f"run_server('127.0.0.1', 0, 'fast', write_config={str(cfg)!r}, time_scale=0)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("nbfanout sandbox: scenario 'fast' serving at http://127.0.0.1:")
        url = first.rsplit(" ", 1)[-1].strip()
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{url}/_sandbox/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        text = cfg.read_text()
        assert f'base_url = "{url}/openai/v1"' in text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
