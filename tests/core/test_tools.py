"""Conversations and tool calls through all three wire formats, end to end against the sandbox."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nbfanout import Fanout, Message, Tool, ToolCall, UsageError

pytestmark = pytest.mark.looptime

WEATHER = Tool("get_weather", "The weather in a city now.",
               {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
                "required": ["city", "unit"]})
LATENCY = {"base_ms": 100, "per_output_token_ms": 1.0, "jitter": 0.0}


def three_wires(**model: Any) -> dict[str, Any]:
    def provider(style: str, key: str) -> dict[str, Any]:
        return {"style": style, "keys": [key], "models": {"m": {"latency": LATENCY, "output_tokens": [10, 20], **model}}}

    return {"name": "tools", "seed": 12, "providers": {
        "openai": provider("openai", "sk-sbx-openai-tools-0001"),
        "anthropic": provider("anthropic", "sk-ant-sbx-tools-0002"),
        "gemini": provider("gemini", "AIzaSbx-gemini-tools-0003")}}


MODELS = ["openai/m", "anthropic/m", "gemini/m"]


def fanout(factory: Any, scenario: dict[str, Any]) -> tuple[Any, Fanout]:
    app = factory(scenario, time_scale=None, clock=lambda: asyncio.get_running_loop().time())
    return app, Fanout(app.config, transport=app.transport(), learn=False)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_tool_call_and_its_result_round_trip_on_every_wire(sandbox_app_factory, stream):
    app, fx = fanout(sandbox_app_factory, three_wires())
    first = await fx.run("What is the weather in Paris?", MODELS, tools=[WEATHER], stream=stream, max_tokens=200)
    for r in first:
        assert r.ok, (r.model, r.error)
        (call,) = r.tool_calls
        assert call.name == "get_weather" and call.arguments == {"city": "sandbox", "unit": "C"} and call.id
    # each model's own call goes back with its result; the answer is text
    for r in first:
        conversation = [Message("user", "What is the weather in Paris?"),
                        Message("assistant", r.text, tool_calls=r.tool_calls),
                        Message("tool", '{"temp_c": 21}', tool_call_id=r.tool_calls[0].id, name="get_weather")]
        answer = await fx.ask(conversation, models=[r.model], tools=[WEATHER], stream=stream, max_tokens=200)
        assert answer.ok and answer.text and answer.tool_calls == (), (r.model, answer.error)
        assert answer.input_tokens > r.input_tokens  # the call and its result were sent and counted
    assert {m: s["accepted"] for m, s in app.stats()["models"].items()} == {m: 2 for m in MODELS}


async def test_a_scenario_chosen_call_and_dict_shaped_tools_and_messages(sandbox_app_factory):
    app, fx = fanout(sandbox_app_factory, three_wires(tool_call={"name": "lookup", "arguments": {"q": "nbfanout"}}))
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "", "parameters": dict(WEATHER.parameters)}},
             {"name": "lookup", "description": "Search.", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}]
    result = await fx.run([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Find it."}], MODELS,
                          tools=tools, max_tokens=200)
    assert [(r.tool_calls[0].name, dict(r.tool_calls[0].arguments)) for r in result] == [("lookup", {"q": "nbfanout"})] * 3
    assert result.prompt == "Find it."
    record = result[0].to_record()["tool_calls"][0]
    assert record["name"] == "lookup" and record["arguments"] == {"q": "nbfanout"}


async def test_models_that_cannot_call_tools_are_not_asked(sandbox_app_factory):
    app, _ = fanout(sandbox_app_factory, three_wires())
    config = app.config
    config["models"] = {**config.get("models", {}), "openai/m": {"capabilities": ["streaming"]}}
    fx = Fanout(config, transport=app.transport(), learn=False)
    result = await fx.ask("Weather?", models=MODELS, tools=[WEATHER], max_tokens=200)
    assert result.ok and result.model == "anthropic/m" and [a.model for a in result.attempts] == ["anthropic/m"]
    assert app.stats()["models"].get("openai/m", {}).get("requests", 0) == 0


@pytest.mark.parametrize(("prompt", "tools", "message"), [
    ([], [], "non-empty list of messages"),
    ([{"role": "robot", "content": "hi"}], [], "messages[0].role"),
    ([{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}], [], "needs the tool_call_id"),
    ([{"role": "tool", "content": "x", "tool_call_id": "c1"}], [], "which no assistant message made"),
    ("hi", [{"name": "bad name!", "parameters": {"type": "object"}}], "tools[0].name"),
    ("hi", [{"name": "t", "parameters": {"type": "string"}}], "JSON Schema object"),
    ("hi", [WEATHER, WEATHER], "two tools are named 'get_weather'"),
    ([{"role": "system", "content": "a"}], [], "only a system message"),
])
async def test_bad_conversations_and_tools_fail_before_anything_is_sent(sandbox_app_factory, prompt, tools, message):
    app, fx = fanout(sandbox_app_factory, three_wires())
    with pytest.raises(UsageError, match=None) as info:
        await fx.run(prompt, MODELS, tools=tools)
    assert message in str(info.value)
    assert app.stats()["totals"]["requests"] == 0


def test_tool_calls_are_plain_values():
    call = ToolCall("c1", "get_weather", {"city": "Paris"})
    assert call == ToolCall("c1", "get_weather", {"city": "Paris"}) and "Paris" in repr(call)


async def test_a_json_schema_beyond_geminis_subset_is_sent_as_parameters_json_schema(sandbox_app_factory):
    """Gemini's ``parameters`` takes only its Schema subset and refuses ``additionalProperties``, ``$defs``
    and ``$ref`` (strict OpenAI tools carry them); the same tool must still reach every wire."""
    strict = Tool("get_forecast", "The forecast for a city.", {
        "type": "object", "additionalProperties": False, "required": ["city", "unit"],
        "$defs": {"unit": {"type": "string", "enum": ["C", "F"]}},
        "properties": {"city": {"type": "string"}, "unit": {"$ref": "#/$defs/unit"}}})
    app, fx = fanout(sandbox_app_factory, three_wires())
    result = await fx.run("What is the weather in Paris?", MODELS, tools=[strict, WEATHER], max_tokens=200)
    for r in result:
        assert r.ok and r.tool_calls, (r.model, r.error)
    assert {m: s["accepted"] for m, s in app.stats()["models"].items()} == {m: 1 for m in MODELS}
