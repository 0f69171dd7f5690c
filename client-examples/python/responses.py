#!/usr/bin/env python3
"""A two-turn conversation through OpenAI's Responses API with the official `openai` SDK:
the first answer whole, the second streamed, the server keeping the conversation
(`previous_response_id`), so the second request sends only the new question.

    python client-examples/python/responses.py "What is 2+2?" "And 3+3?"

LOWBIT_URL (default http://127.0.0.1:8000), LOWBIT_API_KEY and LOWBIT_MODEL as in chat.py.
Prints each answer on its own line.
"""

import os
import sys

from openai import OpenAI


def main() -> None:
    base_url = os.environ.get("LOWBIT_URL", "http://127.0.0.1:8000").rstrip("/") + "/v1"
    client = OpenAI(base_url=base_url, api_key=os.environ.get("LOWBIT_API_KEY") or "none")
    first = sys.argv[1] if len(sys.argv) > 1 else "What is 2+2?"
    second = sys.argv[2] if len(sys.argv) > 2 else "And 3+3?"
    model = os.environ.get("LOWBIT_MODEL") or client.models.list().data[0].id

    r = client.responses.create(model=model, input=first, temperature=0, max_output_tokens=24)
    print(r.output_text.replace("\n", " "))

    stream = client.responses.create(
        model=model, input=second, previous_response_id=r.id, temperature=0, max_output_tokens=24, stream=True
    )
    for event in stream:
        if event.type == "response.output_text.delta":
            print(event.delta.replace("\n", " "), end="", flush=True)
    print()


if __name__ == "__main__":
    main()
