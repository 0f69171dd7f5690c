"""`lowbit serve --device gpu` through the official `openai` SDK.

Where there is no GPU (CI), `--device gpu` takes lavapipe, Mesa's software Vulkan adapter
(installed by scripts/test.sh): slow, so the requests are short. The GPU server's greedy answer
must be the CPU server's, streaming and not: the engine and the API are the same, only the
backend differs, and the two backends compute the same int8 products.
"""

from __future__ import annotations

import pytest
from openai import OpenAI

from conftest import MODEL

QUESTION = [{"role": "user", "content": "What is 2+2?"}]
MAX_TOKENS = 6


def client_for(server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=110)


@pytest.mark.timeout(300)
def test_serve_on_the_gpu_answers_like_the_cpu(server_factory):
    cpu = server_factory("--device", "cpu")
    want = (
        client_for(cpu)
        .chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=MAX_TOKENS)
        .choices[0]
        .message.content
    )
    assert want

    gpu = server_factory("--device", "gpu", env={"XDG_RUNTIME_DIR": "/tmp"})
    assert "running on the GPU" in gpu.stderr(), gpu.stderr()
    client = client_for(gpu)
    r = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=MAX_TOKENS
    )
    assert r.choices[0].message.content == want
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == MAX_TOKENS

    stream = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        temperature=0,
        max_tokens=MAX_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == MAX_TOKENS
    metrics = gpu.metrics()
    assert metrics["lowbit:num_requests_running"] == 0
