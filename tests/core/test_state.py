"""What persists between runs (core/state.py): learned limits that expire, cooldowns that carry over
and can be listed and cleared, and a recovery event; end to end against the sandbox in virtual time."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from nbfanout import Fanout
from nbfanout.core.state import LearnedLimits

LATENCY = {"base_ms": 200, "per_output_token_ms": 5.0, "jitter": 0.05}


class Wall:
    """A wall clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_learned_limit_expires_after_its_ttl_and_a_higher_one_replaces_it(tmp_path: Path) -> None:
    wall = Wall()
    state = LearnedLimits(tmp_path / "state.json", ttl_s=3600, wall=wall)
    state.record("key:openai …f001", "rpm", 1)
    state.save()
    again = LearnedLimits(tmp_path / "state.json", ttl_s=3600, wall=wall)
    (entry,) = again.entries()
    assert (entry.scope, entry.metric, entry.value, entry.expires_at) == ("key:openai …f001", "rpm", 1.0, wall.now + 3600)
    wall.now += 3599
    assert again.get("key:openai …f001") == {"rpm": 1.0}
    wall.now += 1
    assert again.get("key:openai …f001") == {} and again.entries() == []
    again.record("key:openai …f001", "rpm", 500)  # a header stating more is the new truth
    assert again.get("key:openai …f001") == {"rpm": 500.0}
    assert again.forget("openai") == 1 and again.entries() == []


def two_models(faults: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": "cool", "seed": 4, "providers": {"relay": {"style": "openai", "keys": ["sk-sbx-relay-cool-0001"],
            "models": {"a": {"latency": LATENCY, "output_tokens": [20, 40], "faults": faults},
                       "b": {"latency": LATENCY, "output_tokens": [20, 40]}}}}}


def sandbox(factory: Any, scenario: Any) -> Any:
    return factory(scenario, time_scale=None, clock=lambda: asyncio.get_running_loop().time())


def fanout(app: Any, state: Path, max_wait_s: float = 600) -> Fanout:
    config = app.config
    config["defaults"] = {**config.get("defaults", {}), "max_wait_s": max_wait_s, "learn_limits": True}
    return Fanout(config, transport=app.transport(), state_path=state)


@pytest.mark.looptime
async def test_a_cooldown_carries_over_to_the_next_run_and_can_be_listed_and_cleared(sandbox_app_factory, tmp_path):
    app = sandbox(sandbox_app_factory, two_models([{"kind": "rate_limit_burst", "first_n": 1, "retry_after_s": 900}]))
    state = tmp_path / "state.json"
    first = fanout(app, state, max_wait_s=5)
    assert not (await first.run("x", ["relay/a"], max_tokens=40))[0].ok
    # a new Fanout (a new kernel) on the same state: the wait the provider asked for still holds
    second = fanout(app, state, max_wait_s=5)
    (cooling,) = second.cooldowns()
    assert cooling.name.startswith("relay/a") or cooling.name.startswith("relay ")
    assert 890 < cooling.seconds_left <= 900 and "900" in cooling.reason
    skipped, answered = (await second.run("y", ["relay/a", "relay/b"], max_tokens=40)).results
    assert answered.ok and not skipped.ok and skipped.attempts == ()
    assert app.stats()["models"]["relay/a"]["requests"] == 1
    assert second.clear_cooldowns(model="relay/a") != [] and second.cooldowns() == ()
    assert (await second.run("z", ["relay/a"], max_tokens=40))[0].ok  # asked again at once, and it answers
    third = fanout(app, state, max_wait_s=5)
    assert third.cooldowns() == ()  # cleared for later runs too


@pytest.mark.looptime
async def test_a_new_kernel_can_clear_a_saved_cooldown_before_it_has_used_that_model(sandbox_app_factory, tmp_path):
    app = sandbox(sandbox_app_factory, two_models([{"kind": "rate_limit_burst", "first_n": 1, "retry_after_s": 900}]))
    state = tmp_path / "state.json"
    assert not (await fanout(app, state, max_wait_s=5).run("x", ["relay/a"], max_tokens=40))[0].ok
    fresh = fanout(app, state, max_wait_s=5)
    assert len(fresh.cooldowns()) == 1
    cleared = fresh.clear_cooldowns(model="relay/a")
    assert len(cleared) == 1 and cleared[0].split(" ", 2)[1] == "relay/a" and fresh.cooldowns() == ()
    assert fanout(app, state).cooldowns() == ()


@pytest.mark.looptime
async def test_a_model_that_comes_back_from_a_cooldown_says_so(sandbox_app_factory, tmp_path):
    app = sandbox(sandbox_app_factory, two_models([{"kind": "rate_limit_burst", "first_n": 1, "retry_after_s": 2}]))
    fx = fanout(app, tmp_path / "state.json")
    events: list[Any] = []
    fx.subscribe(lambda e: events.append(e) if e.kind == "model_recovered" else None)
    result = (await fx.run("x", ["relay/a"], max_tokens=40))[0]
    assert result.ok and [a.outcome for a in result.attempts] == ["rate_limit", "ok"]
    (recovered,) = events
    assert recovered.model == "relay/a" and recovered.cooled_for_s == pytest.approx(2.0, abs=0.1)


@pytest.mark.looptime
async def test_one_keys_own_1_rpm_limit_slows_that_key_only_and_is_learned_for_it_alone(sandbox_app_factory, tmp_path):
    """Seen: one key's 1-RPM limit was learned as the model's: 6 requests took 120 s instead of under a second."""
    scenario = {"name": "twokeys", "seed": 5, "providers": {"relay": {"style": "openai",
                "keys": [{"key": "sk-sbx-relay-slow-s001", "limits": {"rpm": 1}}, "sk-sbx-relay-fast-f002"],
                "models": {"m": {"latency": LATENCY, "output_tokens": [20, 40]}}}}}
    app = sandbox(sandbox_app_factory, scenario)
    fx = fanout(app, tmp_path / "state.json")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    batch = await fx.map([f"p{i}" for i in range(6)], ["relay/m"], max_tokens=40)
    assert all(r.ok for r in batch.results)
    assert loop.time() - t0 < 3.0
    learned = {(e.scope, e.metric): e.value for e in fx.learned.entries()}
    # the slow key's (or the model on that key, as OpenAI's headers describe it), never the model's or the other key's
    assert list(learned.values()) == [1.0] and all(scope.endswith("…s001") and metric == "rpm"
                                                   for scope, metric in learned), learned
    limits = {(s.scope, s.name): s.rpm_limit for s in fx.statistics()}
    assert limits[("model", "relay/m")] is None and limits[("key", "relay …f002")] is None


def test_two_processes_saving_state_and_caching_at_once_lose_nothing(tmp_path):
    """Learned limits, cooldowns and cached answers written by two kernels at the same time all survive."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent('''
        import sys
        from pathlib import Path
        from nbfanout.core.cache import ResponseCache
        from nbfanout.core.headers import RateSnapshot
        from nbfanout.core.state import LearnedLimits
        from nbfanout.providers.base import ChatRequest, ChatResponse, Message, Usage

        who, state, db = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
        cache = ResponseCache(db)
        for i in range(150):
            learned = LearnedLimits(state)  # as each new kernel would: read, learn, save
            learned.record(f"key:{who} {i}", "rpm", float(i + 1))
            learned.record_cooldown(f"model-key:{who} {i}", 3600.0, "asked")
            learned.save()
            request = ChatRequest(model="m", messages=(Message("user", f"{who} {i}"),))
            cache.put("p/m", request, ChatResponse(text=f"answer {who} {i}", usage=Usage(1, 1), finish_reason="stop",
                                                     model="m", status=200, rate=RateSnapshot()))
    ''')
    state, db = tmp_path / "state.json", tmp_path / "cache.sqlite"
    procs = [subprocess.Popen([sys.executable, "-c", script, who, str(state), str(db)], stderr=subprocess.PIPE, text=True)
             for who in ("a", "b")]
    outcomes = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outcomes]
    from nbfanout.core.cache import ResponseCache
    from nbfanout.core.state import LearnedLimits

    learned = LearnedLimits(state)
    assert len(learned.entries()) == 300 and len(learned.cooldowns()) == 300
    import sqlite3

    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 300
    assert ResponseCache(db).path == db
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
