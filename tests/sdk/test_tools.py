"""Tool calling through the official `openai` Python SDK: `tools` with every `tool_choice`,
strict Pydantic tools through `parse()` (`parsed_arguments`), the stream helper's assembled
tool calls (streamed token by token), an `auto` answer streamed as content, and a round trip (the call and its `tool` result sent back). lowbit writes calls in
one grammar-checked JSON format for every model (api/tools.rs), so even a 135M model's
arguments always parse against their schema.
"""

from __future__ import annotations

import json

import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field
from typing import Literal

from conftest import MODEL, client_for

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


class GetWeather(BaseModel):
    """Current weather in a city."""

    city: str = Field(max_length=20)
    unit: Literal["celsius", "fahrenheit"]


class GetTime(BaseModel):
    """Current time in a city."""

    city: str = Field(max_length=20)


TOOLS = [openai.pydantic_function_tool(GetWeather), openai.pydantic_function_tool(GetTime)]


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return client_for(server)


MODELS = {"GetWeather": GetWeather, "GetTime": GetTime}


def required_call(client, max_tokens: int):
    """A `required` call through `parse()`: one, in OpenAI's shape, its arguments parsed into
    its Pydantic tool."""
    r = client.chat.completions.parse(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
        parallel_tool_calls=False, temperature=0, max_tokens=max_tokens,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert isinstance(call.function.parsed_arguments, MODELS[call.function.name])
    return call


def check_round_trip(client, max_tokens: int):
    """A call and its result sent back: the reply is more calls or an answer, well formed."""
    first = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
        parallel_tool_calls=False, temperature=0, max_tokens=max_tokens,
    ).choices[0].message
    call = first.tool_calls[0]
    messages = ASK + [
        first.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees celsius, sunny"},
    ]
    r = client.chat.completions.create(
        model=MODEL, messages=messages, tools=TOOLS, parallel_tool_calls=False,
        temperature=0, max_tokens=80,
    ).choices[0]
    if r.finish_reason == "tool_calls":
        for c in r.message.tool_calls:
            MODELS[c.function.name].model_validate_json(c.function.arguments)
    else:
        assert r.finish_reason == "stop" and r.message.content
        assert "<tool_call>" not in r.message.content


def test_required_tool_call_parses_into_its_model(client):
    call = required_call(client, max_tokens=60)
    assert call.function.name == "GetWeather"
    assert call.function.parsed_arguments == GetWeather(city="Paris", unit="celsius")


def test_named_and_none_choices(client):
    r = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, temperature=0, max_tokens=60,
        tool_choice={"type": "function", "function": {"name": "GetTime"}}, parallel_tool_calls=False,
    )
    [call] = r.choices[0].message.tool_calls
    assert call.function.name == "GetTime"
    GetTime.model_validate_json(call.function.arguments)
    plain = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=20
    )
    assert plain.choices[0].message.tool_calls is None
    assert plain.choices[0].message.content


def test_sampled_parallel_calls_all_parse(client):
    r = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
        temperature=1.0, seed=5, n=3, max_tokens=160,
    )
    for c in r.choices:
        if c.finish_reason == "length":
            continue  # a small model may keep adding calls until max_tokens
        assert c.finish_reason == "tool_calls"
        assert c.message.tool_calls
        for call in c.message.tool_calls:
            model = MODELS[call.function.name]
            model.model_validate_json(call.function.arguments)


def test_stream_helper_assembles_the_calls(client):
    want = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
        parallel_tool_calls=False, temperature=0, max_tokens=60,
    ).choices[0].message.tool_calls
    with client.chat.completions.stream(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
        parallel_tool_calls=False, temperature=0, max_tokens=60,
    ) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in events
    # Streamed token by token, not in one piece at the end.
    assert events.count("tool_calls.function.arguments.delta") > 3, events
    got = final.choices[0].message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in got] == [
        (c.function.name, json.loads(c.function.arguments)) for c in want
    ]
    assert got[0].function.parsed_arguments == GetWeather(city="Paris", unit="celsius")
    assert final.choices[0].finish_reason == "tool_calls"


def test_an_auto_answer_streams_as_content(client):
    ask = dict(
        model=MODEL, messages=[{"role": "user", "content": "Write a haiku about the sea."}],
        tools=TOOLS, temperature=0, max_tokens=60,
    )
    want = client.chat.completions.create(**ask).choices[0]
    assert want.finish_reason == "stop" and want.message.tool_calls is None
    chunks = list(client.chat.completions.create(**ask, stream=True))
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 3
    assert "".join(texts) == want.message.content
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_round_trip_with_the_tool_result(client):
    check_round_trip(client, max_tokens=60)


def test_bad_tools_are_400s(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=4, tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "Nope"}},
        )
    assert e.value.param == "tool_choice"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL, messages=ASK + [{"role": "tool", "content": "18"}], max_tokens=4, tools=TOOLS
        )
    assert e.value.param == "messages[1].tool_call_id"


class Haiku(BaseModel):
    lines: list[str] = Field(min_length=3, max_length=3)


def check_tools_with_a_response_format(client):
    """`parse()` with tools and a Pydantic `response_format`: the reply is a call of a tool or
    an answer that parses into the model (`message.parsed`)."""
    r = client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Write a haiku about the sea."}],
        tools=TOOLS, response_format=Haiku, parallel_tool_calls=False, temperature=0, max_tokens=120,
    )
    message = r.choices[0].message
    if r.choices[0].finish_reason == "tool_calls":
        [call] = message.tool_calls
        assert isinstance(call.function.parsed_arguments, (GetWeather, GetTime))
    else:
        assert r.choices[0].finish_reason == "stop", r
        assert isinstance(message.parsed, Haiku), message
        assert len(message.parsed.lines) == 3


def test_tools_with_a_response_format(client):
    check_tools_with_a_response_format(client)
