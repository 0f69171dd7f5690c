"""lowbit through the official `openai` Python SDK (and raw HTTP where the SDK hides things).

Most tests share one default server (the `server` fixture). They run one after another, so a
test may compare /metrics before and after its own requests. Tests that need other flags, or
that stop the server, start their own with `server_factory`.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import threading
import time
import uuid

import httpx
import openai
import pytest
from openai import OpenAI

from conftest import BIN, MODEL, MODEL_PATH, ROOT, Server, client_for

QUESTION = [{"role": "user", "content": "What is 2+2?"}]
ANSWER = "The answer to this classic math problem is 4."
FRANCE = "The capital of France is"


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return client_for(server)


def ask(client: OpenAI, messages=QUESTION, **kw):
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=MODEL, messages=messages, **kw)


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05):
    """Polls predicate() until it returns a truthy value (returned) or the time is up (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def collect_chat_stream(stream):
    """(chunks, {index: joined content}, {index: finish_reason})."""
    chunks, text, finish = [], {}, {}
    for chunk in stream:
        chunks.append(chunk)
        for choice in chunk.choices:
            text.setdefault(choice.index, "")
            if choice.delta.content:
                text[choice.index] += choice.delta.content
            if choice.finish_reason is not None:
                assert choice.index not in finish, f"two finish chunks for choice {choice.index}"
                finish[choice.index] = choice.finish_reason
    return chunks, text, finish


# --- models ---------------------------------------------------------------------------------------


def test_models_list_and_retrieve(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].object == "model"
    assert models.data[0].owned_by == "lowbit"
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# --- chat -----------------------------------------------------------------------------------------


def test_chat_greedy(client, server):
    r = ask(client)
    assert r.id.startswith("chatcmpl-")
    assert r.object == "chat.completion"
    assert r.model == MODEL
    assert r.system_fingerprint
    assert abs(r.created - time.time()) < 60
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == ANSWER
    assert choice.finish_reason == "stop"
    assert choice.logprobs is None
    # The prompt is exactly what /tokenize makes of the same messages.
    status, _, tok = server.post_json("/tokenize", {"messages": QUESTION})
    assert status == 200
    assert r.usage.prompt_tokens == tok["count"] == len(tok["tokens"])
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details is not None
    assert 0 <= r.usage.prompt_tokens_details.cached_tokens <= r.usage.prompt_tokens


def test_chat_max_tokens_gives_length(client):
    r = ask(client, max_tokens=3)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3
    assert ANSWER.startswith(r.choices[0].message.content)
    # max_completion_tokens is the newer name for the same limit.
    r2 = ask(client, max_completion_tokens=3)
    assert r2.choices[0].message.content == r.choices[0].message.content
    assert r2.usage.completion_tokens == 3


def test_chat_stream_include_usage(client):
    plain = ask(client)
    chunks, text, finish = collect_chat_stream(
        ask(client, stream=True, stream_options={"include_usage": True})
    )
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
    first = chunks[0].choices[0]
    assert first.delta.role == "assistant" and first.delta.content == ""
    assert text == {0: ANSWER}
    assert finish == {0: "stop"}
    # The finish chunk has an empty delta; then one usage chunk with no choices.
    finish_chunk = chunks[-2]
    assert finish_chunk.choices[0].finish_reason == "stop"
    assert not finish_chunk.choices[0].delta.content and finish_chunk.choices[0].delta.role is None
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == plain.usage.prompt_tokens
    assert last.usage.completion_tokens == plain.usage.completion_tokens
    assert last.usage.total_tokens == plain.usage.total_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_without_usage(client):
    chunks, text, finish = collect_chat_stream(ask(client, stream=True))
    assert text == {0: ANSWER} and finish == {0: "stop"}
    assert all(c.choices for c in chunks), "a chunk without choices but include_usage was not set"
    assert all(c.usage is None for c in chunks)


def test_chat_stream_raw_sse(server):
    """The wire format the SDK parses: `data: {json}` events, then `data: [DONE]`."""
    body = {"model": MODEL, "messages": QUESTION, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines()]
    events = [line for line in lines if line]
    assert all(e.startswith("data: ") for e in events), events
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == ANSWER
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


# --- completions ----------------------------------------------------------------------------------


def test_completion_greedy(client):
    r = client.completions.create(model=MODEL, prompt=FRANCE, max_tokens=8, temperature=0)
    assert r.id.startswith("cmpl-")
    assert r.object == "text_completion"
    assert r.model == MODEL
    assert len(r.choices) == 1 and r.choices[0].index == 0
    assert r.choices[0].text.startswith(" Paris.")
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 8
    assert r.usage.prompt_tokens == 5
    assert r.usage.total_tokens == 13


def test_completion_stream_include_usage(client):
    plain = client.completions.create(model=MODEL, prompt=FRANCE, max_tokens=8, temperature=0)
    stream = client.completions.create(
        model=MODEL,
        prompt=FRANCE,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "text_completion" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("cmpl-")
    text = "".join(ch.text for c in chunks for ch in c.choices)
    assert text == plain.choices[0].text
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens == 8


def test_completion_prompt_forms_and_echo(client, server):
    single = client.completions.create(model=MODEL, prompt=FRANCE, max_tokens=6, temperature=0)
    other = "The largest planet in the solar system is"
    other_single = client.completions.create(
        model=MODEL, prompt=other, max_tokens=6, temperature=0
    )
    # A list of prompts: one choice per prompt, in order.
    both = client.completions.create(
        model=MODEL, prompt=[FRANCE, other], max_tokens=6, temperature=0
    )
    assert [c.index for c in both.choices] == [0, 1]
    assert [c.text for c in both.choices] == [single.choices[0].text, other_single.choices[0].text]
    assert both.usage.completion_tokens == 12
    # Token ids, as /tokenize gives them.
    _, _, tok = server.post_json("/tokenize", {"prompt": FRANCE})
    ids = client.completions.create(
        model=MODEL, prompt=tok["tokens"], max_tokens=6, temperature=0
    )
    assert ids.choices[0].text == single.choices[0].text
    assert ids.usage.prompt_tokens == tok["count"]
    # echo: the prompt, then the completion.
    echoed = client.completions.create(
        model=MODEL, prompt=FRANCE, max_tokens=6, temperature=0, echo=True
    )
    assert echoed.choices[0].text == FRANCE + single.choices[0].text


def test_completion_prompt_logprobs_as_lm_eval_asks(client, server):
    """What lm-evaluation-harness's loglikelihood sends: token ids, echo, logprobs, max_tokens
    0 or 1, temperature 0; it reads the continuation's token_logprobs and whether each was the
    likeliest (its top_logprobs)."""
    _, _, tok = server.post_json("/tokenize", {"prompt": FRANCE + " Paris"})
    ids = tok["tokens"]
    r = client.completions.create(
        model=MODEL, prompt=ids, max_tokens=1, temperature=0, echo=True, logprobs=1
    )
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(ids) + 1
    assert lp.tokens[: len(ids)] == ["The", " capital", " of", " France", " is", " Paris"]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v < 0 for v in lp.token_logprobs[1:])
    assert r.choices[0].text.startswith(FRANCE + " Paris")
    # The continuation " Paris" is the greedy choice after FRANCE, and its logprob is that of
    # the token a plain request generates there.
    ctx = len(ids) - 1
    greedy = max(lp.top_logprobs[ctx].items(), key=lambda kv: kv[1])
    assert greedy[0] == lp.tokens[ctx] == " Paris"
    plain = client.completions.create(
        model=MODEL, prompt=ids[:ctx], max_tokens=1, temperature=0, logprobs=1
    )
    assert plain.choices[0].logprobs.tokens == [" Paris"]
    assert abs(plain.choices[0].logprobs.token_logprobs[0] - lp.token_logprobs[ctx]) < 1e-4
    # max_tokens 0: the prompt alone, the same figures.
    alone = client.completions.create(
        model=MODEL, prompt=ids, max_tokens=0, temperature=0, echo=True, logprobs=1
    )
    assert alone.choices[0].text == FRANCE + " Paris"
    assert alone.choices[0].finish_reason == "length"
    assert alone.usage.completion_tokens == 0
    assert alone.choices[0].logprobs.token_logprobs == lp.token_logprobs[: len(ids)]
    # Streamed: the echoed prompt and its logprobs first, then each token's.
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=ids, max_tokens=2, temperature=0, echo=True, logprobs=1,
            stream=True,
        )
    )
    first = chunks[0].choices[0]
    assert first.text == FRANCE + " Paris"
    assert first.logprobs.token_logprobs == lp.token_logprobs[: len(ids)]
    offsets = [o for c in chunks for ch in c.choices if ch.logprobs for o in ch.logprobs.text_offset]
    assert offsets == sorted(offsets) and len(offsets) == len(ids) + 2


def test_prompt_logprobs_give_the_perplexity_lowbit_eval_gives(client, server):
    """Perplexity from echoed prompt logprobs, scored as `lowbit eval perplexity` scores (windows
    of 128 tokens, the second half of each), equals what that command prints."""
    text_path = ROOT / "server" / "tests" / "data" / "botchan-excerpt.txt"
    ctx, windows = 128, 2
    out = subprocess.run(
        [str(BIN), "eval", "perplexity", "--model", str(MODEL_PATH), "--text", str(text_path),
         "--ctx", str(ctx), "--chunks", str(windows), "--json"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    want = json.loads(out.stdout)["report"]["perplexity"]
    text = text_path.read_text()
    _, _, plain = server.post_json("/tokenize", {"prompt": text, "add_special_tokens": False})
    _, _, special = server.post_json("/tokenize", {"prompt": "x", "add_special_tokens": True})
    _, _, bare = server.post_json("/tokenize", {"prompt": "x", "add_special_tokens": False})
    bos = special["tokens"][0] if special["count"] > bare["count"] else None
    nll, scored = 0.0, 0
    for w in range(windows):
        window = plain["tokens"][w * ctx : (w + 1) * ctx]
        if bos is not None:
            window[0] = bos
        r = client.completions.create(
            model=MODEL, prompt=window, max_tokens=0, echo=True, logprobs=0
        )
        lps = r.choices[0].logprobs.token_logprobs
        # Predictions at positions ctx/2 .. ctx-2: tokens ctx/2+1 .. ctx-1.
        nll -= sum(lps[ctx // 2 + 1 : ctx])
        scored += ctx - 1 - ctx // 2
    got = math.exp(nll / scored)
    assert abs(got - want) <= 1e-4 * want, (got, want)


def test_tokenize_detokenize_roundtrip(server):
    status, _, tok = server.post_json("/tokenize", {"prompt": FRANCE})
    assert status == 200
    assert tok["count"] == len(tok["tokens"]) == 5
    assert tok["max_model_len"] > 0
    status, _, detok = server.post_json("/detokenize", {"tokens": tok["tokens"]})
    assert status == 200
    assert detok["prompt"] == FRANCE


# --- sampling parameters --------------------------------------------------------------------------


def test_stop_strings(client):
    r = ask(client, stop=[" classic"])
    content = r.choices[0].message.content
    assert content == "The answer to this"
    assert r.choices[0].finish_reason == "stop"
    assert " classic" not in content
    # A stop string that spans tokens; the stream must not leak any part of it either.
    r = ask(client, stop=["math prob", "never appears"])
    assert r.choices[0].message.content == "The answer to this classic "
    assert r.choices[0].finish_reason == "stop"
    _, text, finish = collect_chat_stream(ask(client, stop="math prob", stream=True))
    assert text == {0: "The answer to this classic "} and finish == {0: "stop"}
    # Completions too.
    c = client.completions.create(model=MODEL, prompt=FRANCE, max_tokens=8, temperature=0, stop=".")
    assert c.choices[0].text == " Paris"
    assert c.choices[0].finish_reason == "stop"


def test_seed_reproducible(client):
    poem = [{"role": "user", "content": "Write a short poem about the sea."}]

    def sample(seed: int) -> str:
        r = ask(client, poem, temperature=0.8, seed=seed, max_tokens=16)
        return r.choices[0].message.content

    first = sample(1)
    assert first and sample(1) == first
    # Different seeds: over a few of them, at least one differs (all equal would mean the
    # seed is ignored). Seeded sampling is deterministic, so this cannot flake.
    others = {sample(seed) for seed in (2, 3, 4)}
    assert others - {first}, f"seeds 1..4 all gave {first!r}"
    for seed in (2, 3, 4):
        assert sample(seed) in others


def test_n_choices(client):
    r = ask(
        client,
        [{"role": "user", "content": "Name a color."}],
        n=3,
        temperature=1.0,
        seed=7,
        max_tokens=10,
        extra_body={"ignore_eos": True},
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" for c in r.choices)
    assert r.usage.completion_tokens == 30
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) > 1, f"n=3 at temperature 1 gave three equal choices: {texts}"
    again = ask(
        client,
        [{"role": "user", "content": "Name a color."}],
        n=3,
        temperature=1.0,
        seed=7,
        max_tokens=10,
        extra_body={"ignore_eos": True},
    )
    assert [c.message.content for c in again.choices] == texts
    # Greedy: every choice is the greedy answer. Streamed, each index has its own role chunk,
    # content and finish chunk.
    greedy = ask(client, n=2)
    assert [c.message.content for c in greedy.choices] == [ANSWER, ANSWER]
    chunks, text, finish = collect_chat_stream(
        ask(client, n=2, stream=True, stream_options={"include_usage": True})
    )
    assert text == {0: ANSWER, 1: ANSWER} and finish == {0: "stop", 1: "stop"}
    roles = [ch.index for c in chunks for ch in c.choices if ch.delta.role == "assistant"]
    assert sorted(roles) == [0, 1]
    assert chunks[-1].usage.completion_tokens == greedy.usage.completion_tokens == 24
    # Completions with n.
    comp = client.completions.create(model=MODEL, prompt=FRANCE, max_tokens=4, temperature=0, n=2)
    assert [c.index for c in comp.choices] == [0, 1]
    assert comp.choices[0].text == comp.choices[1].text


def test_chat_logprobs(client):
    r = ask(client, logprobs=True, top_logprobs=3, max_tokens=5)
    choice = r.choices[0]
    content = choice.logprobs.content
    assert len(content) == r.usage.completion_tokens == 5
    assert "".join(t.token for t in content) == choice.message.content
    for t in content:
        assert t.logprob <= 0
        assert bytes(t.bytes).decode() == t.token
        top = t.top_logprobs
        assert len(top) == 3
        values = [a.logprob for a in top]
        assert values == sorted(values, reverse=True)
        assert all(v <= 0 for v in values)
        assert len({a.token for a in top}) == 3
        # Greedy: the chosen token is the most likely one.
        assert top[0].token == t.token
        assert top[0].logprob == pytest.approx(t.logprob, abs=1e-5)
    # top_logprobs 0: the chosen tokens' logprobs, no alternatives.
    r0 = ask(client, logprobs=True, top_logprobs=0, max_tokens=2)
    assert all(t.top_logprobs == [] for t in r0.choices[0].logprobs.content)
    # Streamed: each content delta carries its token's logprobs.
    stream = ask(client, logprobs=True, top_logprobs=2, max_tokens=4, stream=True)
    streamed = [
        t for c in stream for ch in c.choices if ch.logprobs for t in ch.logprobs.content or []
    ]
    assert [t.token for t in streamed] == [t.token for t in content[:4]]
    assert all(len(t.top_logprobs) == 2 for t in streamed)


def test_completion_logprobs(client):
    r = client.completions.create(model=MODEL, prompt=FRANCE, max_tokens=6, temperature=0, logprobs=2)
    choice = r.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert len(lp.text_offset) == 6
    assert "".join(lp.tokens) == choice.text
    # Offsets are character positions of each token in the text.
    offset = 0
    for token, off in zip(lp.tokens, lp.text_offset):
        assert off == offset
        offset += len(token)
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value <= 0
        assert len(top) == 2
        assert all(v <= 0 for v in top.values())
        assert token in top and top[token] == pytest.approx(value, abs=1e-5)
        assert top[token] == pytest.approx(max(top.values()), abs=1e-5)


def test_extension_parameters(client, server):
    # top_k 1 at temperature 1 is greedy.
    r = ask(client, temperature=1.0, seed=3, extra_body={"top_k": 1})
    assert r.choices[0].message.content == ANSWER
    # logit_bias -100 on the first greedy token bans it.
    _, _, tok = server.post_json("/tokenize", {"prompt": "The"})
    (the,) = tok["tokens"]
    r = ask(client, logit_bias={str(the): -100}, max_tokens=4)
    assert not r.choices[0].message.content.startswith("The")
    # ignore_eos: generation goes on to max_tokens.
    r = ask(client, max_tokens=20, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 20
    assert r.choices[0].message.content.startswith(ANSWER)
    # stop_token_ids: the token " answer" ends the reply (not included in it).
    _, _, tok = server.post_json("/tokenize", {"prompt": " answer"})
    (answer,) = tok["tokens"]
    r = ask(client, extra_body={"stop_token_ids": [answer]})
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == "The"
    # min_tokens: the stop token " answer" cannot end the reply before 4 tokens (the ending
    # token counts in the usage).
    r = ask(client, extra_body={"stop_token_ids": [answer], "min_tokens": 4})
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens > 4
    assert r.choices[0].message.content.startswith("The") and r.choices[0].message.content != "The"


# --- concurrency, prefix cache, cancellation ------------------------------------------------------


def test_concurrent_streams_equal_solo(client, server):
    prompts = [
        "What is 2+2?",
        "Name three fruits.",
        "What is the capital of Italy?",
        "Write a haiku about rain.",
    ]
    kw = dict(temperature=0, max_tokens=24)

    def run(prompt: str) -> tuple[str, str]:
        _, text, finish = collect_chat_stream(
            ask(client, [{"role": "user", "content": prompt}], stream=True, **kw)
        )
        return text[0], finish[0]

    solo = {p: run(p) for p in prompts}
    assert solo["What is 2+2?"] == (ANSWER, "stop")

    jobs = [prompts[i % len(prompts)] for i in range(16)]
    results: list = [None] * len(jobs)
    errors: list = []
    barrier = threading.Barrier(len(jobs))
    running_seen = []
    done = threading.Event()

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = run(jobs[i])
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(repr(e))

    def monitor() -> None:
        while not done.is_set():
            running_seen.append(server.metrics()["lowbit:num_requests_running"])
            time.sleep(0.05)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    mon = threading.Thread(target=monitor)
    for t in threads:
        t.start()
    mon.start()
    for t in threads:
        t.join(timeout=90)
    done.set()
    mon.join()
    assert not errors, errors
    for prompt, result in zip(jobs, results):
        assert result == solo[prompt], prompt
    assert max(running_seen) > 1, "the 16 requests never ran together"
    m = wait_for(lambda: (m := server.metrics())["lowbit:num_requests_running"] == 0 and m)
    assert m and m["lowbit:kv_blocks_in_use"] == 0


def test_prefix_cache_hit(client, server):
    # A unique opening so that nothing cached before matches; then ~200 tokens of system prompt.
    system = f"Session {uuid.uuid4().hex}. " + (
        "You are a careful assistant who answers questions about arithmetic briefly and exactly. "
        * 12
    )
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "What is 3+5?"}]
    m0 = server.metrics()
    first = ask(client, messages, max_tokens=12)
    m1 = server.metrics()
    second = ask(client, messages, max_tokens=12)
    m2 = server.metrics()
    assert second.choices[0].message.content == first.choices[0].message.content
    assert first.usage.prompt_tokens == second.usage.prompt_tokens > 150
    # Reuse is token-granular, from a quarter block on: the first request can share at most
    # the chat template's opening (and "Session") with earlier requests; the second reuses
    # the system prompt and more:
    # every whole block short of the last token, and the head of the next where the first
    # request filled that block (its prompt and generated tokens).
    first_cached = first.usage.prompt_tokens_details.cached_tokens
    assert 0 <= first_cached < 8
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert second.usage.prompt_tokens - 16 <= cached < second.usage.prompt_tokens
    hits = "lowbit:prefix_cache_hits_total"
    queries = "lowbit:prefix_cache_queries_total"
    assert m1[hits] - m0[hits] == first_cached
    assert m2[hits] - m1[hits] == cached
    assert m1[queries] - m0[queries] == first.usage.prompt_tokens
    assert m2[queries] - m1[queries] == second.usage.prompt_tokens


def test_client_disconnect_cancels(client, server):
    m0 = server.metrics()
    abort = 'lowbit:request_success_total{finished_reason="abort"}'
    stream = ask(
        client,
        [{"role": "user", "content": "Tell me a long story."}],
        max_tokens=500,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    try:
        it = iter(stream)
        next(it)
        next(it)
        # Running, with KV blocks. (The gauges are sampled once per engine step: poll.)
        during = wait_for(
            lambda: (m := server.metrics())["lowbit:num_requests_running"] == 1
            and m["lowbit:kv_blocks_in_use"] > 0
            and m
        )
        assert during, f"a streaming request is not running: {server.metrics()}"
    finally:
        stream.close()

    def freed():
        m = server.metrics()
        ok = m["lowbit:num_requests_running"] == 0 and m["lowbit:kv_blocks_in_use"] == 0
        return m if ok and m[abort] > m0[abort] else None

    m = wait_for(freed, timeout=5)
    assert m, f"not cancelled within 5 s: {server.metrics()}"
    assert m[abort] == m0[abort] + 1
    assert m["lowbit:num_requests_waiting"] == 0
    # It stopped generating well before max_tokens.
    assert m["lowbit:generation_tokens_total"] - m0["lowbit:generation_tokens_total"] < 200


def test_metrics_count_a_request(client, server):
    m0 = server.metrics()
    r = ask(client)
    stop = 'lowbit:request_success_total{finished_reason="stop"}'
    # Let the engine's bookkeeping of the finished request land.
    m1 = wait_for(lambda: (m := server.metrics())[stop] > m0[stop] and m, timeout=2)
    assert m1, "request_success_total{finished_reason=\"stop\"} did not grow"
    m1 = wait_for(
        lambda: (m := server.metrics())["lowbit:e2e_request_latency_seconds_count"]
        > m0["lowbit:e2e_request_latency_seconds_count"]
        and m,
        timeout=2,
    ) or server.metrics()

    def delta(name):
        return m1[name] - m0[name]

    assert delta(stop) == 1
    assert delta('lowbit:request_success_total{finished_reason="length"}') == 0
    assert delta("lowbit:prompt_tokens_total") == r.usage.prompt_tokens
    assert delta("lowbit:generation_tokens_total") == r.usage.completion_tokens
    assert delta("lowbit:e2e_request_latency_seconds_count") == 1
    assert delta("lowbit:time_to_first_token_seconds_count") == 1
    assert delta("lowbit:request_queue_time_seconds_count") == 1
    assert delta("lowbit:inter_token_latency_seconds_count") == r.usage.completion_tokens - 1
    assert m1["lowbit:kv_blocks_total"] > 0
    assert 0 <= m1["lowbit:kv_cache_usage_perc"] <= 1


# --- admission control, shutdown, auth ------------------------------------------------------------


def test_f16_kv_cache_holds_twice_the_tokens_and_answers(server_factory):
    # The same memory holds twice the positions (the context is capped by the pool), and
    # the answer is the f32 pool's: each key and value is rounded once, to f16.
    limits = {}
    for dtype in ("f32", "f16"):
        s = server_factory("--kv-cache-memory", "16MiB", "--kv-cache-dtype", dtype)
        status, _, tok = s.post_json("/tokenize", {"prompt": "hi"})
        assert status == 200
        limits[dtype] = tok["max_model_len"]
        r = ask(client_for(s))
        assert r.choices[0].message.content == ANSWER, dtype
    # (Whole 16-token blocks: 22 of f32 in 16 MiB, 45 of f16.)
    assert 2 * limits["f32"] <= limits["f16"] <= 2 * limits["f32"] + 16, limits


def test_queue_full_429(server_factory):
    s = server_factory("--max-concurrent-sequences", "1", "--max-waiting-requests", "1")
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "temperature": 0,
        "max_tokens": 64,
        "ignore_eos": True,
    }
    results: list = [None] * 6
    barrier = threading.Barrier(len(results))

    def fire(i: int) -> None:
        barrier.wait()
        r = httpx.post(f"{s.url}/v1/chat/completions", json=body, timeout=60)
        results[i] = (r.status_code, r.headers, r.json())

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    statuses = sorted(r[0] for r in results)
    assert set(statuses) == {200, 429}, statuses
    for status, headers, data in results:
        if status == 429:
            assert int(headers["retry-after"]) >= 1
            assert data["error"]["code"] == "queue_full"
            assert set(data["error"]) == {"message", "type", "param", "code"}
        else:
            assert data["choices"][0]["finish_reason"] == "length"
            assert data["usage"]["completion_tokens"] == 64

    # Deterministically, through the SDK: with one request running and one waiting, the next one
    # is a RateLimitError. (Streams, so that closing them cancels them.)
    long_body = dict(body, max_tokens=500, stream=True)
    with httpx.Client(base_url=s.url, timeout=60) as http, contextlib.ExitStack() as streams:

        def open_stream():
            r = streams.enter_context(http.stream("POST", "/v1/chat/completions", json=long_body))
            assert r.status_code == 200

        open_stream()
        assert wait_for(lambda: s.metrics()["lowbit:num_requests_running"] == 1, timeout=10)
        open_stream()
        assert wait_for(lambda: s.metrics()["lowbit:num_requests_waiting"] == 1, timeout=10)
        with pytest.raises(openai.RateLimitError) as e:
            ask(client_for(s), max_tokens=4)
        assert e.value.status_code == 429
        assert e.value.code == "queue_full"
        assert int(e.value.response.headers["retry-after"]) >= 1
    # Both streams are closed: both requests are cancelled.
    m = wait_for(
        lambda: (m := s.metrics())["lowbit:num_requests_running"] == 0
        and m["lowbit:num_requests_waiting"] == 0
        and m,
        timeout=5,
    )
    assert m and m["lowbit:kv_blocks_in_use"] == 0


def test_sigterm_drains_in_flight_stream(server_factory):
    s = server_factory("--shutdown-timeout", "30")
    client = client_for(s)
    state: dict = {"chunks": []}
    started = threading.Event()

    def consume() -> None:
        try:
            stream = ask(
                client,
                [{"role": "user", "content": "Tell me a story."}],
                max_tokens=120,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
            for chunk in stream:
                state["chunks"].append(chunk)
                if len(state["chunks"]) == 3:
                    started.set()
        except Exception as e:  # noqa: BLE001 (asserted below)
            state["error"] = repr(e)
        finally:
            started.set()

    t = threading.Thread(target=consume)
    t.start()
    assert started.wait(30)
    s.terminate()
    # Draining: /ready is 503, /health still 200, new requests are refused with 503 `draining`.
    ready = wait_for(lambda: (r := s.get("/ready"))[0] == 503 and r, timeout=5)
    assert ready, "/ready did not turn 503 after SIGTERM"
    assert json.loads(ready[2])["status"] == "draining"
    assert s.get("/health")[0] == 200
    status, _, data = s.post_json(
        "/v1/chat/completions", {"model": MODEL, "messages": QUESTION, "max_tokens": 2}
    )
    assert status == 503 and data["error"]["code"] == "draining"
    assert t.is_alive(), "the in-flight request ended before the drain could be observed"
    t.join(timeout=60)
    assert "error" not in state, state.get("error")
    chunks = state["chunks"]
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].usage.completion_tokens == 120
    code = s.wait(timeout=30)
    assert code == 0, s.stderr()


def test_api_keys(keyed_server):
    s = keyed_server
    # No Authorization header at all.
    no_key = client_for(s, default_headers={"Authorization": openai.Omit()})
    with pytest.raises(openai.AuthenticationError) as e:
        ask(no_key, max_tokens=2)
    assert e.value.status_code == 401
    assert e.value.response.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError):
        no_key.models.list()
    # A wrong key.
    with pytest.raises(openai.AuthenticationError):
        ask(client_for(s, api_key="k3"), max_tokens=2)
    # Either configured key works.
    for key in ("k1", "k2"):
        assert ask(client_for(s, api_key=key)).choices[0].message.content == ANSWER
    # Probes need no key; everything else does.
    assert s.get("/health")[0] == 200
    assert s.get("/ready")[0] == 200
    status, _, body = s.get("/metrics")
    assert status == 401 and "error" in json.loads(body)
    assert s.get("/metrics", headers={"Authorization": "Bearer k2"})[0] == 200
    status, _, data = s.post_json("/tokenize", {"prompt": "hi"})
    assert status == 401 and set(data["error"]) == {"message", "type", "param", "code"}


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"n": 17}, "n"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"tools": [{"type": "function", "function": {"name": "f g"}}]}, "tools[0].function.name"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
            "response_format",
        ),
        ({"extra_body": {"no_such_field": 1}}, "no_such_field"),
    ],
)
def test_chat_bad_request(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, max_tokens=2, **kwargs)
    assert e.value.status_code == 400
    assert e.value.body["param"] == param
    assert e.value.param == param
    envelope = e.value.response.json()["error"]
    assert set(envelope) == {"message", "type", "param", "code"}
    assert envelope["param"] == param
    assert envelope["type"] == "invalid_request_error"
    assert envelope["message"]


def test_completion_bad_request(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x", max_tokens=2, suffix="y")
    assert e.value.param == "suffix"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x", max_tokens=2, logprobs=6)
    assert e.value.param == "logprobs"


def test_unknown_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    assert e.value.status_code == 404
    assert e.value.param == "model"
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x")


def test_bench_serve_drives_chats_and_scoring_requests(server):
    """`lowbit bench serve` against a real server: streamed chats (output tokens counted by the
    server's usage) and, with --score, scoring requests whose prompts all come back scored."""
    def bench(*extra):
        out = subprocess.run(
            [str(BIN), "bench", "serve", "--url", server.url, "--concurrency", "1,2",
             "--requests", "3", "--prompt-tokens", "24", "--json", *extra],
            capture_output=True, text=True, timeout=300, check=True,
        )
        return json.loads(out.stdout)

    chats = bench("--max-tokens", "4")
    assert [lv["concurrency"] for lv in chats["levels"]] == [1, 2]
    for lv in chats["levels"]:
        assert lv["errors"] == 0 and lv["requests"] == 3, lv
        assert lv["output_tokens"] == 12 and lv["output_tokens_per_second"] > 0, lv
        assert lv["ttft_ms"]["p50"] > 0 and lv["inter_token_ms"]["p50"] > 0, lv
    scored = bench("--score")
    assert scored["score"] is True
    for lv in scored["levels"]:
        assert lv["errors"] == 0 and lv["requests"] == 3, lv
        # Prompts of about 24 words plus the instruction, one generated token each.
        assert lv["scored_tokens_per_second"] > 0 and lv["output_tokens"] == 3, lv
        assert lv["ttft_ms"]["p50"] > 0, lv
