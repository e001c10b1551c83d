"""Budgets shared through Redis (core/store.py): real processes, a real redis-server, the real sandbox.

Four processes share one key whose limits they all know. Each alone would keep them; together
they keep them only when the store counts for all of them at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nbfanout.sandbox import start_sandbox

WORKER = Path(__file__).with_name("shared_worker.py")

RPM, TPM, SLOTS = 120, 7200, 3
#: One key, one model: a token bucket of 120 requests (2 per second after the first 120), 7,200
#: tokens, 3 in flight. 4 processes x 40 prompts = 160 requests: the first 120 at once, the other
#: 40 at 2 per second, so the lower bound is 20 s plus one answer.
SHARED_KEY = {
    "name": "shared_key",
    "seed": 12,
    "time_scale": 1.0,
    "providers": {"team": {
        "style": "openai", "keys": ["sk-sbx-team-shared-k0k1"],
        "limits": {"limiter": "token_bucket"},
        "models": {"m": {"limits": {"rpm": RPM, "tpm": TPM, "concurrency": SLOTS},
                         "latency": {"base_ms": 40, "per_output_token_ms": 0.5, "jitter": 0.05},
                         "output_tokens": [5, 10]}},
    }},
}
PROCESSES, PROMPTS = 4, 40


def _run_workers(config: dict[str, Any], n: int = PROCESSES, prompts: int = PROMPTS) -> list[dict[str, Any]]:
    start_at = time.time() + 4.0  # every process imported and ready: they begin together
    procs = [subprocess.Popen([sys.executable, str(WORKER), json.dumps({
        "config": config, "prompts": prompts, "model": "team/m", "tag": f"p{i}", "start_at": start_at})],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        for i in range(n)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, stderr[-3000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


@pytest.fixture(scope="module")
def shared_key_sandbox():
    sb = start_sandbox(SHARED_KEY)
    yield sb
    sb.stop()


def test_four_processes_sharing_one_key_keep_its_limits_jointly(shared_key_sandbox, redis_server, redis_namespace):
    sb = shared_key_sandbox
    sb.reset()
    config = {**sb.config, "shared": {"url": redis_server.url, "namespace": redis_namespace}}
    runs = _run_workers(config)
    stats = sb.stats()
    assert [r["errors"] for r in runs] == [[]] * PROCESSES
    assert sum(r["answered"] for r in runs) == PROCESSES * PROMPTS
    assert stats["totals"]["rejected"] == {}, stats["totals"]["rejected"]
    assert sum(r["refusals"] for r in runs) == 0
    model = stats["models"]["team/m"]
    assert model["peak_concurrency"] <= SLOTS
    # a token bucket admits at most its capacity plus a minute's refill in any 60 s
    assert model["max_requests_60s"] <= 2 * RPM and model["max_tokens_60s"] <= 2 * TPM
    # jointly at least 90 % of the rate the limits allow: the bucket's burst, then 2 per second
    began = min(r["first_start"] for r in runs)
    ended = max(r["last_end"] for r in runs)
    lower_bound = (PROCESSES * PROMPTS - RPM) * 60 / RPM
    assert ended - began <= lower_bound / 0.9 + 1.0, (ended - began, lower_bound)


def test_without_the_store_the_same_four_processes_are_refused(shared_key_sandbox):
    sb = shared_key_sandbox
    sb.reset()
    runs = _run_workers(dict(sb.config))
    stats = sb.stats()
    assert stats["totals"]["rejected_total"] > 0  # each process kept the limits alone: together they did not
    assert sum(r["refusals"] for r in runs) > 0
