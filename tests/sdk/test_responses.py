"""OpenAI's Responses API (`/v1/responses`) through the official `openai` Python SDK:
`responses.create` (its `output_text` equals the chat answer of the same conversation), a
conversation continued with `previous_response_id`, the stream helper and raw events,
`responses.parse` with a Pydantic `text_format`, function tools with the call's output sent
back (the cookbook's loop: the returned items appended to the input), and the stored
response retrieved, its input items listed, and deleted.
"""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

from conftest import MODEL, client_for
from test_tools import GetWeather

QUESTION = "What is 2+2?"


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return client_for(server)


def chat_answer(client: OpenAI, messages, max_tokens: int) -> str:
    r = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=max_tokens)
    return r.choices[0].message.content


def test_create_says_what_the_chat_says_and_continues(client):
    r = client.responses.create(
        model=MODEL, input=QUESTION, instructions="Answer briefly.", temperature=0, max_output_tokens=12
    )
    assert r.id.startswith("resp_") and r.object == "response" and r.model == MODEL
    said = chat_answer(
        client, [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}], 12
    )
    assert r.output_text == said
    assert r.status in ("completed", "incomplete")
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.output_tokens_details.reasoning_tokens == 0

    follow = client.responses.create(
        model=MODEL, input="And 3+3?", previous_response_id=r.id, temperature=0, max_output_tokens=12
    )
    history = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": said},
        {"role": "user", "content": "And 3+3?"},
    ]
    assert follow.output_text == chat_answer(client, history, 12)
    assert follow.previous_response_id == r.id


def test_stream_helper_and_raw_events_add_up(client):
    whole = client.responses.create(model=MODEL, input=QUESTION, temperature=0, max_output_tokens=12, store=False)
    deltas, snapshots = [], []
    with client.responses.stream(model=MODEL, input=QUESTION, temperature=0, max_output_tokens=12) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
                snapshots.append(event.snapshot)
        final = stream.get_final_response()
    assert len(deltas) > 2
    assert "".join(deltas) == final.output_text == whole.output_text
    # The helper's running snapshot: one part, growing by each delta.
    assert snapshots == ["".join(deltas[: k + 1]) for k in range(len(deltas))]
    assert final.usage.output_tokens == whole.usage.output_tokens

    events = list(client.responses.create(model=MODEL, input=QUESTION, temperature=0, max_output_tokens=4, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[1].type == "response.in_progress"
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert events[-1].response.usage.output_tokens == 4


class Sum(BaseModel):
    answer: int = Field(ge=0, le=100)
    sure: bool


def test_parse_with_a_pydantic_text_format(client):
    r = client.responses.parse(model=MODEL, input=QUESTION, text_format=Sum, temperature=0, max_output_tokens=40)
    assert r.status == "completed"
    assert isinstance(r.output_parsed, Sum)
    assert Sum.model_validate_json(r.output_text) == r.output_parsed


def view(response):
    """A response's output without its random ids."""
    return [
        (o.type, o.name, o.arguments) if o.type == "function_call" else (o.type, response.output_text)
        for o in response.output
    ]


def test_function_call_and_its_output_sent_back(client):
    schema = openai.pydantic_function_tool(GetWeather)["function"]
    tools = [{"type": "function", "name": schema["name"], "description": schema["description"],
              "parameters": schema["parameters"], "strict": True}]
    items = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.responses.create(
        model=MODEL, input=items, tools=tools, tool_choice="required", parallel_tool_calls=False,
        temperature=0, max_output_tokens=80,
    )
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1, r.output
    call = calls[0]
    assert call.name == "GetWeather" and call.call_id.startswith("call_")
    GetWeather.model_validate_json(call.arguments)

    # As the cookbook does: the returned items go back in the input, then the call's output.
    items += r.output
    items.append({"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees, sunny"})
    answer = client.responses.create(model=MODEL, input=items, tools=tools, temperature=0, max_output_tokens=30)
    assert answer.status in ("completed", "incomplete")
    assert answer.output and all(o.type in ("message", "function_call") for o in answer.output)
    # The same from the store: only the output is sent, after the response it answers.
    stored = client.responses.create(
        model=MODEL, previous_response_id=r.id, tools=tools, temperature=0, max_output_tokens=30,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees, sunny"}],
    )
    assert view(stored) == view(answer)
    assert stored.usage.input_tokens == answer.usage.input_tokens


def test_retrieve_list_input_items_and_delete(client):
    r = client.responses.create(model=MODEL, input=QUESTION, temperature=0, max_output_tokens=4)
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text
    items = client.responses.input_items.list(
        r.id, include=["message.output_text.logprobs", "reasoning.encrypted_content"]
    )
    assert len(items.data) == 1 and items.data[0].type == "message"
    assert items.data[0].content[0].text == QUESTION
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model=MODEL, input="Go on", previous_response_id=r.id)
    assert e.value.body["code"] == "previous_response_not_found"


def test_unsupported_parameters_are_named(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input=QUESTION, background=True)
    assert e.value.body["param"] == "background"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input=QUESTION, tools=[{"type": "web_search"}])
    assert e.value.body["param"] == "tools[0].type"
    image = [{"role": "user", "content": [{"type": "input_image", "image_url": "https://example.com/a.png"}]}]
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input=image)
    assert e.value.body["param"] == "input[0].content[0].type"


def test_a_stateless_client_with_reasoning_settings(client):
    """As agents such as Codex send it: `store: false`, reasoning effort and summary, encrypted
    reasoning included; the conversation is sent whole each turn."""
    items = [{"role": "user", "content": QUESTION}]
    kw = dict(
        model=MODEL, reasoning={"effort": "low", "summary": "auto"}, include=["reasoning.encrypted_content"],
        store=False, temperature=0, max_output_tokens=8, prompt_cache_key="conversation-1",
        safety_identifier="user-1",
    )
    r = client.responses.create(input=items, **kw)
    assert r.reasoning.effort == "low" and r.reasoning.summary == "auto" and r.store is False
    assert r.prompt_cache_key == "conversation-1" and r.safety_identifier == "user-1"
    c = client.chat.completions.create(
        model=MODEL, messages=items, max_tokens=8, temperature=0, reasoning_effort="low",
        prompt_cache_key="conversation-1", safety_identifier="user-1",
    )
    assert c.choices[0].message.content == r.output_text
    items += r.output
    items.append({"role": "user", "content": "And 3+3?"})
    follow = client.responses.create(input=items, **kw)
    assert follow.usage.input_tokens > r.usage.input_tokens + r.usage.output_tokens
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
