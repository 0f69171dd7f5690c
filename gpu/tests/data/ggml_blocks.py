"""Writes ggml_blocks.json: GGUF blocks of every type lowbit imports, with llama.cpp's decoding.

Not run by the tests (they read the JSON). For each type: blocks llama.cpp's own quantizer made
from Gaussian rows (real scales) and blocks of random bytes (every bit pattern of the codes and
sub-block scales; the f16 super-block scales set to finite values), decoded by llama.cpp's C
`dequantize_row_*` through ctypes. Needs llama-cpp-python built from source (shared/REFERENCE.md),
outside the repository:

    python gpu/tests/data/ggml_blocks.py
"""

import ctypes
import json
from pathlib import Path

import llama_cpp
import numpy as np

LIB = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))

# name: (ggml type code, values per block, bytes per block, byte offsets of f16 scales)
TYPES = {
    "Q5_0": (6, 32, 22, [0]),
    "Q5_1": (7, 32, 24, [0, 2]),
    "Q2_K": (10, 256, 84, [80, 82]),
    "Q3_K": (11, 256, 110, [108]),
    "Q4_K": (12, 256, 144, [0, 2]),
    "Q5_K": (13, 256, 176, [0, 2]),
    "Q6_K": (14, 256, 210, [208]),
    "IQ4_NL": (20, 32, 18, [0]),
    "IQ4_XS": (23, 256, 136, [0]),
}
ROWS, COLS = 2, 512


def decode(name: str, blocks: bytes, n: int) -> bytes:
    out = np.zeros(n, dtype=np.float32)
    fn = getattr(LIB, f"dequantize_row_{name.lower().replace('_k', '_K')}")
    fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int64]
    fn(blocks, out.ctypes.data, n)
    return out.tobytes()


def quantize(code: int, values: np.ndarray, nbytes: int) -> bytes:
    dst = ctypes.create_string_buffer(nbytes)
    LIB.ggml_quantize_init(code)
    LIB.ggml_quantize_chunk.restype = ctypes.c_size_t
    LIB.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
    ]
    src = np.ascontiguousarray(values, dtype=np.float32)
    written = LIB.ggml_quantize_chunk(code, src.ctypes.data, dst, 0, ROWS, COLS, None)
    assert written == nbytes, (written, nbytes)
    return dst.raw


def main() -> None:
    rng = np.random.default_rng(7)
    out = []
    for name, (code, per, size, f16_at) in TYPES.items():
        nbytes = ROWS * COLS // per * size
        gauss = rng.standard_normal((ROWS, COLS)).astype(np.float32) * 0.05
        gauss[1] += 0.02  # an offset row: the formats with mins use them
        quantized = quantize(code, gauss, nbytes)
        noise = bytearray(rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes())
        for b in range(nbytes // size):
            for k, at in enumerate(f16_at):
                d = np.float16(rng.uniform(1e-4, 2e-2) * (1 if k == 0 else 0.5))
                noise[b * size + at : b * size + at + 2] = d.tobytes()
        for kind, blocks in (("quantized", quantized), ("random", bytes(noise))):
            out.append({
                "type": name,
                "kind": kind,
                "rows": ROWS,
                "cols": COLS,
                "hex": blocks.hex(),
                "values_f32le": decode(name, blocks, ROWS * COLS).hex(),
                "source_f32le": gauss.tobytes().hex() if kind == "quantized" else None,
            })
    dest = Path(__file__).with_name("ggml_blocks.json")
    dest.write_text(json.dumps(out) + "\n")
    print(f"wrote {dest} ({len(out)} cases, llama-cpp-python {llama_cpp.__version__})")


if __name__ == "__main__":
    main()
