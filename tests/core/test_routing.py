"""One answer from a pool (`Fanout.ask`, `map(route=True)`), in virtual time against the sandbox."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from nbfanout import Fanout, UsageError

pytestmark = pytest.mark.looptime

LATENCY = {"base_ms": 200, "per_output_token_ms": 5.0, "jitter": 0.05}


def relay(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"name": "relay", "seed": 9, "pools": {"relay": {"models": [f"relay/{m}" for m in models]}},
            "providers": {"relay": {"style": "openai", "keys": ["sk-sbx-relay-route-0001"], "models": {
                name: {"latency": LATENCY, "output_tokens": [20, 40], **spec} for name, spec in models.items()}}}}


def sandbox(factory: Any, scenario: Any) -> Any:
    return factory(scenario, time_scale=None, clock=lambda: asyncio.get_running_loop().time())


BUSY_FOR_30_S = [{"kind": "rate_limit_burst", "during_s": [0, 30]}]


async def test_ask_answers_from_the_third_member_when_the_first_two_are_rate_limited(sandbox_app_factory):
    app = sandbox(sandbox_app_factory, relay({"a": {"faults": BUSY_FOR_30_S}, "b": {"faults": BUSY_FOR_30_S}, "c": {}}))
    fx = Fanout(app.config, transport=app.transport(), learn=False)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result = await fx.ask("Which is larger, 2 or 3?", pool="relay", max_tokens=40)
    assert result.ok and result.model == "relay/c" and result.requested == "relay/a"
    assert [(a.model, a.outcome) for a in result.attempts] == [
        ("relay/a", "rate_limit"), ("relay/b", "rate_limit"), ("relay/c", "ok")]
    assert loop.time() - t0 < 2.0  # failed over at once, not after the 30-s retry-after
    assert fx.last_result is not None and fx.last_result.results == (result,)


async def test_ask_after_a_refusal_skips_the_cooling_member_without_asking_it_again(sandbox_app_factory):
    app = sandbox(sandbox_app_factory, relay({"a": {"faults": BUSY_FOR_30_S}, "b": {}}))
    fx = Fanout(app.config, transport=app.transport(), learn=False)
    first = await fx.ask("one", models=["relay/a", "relay/b"], max_tokens=40)
    second = await fx.ask("two", models=["relay/a", "relay/b"], max_tokens=40)
    assert first.model == second.model == "relay/b"
    assert [a.model for a in second.attempts] == ["relay/b"]  # a's 30-s cooldown is known: not tried again
    assert app.stats()["models"]["relay/a"]["requests"] == 1


async def test_a_routed_map_spreads_over_the_pool_first_members_first(sandbox_app_factory):
    app = sandbox(sandbox_app_factory, relay({"a": {"limits": {"concurrency": 2}}, "b": {}}))
    fx = Fanout(app.config, transport=app.transport(), learn=False, concurrency=8)
    batch = await fx.map([f"prompt {i}" for i in range(40)], pool="relay", route=True, max_tokens=40)
    assert len(batch.rows) == 40 and all(len(row.results) == 1 and row.results[0].ok for row in batch.rows)
    assert [row.prompt for row in batch.rows] == [f"prompt {i}" for i in range(40)]
    by = {m: sum(r.model == m for r in batch.results) for m in ("relay/a", "relay/b")}
    assert by["relay/a"] >= 2 and by["relay/b"] >= 2 and sum(by.values()) == 40, by
    stats = app.stats()
    assert stats["totals"]["rejected"].get("concurrency", 0) == 0
    assert stats["models"]["relay/a"]["requests"] + stats["models"]["relay/b"]["requests"] == 40


async def test_ask_needs_somewhere_to_ask(sandbox_app_factory):
    app = sandbox(sandbox_app_factory, relay({"a": {}}))
    fx = Fanout(app.config, transport=app.transport(), learn=False)
    with pytest.raises(UsageError, match="models=.*pool="):
        await fx.ask("hello")


def with_max_wait(app: Any, seconds: float, drop_key_of: str | None = None) -> Fanout:
    config = app.config
    config.setdefault("defaults", {})["max_wait_s"] = seconds
    if drop_key_of is not None:
        config["providers"][drop_key_of].pop("api_key")
    return Fanout(config, transport=app.transport(), learn=False, env={})


COOLS_900_S = [{"kind": "rate_limit_burst", "first_n": 1, "retry_after_s": 900}]


async def test_an_existing_900_s_cooldown_is_skipped_within_max_wait_and_says_why(sandbox_app_factory):
    """Seen: max_wait_s was not applied to a cooldown that already existed; a later call waited it out."""
    app = sandbox(sandbox_app_factory, relay({"a": {"faults": COOLS_900_S}, "b": {}}))
    fx = with_max_wait(app, 5)
    loop = asyncio.get_running_loop()
    first = await fx.run("first", ["relay/a"], max_tokens=40)
    assert not first[0].ok and first[0].category == "rate_limit"
    t0 = loop.time()
    later = await fx.run("later", ["relay/a", "relay/b"], max_tokens=40)
    assert loop.time() - t0 < 5.0
    skipped, answered = later.results
    assert answered.ok and not skipped.ok and skipped.attempts == ()  # not sent: the cooldown is known
    assert "900" in skipped.error.message or "89" in skipped.error.message, skipped.error.message
    assert 890 <= skipped.error.retry_after_s <= 900
    assert app.stats()["models"]["relay/a"]["requests"] == 1


async def test_when_no_member_can_answer_the_error_accounts_for_every_candidate(sandbox_app_factory):
    scenario = relay({"a": {"faults": COOLS_900_S}, "b": {"faults": COOLS_900_S}})
    scenario["providers"]["spare"] = {"style": "openai", "keys": ["sk-sbx-spare-0001"],
                                      "models": {"c": {"latency": LATENCY, "output_tokens": [20, 40]}}}
    scenario["pools"]["relay"]["models"].append("spare/c")
    app = sandbox(sandbox_app_factory, scenario)
    fx = with_max_wait(app, 5, drop_key_of="spare")
    for m in ("relay/a", "relay/b"):  # each refuses once with a 900-s wait
        assert not (await fx.run("x", [m], max_tokens=40))[0].ok
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result = await fx.ask("anyone?", pool="relay", max_tokens=40)
    assert loop.time() - t0 < 5.0
    assert not result.ok and result.category == "rate_limit"
    message = result.error.message
    assert re.search(r"tried 3 models: 2 rate limited or busy \(soonest usable in (89\d|900)s\)", message), message
    assert "1 without an API key" in message and "spare/c: no API key (set " in message, message
    assert "relay/a:" in message and "relay/b:" in message
    assert 890 <= result.error.retry_after_s <= 900


async def test_a_parameter_the_model_refuses_is_left_out_and_said_so(sandbox_app_factory):
    """Seen: reasoning models were sent `temperature`, which OpenAI's o-series answers with a 400."""
    app = sandbox(sandbox_app_factory, relay({"reasoner": {"rejects": ["temperature"]}, "plain": {}}))
    async with app.client() as raw:
        refused = await raw.post("/relay/v1/chat/completions", json={
            "model": "reasoner", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2},
            headers={"authorization": "Bearer sk-sbx-relay-route-0001"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "unsupported_parameter"
    fx = Fanout(app.config, transport=app.transport(), learn=False)
    reasoner, plain = await fx.run("Which is larger?", ["relay/reasoner", "relay/plain"], temperature=0.2, max_tokens=40)
    assert reasoner.ok and reasoner.dropped_params == ("temperature",) and len(reasoner.attempts) == 1
    assert plain.ok and plain.dropped_params == ()
    assert reasoner.to_record()["dropped_params"] == ["temperature"]


@pytest.mark.parametrize("fallback, answers", [(None, "two/b"), (["three"], "three/c")])
async def test_a_providers_own_fallback_order_chooses_where_its_requests_go_next(sandbox_app_factory, fallback, answers):
    def provider(name: str, model: str, **spec: Any) -> dict[str, Any]:
        return {"style": "openai", "keys": [f"sk-sbx-{name}-fall-0001"],
                "models": {model: {"latency": LATENCY, "output_tokens": [20, 40], **spec}}}

    scenario = {"name": "map", "seed": 8, "providers": {"one": provider("one", "a", faults=BUSY_FOR_30_S),
                                                        "two": provider("two", "b"), "three": provider("three", "c")}}
    app = sandbox(sandbox_app_factory, scenario)
    config = app.config
    if fallback is not None:
        config["providers"]["one"]["fallback"] = fallback
    fx = Fanout(config, transport=app.transport(), learn=False)
    result = await fx.ask("route me", models=["one/a", "two/b", "three/c"], max_tokens=40)
    assert result.ok and result.model == answers
    assert [a.model for a in result.attempts] == ["one/a", answers]


def test_a_fallback_naming_an_unknown_provider_is_refused_with_the_known_ones(sandbox_app_factory):
    from nbfanout import ConfigError

    app = sandbox_app_factory(relay({"a": {}}))
    config = app.config
    config["providers"]["relay"]["fallback"] = ["nowhere"]
    with pytest.raises(ConfigError, match=r"providers\.relay\.fallback.*another provider id"):
        Fanout(config, transport=app.transport(), learn=False)
