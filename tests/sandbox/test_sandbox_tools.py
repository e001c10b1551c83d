"""Tool (function) calls in each wire format: requests offering tools get one call, results get text.

In process for shapes, streams, validation and limits; over loopback for the official
openai and anthropic SDKs, which must parse the sandbox's tool calls unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import openai
import pytest

from nbfanout.sandbox import Sandbox, ScenarioError, parse_scenario
from nbfanout.sandbox.text import estimate_tokens
from nbfanout.sandbox.wire import TOOL_CALL_TOKENS, schema_arguments

SCRIPTED = {"name": "get_weather", "arguments": {"city": "Paris"}}
TOOLS_SCENARIO: dict[str, Any] = {
    "name": "tools",
    "seed": 5,
    "providers": {
        "openai": {
            "style": "openai",
            "keys": ["sk-sbx-tools-openai-0001"],
            "models": {
                "gpt-tools": {"output_tokens": [20, 30], "tool_call": SCRIPTED},
                "gpt-plain": {"output_tokens": [20, 30]},
                "gpt-one-rpm": {"limits": {"rpm": 1}},
            },
        },
        "anthropic": {
            "style": "anthropic",
            "keys": ["sk-ant-sbx-tools-0002"],
            "models": {"claude-tools": {"output_tokens": [20, 30], "tool_call": SCRIPTED}},
        },
        "gemini": {
            "style": "gemini",
            "keys": ["gm-sbx-tools-0003"],
            "models": {"gemini-tools": {"output_tokens": [20, 30], "tool_call": SCRIPTED}},
        },
    },
}
OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY = "sk-sbx-tools-openai-0001", "sk-ant-sbx-tools-0002", "gm-sbx-tools-0003"

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
LOOKUP_SCHEMA = {
    "type": "object",
    "properties": {
        "query": {"type": "string"},
        "limit": {"type": "integer"},
        "unit": {"type": "string", "enum": ["c", "f"]},
        "exact": {"type": "boolean"},
    },
    "required": ["query", "limit", "unit", "exact"],
}
LOOKUP_ARGS = {"query": "sandbox", "limit": 1, "unit": "c", "exact": True}
USER = "What is the weather in Paris?"


# --------------------------------------------------------------------------- request builders


def openai_tools(*specs: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": n, "description": f"{n} tool", "parameters": p}} for n, p in specs]


def anthropic_tools(*specs: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": n, "description": f"{n} tool", "input_schema": p} for n, p in specs]


def gemini_tools(*specs: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"functionDeclarations": [{"name": n, "description": f"{n} tool", "parameters": p} for n, p in specs]}]


async def post_openai(client: httpx.AsyncClient, body: dict[str, Any], model: str = "gpt-tools") -> httpx.Response:
    body = {"model": model, "max_tokens": 200, **body}
    return await client.post("/openai/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {OPENAI_KEY}"})


async def post_anthropic(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    body = {"model": "claude-tools", "max_tokens": 200, **body}
    headers = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
    return await client.post("/anthropic/v1/messages", json=body, headers=headers)


async def post_gemini(client: httpx.AsyncClient, body: dict[str, Any], method: str = "generateContent") -> httpx.Response:
    return await client.post(f"/gemini/v1beta/models/gemini-tools:{method}", json=body, headers={"x-goog-api-key": GEMINI_KEY})


def sse_payloads(text: str) -> list[Any]:
    """The JSON of every ``data:`` line of an SSE body (``[DONE]`` left out)."""
    lines = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    return [json.loads(line) for line in lines if line != "[DONE]"]


@pytest.fixture
def client(sandbox_app_factory: Callable[..., Any]) -> httpx.AsyncClient:
    return sandbox_app_factory(TOOLS_SCENARIO).client()


# --------------------------------------------------------------------------- arguments and scenario


def test_schema_arguments_follow_each_type() -> None:
    schema = {
        "properties": {
            "s": {"type": "string"},
            "i": {"type": "integer"},
            "n": {"type": "number"},
            "b": {"type": "boolean"},
            "a": {"type": "array", "items": {"type": "string"}},
            "o": {"type": "object"},
            "e": {"type": "string", "enum": ["north", "south"]},
            "g": {"type": "INTEGER"},  # Gemini's spelling
            "u": {"type": ["number", "null"]},
        }
    }
    assert schema_arguments(schema) == {"s": "sandbox", "i": 1, "n": 1.5, "b": True, "a": [], "o": {}, "e": "north", "g": 1, "u": 1.5}
    assert schema_arguments({**schema, "required": ["e", "b"]}) == {"e": "north", "b": True}
    assert schema_arguments({"type": "object"}) == {}


def test_scenario_tool_call_is_validated() -> None:
    def with_call(value: Any) -> dict[str, Any]:
        model = {"tool_call": value}
        return {"providers": {"p": {"style": "openai", "keys": ["sk-sbx-x-0001"], "models": {"m": model}}}}

    spec = parse_scenario(with_call({"name": "f", "arguments": {"x": 1}})).providers[0].models[0].tool_call
    assert spec is not None and spec.name == "f" and dict(spec.arguments) == {"x": 1}
    assert parse_scenario(with_call({"name": "f"})).providers[0].models[0].tool_call.arguments == {}  # type: ignore[union-attr]
    with pytest.raises(ScenarioError, match=r"tool_call.name': found None, expected a non-empty string"):
        parse_scenario(with_call({"arguments": {}}))
    with pytest.raises(ScenarioError, match=r"tool_call.arguments': found 'x', expected a table"):
        parse_scenario(with_call({"name": "f", "arguments": "x"}))
    with pytest.raises(ScenarioError, match=r"tool_call.extra'"):
        parse_scenario(with_call({"name": "f", "extra": 1}))
    with pytest.raises(ScenarioError, match=r"tool_call': found 'f', expected a table"):
        parse_scenario(with_call("f"))


# --------------------------------------------------------------------------- OpenAI


async def test_openai_answers_with_the_scripted_call(client: httpx.AsyncClient) -> None:
    tools = openai_tools(("lookup", LOOKUP_SCHEMA), ("get_weather", WEATHER_SCHEMA))
    r = await post_openai(client, {"messages": [{"role": "user", "content": USER}], "tools": tools})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["role"] == "assistant" and message["content"] is None and len(message["tool_calls"]) == 1
    call = message["tool_calls"][0]
    assert re.fullmatch(r"call_[0-9a-f]{24}", call["id"]) and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}
    assert r.json()["usage"]["completion_tokens"] == estimate_tokens(call["function"]["arguments"]) + TOOL_CALL_TOKENS


async def test_openai_falls_back_to_the_first_tool_and_its_schema(client: httpx.AsyncClient) -> None:
    """The scripted tool is not offered, and a model without a script: the first tool, arguments from its schema."""
    tools = openai_tools(("lookup", LOOKUP_SCHEMA), ("other", WEATHER_SCHEMA))
    for model in ("gpt-tools", "gpt-plain"):
        r = await post_openai(client, {"messages": [{"role": "user", "content": USER}], "tools": tools}, model)
        fn = r.json()["choices"][0]["message"]["tool_calls"][0]["function"]
        assert fn["name"] == "lookup" and json.loads(fn["arguments"]) == LOOKUP_ARGS


async def test_openai_call_is_deterministic_and_tools_count_as_input(client: httpx.AsyncClient) -> None:
    messages = [{"role": "user", "content": USER}]
    a = (await post_openai(client, {"messages": messages, "tools": openai_tools(("get_weather", WEATHER_SCHEMA))})).json()
    b = (await post_openai(client, {"messages": messages, "tools": openai_tools(("get_weather", WEATHER_SCHEMA))})).json()
    assert a["choices"] == b["choices"]
    plain = (await post_openai(client, {"messages": messages})).json()
    assert a["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]


def openai_conversation(result: str = "18 degrees and sunny") -> list[dict[str, Any]]:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    return [
        {"role": "user", "content": USER},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ]


async def test_openai_tool_result_gets_text_and_counts_as_input(client: httpx.AsyncClient) -> None:
    tools = openai_tools(("get_weather", WEATHER_SCHEMA))
    short = await post_openai(client, {"messages": openai_conversation(), "tools": tools})
    assert short.status_code == 200, short.text
    choice = short.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]
    assert choice["message"]["content"].startswith('[gpt-tools] On "What is the"')
    long = await post_openai(client, {"messages": openai_conversation("sunny " * 100), "tools": tools})
    assert long.json()["usage"]["prompt_tokens"] - short.json()["usage"]["prompt_tokens"] == (600 - 20) / 4  # the longer result, in characters / 4
    again = await post_openai(client, {"messages": [*openai_conversation(), {"role": "user", "content": "And Rome?"}], "tools": tools})
    assert again.json()["choices"][0]["finish_reason"] == "tool_calls"


async def test_openai_stream_reassembles_to_the_same_call(client: httpx.AsyncClient) -> None:
    body = {"messages": [{"role": "user", "content": USER}], "tools": openai_tools(("lookup", LOOKUP_SCHEMA))}
    done = (await post_openai(client, body)).json()
    r = await post_openai(client, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.text.endswith("data: [DONE]\n\n")
    chunks = sse_payloads(r.text)
    parts = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    first, rest = parts[0], parts[1:]
    assert first["index"] == 0 and first["type"] == "function" and first["function"]["arguments"] == ""
    assert len(rest) > 1 and all(p == {"index": 0, "function": {"arguments": p["function"]["arguments"]}} for p in rest)
    expected = done["choices"][0]["message"]["tool_calls"][0]
    assert first["id"] == expected["id"] and first["function"]["name"] == expected["function"]["name"]
    assert "".join(p["function"]["arguments"] for p in rest) == expected["function"]["arguments"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls" and set(finishes[:-1]) == {None}
    assert chunks[-1]["usage"] == done["usage"]


@pytest.mark.parametrize(
    ("tools", "message", "param", "code"),
    [
        ("get_weather", "Invalid type for 'tools': expected an array, but got a string instead.", "tools", "invalid_type"),
        ([{"function": {"name": "f"}}], "Missing required parameter: 'tools[0].type'.", "tools[0].type", "missing_required_parameter"),
        ([{"type": "function", "name": "f"}], "Missing required parameter: 'tools[0].function'.", "tools[0].function",
         "missing_required_parameter"),
        ([{"type": "function", "function": {"parameters": {}}}], "Missing required parameter: 'tools[0].function.name'.",
         "tools[0].function.name", "missing_required_parameter"),
        ([{"type": "function", "function": {"name": "get weather"}}],
         "Invalid 'tools[0].function.name': string does not match pattern. Expected a string that matches the pattern "
         "'^[a-zA-Z0-9_-]+$'.", "tools[0].function.name", "invalid_value"),
    ],
)
async def test_openai_refuses_malformed_tools(client: httpx.AsyncClient, tools: Any, message: str, param: str, code: str) -> None:
    r = await post_openai(client, {"messages": [{"role": "user", "content": USER}], "tools": tools})
    assert r.status_code == 400
    assert r.json()["error"] == {"message": message, "type": "invalid_request_error", "param": param, "code": code}


async def test_openai_refuses_unpaired_tool_messages(client: httpx.AsyncClient) -> None:
    orphan = [{"role": "user", "content": USER}, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]
    r = await post_openai(client, {"messages": orphan})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.[1].role"
    assert "messages with role 'tool' must be a response to a preceeding message with 'tool_calls'" in r.json()["error"]["message"]
    unanswered = [*openai_conversation()[:2], {"role": "user", "content": "well?"}]
    r = await post_openai(client, {"messages": unanswered})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.[1].role"
    assert r.json()["error"]["message"].endswith("did not have response messages: call_1")


async def test_tool_calls_go_through_the_limits(sandbox_app_factory: Callable[..., Any]) -> None:
    sb = sandbox_app_factory(TOOLS_SCENARIO)
    body = {"messages": [{"role": "user", "content": USER}], "tools": openai_tools(("get_weather", WEATHER_SCHEMA))}
    async with sb.client() as c:
        assert (await post_openai(c, body, "gpt-one-rpm")).json()["choices"][0]["finish_reason"] == "tool_calls"
        assert (await post_openai(c, body, "gpt-one-rpm")).status_code == 429
    stats = sb.stats()["models"]["openai/gpt-one-rpm"]
    assert stats["accepted"] == 1 and stats["rejected"]["rpm"] == 1


async def test_a_call_that_does_not_fit_max_tokens_is_cut_text(client: httpx.AsyncClient) -> None:
    body = {"messages": [{"role": "user", "content": USER}], "tools": openai_tools(("lookup", LOOKUP_SCHEMA)), "max_tokens": 3}
    choice = (await post_openai(client, body)).json()["choices"][0]
    assert choice["finish_reason"] == "length" and len(choice["message"]["content"].split()) == 3


# --------------------------------------------------------------------------- Anthropic


async def test_anthropic_tool_use_and_tool_result(client: httpx.AsyncClient) -> None:
    tools = anthropic_tools(("lookup", LOOKUP_SCHEMA), ("get_weather", WEATHER_SCHEMA))
    r = await post_anthropic(client, {"messages": [{"role": "user", "content": USER}], "tools": tools})
    assert r.status_code == 200, r.text
    msg = r.json()
    assert msg["stop_reason"] == "tool_use" and len(msg["content"]) == 1
    block = msg["content"][0]
    assert re.fullmatch(r"toolu_[0-9A-Za-z]{24}", block["id"])
    assert block == {"type": "tool_use", "id": block["id"], "name": "get_weather", "input": {"city": "Paris"}}
    assert msg["usage"]["output_tokens"] == estimate_tokens(json.dumps({"city": "Paris"})) + TOOL_CALL_TOKENS

    result = [{"type": "tool_result", "tool_use_id": block["id"], "content": [{"type": "text", "text": "18 degrees"}]}]
    conversation = [{"role": "user", "content": USER}, {"role": "assistant", "content": [block]}, {"role": "user", "content": result}]
    r = await post_anthropic(client, {"messages": conversation, "tools": tools})
    assert r.status_code == 200, r.text
    assert r.json()["stop_reason"] == "end_turn" and r.json()["content"][0]["type"] == "text"
    longer = [*conversation[:2], {"role": "user", "content": [{**result[0], "content": "18 degrees" + "!" * 40}]}]
    grown = (await post_anthropic(client, {"messages": longer, "tools": tools})).json()["usage"]["input_tokens"]
    assert grown - r.json()["usage"]["input_tokens"] == 10  # 40 more characters; a string result counts like text blocks


async def test_anthropic_stream_reassembles_to_the_same_call(client: httpx.AsyncClient) -> None:
    body = {"messages": [{"role": "user", "content": USER}], "tools": anthropic_tools(("lookup", LOOKUP_SCHEMA))}
    done = (await post_anthropic(client, body)).json()
    r = await post_anthropic(client, {**body, "stream": True})
    events = [line[len("event: ") :] for line in r.text.splitlines() if line.startswith("event: ")]
    assert events[:3] == ["message_start", "content_block_start", "ping"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    payloads = sse_payloads(r.text)
    start = next(p for p in payloads if p["type"] == "content_block_start")["content_block"]
    assert start == {**done["content"][0], "input": {}}
    deltas = [p["delta"] for p in payloads if p["type"] == "content_block_delta"]
    assert len(deltas) > 1 and {d["type"] for d in deltas} == {"input_json_delta"}
    assert json.loads("".join(d["partial_json"] for d in deltas)) == done["content"][0]["input"] == LOOKUP_ARGS
    final = next(p for p in payloads if p["type"] == "message_delta")
    assert final["delta"]["stop_reason"] == "tool_use" and final["usage"]["output_tokens"] == done["usage"]["output_tokens"]


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        (openai_tools(("get_weather", WEATHER_SCHEMA)),
         "tools.0: Input tag 'function' found using 'type' does not match any of the expected tags: 'bash_20250124', "
         "'custom', 'text_editor_20250124'"),
        ([{"name": "get_weather", "parameters": WEATHER_SCHEMA}], "tools.0.custom.input_schema: Field required"),
        ([{"input_schema": WEATHER_SCHEMA}], "tools.0.custom.name: Field required"),
        ([*anthropic_tools(("ok", WEATHER_SCHEMA)), {"name": "f", "input_schema": {"properties": {}}}],
         "tools.1.custom.input_schema.type: Field required"),
    ],
)
async def test_anthropic_refuses_malformed_tools(client: httpx.AsyncClient, tools: Any, message: str) -> None:
    r = await post_anthropic(client, {"messages": [{"role": "user", "content": USER}], "tools": tools})
    assert r.status_code == 400
    assert r.json()["type"] == "error" and r.json()["error"] == {"type": "invalid_request_error", "message": message}


async def test_anthropic_refuses_a_result_without_its_call(client: httpx.AsyncClient) -> None:
    result = [{"type": "text", "text": "here"}, {"type": "tool_result", "tool_use_id": "toolu_x", "content": "18"}]
    r = await post_anthropic(client, {"messages": [{"role": "user", "content": result}]})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("messages.0.content.1: unexpected `tool_use_id` found in `tool_result` blocks: toolu_x.")


# --------------------------------------------------------------------------- Gemini


def gemini_conversation() -> list[dict[str, Any]]:
    return [
        {"role": "user", "parts": [{"text": USER}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "18 degrees"}}}]},
    ]


async def test_gemini_function_call_and_response(client: httpx.AsyncClient) -> None:
    tools = gemini_tools(("lookup", LOOKUP_SCHEMA), ("get_weather", WEATHER_SCHEMA))
    r = await post_gemini(client, {"contents": [{"role": "user", "parts": [{"text": USER}]}], "tools": tools})
    assert r.status_code == 200, r.text
    candidate = r.json()["candidates"][0]
    assert candidate["finishReason"] == "STOP"
    assert candidate["content"] == {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]}
    r = await post_gemini(client, {"contents": gemini_conversation(), "tools": tools})
    assert r.status_code == 200, r.text
    assert "text" in r.json()["candidates"][0]["content"]["parts"][0]


async def test_gemini_streams_carry_the_call(client: httpx.AsyncClient) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": USER}]}], "tools": gemini_tools(("lookup", LOOKUP_SCHEMA))}
    done = (await post_gemini(client, body)).json()
    sse = sse_payloads((await post_gemini(client, body, "streamGenerateContent?alt=sse")).text)
    array = (await post_gemini(client, body, "streamGenerateContent")).json()
    for chunks in (sse, array):
        calls = [p["functionCall"] for c in chunks for p in c["candidates"][0]["content"]["parts"] if "functionCall" in p]
        assert calls == [{"name": "lookup", "args": LOOKUP_ARGS}] == [done["candidates"][0]["content"]["parts"][0]["functionCall"]]
        assert chunks[-1]["usageMetadata"] == done["usageMetadata"] and chunks[-1]["candidates"][0]["finishReason"] == "STOP"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"tools": openai_tools(("get_weather", WEATHER_SCHEMA))},
         "Invalid JSON payload received. Unknown name \"type\" at 'tools[0]': Cannot find field.\n"
         "Invalid JSON payload received. Unknown name \"function\" at 'tools[0]': Cannot find field."),
        ({"tools": gemini_tools(("f", {**WEATHER_SCHEMA, "additionalProperties": False}))},
         "Invalid JSON payload received. Unknown name \"additionalProperties\" at "
         "'tools[0].function_declarations[0].parameters': Cannot find field."),
        ({"tools": gemini_tools(("get weather", WEATHER_SCHEMA))},
         "* GenerateContentRequest.tools[0].function_declarations[0].name: Invalid function name. Must start with a letter "
         "or an underscore. Must be alphameric (a-z, A-Z, 0-9), underscores (_), dots (.) or dashes (-), with a maximum "
         "length of 64.\n"),
        ({"contents": [{"role": "user", "parts": [{"functionResponse": {"response": {"result": "18"}}}]}]},
         "* GenerateContentRequest.contents[0].parts[0].function_response.name: Name cannot be empty.\n"),
    ],
)
async def test_gemini_refuses_malformed_tools(client: httpx.AsyncClient, body: dict[str, Any], message: str) -> None:
    r = await post_gemini(client, {"contents": [{"role": "user", "parts": [{"text": USER}]}], **body})
    assert r.status_code == 400
    assert r.json()["error"] == {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}


# --------------------------------------------------------------------------- the official SDKs


@pytest.fixture(scope="module")
def tools_sandbox(sandbox_factory: Callable[..., Sandbox]) -> Sandbox:
    return sandbox_factory(TOOLS_SCENARIO, time_scale=0.0)


def test_openai_sdk_parses_tool_calls(tools_sandbox: Sandbox) -> None:
    client = openai.OpenAI(base_url=tools_sandbox.base_url("openai"), api_key=OPENAI_KEY, max_retries=0, timeout=20)
    kwargs: dict[str, Any] = {
        "model": "gpt-tools",
        "messages": [{"role": "user", "content": USER}],
        "tools": openai_tools(("lookup", LOOKUP_SCHEMA)),
    }
    done = client.chat.completions.create(**kwargs)
    call = done.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert done.choices[0].finish_reason == "tool_calls" and done.choices[0].message.content is None
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == LOOKUP_ARGS  # type: ignore[union-attr]

    ids, names, arguments, finish = set(), set(), "", None
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        for part in chunk.choices[0].delta.tool_calls or []:
            ids.add(part.id)
            names.add(part.function.name if part.function else None)
            arguments += part.function.arguments or "" if part.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert ids - {None} == {call.id} and names - {None} == {"lookup"}
    assert arguments == call.function.arguments and finish == "tool_calls"  # type: ignore[union-attr]

    follow_up = client.chat.completions.create(
        **{**kwargs, "messages": [*kwargs["messages"], done.choices[0].message.model_dump(exclude_none=True),
                                  {"role": "tool", "tool_call_id": call.id, "content": "3 results"}]}
    )
    assert follow_up.choices[0].finish_reason == "stop" and follow_up.choices[0].message.content


def test_anthropic_sdk_parses_tool_use(tools_sandbox: Sandbox) -> None:
    # The anthropic SDK appends /v1/messages itself.
    client = anthropic.Anthropic(base_url=f"{tools_sandbox.url}/anthropic", api_key=ANTHROPIC_KEY, max_retries=0, timeout=20)
    kwargs: dict[str, Any] = {
        "model": "claude-tools",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": USER}],
        "tools": anthropic_tools(("get_weather", WEATHER_SCHEMA)),
    }
    msg = client.messages.create(**kwargs)
    block = msg.content[0]
    assert isinstance(block, anthropic.types.ToolUseBlock) and msg.stop_reason == "tool_use"
    assert block.name == "get_weather" and block.input == {"city": "Paris"}

    with client.messages.stream(**kwargs) as stream:
        final = stream.get_final_message()
    streamed = final.content[0]
    assert isinstance(streamed, anthropic.types.ToolUseBlock) and final.stop_reason == "tool_use"
    assert (streamed.id, streamed.name, streamed.input) == (block.id, block.name, block.input)
    assert final.usage.output_tokens == msg.usage.output_tokens

    result = {"type": "tool_result", "tool_use_id": block.id, "content": "18 degrees"}
    answer = client.messages.create(
        **{**kwargs, "messages": [*kwargs["messages"], {"role": "assistant", "content": msg.content}, {"role": "user", "content": [result]}]}
    )
    assert answer.stop_reason == "end_turn" and isinstance(answer.content[0], anthropic.types.TextBlock)
