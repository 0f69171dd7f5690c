#!/usr/bin/env python3
"""Structured output against lowbit with the official `openai` Python SDK: the reply is filled
into a Pydantic model (the SDK sends it as a strict JSON schema; lowbit constrains every token
to it, so the reply always parses).

    pip install openai   # or: ./scripts/sdk-env.sh && .venv-sdk/bin/python ...
    python client-examples/python/structured.py "Describe Alice, 30, who has a cat named Tom."

Prints the parsed object as JSON. LOWBIT_URL, LOWBIT_API_KEY and LOWBIT_MODEL as for chat.py.
"""

import os
import sys
from typing import Literal

from openai import OpenAI
from pydantic import BaseModel, Field


class Pet(BaseModel):
    kind: Literal["cat", "dog", "fish"]
    name: str = Field(max_length=16)


class Person(BaseModel):
    name: str = Field(max_length=16)
    age: int = Field(ge=0, le=120)
    pets: list[Pet] = Field(max_length=3)


def main() -> None:
    base_url = os.environ.get("LOWBIT_URL", "http://127.0.0.1:8000").rstrip("/") + "/v1"
    client = OpenAI(base_url=base_url, api_key=os.environ.get("LOWBIT_API_KEY") or "none")
    prompt = sys.argv[1] if len(sys.argv) > 1 else "Describe Alice, 30, who has a cat named Tom."
    model = os.environ.get("LOWBIT_MODEL") or client.models.list().data[0].id

    reply = client.chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": prompt + " Answer in JSON."}],
        response_format=Person,
        temperature=0,
        max_tokens=200,
    )
    person = reply.choices[0].message.parsed
    if person is None:
        sys.exit(f"no parsed reply (finish_reason {reply.choices[0].finish_reason})")
    print(person.model_dump_json())


if __name__ == "__main__":
    main()
