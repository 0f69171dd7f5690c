"""Writes a GGUF file of random weights in a real model's shapes, for side-by-side speed
measurements of lowbit and llama.cpp on the same file (BENCHMARKS.md). The text it generates
is noise; the shapes, tensor names, metadata and a byte-level vocabulary of the full size are
those of the named architecture. F16 weights: quantize them with `llama-quantize --pure`.

    python scripts/bench/random-gguf.py qwen2.5-0.5b /tmp/qwen25-f16.gguf
    python scripts/bench/random-gguf.py llama-3.2-1b /tmp/llama1b-f16.gguf
    python scripts/bench/random-gguf.py gemma3-1b /tmp/gemma3-1b-f16.gguf
    python scripts/bench/random-gguf.py phi4-mini /tmp/phi4-mini-f16.gguf
    python scripts/bench/random-gguf.py qwen3-30b-a3b /tmp/qwen3-moe-q4_0.gguf --layers 8 --q4_0
    python scripts/bench/random-gguf.py gpt-oss-20b /tmp/gpt-oss-q4_0.gguf --layers 8 --q4_0

`--layers N` keeps the first N layers (a mixture of experts' full file does not fit a small
machine); `--q4_0` writes the weight matrices as random Q4_0 blocks directly (no F16 file, no
llama-quantize). gpt-oss's experts are always random MXFP4 blocks, as its files store them.
Needs `numpy` and `gguf` (PyPI).
"""

import sys

import gguf
import numpy as np

SHAPES = {
    # arch, hidden, layers, heads, kv heads, head dim, ffn, vocab, rope theta, qkv bias, qk norm
    "qwen2.5-0.5b": ("qwen2", 896, 24, 14, 2, 64, 4864, 151936, 1e6, True, False),
    "qwen3-0.6b": ("qwen3", 1024, 28, 16, 8, 128, 3072, 151936, 1e6, False, True),
    # Rows of 2048 and 8192: every tensor K-quantizes (no fallbacks), as in real Q4_K_M files.
    "llama-3.2-1b": ("llama", 2048, 16, 32, 8, 64, 8192, 128256, 5e5, False, False),
    # Gemma 3 1B: GeGLU, post-norms, five layers of six in a 512-position window (llama.cpp's
    # default pattern and sliding RoPE base), tied 262144 vocabulary.
    "gemma3-1b": ("gemma3", 1152, 26, 4, 1, 256, 6912, 262144, 1e6, False, True),
    # Phi-4-mini: Q/K/V and gate/up fused (as llama.cpp's converter writes Phi-3), 96 of 128
    # head dimensions rotated, LongRoPE factor lists, tied 200064 vocabulary.
    "phi4-mini": ("phi3", 3072, 32, 24, 8, 128, 8192, 200064, 1e4, False, False),
    # Qwen3-30B-A3B: Qwen3's block with 128 experts of FFN 768 per layer, 8 per token, a
    # separate head.
    "qwen3-30b-a3b": ("qwen3moe", 2048, 48, 32, 4, 128, 6144, 151936, 1e6, False, True),
    # gpt-oss-20b: 32 experts of FFN 2880, 4 per token, biases everywhere, attention sinks,
    # every other layer in a 128-position window, YaRN ×32 over 4096.
    "gpt-oss-20b": ("gpt-oss", 2880, 24, 64, 8, 64, 2880, 201088, 150000.0, True, False),
}

# Mixtures of experts: experts, experts per token, each expert's FFN.
EXPERTS = {"qwen3moe": (128, 8, 768), "gpt-oss": (32, 4, 2880)}
# Architectures whose head is a tensor of its own.
UNTIED = {"qwen3moe", "gpt-oss"}

# Sliding window of the architectures that have one.
WINDOWS = {"gemma3": 512, "gpt-oss": 128}


def main() -> None:
    name, out = sys.argv[1], sys.argv[2]
    arch, h, layers, heads, kv, hd, ffn, vocab, theta, bias, qk_norm = SHAPES[name]
    if "--layers" in sys.argv:
        layers = int(sys.argv[sys.argv.index("--layers") + 1])
    q4_0 = "--q4_0" in sys.argv
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(out, arch)
    w.add_name(f"random {name}")
    w.add_block_count(layers)
    w.add_context_length(32768)
    w.add_embedding_length(h)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0 if q4_0 else gguf.LlamaFileType.MOSTLY_F16)
    if arch in EXPERTS:
        experts, used, expert_ffn = EXPERTS[arch]
        w.add_expert_count(experts)
        w.add_expert_used_count(used)
        w.add_expert_feed_forward_length(expert_ffn)
    if arch in WINDOWS:
        w.add_sliding_window(WINDOWS[arch])
    if arch == "gpt-oss":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(32.0)
        w.add_rope_scaling_orig_ctx_len(4096)
    if arch == "phi3":
        w.add_rope_dimension_count(96)
        w.add_rope_scaling_orig_ctx_len(4096)
        w.add_rope_scaling_attn_factors(float(np.sqrt(1 + np.log(32) / np.log(4096))))
        w.add_sliding_window(262144)
    # A byte-level vocabulary of the model's size: the 256 byte symbols, one merge, fillers.
    byte_symbols = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(161, 173)] + [
        chr(c) for c in range(174, 256)
    ]
    byte_symbols += [chr(256 + i) for i in range(256 - len(byte_symbols))]
    merged = byte_symbols[0] + byte_symbols[1]
    fillers = [f"<filler{i}>" for i in range(vocab - 256 - 3)]
    tokens = byte_symbols + [merged] + fillers + ["<|im_start|>", "<|im_end|>"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (vocab - 2) + [3, 3])
    w.add_token_merges([f"{byte_symbols[0]} {byte_symbols[1]}"])
    w.add_bos_token_id(vocab - 2)
    w.add_eos_token_id(vocab - 1)
    w.add_add_bos_token(False)

    def matrix(name: str, rows: int, cols: int, stack: int = 0) -> None:
        shape = (stack, rows, cols) if stack else (rows, cols)
        if q4_0:
            # Blocks of 32: an f16 scale of a trained weight's magnitude, 16 bytes of codes.
            blocks = int(np.prod(shape)) // 32
            scale = (0.05 / 8 * (0.75 + 0.25 * rng.random(blocks))).astype(np.float16)
            codes = rng.integers(0, 256, (blocks, 16), dtype=np.uint8)
            data = np.concatenate([scale.view(np.uint8).reshape(blocks, 2), codes], axis=1)
            byte_shape = shape[:-1] + (cols // 32 * 18,)
            w.add_tensor(name, data.reshape(byte_shape), raw_dtype=gguf.GGMLQuantizationType.Q4_0)
            return
        values = rng.standard_normal(shape, dtype=np.float32) * (1.0 / np.sqrt(cols))
        w.add_tensor(name, values.astype(np.float16))

    def mxfp4(name: str, rows: int, cols: int, stack: int) -> None:
        # Blocks of 32: an E8M0 exponent near a trained weight's scale (2^-8), 16 bytes of codes.
        blocks = stack * rows * cols // 32
        exponents = rng.integers(119, 122, (blocks, 1), dtype=np.uint8)
        codes = rng.integers(0, 256, (blocks, 16), dtype=np.uint8)
        data = np.concatenate([exponents, codes], axis=1)
        byte_shape = (stack, rows, cols // 32 * 17)
        w.add_tensor(name, data.reshape(byte_shape), raw_dtype=gguf.GGMLQuantizationType.MXFP4)

    def vector(name: str, n: int, center: float) -> None:
        w.add_tensor(name, (center + 0.1 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32))

    matrix("token_embd.weight", vocab, h)
    if arch in UNTIED:
        matrix("output.weight", vocab, h)
    vector("output_norm.weight", h, 1.0)
    if arch == "phi3":
        # Phi-4-mini's lists rise from 1 (short) and to about 50 (long).
        pairs = 48
        w.add_tensor("rope_factors_short.weight", np.linspace(1.0, 1.5, pairs, dtype=np.float32))
        w.add_tensor("rope_factors_long.weight", np.geomspace(1.0, 50.0, pairs, dtype=np.float32))
    for i in range(layers):
        b = f"blk.{i}."
        vector(b + "attn_norm.weight", h, 1.0)
        if arch == "phi3":
            matrix(b + "attn_qkv.weight", (heads + 2 * kv) * hd, h)
        else:
            matrix(b + "attn_q.weight", heads * hd, h)
            matrix(b + "attn_k.weight", kv * hd, h)
            matrix(b + "attn_v.weight", kv * hd, h)
        if bias:
            vector(b + "attn_q.bias", heads * hd, 0.0)
            vector(b + "attn_k.bias", kv * hd, 0.0)
            vector(b + "attn_v.bias", kv * hd, 0.0)
        if qk_norm:
            vector(b + "attn_q_norm.weight", hd, 1.0)
            vector(b + "attn_k_norm.weight", hd, 1.0)
        matrix(b + "attn_output.weight", h, heads * hd)
        if arch == "gpt-oss":
            vector(b + "attn_output.bias", h, 0.0)
            vector(b + "attn_sinks.weight", heads, 0.0)
            vector(b + "post_attention_norm.weight", h, 1.0)
            experts, _, expert_ffn = EXPERTS[arch]
            w.add_tensor(b + "ffn_gate_inp.weight", rng.standard_normal((experts, h), dtype=np.float32) * 0.05)
            vector(b + "ffn_gate_inp.bias", experts, 0.0)
            for proj, rows, cols in [("gate", expert_ffn, h), ("up", expert_ffn, h), ("down", h, expert_ffn)]:
                mxfp4(b + f"ffn_{proj}_exps.weight", rows, cols, experts)
                w.add_tensor(b + f"ffn_{proj}_exps.bias", 0.1 * rng.standard_normal((experts, rows), dtype=np.float32))
            continue
        vector(b + "ffn_norm.weight", h, 1.0)
        if arch in EXPERTS:
            experts, _, expert_ffn = EXPERTS[arch]
            w.add_tensor(b + "ffn_gate_inp.weight", rng.standard_normal((experts, h), dtype=np.float32) * 0.05)
            matrix(b + "ffn_gate_exps.weight", expert_ffn, h, experts)
            matrix(b + "ffn_up_exps.weight", expert_ffn, h, experts)
            matrix(b + "ffn_down_exps.weight", h, expert_ffn, experts)
            continue
        if arch == "phi3":
            matrix(b + "ffn_up.weight", 2 * ffn, h)
        else:
            matrix(b + "ffn_gate.weight", ffn, h)
            matrix(b + "ffn_up.weight", ffn, h)
        matrix(b + "ffn_down.weight", h, ffn)
        if arch.startswith("gemma"):
            vector(b + "post_attention_norm.weight", h, 1.0)
            vector(b + "post_ffw_norm.weight", h, 1.0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
