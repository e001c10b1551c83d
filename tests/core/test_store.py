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
import warnings
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


SLOW_SLOTS = {
    "name": "shared_slow_slots",
    "seed": 13,
    "time_scale": 1.0,
    "providers": {"team": {
        "style": "openai", "keys": ["sk-sbx-team-slowslot-s0s1"],
        "models": {"m": {"limits": {"rpm": 1000, "concurrency": 2}, "latency": {"base_ms": 3000},
                         "output_tokens": [5, 5]}},
    }},
}


def _store_client(url: str):
    import redis

    return redis.Redis.from_url(url, decode_responses=True)


def _shared_in_flight(client, namespace: str, budget: str) -> int:
    seconds, micros = client.time()
    return client.zcount(f"{namespace}:b:{budget}:lease", f"({seconds * 1000 + micros / 1000}", "+inf")


async def test_a_killed_process_frees_its_slots_within_the_lease(redis_server, redis_namespace):
    """SIGKILL a process holding both slots: its leases run out, and another process gets every answer."""
    from nbfanout import Fanout

    lease_s = 1.5
    with start_sandbox(SLOW_SLOTS) as sb:
        config = {**sb.config, "shared": {"url": redis_server.url, "namespace": redis_namespace, "lease_s": lease_s}}
        victim = subprocess.Popen([sys.executable, str(WORKER), json.dumps({
            "config": config, "prompts": 2, "model": "team/m", "tag": "victim"})],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        client = _store_client(redis_server.url)
        try:
            deadline = time.monotonic() + 30
            while _shared_in_flight(client, redis_namespace, "model:team/m") < 2:
                assert victim.poll() is None and time.monotonic() < deadline, victim.stderr.read() if victim.stderr else ""
                time.sleep(0.05)
            victim.kill()
            victim.wait()
            killed_at = time.monotonic()
            assert _shared_in_flight(client, redis_namespace, "model:team/m") == 2  # nobody released them
            while _shared_in_flight(client, redis_namespace, "model:team/m") > 0:
                assert time.monotonic() - killed_at < 3 * lease_s, "a dead process's leases never ran out"
                time.sleep(0.05)
        finally:
            if victim.poll() is None:
                victim.kill()
            client.close()
        async with Fanout(config, learn=False) as fx:
            batch = await fx.map([f"survivor {i}" for i in range(4)], models=["team/m"], max_tokens=5)
        assert [r.ok for r in batch.results] == [True] * 4


def _config_with_store(sb, url: str, namespace: str, **shared: Any) -> dict[str, Any]:
    return {**sb.config, "shared": {"url": url, "namespace": namespace, **shared}}


PACED = {
    "name": "shared_paced",
    "seed": 14,
    "time_scale": 1.0,
    "providers": {"team": {
        "style": "openai", "keys": ["sk-sbx-team-paced-p0p1"],
        "models": {"m": {"limits": {"rpm": 1000, "concurrency": 2}, "latency": {"base_ms": 250}, "output_tokens": [5, 5]}},
    }},
}


@pytest.mark.parametrize("on_unavailable", ["fail", "local"])
async def test_redis_stopped_mid_run_loses_no_answer(redis_namespace, on_unavailable):
    """The store dies after some answers: "fail" fails the rest naming the URL and the fix; "local"
    warns once and finishes them with budgets in process. Either way every answer received is kept."""
    import asyncio

    from nbfanout import Fanout
    from nbfanout.sandbox.redis_server import RedisServer

    from tests.conftest import require_redis

    require_redis()
    with RedisServer() as server, start_sandbox(PACED) as sb:
        config = _config_with_store(sb, server.url, redis_namespace, on_unavailable=on_unavailable)
        async with Fanout(config, learn=False) as fx:
            run = asyncio.ensure_future(fx.map([f"q{i}" for i in range(12)], models=["team/m"], max_tokens=5))
            while sb.stats()["totals"]["accepted"] < 3:
                await asyncio.sleep(0.02)
            server.stop()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                batch = await run
        answered = [r for r in batch.results if r.ok]
        assert len(batch.results) == 12 and len(answered) >= 3
        assert len(answered) == sb.stats()["totals"]["accepted"]  # every answer the provider gave is in the result
        fallbacks = [w for w in caught if "shared budget store" in str(w.message)]
        if on_unavailable == "local":
            assert len(answered) == 12
            assert len(fallbacks) == 1 and server.url in str(fallbacks[0].message)
        else:
            failed = [r for r in batch.results if not r.ok]
            assert failed and {r.error.category.value for r in failed} == {"network"}
            assert all(server.url in r.error.message and "on_unavailable" in r.error.message for r in failed)


async def test_an_unreachable_store_fails_the_run_at_once_naming_the_url_without_its_password():
    from nbfanout import Fanout
    from nbfanout.core.store import SharedUnavailable
    from nbfanout.sandbox.redis_server import _free_port

    port = _free_port()
    url = f"redis://team:hunter2-s3cret@127.0.0.1:{port}/0"
    with start_sandbox(PACED) as sb:
        fx = Fanout({**sb.config, "shared": {"url": url}}, learn=False)
        with pytest.raises(SharedUnavailable) as err:
            await fx.map(["q"], models=["team/m"])
        assert sb.stats()["totals"]["requests"] == 0
    text = str(err.value)
    assert f"127.0.0.1:{port}" in text and "make redis" in text and 'on_unavailable = "local"' in text
    assert "hunter2" not in text and "hunter2" not in repr(fx.shared) and "hunter2" not in repr(fx.config.shared)


HIDDEN = {
    "name": "shared_hidden",
    "seed": 15,
    "time_scale": 1.0,
    "providers": {"team": {
        "style": "openai", "keys": ["sk-sbx-team-hidden-h0h1"],
        "limits": {"limiter": "sliding_window"},
        "models": {"m": {"limits": {"rpm": 4, "hidden": ["rpm"]}, "latency": {"base_ms": 30}, "output_tokens": [5, 5]}},
    }},
}


async def test_what_one_process_learns_every_process_knows_at_once(redis_server, redis_namespace):
    """One process learns a hidden limit from headers and fills its window; another, sharing the store,
    knows both before its first request: it waits (and gives up at max_wait_s) instead of being refused."""
    from nbfanout import Fanout

    with start_sandbox(HIDDEN) as sb:
        config = _config_with_store(sb, redis_server.url, redis_namespace)
        config["defaults"] = {**config.get("defaults", {}), "max_wait_s": 2.0}
        async with Fanout(config, learn=False) as first:
            filled = await first.map([f"q{i}" for i in range(4)], models=["team/m"], max_tokens=5)
        assert all(r.ok for r in filled.results)
        sent = sb.stats()["totals"]["requests"]
        async with Fanout(config, learn=False) as second:
            budget = second.router.model_key_budget(second.config.model("team/m"), second.config.providers["team"].keys[0])
            assert budget.rpm is None  # nothing known in this process before it asks
            late = await second.run("one more", models=["team/m"], max_tokens=5)
        assert budget.rpm == 4  # the limit the first process learned, from the store
        assert not late.results[0].ok and "rpm 4" in late.results[0].error.message
        assert sb.stats()["totals"]["requests"] == sent  # never sent: the provider refused nothing
        assert sb.stats()["totals"]["rejected_total"] == 0


async def test_every_key_the_store_writes_expires(shared_key_sandbox, redis_server, redis_namespace):
    from nbfanout import Fanout

    sb = shared_key_sandbox
    sb.reset()
    async with Fanout(_config_with_store(sb, redis_server.url, redis_namespace), learn=False) as fx:
        await fx.map([f"q{i}" for i in range(5)], models=["team/m"], max_tokens=5)
    client = _store_client(redis_server.url)
    try:
        keys = client.keys(f"{redis_namespace}:*")
        assert keys
        assert {k: client.pttl(k) for k in keys if client.pttl(k) < 0} == {}
    finally:
        client.close()


SLOW_OPEN = {
    "name": "shared_slow_open",
    "seed": 16,
    "time_scale": 1.0,
    "providers": {"team": {
        "style": "openai", "keys": ["sk-sbx-team-slowopen-o0o1"],
        "models": {"m": {"limits": {"rpm": 1000, "concurrency": 8}, "latency": {"base_ms": 2500},
                         "output_tokens": [5, 5]}},
    }},
}


async def test_each_process_sees_every_process_use_of_a_budget_and_how_many_they_are(redis_server, redis_namespace):
    """Two processes (two Fanouts, each its own store connection) run at once: each one's utilization
    counts both runs' requests, says two processes use the budget, and the text view says so."""
    import asyncio

    from nbfanout import Fanout
    from nbfanout.render import budgets_html, budgets_text

    with start_sandbox(SLOW_OPEN) as sb:
        config = _config_with_store(sb, redis_server.url, redis_namespace)
        async with Fanout(config, learn=False) as a, Fanout(config, learn=False) as b:
            runs = [asyncio.ensure_future(a.map([f"a{i}" for i in range(3)], models=["team/m"], max_tokens=5)),
                    asyncio.ensure_future(b.map([f"b{i}" for i in range(2)], models=["team/m"], max_tokens=5))]
            await asyncio.sleep(1.5)  # all five in flight; each store has renewed (and read the joint use) since
            seen = {s.name: s for s in a.budgets.statistics()}["team/m"]
            text, html = budgets_text(a.budgets.statistics()), budgets_html(a.budgets.statistics())
            await asyncio.gather(*runs)
    assert (seen.in_flight, seen.processes, seen.rpm_used) == (5, 2, 5)
    assert "in flight 5/8" in text and "shared by 2 processes" in text
    assert "shared · 2 processes" in html


def test_the_cli_says_when_its_budgets_were_shared(shared_key_sandbox, redis_server, redis_namespace, tmp_path):
    sb = shared_key_sandbox
    path = tmp_path / "nbfanout.toml"
    sb.write_config(path)
    with path.open("a", encoding="utf-8") as f:
        f.write(f'\n[shared]\nnamespace = "{redis_namespace}"\n')
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "NBFANOUT_STATE": os.devnull,
           "NBFANOUT_REDIS_URL": redis_server.url}
    out = subprocess.run([sys.executable, "-m", "nbfanout", "run", "--config", str(path), "--models", "team/m",
                          "--prompt", "hi", "--max-tokens", "5"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"budgets shared through {redis_server.url}" in out.stderr
    local = subprocess.run([sys.executable, "-m", "nbfanout", "run", "--config", str(path), "--models", "team/m",
                            "--prompt", "hi", "--max-tokens", "5"], capture_output=True, text=True,
                           env={**env, "NBFANOUT_REDIS_URL": ""}, timeout=120)
    assert local.returncode == 2 and "shared.url" in local.stderr and "NBFANOUT_REDIS_URL" in local.stderr


TWO_KEYS = {
    "name": "shared_two_keys",
    "seed": 17,
    "time_scale": 1.0,
    "providers": {"team": {
        "style": "openai",
        "keys": [{"key": "sk-sbx-team-revoked-r0r1", "invalid": True}, "sk-sbx-team-good-g0g1"],
        "models": {"m": {"limits": {"rpm": 1000}, "latency": {"base_ms": 20}, "output_tokens": [5, 5]}},
    }},
}


async def test_a_key_one_process_finds_rejected_is_out_of_use_for_every_process(redis_server, redis_namespace):
    """The first process meets the revoked key's 401 and moves on to the good key; the second never sends with it."""
    from nbfanout import Fanout

    with start_sandbox(TWO_KEYS) as sb:
        config = _config_with_store(sb, redis_server.url, redis_namespace)
        async with Fanout(config, learn=False) as first:
            found = await first.map([f"first {i}" for i in range(4)], models=["team/m"], max_tokens=5)
        assert all(r.ok for r in found.results)
        revoked = sb.stats()["keys"]["team:…r0r1"]["requests"]
        assert revoked >= 1  # the first process did meet it
        async with Fanout(config, learn=False) as second:
            later = await second.map([f"second {i}" for i in range(6)], models=["team/m"], max_tokens=5)
            key_budget = second.router.key_budget(second.config.providers["team"], second.config.providers["team"].keys[0])
        assert all(r.ok for r in later.results)
        assert all(a.outcome == "ok" for r in later.results for a in r.attempts)  # no 401 in the second process
        assert sb.stats()["keys"]["team:…r0r1"]["requests"] == revoked
        assert key_budget.disabled is not None and key_budget.disabled[0].value == "auth"


@pytest.mark.parametrize(("limiter", "rpm", "burst"), [
    ("sliding_window", 3, 3), ("fixed_window", 3, 3), ("token_bucket", 3, 3), ("per_second", 120, 2)])
async def test_the_store_admits_each_shape_exactly_as_its_definition(redis_server, redis_namespace, limiter, rpm, burst):
    """Two processes' stores on one budget: together they get the shape's burst and no more, and the
    wait the script names is the one core/shapes.py computes for the same sequence."""
    from nbfanout.core.limits import BudgetSet
    from nbfanout.core.shapes import make_shape
    from nbfanout.core.store import SharedConfig, SharedStore

    stores = [SharedStore(SharedConfig(redis_server.url, namespace=redis_namespace)) for _ in range(2)]
    for s in stores:
        await s.open()
    try:
        budgets = [BudgetSet(shared=s).budget("model", "team/m", limiter=limiter, rpm=rpm) for s in stores]
        verdicts = [await stores[i % 2].reserve(f"r{i}", [budgets[i % 2]], 0.0, 0.0) for i in range(burst + 1)]
    finally:
        for s in stores:
            await s.close()
    assert [v.admitted for v in verdicts] == [True] * burst + [False]
    reference = make_shape(limiter, "rpm", rpm, 0.0)
    for _ in range(burst):
        reference.take(1.0, 0.0)
    expected = reference.wait(1.0, 0.0)
    refused = verdicts[-1]
    assert refused.why == "rate" and refused.wait_s is not None
    if limiter == "fixed_window":  # until the minute's edge on the server's clock: within the window's span
        assert 0 < refused.wait_s <= 60.0
    else:
        assert refused.wait_s == pytest.approx(expected, abs=0.25), (refused.wait_s, expected)


@pytest.mark.parametrize("limiter", ["sliding_window", "fixed_window"])
async def test_headers_read_while_later_requests_arrive_never_count_one_twice(redis_server, redis_namespace, limiter):
    """Three requests admitted under rpm 4; the second's answer says 1 remains (the third arrived while it
    was being answered) with the third sent after it. The store's count rises to the provider's 3 at most,
    not to 3 plus the third again: the fourth request is admitted (the flake CI met in the test above,
    where the first process's fourth request was held for a minute), the fifth is not. Headers showing
    use the store never saw still raise its count."""
    import asyncio

    from nbfanout.core.headers import RateSnapshot
    from nbfanout.core.limits import BudgetSet
    from nbfanout.core.store import SharedConfig, SharedStore

    if limiter == "fixed_window":  # keep clear of the minute's edge on the server's clock (counts carry over it)
        client = _store_client(redis_server.url)
        try:
            seconds, micros = client.time()
        finally:
            client.close()
        into = (seconds % 60) + micros / 1e6
        if into > 55.0:
            await asyncio.sleep(61.5 - into)
    stores = [SharedStore(SharedConfig(redis_server.url, namespace=redis_namespace)) for _ in range(2)]
    for s in stores:
        await s.open()

    async def posted(store: SharedStore) -> None:  # what the budget told the store has reached it
        link = store._link()
        assert link is not None
        while link.tasks:
            await asyncio.gather(*list(link.tasks))

    try:
        first, second = (BudgetSet(shared=s).budget("model", "team/m", limiter=limiter, rpm=4) for s in stores)
        admitted = [(await stores[0].reserve(f"r{i}", [first], 0.0, 0.0)).admitted for i in range(3)]
        first.observe(RateSnapshot(limit_requests=4, remaining_requests=1), {"rpm": 1.0})
        await posted(stores[0])
        fourth = await stores[1].reserve("r3", [second], 0.0, 0.0)
        fifth = await stores[1].reserve("r4", [second], 0.0, 0.0)
        # another client used the whole minute: the store learns of use it never saw
        other = BudgetSet(shared=stores[0]).budget("model", "team/other", limiter=limiter, rpm=4)
        assert (await stores[0].reserve("o0", [other], 0.0, 0.0)).admitted
        other.observe(RateSnapshot(limit_requests=4, remaining_requests=0), {"rpm": 0.0})
        await posted(stores[0])
        after_other = await stores[1].reserve("o1", [BudgetSet(shared=stores[1]).budget(
            "model", "team/other", limiter=limiter, rpm=4)], 0.0, 0.0)
    finally:
        for s in stores:
            await s.close()
    assert admitted == [True] * 3
    assert fourth.admitted, fourth
    assert not fifth.admitted and fifth.why == "rate" and fifth.text == "rpm 4"
    assert not after_other.admitted and after_other.why == "rate"


async def test_a_release_whose_message_overtakes_the_refusal_it_follows_is_not_lost(redis_server, redis_namespace):
    """One slot, held by process A. B asks; Redis refuses (1/1 in flight); A's release reaches Redis
    next and its message reaches B before B has read the refusal. B must ask again at once, not hold
    the budget until a release that already happened (before the fix: until A's 30 s lease ran out,
    which stalled the Redis-stopped tests above for 30 s in about half of their runs)."""
    import asyncio

    from nbfanout.core.limits import BudgetSet, Option
    from nbfanout.core.store import SharedConfig, SharedStore

    stores = [SharedStore(SharedConfig(redis_server.url, namespace=redis_namespace, lease_s=30.0)) for _ in range(2)]
    for s in stores:
        await s.open()
    try:
        budget_a = BudgetSet(shared=stores[0]).budget("model", "team/m", concurrency=1)
        budget_b_set = BudgetSet(shared=stores[1])
        budget_b = budget_b_set.budget("model", "team/m", concurrency=1)
        assert (await stores[0].reserve("held", [budget_a], 0.0, 0.0)).admitted
        link = stores[1]._link()
        assert link is not None
        plain_call, order = link.call, []

        async def refused_then_released(*args):
            reply = await plain_call(*args)
            if args[0] == "reserve" and not order:
                order.append(reply.get("why"))
                seen = dict(stores[1]._releases)
                stores[0].release("held")  # reaches Redis after the refusal, its message before the reply is read
                while stores[1]._releases == seen:
                    await asyncio.sleep(0.005)
            return reply

        link.call = refused_then_released
        reservation = await asyncio.wait_for(budget_b_set.acquire([Option((budget_b,), 0.0)]), timeout=5.0)
        reservation.release()
    finally:
        for s in stores:
            await s.close()
    assert order == ["concurrency"]  # the first answer was the refusal the release overtook
    assert reservation.store is stores[1]  # then admitted by the store, well before the lease ran out
