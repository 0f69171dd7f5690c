"""Compares a lowbit server's prompt log-probabilities with llama.cpp's on the same GGUF file
(BENCHMARKS.md): the same random token ids go to llama-cpp-python (every position's logits,
f32 KV cache, flash attention off) and to `/v1/completions` with `echo`, `logprobs: 1` and
`max_tokens: 0`; prints the largest difference of the log-probability of each next token and
how often the two top-1 tokens agree.

    python scripts/bench/prompt-logprobs-vs-llama-cpp.py MODEL.gguf http://127.0.0.1:8000 700 [SPLIT]

Needs `numpy` and llama-cpp-python built from source (shared/REFERENCE.md), outside the
repository; the server must serve MODEL.gguf.
"""

import json
import sys
import urllib.request

import llama_cpp
import numpy as np

GGML_TYPE_F32 = 0


def main() -> None:
    path, url, n = sys.argv[1], sys.argv[2].rstrip("/"), int(sys.argv[3])
    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=n,
        n_batch=n,
        n_ubatch=n,
        n_threads=2,
        logits_all=True,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        flash_attn=False,
        verbose=False,
    )
    rng = np.random.default_rng(1)
    vocab = llm.n_vocab()
    tokens = [int(t) for t in rng.integers(0, vocab - 2, n)]
    llm.eval(tokens)
    scores = np.asarray(llm.scores[:n], dtype=np.float64)
    shifted = scores - scores.max(axis=1, keepdims=True)
    logsum = np.log(np.exp(shifted).sum(axis=1))
    theirs = [float(shifted[i, tokens[i + 1]] - logsum[i]) for i in range(n - 1)]
    their_top = shifted.argmax(axis=1)

    models = json.load(urllib.request.urlopen(url + "/v1/models", timeout=60))
    model = models["data"][0]["id"]
    body = json.dumps(
        {
            "model": model,
            "prompt": tokens,
            "max_tokens": 0,
            "echo": True,
            "logprobs": 1,
            "temperature": 0,
        }
    ).encode()
    req = urllib.request.Request(
        url + "/v1/completions", body, {"content-type": "application/json"}
    )
    reply = json.load(urllib.request.urlopen(req, timeout=3600))
    lp = reply["choices"][0]["logprobs"]
    ours = lp["token_logprobs"][1:]
    # Entry i + 1 of the echoed prompt's top entries is the distribution token i + 1 was drawn
    # from: position i's.
    our_top = [max(t.items(), key=lambda kv: kv[1])[0] for t in lp["top_logprobs"][1:]]
    their_top_text = [llm.detokenize([int(t)]).decode("utf-8", "replace") for t in their_top[:-1]]
    diff = np.abs(np.asarray(ours) - np.asarray(theirs))
    agree = sum(a == b for a, b in zip(our_top, their_top_text))
    print(
        f"{n} positions: max |Δ logprob| {diff.max():.3g} (mean {diff.mean():.3g}), "
        f"top-1 equal at {agree} of {n - 1}"
    )
    if len(sys.argv) > 4:
        # Before and after a position (a sliding window's width: where it starts to slide).
        split = int(sys.argv[4])
        for name, part in [("before", diff[: split - 1]), ("from", diff[split - 1 :])]:
            print(f"  {name} position {split}: max {part.max():.3g}, mean {part.mean():.3g}")


if __name__ == "__main__":
    main()
