"""Quantizes the tiny f32 model with llama-quantize into tiny-quant-types.gguf (every GGUF type
lowbit imports, one per tensor) and scores it with llama.cpp into llama_cpp_quant_types.json.

Not run by the tests (they read both files); rerun it when the tiny-model generator changes:

    LOWBIT_FIXTURE_DIR=/tmp/qt cargo test --release --test gguf_quant_types -- --ignored
    python server/tests/data/llama_cpp_quant_types.py /tmp/qt path/to/llama-quantize

Needs llama-cpp-python and llama-quantize built from source (shared/REFERENCE.md: 0.3.36),
outside the repository. The KV cache is f32 and flash attention off, as llama_cpp_logits.py.
"""

import json
import subprocess
import sys
from pathlib import Path

import gguf
import llama_cpp
import numpy as np

GGML_TYPE_F32 = 0

# Each tensor a type (llama-quantize --tensor-type takes a regex on the tensor name).
TYPES = {
    r"blk\.0\.attn_q": "q4_k",
    r"blk\.0\.attn_k": "q5_k",
    r"blk\.0\.attn_v": "q6_k",
    r"blk\.0\.attn_output": "q3_k",
    r"blk\.0\.ffn_gate": "q2_k",
    r"blk\.0\.ffn_up": "iq4_xs",
    r"blk\.0\.ffn_down": "iq4_nl",
    r"blk\.1\.attn_q": "q5_0",
    r"blk\.1\.attn_k": "q5_1",
    r"blk\.1\.attn_v": "q4_k",
    r"blk\.1\.attn_output": "q4_k",
    r"blk\.1\.ffn_gate": "q4_k",
    r"blk\.1\.ffn_up": "q6_k",
    r"blk\.1\.ffn_down": "q5_k",
}


def main() -> None:
    src, quantize = Path(sys.argv[1]), sys.argv[2]
    here = Path(__file__).parent
    dest = here / "tiny-quant-types.gguf"
    args = [quantize, "--token-embedding-type", "q6_k"]
    for pattern, ty in TYPES.items():
        args += ["--tensor-type", f"{pattern}={ty}"]
    subprocess.run(args + [str(src / "tiny-f32.gguf"), str(dest), "Q4_K_M"], check=True,
                   stdout=subprocess.DEVNULL)
    reader = gguf.GGUFReader(dest)
    types = {t.name: t.tensor_type.name for t in reader.tensors if len(t.shape) > 1}

    tokens = json.loads((src / "tokens.json").read_text())
    llm = llama_cpp.Llama(model_path=str(dest), n_ctx=64, n_batch=64, n_threads=2,
                          logits_all=True, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32,
                          flash_attn=False, verbose=False)
    llm.eval(tokens)
    logits = np.asarray(llm.scores[: len(tokens)], dtype=np.float32).reshape(-1)
    out = {"tokens": tokens, "types": types, "logits": [float(v) for v in logits]}
    (here / "llama_cpp_quant_types.json").write_text(json.dumps(out) + "\n")
    print(f"wrote {dest.name} {types} (llama-cpp-python {llama_cpp.__version__})")


if __name__ == "__main__":
    main()
