"""core/sync.py: Ctrl-C in a script's run_sync cancels every request, keeps what finished, and leaves
no task, thread or connection behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time


def test_ctrl_c_in_run_sync_keeps_what_finished_and_leaves_nothing_running(sandbox_factory, tmp_path):
    sandbox = sandbox_factory("seed15")  # fast models answer in ~1 s, the free R1 takes many seconds
    config = tmp_path / "nbfanout.toml"
    sandbox.write_config(config)
    script = textwrap.dedent(f'''
        import asyncio, json, sys, threading
        from nbfanout import Fanout
        from nbfanout.core.sync import background_loop
        fx = Fanout({str(config)!r}, learn=False)
        names = [m for m in fx.config.models if m.startswith(("openai/", "gemini/", "openrouter/"))][:15]
        print("ready", flush=True)
        try:
            fx.run_sync("Hello", names, max_tokens=200)
            print(json.dumps({{"interrupted": False}}))
        except KeyboardInterrupt:
            loop = background_loop()
            left = asyncio.run_coroutine_threadsafe(asyncio.sleep(0, result=[
                t.get_name() for t in asyncio.all_tasks(loop) if not t.done()]), loop).result(5)
            threads = [t.name for t in threading.enumerate() if t.is_alive() and not t.daemon and t is not threading.main_thread()]
            result = fx.last_result
            print(json.dumps({{"interrupted": True, "ok": sum(r.ok for r in result), "cancelled":
                sum(r.category == "cancelled" for r in result), "total": len(result.results),
                "tasks": [n for n in left if not n.startswith("Task-")], "threads": threads}}), flush=True)
    ''')
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(2.5)  # the fast models have answered; the slow ones are in flight
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    doc = json.loads(out.strip().splitlines()[-1])
    assert doc["interrupted"] and doc["total"] == 15, err
    assert doc["ok"] >= 1 and doc["cancelled"] >= 1 and doc["ok"] + doc["cancelled"] <= 15
    assert doc["tasks"] == [] and doc["threads"] == []
    deadline = time.monotonic() + 5
    while sandbox.stats()["totals"]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox.stats()["totals"]["in_flight"] == 0  # every cancelled request's connection was closed
