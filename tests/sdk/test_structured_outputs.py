"""Structured outputs through the official `openai` Python SDK: `chat.completions.parse` with
Pydantic models (the SDK sends a strict JSON schema, nested models as `$defs`), its streaming
helper, `json_object`, vLLM's `guided_*` fields through `extra_body`, and the errors.

Every output must parse into its model: the server masks each token with the schema's grammar
(engine/grammar.rs), so even a 135M model, sampled at temperature 1, writes valid JSON.
"""

from __future__ import annotations

import json
from typing import Literal

import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

from conftest import MODEL, client_for

ALICE = [{"role": "user", "content": "Describe Alice, 30, who has a cat named Tom, as JSON."}]


class Pet(BaseModel):
    kind: Literal["cat", "dog", "fish"]
    name: str = Field(max_length=16)


class Person(BaseModel):
    name: str = Field(max_length=16)
    age: int = Field(ge=0, le=120)
    pets: list[Pet] = Field(max_length=3)


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return client_for(server)


def test_parse_fills_a_pydantic_model(client):
    r = client.chat.completions.parse(
        model=MODEL, messages=ALICE, response_format=Person, temperature=0, max_tokens=120
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    person = choice.message.parsed
    assert isinstance(person, Person), choice.message.content
    assert person.name == "Alice" and person.age == 30
    assert Pet(kind="cat", name="Tom") in person.pets
    # Written as json.dumps writes it: ", " and ": ", no other whitespace.
    assert choice.message.content == json.dumps(person.model_dump())


def test_sampled_choices_all_parse(client):
    r = client.chat.completions.parse(
        model=MODEL,
        messages=ALICE,
        response_format=Person,
        temperature=1.0,
        seed=11,
        n=4,
        max_tokens=120,
    )
    texts = set()
    for c in r.choices:
        assert c.finish_reason == "stop", c.message.content
        assert isinstance(c.message.parsed, Person), c.message.content
        texts.add(c.message.content)
    assert len(texts) > 1, "sampled choices should differ"


def test_stream_helper_gives_the_parsed_model(client):
    want = client.chat.completions.parse(
        model=MODEL, messages=ALICE, response_format=Person, temperature=0, max_tokens=120
    ).choices[0].message
    with client.chat.completions.stream(
        model=MODEL, messages=ALICE, response_format=Person, temperature=0, max_tokens=120
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == want.content
    assert final.choices[0].message.parsed == want.parsed


def test_json_object_and_vllm_guided_fields(client):
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give three colors as a JSON object."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=60,
    )
    text = r.choices[0].message.content
    assert text.startswith("{") and "\n" not in text, text
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)

    answer = client.completions.create(
        model=MODEL,
        prompt="Is Paris the capital of France? Answer:",
        max_tokens=5,
        temperature=0,
        extra_body={"guided_choice": [" yes", " no"]},
    ).choices[0]
    assert answer.text in (" yes", " no") and answer.finish_reason == "stop"

    year = client.completions.create(
        model=MODEL,
        prompt="The first moon landing was in the year",
        max_tokens=8,
        temperature=0,
        extra_body={"guided_regex": " (19|20)[0-9]{2}"},
    ).choices[0]
    assert len(year.text) == 5 and year.text[1:].isdigit(), year.text
    assert year.finish_reason == "stop"

    # vLLM 0.12 and later send `structured_outputs` instead of the guided_* fields.
    grammar = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name two colors."}],
        max_tokens=30,
        temperature=0,
        extra_body={"structured_outputs": {"grammar": 'start: color ", " color\ncolor: "red" | "green" | "blue"'}},
    ).choices[0]
    first, second = grammar.message.content.split(", ")
    assert {first, second} <= {"red", "green", "blue"}, grammar.message.content
    assert grammar.finish_reason == "stop"

    person = client.completions.create(
        model=MODEL,
        prompt="Alice as JSON:",
        max_tokens=120,
        temperature=0,
        extra_body={"guided_json": Person.model_json_schema()},
    ).choices[0]
    Person.model_validate_json(person.text)


def test_bad_formats_are_400s(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL,
            messages=ALICE,
            max_tokens=4,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "nope"}}}},
            },
        )
    assert e.value.param == "response_format"
    assert "nope" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL,
            messages=ALICE,
            max_tokens=4,
            response_format={"type": "json_object"},
            extra_body={"guided_choice": ["a"]},
        )
    assert e.value.param == "guided_choice"
