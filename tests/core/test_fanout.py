"""Fanout end to end against the sandbox: in-process in virtual time (looptime), and over real HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nbfanout import Fanout
from nbfanout.core.errors import UnknownModelError, UsageError
from nbfanout.core.events import Event, RequestEvent

LIMIT_REASONS = {"rpm", "tpm", "rpd", "concurrency"}
SEED15 = [
    "openai/gpt-4.1", "openai/o4-mini", "openai/o3", "gemini/gemini-2.5-pro", "gemini/gemini-2.5-flash",
    *(f"openrouter/{m}" for m in (
        "deepseek/deepseek-chat-v3-0324", "deepseek/deepseek-r1-0528", "deepseek/deepseek-chat-v3-0324:free",
        "deepseek/deepseek-r1-0528:free", "meta-llama/llama-3.3-70b-instruct", "meta-llama/llama-4-maverick",
        "meta-llama/llama-4-scout", "x-ai/grok-3-mini-beta", "x-ai/grok-3-beta", "google/gemma-3-27b-it")),
]


def virtual_sandbox(factory: Any, scenario: Any = "seed15", time_scale: float | None = None) -> Any:
    """An in-process sandbox whose clock is the running loop's (virtual under looptime)."""
    return factory(scenario, time_scale=time_scale, clock=lambda: asyncio.get_running_loop().time())


def fanout_for(app: Any, timeout: float | None = None, **kwargs: Any) -> Fanout:
    config = app.config
    if timeout is not None:
        config.setdefault("defaults", {})["timeout_s"] = timeout
    return Fanout(config, transport=app.transport(), learn=False, **kwargs)


def limit_refusals(stats: dict[str, Any]) -> dict[str, int]:
    rejected = stats["totals"]["rejected"]
    return {k: v for k, v in rejected.items() if k in LIMIT_REASONS}


@pytest.mark.looptime
@pytest.mark.parametrize("run", range(20))
async def test_seed15_all_fifteen_answer_without_a_single_limit_refusal(sandbox_app_factory, run):
    app = virtual_sandbox(sandbox_app_factory)
    fx = fanout_for(app)
    result = await fx.run(f"Review this README, run {run}.", SEED15)
    assert [r.requested for r in result] == SEED15
    assert [r.requested for r in result.failed] == []
    assert limit_refusals(app.stats()) == {}
    free_r1 = result["openrouter/deepseek/deepseek-r1-0528:free"]
    assert free_r1.text and free_r1.output_tokens > 0
    # every refusal it met was the busy upstream, recorded with category, status and message
    for attempt in free_r1.attempts[:-1]:
        assert (attempt.outcome, attempt.status) == ("rate_limit", 429) and "upstream" in attempt.message


async def test_seed15_over_real_http_answers_every_model(fresh_sandbox):
    fx = Fanout(fresh_sandbox.config, learn=False)
    result = await fx.run("Suggest three improvements to this README.", SEED15)
    assert len(result.succeeded) == 15, [(r.requested, r.category, r.error) for r in result.failed]
    stats = fresh_sandbox.stats()
    assert limit_refusals(stats) == {}
    assert stats["totals"]["in_flight"] == 0


@pytest.mark.looptime
async def test_missing_keys_are_reported_by_variable_and_the_rest_still_answer(sandbox_app_factory):
    app = virtual_sandbox(sandbox_app_factory)
    config = app.config
    config["providers"]["openai"].pop("api_key")
    fx = Fanout(config, transport=app.transport(), learn=False, env={})
    result = await fx.run("Hello", SEED15)
    missing = {r.requested: r for r in result.failed}
    assert set(missing) == {"openai/gpt-4.1", "openai/o4-mini", "openai/o3"}
    for r in missing.values():
        assert r.category == "missing_key" and "OPENAI_API_KEY" in r.error.message
        assert r.attempts == ()  # nothing was sent
    assert len(result.succeeded) == 12


@pytest.mark.looptime
async def test_storm_every_prompt_is_answered_and_every_failure_is_explained(sandbox_app_factory):
    app = virtual_sandbox(sandbox_app_factory, "storm")
    fx = fanout_for(app, timeout=5.0)
    chat = [f"{p.id}/{m.id}" for p in app.state.scenario.providers for m in p.models if m.kind == "chat"]
    batch = await fx.map([f"Storm prompt {i}." for i in range(8)], chat)
    assert [(r.prompt_index, r.requested, r.category) for r in batch.results if not r.ok] == []
    failed_attempts = [a for r in batch.results for a in r.attempts if a.outcome != "ok"]
    for a in failed_attempts:
        assert a.outcome and a.message
        if a.outcome not in ("timeout", "network"):
            assert a.status is not None
    outcomes = {a.outcome for a in failed_attempts}
    # every fault kind the storm plays shows up under its own category
    assert {"rate_limit", "server_error", "overloaded", "auth", "quota_exhausted", "network", "timeout"} <= outcomes
    disabled = {s.name: s.disabled for s in fx.statistics() if s.disabled}
    assert disabled and all("storm" not in reason for reason in disabled.values())  # reasons never quote a key


POOL_SCENARIO = {
    "name": "pool",
    "seed": 3,
    "providers": {
        "openai": {
            "style": "openai",
            "keys": ["sk-sbx-pool-aaaa"],
            "models": {
                "busy-model": {
                    "latency": {"base_ms": 200},
                    "output_tokens": [20, 30],
                    "faults": [{"kind": "rate_limit_burst", "first_n": 1, "retry_after_s": 30}],
                },
                "spare-model": {"latency": {"base_ms": 200}, "output_tokens": [20, 30]},
            },
        }
    },
}


@pytest.mark.looptime
async def test_a_busy_model_rotates_to_the_next_in_its_pool_within_50ms(sandbox_app_factory):
    app = virtual_sandbox(sandbox_app_factory, POOL_SCENARIO)
    config = app.config
    config["pools"] = {"fast": {"models": ["openai/busy-model", "openai/spare-model"]}}
    fx = Fanout(config, transport=app.transport(), learn=False)
    events: list[Event] = []
    fx.subscribe(events.append)
    result = await fx.run("Quick question", fallbacks={"openai/busy-model": ["openai/spare-model"]},
                          models=["openai/busy-model"])
    answer = result["openai/busy-model"]
    assert answer.ok and answer.model == "openai/spare-model"
    assert [a.outcome for a in answer.attempts] == ["rate_limit", "ok"]
    rotation = next(e for e in events if e.kind == "model_rotation")
    assert (rotation.from_model, rotation.to_model) == ("openai/busy-model", "openai/spare-model")
    refused_at = answer.attempts[0].end_s
    resent_at = next(e.t for e in events if e.kind == "request_started" and e.model == "openai/spare-model")
    assert resent_at - refused_at < 0.05  # measured on the injected (virtual) clock


@pytest.mark.looptime
async def test_without_fallbacks_a_listed_model_is_never_substituted(sandbox_app_factory):
    app = virtual_sandbox(sandbox_app_factory, POOL_SCENARIO)
    fx = fanout_for(app)
    result = await fx.run("Quick question", ["openai/busy-model"])
    answer = result["openai/busy-model"]
    assert answer.ok and answer.model == "openai/busy-model"
    first, second = answer.attempts
    assert first.outcome == "rate_limit" and second.start_s - first.end_s == pytest.approx(30, abs=0.5)


@pytest.mark.looptime
async def test_cancelling_a_run_cancels_every_request_and_keeps_what_finished(sandbox_app_factory):
    app = virtual_sandbox(sandbox_app_factory)
    fx = fanout_for(app)
    events: list[Event] = []
    fx.subscribe(events.append)
    task = asyncio.ensure_future(fx.run("Hello", SEED15))
    await asyncio.sleep(2.0)  # the fast models have answered, the slow ones are in flight
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    partial = fx.last_result
    states = {r.requested: (r.ok, r.category) for r in partial}
    assert any(ok for ok, _ in states.values())
    cancelled = [r for r in partial if r.category == "cancelled"]
    assert cancelled
    # a request cancelled in flight keeps its attempt, so timelines can draw it
    assert any(r.attempts and r.attempts[-1].outcome == "cancelled" for r in cancelled)
    # stopped by the user, not failed; and under way until then: 2 s after the run began
    assert {r.status for r in cancelled} == {"cancelled"} and {r.status for r in partial if r.ok} == {"ok"}
    assert all(r.latency_s == pytest.approx(2.0 - (r.attempts[0].start_s if r.attempts else 0.0), abs=0.01)
               for r in cancelled)
    completed = [e for e in events if e.kind == "run_completed"]
    assert completed[-1].cancelled and completed[-1].succeeded == sum(ok for ok, _ in states.values())
    await asyncio.sleep(0.1)
    assert app.stats()["totals"]["in_flight"] == 0
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()] == []


@pytest.mark.looptime
async def test_map_keeps_input_order_within_its_concurrency(sandbox_app_factory):
    app = virtual_sandbox(sandbox_app_factory)
    fx = fanout_for(app)
    prompts = [f"Question number {i}" for i in range(6)]
    models = ["openai/gpt-4.1", "gemini/gemini-2.5-flash", "openrouter/meta-llama/llama-4-scout"]
    batch = await fx.map(prompts, models, concurrency=4)
    assert [row.prompt for row in batch] == prompts
    assert all([r.requested for r in row] == models for row in batch)
    assert all(r.ok and r.prompt_index == i for i, row in enumerate(batch) for r in row)
    assert 1 < app.stats()["totals"]["peak_concurrency"] <= 4


RERUN_SCENARIO = {"name": "rerun", "seed": 4, "providers": {"openai": {
    "style": "openai", "keys": ["sk-sbx-rerun-0001"], "models": {
        "steady": {"latency": {"base_ms": 300}, "output_tokens": [5, 10]},
        # down for the first run's six attempts, up for the rerun
        "flaky": {"latency": {"base_ms": 100}, "output_tokens": [5, 10],
                  "faults": [{"kind": "server_error", "first_n": 6}]}}}}}


@pytest.mark.looptime
async def test_rerun_sends_only_the_failures_and_draws_them_after_the_first_run(sandbox_app_factory):
    app = virtual_sandbox(sandbox_app_factory, RERUN_SCENARIO)
    fx = fanout_for(app)
    first = await fx.run("Hello", ["openai/steady", "openai/flaky"])
    assert [r.ok for r in first] == [True, False]
    merged = await fx.rerun(first)
    assert [r.ok for r in merged] == [True, True]
    assert app.stats()["models"]["openai/steady"]["requests"] == 1  # the answer it had was kept, not asked again
    assert merged["openai/steady"].attempts == first["openai/steady"].attempts
    # seen: the rerun's attempts were drawn at t = 0, over the first run's
    (again,) = merged["openai/flaky"].attempts
    assert again.start_s >= first.elapsed_s and merged.elapsed_s > first.elapsed_s


def test_bad_input_fails_before_sending(sandbox_app_factory):
    app = sandbox_app_factory()
    fx = fanout_for(app)
    with pytest.raises(UnknownModelError, match="openai/gpt-4.1"):
        fx.plan("x", ["openai/gpt-4.1x"])
    with pytest.raises(UsageError, match="not both"):
        fx.plan("x", ["openai/gpt-4.1"], pool="fast")


def test_plan_says_which_key_what_is_missing_and_what_fits(sandbox_app_factory):
    app = sandbox_app_factory()
    config = app.config
    config["providers"]["openai"].pop("api_key")
    fx = Fanout(config, env={}, learn=False)
    plan = fx.plan("word " * 2000, ["openai/gpt-4.1", "gemini/gemini-2.5-flash"], max_tokens=100)
    rows = {r.model: r for r in plan.rows}
    assert rows["openai/gpt-4.1"].key_id is None and "OPENAI_API_KEY" in rows["openai/gpt-4.1"].missing_key_vars
    assert rows["gemini/gemini-2.5-flash"].key_id is not None
    assert 1800 < rows["gemini/gemini-2.5-flash"].prompt_tokens < 2400


JUDGE_SCENARIO = {
    "name": "judged",
    "seed": 5,
    "providers": {
        "openai": {
            "style": "openai",
            "keys": ["sk-sbx-judge-aaaa"],
            "models": {
                "answerer-a": {"latency": {"base_ms": 100}, "output_tokens": [30, 60]},
                "answerer-b": {"latency": {"base_ms": 150}, "output_tokens": [30, 60]},
                # the judge's first verdict comes back empty, as models sometimes do: no answer, retried
                "judge": {"latency": {"base_ms": 50}, "output_tokens": [10, 20],
                          "faults": [{"kind": "empty_answer", "first_n": 1}]},
            },
        }
    },
}


@pytest.mark.looptime
async def test_map_with_a_judge_scores_every_answer_and_asks_again_after_an_empty_verdict(sandbox_app_factory):
    app = virtual_sandbox(sandbox_app_factory, JUDGE_SCENARIO)
    fx = fanout_for(app)
    events: list[Event] = []
    fx.subscribe(events.append)
    prompts = ["What is 2 + 2?", "Name a prime number.", "Spell 'cat' backwards."]
    batch = await fx.map(prompts, ["openai/answerer-a", "openai/answerer-b"], judge="openai/judge")
    assert len(batch.scores) == 6
    assert all(3 <= s.score <= 10 and s.judge == "openai/judge" for s in batch.scores.values())
    judge_calls = [e for e in events if e.kind == "model_completed" and e.model == "openai/judge"]
    assert len(judge_calls) == 6  # one verdict per answer: the empty one was a failed attempt, retried
    retried = [e for e in events if e.kind == "retry_scheduled" and e.model == "openai/judge"]
    assert [e.category for e in retried] == ["server_error"]
    records = batch.to_records()
    assert [r["prompt"] for r in records] == [p for p in prompts for _ in range(2)]
    assert all(r["score"] is not None for r in records)
    # every event about a request says whose it is and what for: views never parse request ids
    about = [e for e in events if isinstance(e, RequestEvent)]
    assert {(e.purpose, e.requested) for e in about} == {
        ("answer", "openai/answerer-a"), ("answer", "openai/answerer-b"), ("judge", "openai/judge")}
    answered = {(e.prompt_index, e.requested) for e in about if e.kind == "model_completed" and e.purpose == "answer"}
    assert answered == {(i, m) for i in range(3) for m in ("openai/answerer-a", "openai/answerer-b")}
    assert all(e.prompt_index in range(3) for e in about)


@pytest.mark.looptime
async def test_a_synthesis_runs_as_a_run_of_its_own_purpose(sandbox_app_factory):
    app = virtual_sandbox(sandbox_app_factory, JUDGE_SCENARIO)
    fx = fanout_for(app)
    events: list[Event] = []
    fx.subscribe(events.append)
    first = await fx.run("What is 2 + 2?", ["openai/answerer-a", "openai/answerer-b"])
    merged = await fx.synthesize(first, "openai/answerer-a", timeout=30)
    assert merged.synthesis is not None and merged.synthesis.ok
    starts = [(e.purpose, e.models) for e in events if e.kind == "run_started"]
    assert starts == [("answer", ("openai/answerer-a", "openai/answerer-b")), ("synthesis", ("openai/answerer-a",))]
    assert [e.purpose for e in events if e.kind == "model_completed"] == ["answer", "answer", "synthesis"]


@pytest.mark.looptime
async def test_keys_of_a_provider_are_used_together_least_used_first(sandbox_app_factory):
    app = virtual_sandbox(sandbox_app_factory)
    fx = fanout_for(app)
    openai_models = ["openai/gpt-4.1", "openai/o4-mini", "openai/o3"]
    result = await fx.run("Hello", openai_models)
    used = [r.attempts[-1].key_id for r in result]
    assert len(set(used)) == 2  # seed15 gives OpenAI two keys: both carry traffic
    assert all(k.startswith("…") and len(k) == 5 for k in used)


@pytest.mark.looptime
async def test_synthesis_combines_the_answers_as_a_second_step(sandbox_app_factory):
    app = virtual_sandbox(sandbox_app_factory)
    fx = fanout_for(app)
    result = await fx.run("Name three sorting algorithms.", ["openai/gpt-4.1", "gemini/gemini-2.5-flash"])
    merged = await fx.synthesize(result, "openai/o4-mini")
    assert merged.synthesis is not None and merged.synthesis.ok and merged.synthesis.requested == "openai/o4-mini"
    assert [r.requested for r in merged] == ["openai/gpt-4.1", "gemini/gemini-2.5-flash"]


@pytest.mark.looptime
async def test_utilization_snapshots_come_at_most_ten_times_a_second(sandbox_app_factory):
    app = virtual_sandbox(sandbox_app_factory)
    fx = fanout_for(app)
    times: list[float] = []
    fx.subscribe(lambda e: times.append(e.t) if e.kind == "utilization" else None)
    result = await fx.run("Hello", SEED15)
    assert len(times) <= 10 * result.elapsed_s + 2
    assert len(times) >= 5 * result.elapsed_s  # and they keep coming while it runs


@pytest.mark.looptime
async def test_the_response_cache_answers_an_identical_request_without_a_call(sandbox_app_factory, tmp_path):
    app = virtual_sandbox(sandbox_app_factory)
    fx = Fanout(app.config, transport=app.transport(), learn=False, cache=tmp_path / "cache.sqlite")
    first = await fx.run("Cache me", ["openai/gpt-4.1"])
    accepted = app.stats()["totals"]["accepted"]
    second = await fx.run("Cache me", ["openai/gpt-4.1"])
    assert app.stats()["totals"]["accepted"] == accepted
    assert second[0].cached and second[0].text == first[0].text
    assert first[0].cost and second[0].cost == 0.0 and second[0].saved_cost == first[0].cost  # not charged again


@pytest.mark.looptime
async def test_totals_name_the_answers_without_a_price_instead_of_dropping_them(sandbox_app_factory):
    scenario = {"name": "prices", "seed": 3, "providers": {"relay": {"style": "openai", "keys": ["sk-sbx-relay-cost-0001"],
                "models": {"free-form": {"latency": {"base_ms": 100}, "output_tokens": [5, 10]}}}}}
    priced = virtual_sandbox(sandbox_app_factory)
    fx = fanout_for(priced)
    known = await fx.run("Cost me", ["openai/gpt-4.1"])
    assert known.unpriced == () and known.total_cost == known[0].cost > 0
    app = virtual_sandbox(sandbox_app_factory, scenario)
    relay = fanout_for(app)
    unknown = await relay.run("Cost me", ["relay/free-form"])
    assert unknown[0].ok and unknown[0].cost is None and unknown.unpriced == ("relay/free-form",)
    assert '"unpriced": [\n    "relay/free-form"\n  ]' in unknown.to_json()
    batch = await relay.map(["a", "b"], ["relay/free-form"])
    assert batch.unpriced == ("relay/free-form",) and batch.total_cost == 0.0 and batch.cost_by_model == {}
    batch2 = await fx.map(["a", "b"], ["openai/gpt-4.1"])
    assert batch2.cost_by_model == {"openai/gpt-4.1": pytest.approx(batch2.total_cost)} and batch2.total_cost > 0


def _wav(seconds: float = 0.2, size: int | None = None) -> bytes:
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        frames = int(8000 * seconds) if size is None else size // 2
        w.writeframes(b"\x00\x01" * frames)
    return buf.getvalue()


AUDIO_SCENARIO = {
    "name": "audio",
    "seed": 9,
    "providers": {
        p: {"style": p if p != "together" else "together", "keys": [f"sk-sbx-audio-{p}-{n}" for n in ("0001",)],
            "models": {m: {"kind": "transcription", "latency": {"base_ms": 100}}}}
        for p, m in (("groq", "whisper-large-v3"), ("openai", "whisper-1"), ("together", "openai/whisper-large-v3"))
    },
}


@pytest.mark.looptime
async def test_transcribe_prefers_groq_then_round_robins_and_skips_files_over_a_limit(sandbox_app_factory, tmp_path):
    app = virtual_sandbox(sandbox_app_factory, AUDIO_SCENARIO)
    clip = tmp_path / "clip.wav"
    clip.write_bytes(_wav())
    models = ["groq/whisper-large-v3", "openai/whisper-1", "together/openai/whisper-large-v3"]
    fx = fanout_for(app)
    first = await fx.transcribe(clip, models=models)
    assert first.ok and first.model == "groq/whisper-large-v3" and "clip.wav" in first.text

    config = app.config
    config["providers"]["groq"].pop("api_key")
    no_groq = Fanout(config, transport=app.transport(), learn=False, env={})
    picks = [(await no_groq.transcribe(clip, models=models)).model for _ in range(4)]
    assert picks == ["openai/whisper-1", "together/openai/whisper-large-v3"] * 2

    big = tmp_path / "long.wav"
    big.write_bytes(_wav(size=26 * 1024 * 1024))  # over OpenAI's 25 MB upload limit
    only_openai = Fanout({**config, "providers": {**config["providers"], "together": {**config["providers"]["together"], "api_key": []}}},
                         transport=app.transport(), learn=False, env={})
    refused = await only_openai.transcribe(big, models=models)
    assert not refused.ok and "25 MB" in refused.error.message and "GROQ_API_KEY" in refused.error.message


@pytest.mark.looptime
@pytest.mark.parametrize("hidden", [False, True])
async def test_transcription_keeps_the_rate_limits_and_does_not_retry_a_refusing_groq(sandbox_app_factory, tmp_path, hidden):
    """Seen: Groq was hit six times and refused four; each new call tried the rate-limited Groq again."""
    scenario = {**AUDIO_SCENARIO, "providers": {**AUDIO_SCENARIO["providers"]}}
    groq = scenario["providers"]["groq"]
    limits = {"rpm": 2, **({"hidden": ["rpm"]} if hidden else {})}
    scenario["providers"]["groq"] = {**groq, "models": {"whisper-large-v3": {"kind": "transcription",
                                                                              "latency": {"base_ms": 100}, "limits": limits}}}
    app = virtual_sandbox(sandbox_app_factory, scenario)
    clip = tmp_path / "clip.wav"
    clip.write_bytes(_wav())
    fx = fanout_for(app)
    done = [await fx.transcribe(clip, models=["groq/whisper-large-v3", "openai/whisper-1"]) for _ in range(6)]
    assert all(t.ok for t in done)
    groq_stats = app.stats()["models"]["groq/whisper-large-v3"]
    assert groq_stats["accepted"] == 2  # Groq's two a minute were used, the rest went to OpenAI
    # advertised: never refused; hidden: its headers (or at most one refusal) teach the limit, then no more
    assert groq_stats["rejected"].get("rpm", 0) <= (1 if hidden else 0)
    assert [t.model for t in done].count("openai/whisper-1") == 4


@pytest.mark.looptime
@pytest.mark.parametrize("hidden", [False, True])
async def test_transcription_keeps_groqs_audio_seconds_per_hour(sandbox_app_factory, tmp_path, hidden):
    """Groq limits audio seconds per hour (ASH); a 25-s clip takes 25 of them, whatever the requests left."""
    scenario = {**AUDIO_SCENARIO, "providers": {**AUDIO_SCENARIO["providers"]}}
    limits = {"rpm": 20, "ash": 60, **({"hidden": ["ash"]} if hidden else {})}
    scenario["providers"]["groq"] = {**scenario["providers"]["groq"], "models": {"whisper-large-v3": {
        "kind": "transcription", "latency": {"base_ms": 100}, "limits": limits}}}
    app = virtual_sandbox(sandbox_app_factory, scenario)
    clip = tmp_path / "clip.wav"
    clip.write_bytes(_wav(seconds=25.0))
    fx = fanout_for(app)
    done = [await fx.transcribe(clip, models=["groq/whisper-large-v3", "openai/whisper-1"]) for _ in range(5)]
    assert all(t.ok for t in done), [(t.model, t.error, t.attempts) for t in done]
    groq_stats = app.stats()["models"]["groq/whisper-large-v3"]
    assert groq_stats["accepted"] == 2  # 50 of its 60 seconds; a third clip would need 75
    assert groq_stats["rejected"].get("ash", 0) <= (1 if hidden else 0)
    assert [t.model for t in done] == ["groq/whisper-large-v3"] * 2 + ["openai/whisper-1"] * 3


@pytest.mark.looptime
async def test_two_runs_on_one_fanout_at_once_keep_their_events_apart(sandbox_app_factory):
    app = virtual_sandbox(sandbox_app_factory)
    fx = fanout_for(app)
    events: list[Event] = []
    fx.subscribe(events.append)
    first, second = await asyncio.gather(fx.run("one", ["openai/gpt-4.1"]), fx.run("two", ["gemini/gemini-2.5-flash"]))
    assert first[0].ok and second[0].ok
    runs = {e.run_id for e in events if e.kind == "run_started"}
    assert len(runs) == 2
    for e in events:
        if e.kind == "model_completed":
            started = next(s for s in events if s.kind == "run_started" and s.run_id == e.run_id)
            assert e.requested in started.models


ROTATION_LIMIT_SCENARIO = {
    "name": "rotation-limit",
    "seed": 4,
    "providers": {
        "openai": {
            "style": "openai",
            "keys": ["sk-sbx-rot-0001"],
            "models": {
                name: {"latency": {"base_ms": 100}, "output_tokens": [10, 20],
                       "faults": [{"kind": "rate_limit_burst", "first_n": 1, "retry_after_s": 5}]}
                for name in ("m1", "m2", "m3", "m4")
            },
        }
    },
}


@pytest.mark.looptime
async def test_after_max_rotations_it_waits_for_the_earliest_model_instead_of_failing(sandbox_app_factory):
    app = virtual_sandbox(sandbox_app_factory, ROTATION_LIMIT_SCENARIO)
    config = app.config
    config["defaults"] = {"max_rotations": 2, "max_attempts": 6}
    fx = Fanout(config, transport=app.transport(), learn=False)
    events: list[Event] = []
    fx.subscribe(events.append)
    result = await fx.run("x", ["openai/m1"], fallbacks={"openai/m1": ["openai/m2", "openai/m3", "openai/m4"]})
    answer = result[0]
    assert answer.ok
    moves = [(e.from_model, e.to_model) for e in events if e.kind == "model_rotation"]
    # two rotations (m1→m2→m3), each refused; then it waited for the earliest cooldown (m1's 5 s)
    # instead of trying m4 as well
    assert moves == [("openai/m1", "openai/m2"), ("openai/m2", "openai/m3"), ("openai/m3", "openai/m1")]
    assert [a.model for a in answer.attempts] == ["openai/m1", "openai/m2", "openai/m3", "openai/m1"]
    assert answer.attempts[-1].start_s >= 5.0


def small_scenario(models: dict[str, dict], style: str = "openai", provider: str = "openai") -> dict:
    return {"name": "small", "seed": 8, "providers": {provider: {"style": style, "keys": ["sk-sbx-small-0001"], "models": models}}}


@pytest.mark.looptime
async def test_a_request_larger_than_the_tpm_limit_fails_at_once_and_says_why(sandbox_app_factory):
    app = virtual_sandbox(sandbox_app_factory, small_scenario({"tiny": {"limits": {"tpm": 1000}}}))
    result = await fanout_for(app).run("word " * 3000, ["openai/tiny"], max_tokens=100)
    answer = result[0]
    assert answer.category == "context_length" and answer.attempts == ()
    assert "1000 tokens per minute" in answer.error.message and "max_tokens" in answer.error.message
    assert app.stats()["totals"]["requests"] == 0


@pytest.mark.looptime
async def test_without_max_tokens_the_budgeted_output_is_sent_so_tpm_is_never_exceeded(sandbox_app_factory):
    app = virtual_sandbox(sandbox_app_factory, small_scenario(
        {"long": {"limits": {"tpm": 20000}, "output_tokens": [3000, 4000], "latency": {"base_ms": 100}}}))
    batch = await fanout_for(app).map([f"Essay {i}" for i in range(12)], ["openai/long"])
    assert all(r.ok for r in batch.results)
    assert limit_refusals(app.stats()) == {}


@pytest.mark.looptime
async def test_a_quota_error_naming_one_model_leaves_the_key_to_the_others(sandbox_app_factory):
    app = virtual_sandbox(sandbox_app_factory, small_scenario({
        "pro": {"faults": [{"kind": "quota_exhausted", "first_n": 1}]},
        "flash": {},
    }, style="gemini", provider="gemini"))
    fx = fanout_for(app)
    first = await fx.run("hi", ["gemini/pro"])
    assert first[0].category == "quota_exhausted"
    second = await fx.run("hi", ["gemini/flash"])
    assert second[0].ok, second[0].error


@pytest.mark.looptime
async def test_the_deadline_bounds_each_attempt_and_long_provider_waits_end_the_request(sandbox_app_factory):
    app = virtual_sandbox(sandbox_app_factory, small_scenario({
        "slow": {"faults": [{"kind": "slow", "probability": 1.0, "delay_s": 100}]},
        "daily": {"faults": [{"kind": "rate_limit_burst", "probability": 1.0, "retry_after_s": 86400}]},
    }))
    config = app.config
    config["defaults"] = {"deadline_s": 10, "timeout_s": 120}
    fx = Fanout(config, transport=app.transport(), learn=False)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    slow = await fx.run("hi", ["openai/slow"])
    assert not slow[0].ok and loop.time() - t0 <= 11.5
    config["defaults"] = {"max_wait_s": 60}
    daily = await Fanout(config, transport=app.transport(), learn=False).run("hi", ["openai/daily"])
    assert daily[0].category == "rate_limit" and len(daily[0].attempts) == 1


@pytest.mark.looptime
async def test_cancelling_while_answers_are_judged_keeps_the_answers(sandbox_app_factory):
    scenario = {**JUDGE_SCENARIO, "providers": {"openai": {**JUDGE_SCENARIO["providers"]["openai"], "models": {
        **JUDGE_SCENARIO["providers"]["openai"]["models"], "judge": {"latency": {"base_ms": 5000}}}}}}
    app = virtual_sandbox(sandbox_app_factory, scenario)
    fx = fanout_for(app)
    task = asyncio.ensure_future(fx.map(["q"], ["openai/answerer-a", "openai/answerer-b"], judge="openai/judge"))
    await asyncio.sleep(2.0)  # answers are in, verdicts are not
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(r.ok and r.text for r in fx.last_result.results)


@pytest.mark.looptime
@pytest.mark.parametrize("empty_n, ok", [(1, True), (99, False)])
async def test_an_empty_answer_is_a_failed_attempt_retried_then_reported(sandbox_app_factory, empty_n, ok):
    """Seen: storm's empty answer came back as ok=True with 0 characters."""
    scenario = {"name": "empty", "seed": 3, "providers": {"openai": {"style": "openai", "keys": ["sk-sbx-empty-0001"],
                "models": {"m": {"latency": {"base_ms": 50}, "faults": [{"kind": "empty_answer", "first_n": empty_n}]}}}}}
    app = virtual_sandbox(sandbox_app_factory, scenario)
    (result,) = await fanout_for(app).run("Say something.", ["openai/m"], max_tokens=20)
    assert result.ok is ok and result.attempts[0].outcome == "server_error"
    assert "empty answer" in result.attempts[0].message
    if ok:
        assert result.text.strip() and len(result.attempts) == 2
    else:
        assert result.category == "server_error" and "no text and no tool calls" in result.error.message


async def test_an_empty_answer_cut_by_max_tokens_says_to_raise_it_and_is_not_retried():
    import httpx

    def handler(request: httpx.Request) -> httpx.Response:
        body = {"id": "c1", "object": "chat.completion", "model": "r", "created": 0,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 64, "total_tokens": 73}}
        return httpx.Response(200, json=body)

    config = {"providers": {"gen": {"kind": "openai", "base_url": "http://gen.local/v1", "api_key": "sk-gen-0001",
                                    "models": ["r"]}}}
    async with Fanout(config, transport=httpx.MockTransport(handler), learn=False) as fx:
        (result,) = await fx.run("Think hard.", ["gen/r"], max_tokens=64)
    assert not result.ok and result.category == "bad_request" and len(result.attempts) == 1
    assert "spent all 64 output tokens" in result.error.message and "raise max_tokens" in result.error.message
