#!/usr/bin/env python3
"""Streaming chat against lowbit with the official `openai` Python SDK.

    pip install openai   # or: ./scripts/sdk-env.sh && .venv-sdk/bin/python ...
    python client-examples/python/chat.py "What is 2+2?"

LOWBIT_URL (default http://127.0.0.1:8000), LOWBIT_API_KEY (if the server has --api-key) and
LOWBIT_MODEL (default: the first model that /v1/models lists) pick the server and the model.
"""

import os
import sys

from openai import OpenAI


def main() -> None:
    base_url = os.environ.get("LOWBIT_URL", "http://127.0.0.1:8000").rstrip("/") + "/v1"
    client = OpenAI(base_url=base_url, api_key=os.environ.get("LOWBIT_API_KEY") or "none")
    prompt = sys.argv[1] if len(sys.argv) > 1 else "What is 2+2?"
    model = os.environ.get("LOWBIT_MODEL") or client.models.list().data[0].id

    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
