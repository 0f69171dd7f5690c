#!/usr/bin/env python3
"""Tool calling against lowbit with the official `openai` Python SDK: the model asks for a
tool, this script runs it and sends the result back, and the model answers with it.

    pip install openai   # or: ./scripts/sdk-env.sh && .venv-sdk/bin/python ...
    python client-examples/python/tools.py "What is the weather in Paris?"

Prints each call (`name(arguments)`) and the final answer. LOWBIT_URL, LOWBIT_API_KEY and
LOWBIT_MODEL as for chat.py.
"""

import json
import os
import sys

from openai import OpenAI

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 40},
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
        },
    }
]


def get_weather(city: str, unit: str) -> str:
    """A stand-in for a real weather service."""
    degrees = 18 if unit == "celsius" else 64
    return f"{degrees} degrees {unit} and sunny in {city}"


def main() -> None:
    base_url = os.environ.get("LOWBIT_URL", "http://127.0.0.1:8000").rstrip("/") + "/v1"
    client = OpenAI(base_url=base_url, api_key=os.environ.get("LOWBIT_API_KEY") or "none")
    prompt = sys.argv[1] if len(sys.argv) > 1 else "What is the weather in Paris?"
    model = os.environ.get("LOWBIT_MODEL") or client.models.list().data[0].id
    messages = [{"role": "user", "content": prompt}]

    # The model chooses: a call (arguments valid under the tool's schema) or an answer.
    first = client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, temperature=0, max_tokens=100,
        parallel_tool_calls=False,
    ).choices[0].message
    if not first.tool_calls:
        print(first.content)
        return
    messages.append(first.model_dump(exclude_none=True))
    for call in first.tool_calls:
        arguments = json.loads(call.function.arguments)
        print(f"{call.function.name}({json.dumps(arguments)})")
        result = get_weather(**arguments)
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})

    # With the results in the conversation, ask for the answer itself.
    final = client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, tool_choice="none", temperature=0,
        max_tokens=100,
    ).choices[0].message
    print(final.content)


if __name__ == "__main__":
    main()
