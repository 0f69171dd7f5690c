"""Tool calling in a model's own syntax through the official `openai` Python SDK: a server
given Qwen2.5's chat template (`--chat-template`; `--tool-call-parser auto` reads its
`<tool_call>` tags, api/tool_syntax.rs) describes the tools through the template and reads the
model's tagged calls back into OpenAI's `tool_calls`. SmolLM2 speaks ChatML as Qwen does;
the grammar keeps its calls valid, so `parse()` with strict Pydantic tools, the stream helper
and a round trip work as with lowbit's generic format (test_tools.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from openai import OpenAI

from conftest import MODEL, client_for
from test_tools import (
    ASK,
    TOOLS,
    GetWeather,
    check_round_trip,
    check_tools_with_a_response_format,
    required_call,
)

QWEN25 = (
    Path(__file__).resolve().parents[2]
    / "server" / "tests" / "data" / "chat_templates" / "Qwen-Qwen2.5-7B-Instruct.jinja"
)


@pytest.fixture(scope="module")
def client(request) -> OpenAI:
    from conftest import Server, _stop_all

    server = Server(["--chat-template", str(QWEN25)]).start()
    request.addfinalizer(lambda: _stop_all([server]))
    assert 'tool_call_parser="hermes"' in server.stderr(), server.stderr()
    return client_for(server)


def test_required_call_parses_into_its_model(client):
    required_call(client, max_tokens=80)


def test_stream_helper_assembles_the_calls(client):
    ask = dict(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "GetWeather"}},
        parallel_tool_calls=False, temperature=0, max_tokens=80,
    )
    want = client.chat.completions.create(**ask).choices[0].message.tool_calls
    with client.chat.completions.stream(**ask) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in events
    # Streamed as they are written, not in one piece at the end.
    assert events.count("tool_calls.function.arguments.delta") > 3, events
    got = final.choices[0].message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in got] == [
        (c.function.name, c.function.arguments) for c in want
    ]
    assert isinstance(got[0].function.parsed_arguments, GetWeather)
    assert final.choices[0].finish_reason == "tool_calls"


def test_round_trip_with_the_tool_result(client):
    check_round_trip(client, max_tokens=80)


def test_tools_with_a_response_format(client):
    check_tools_with_a_response_format(client)
