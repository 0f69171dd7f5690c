"""`lowbit serve --device gpu` through the official `openai` SDK.

Where there is no GPU (CI), `--device gpu` takes lavapipe, Mesa's software Vulkan adapter
(installed by scripts/test.sh): slow, so the requests are short. The GPU server's greedy answer
must be the CPU server's, streaming and not: the engine and the API are the same, only the
backend differs, and the two backends compute the same int8 products. Logprobs the GPU computes
where the logits live (gpu/src/logprobs.rs) must be the ones the host computes from the GPU's
whole rows (the CPU's logits differ by more: a rounding flip in an int8 activation spreads);
so must a prompt's, computed with each next prompt token given. A structured output (a JSON
schema's grammar masking the GPU's rows on the host) must be the CPU server's too.
"""

from __future__ import annotations

import json

import pytest
from openai import OpenAI

from conftest import MODEL, client_for

QUESTION = [{"role": "user", "content": "What is 2+2?"}]
MAX_TOKENS = 6


def gpu_client(server) -> OpenAI:
    # lavapipe is slow: a longer timeout than the CPU tests'.
    return client_for(server, timeout=110)


def logprobs_of(client: OpenAI, **sampling) -> list:
    r = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=MAX_TOKENS, logprobs=True, top_logprobs=3, **sampling
    )
    return r.choices[0].logprobs.content


@pytest.mark.timeout(400)
def test_serve_on_the_gpu_answers_like_the_cpu(server_factory):
    cpu = server_factory("--device", "cpu")
    want = (
        gpu_client(cpu)
        .chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=MAX_TOKENS)
        .choices[0]
        .message.content
    )
    assert want

    gpu = server_factory("--device", "gpu", env={"XDG_RUNTIME_DIR": "/tmp"})
    assert "running on the GPU" in gpu.stderr(), gpu.stderr()
    client = gpu_client(gpu)
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

    # Logprobs of the first token's alternatives: computed on the GPU for a greedy row, on the
    # host from the whole row for a top-k row (its token chosen on the host): the same prompt,
    # the same logits.
    on_device = logprobs_of(client, temperature=0)
    from_whole_row = logprobs_of(client, temperature=1.0, top_p=1.0, seed=3, extra_body={"top_k": 40})
    assert "".join(t.token for t in on_device) == want
    first_device, first_host = on_device[0].top_logprobs, from_whole_row[0].top_logprobs
    assert [a.token for a in first_device] == [a.token for a in first_host]
    for d, h in zip(first_device, first_host):
        assert abs(d.logprob - h.logprob) < 1e-4, (d, h)
    assert on_device[0].token == first_device[0].token
    assert abs(on_device[0].logprob - first_device[0].logprob) < 1e-6
    # Drawn on the GPU, with logprobs: each token's probability, its alternatives ranked.
    sampled = logprobs_of(client, temperature=1.0, seed=3)
    assert len(sampled) == MAX_TOKENS
    for t in sampled:
        assert len(t.top_logprobs) == 3
        ranked = [a.logprob for a in t.top_logprobs]
        assert ranked == sorted(ranked, reverse=True) and ranked[0] <= 0.0
        assert t.logprob <= ranked[0] + 1e-6
        tokens = [a.token for a in t.top_logprobs]
        if t.token in tokens:
            assert abs(t.logprob - ranked[tokens.index(t.token)]) < 1e-6

    # Prompt logprobs (echo), computed on the GPU with each prompt token given: the last one's
    # is what the GPU gives that token when it generates it after the same prefix; all are
    # near the CPU's (int8 activations round apart).
    _, _, tok = gpu.post_json("/tokenize", {"prompt": "The capital of France is Paris"})
    ids = tok["tokens"]
    echo = dict(model=MODEL, prompt=ids, max_tokens=0, echo=True, logprobs=2)
    on_gpu = client.completions.create(**echo).choices[0].logprobs
    on_cpu = gpu_client(cpu).completions.create(**echo).choices[0].logprobs
    assert on_gpu.tokens == on_cpu.tokens and len(on_gpu.tokens) == len(ids)
    assert on_gpu.token_logprobs[0] is None
    for g, c in zip(on_gpu.token_logprobs[1:], on_cpu.token_logprobs[1:]):
        assert abs(g - c) < 0.1 + 0.02 * abs(c), (on_gpu.token_logprobs, on_cpu.token_logprobs)
    generated = client.completions.create(
        model=MODEL, prompt=ids[:-1], max_tokens=1, temperature=0, logprobs=2
    ).choices[0].logprobs
    assert generated.tokens == on_gpu.tokens[-1:]
    assert abs(generated.token_logprobs[0] - on_gpu.token_logprobs[-1]) < 1e-4

    # Structured output: the grammar's mask is applied on the host over the GPU's whole rows,
    # and the constrained greedy answer is the CPU server's.
    structured = dict(
        model=MODEL,
        messages=QUESTION,
        temperature=0,
        max_tokens=12,
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "sum",
                "schema": {
                    "type": "object",
                    "properties": {"answer": {"type": "integer"}},
                    "required": ["answer"],
                    "additionalProperties": False,
                },
            },
        },
    )
    on_gpu = client.chat.completions.create(**structured).choices[0]
    on_cpu = gpu_client(cpu).chat.completions.create(**structured).choices[0]
    assert on_gpu.finish_reason == "stop", on_gpu.message.content
    assert on_gpu.message.content == on_cpu.message.content
    assert set(json.loads(on_gpu.message.content)) == {"answer"}

    metrics = gpu.metrics()
    assert metrics["lowbit:num_requests_running"] == 0
    # Where it serves, and what the model holds on the GPU: weights, pool, recycled buffers.
    backends = [k for k in metrics if k.startswith("lowbit:backend_info{")]
    assert len(backends) == 1 and 'backend="wgpu:' in backends[0], backends
    for kind in ["weights", "kv_cache", "activations"]:
        assert metrics[f'lowbit:device_memory_bytes{{kind="{kind}"}}'] > 0, kind
