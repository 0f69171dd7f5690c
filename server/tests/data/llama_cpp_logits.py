"""Scores the tiny fixture models with llama.cpp and writes llama_cpp_logits.json.

Not run by the tests (they read the JSON); rerun it when the tiny-model generator changes:

    LOWBIT_FIXTURE_DIR=/tmp/fixtures cargo test --release --test architectures -- --ignored
    python server/tests/data/llama_cpp_logits.py /tmp/fixtures

It needs llama-cpp-python built from source (shared/REFERENCE.md: 0.3.36, llama.cpp 0c1e57098),
outside the repository. The KV cache is kept in f32 and flash attention off, so that llama.cpp
computes in f32 throughout and its logits are a tight reference.
"""

import json
import sys
from pathlib import Path

import llama_cpp
import numpy as np

GGML_TYPE_F32 = 0


def score(path: Path, tokens: list[int]) -> list[float]:
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=64,
        n_batch=64,
        n_threads=2,
        logits_all=True,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        flash_attn=False,
        verbose=False,
    )
    llm.eval(tokens)
    rows = np.asarray(llm.scores[: len(tokens)], dtype=np.float32)
    return [float(v) for v in rows.reshape(-1)]


def main() -> None:
    src = Path(sys.argv[1])
    out = []
    for entry in json.loads((src / "index.json").read_text()):
        logits = score(src / entry["file"], entry["tokens"])
        out.append({k: entry[k] for k in ("arch", "seed", "gguf_fnv1a", "tokens")} | {"logits": logits})
    dest = Path(__file__).with_name("llama_cpp_logits.json")
    dest.write_text(json.dumps(out) + "\n")
    print(f"wrote {dest} ({len(out)} models, llama-cpp-python {llama_cpp.__version__})")


if __name__ == "__main__":
    main()
