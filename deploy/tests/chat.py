#!/usr/bin/env python3
"""A chat completion against a running lowbit through the official OpenAI SDK (deploy/test.sh).

  chat.py BASE_URL   e.g. http://127.0.0.1:18000/v1
"""
import sys

from openai import OpenAI

client = OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0, timeout=60)
models = [m.id for m in client.models.list()]
r = client.chat.completions.create(
    model=models[0],
    messages=[{"role": "user", "content": "What is 2+2?"}],
    temperature=0,
    max_tokens=32,
)
answer = r.choices[0].message.content
print(f"  {models[0]}: {answer!r} ({r.usage.completion_tokens} tokens, finish {r.choices[0].finish_reason})")
if "4" not in answer:
    sys.exit(f"unexpected answer: {answer!r}")
