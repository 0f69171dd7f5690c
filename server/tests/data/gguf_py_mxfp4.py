"""Decodes random MXFP4 blocks with gguf-py (llama.cpp's own Python reference of its block
formats) and writes gguf_py_mxfp4.json: each block's 17 bytes and its 32 values as f32 bits.

Not run by the tests (they read the JSON); rerun it with llama.cpp's gguf-py on the path:

    PYTHONPATH=.../llama.cpp/gguf-py python server/tests/data/gguf_py_mxfp4.py
"""

import json
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

rng = np.random.default_rng(7)
blocks = rng.integers(0, 256, size=(64, 17), dtype=np.uint8)
# Every exponent class: subnormal scales (0, 1), real weights' (near 120), f16's edges, the top.
blocks[:8, 0] = [0, 1, 2, 104, 120, 127, 146, 255]
values = dequantize(blocks.reshape(-1), GGMLQuantizationType.MXFP4).astype(np.float32)
out = [
    {"bytes": b.tolist(), "value_bits": v.view(np.uint32).tolist()}
    for b, v in zip(blocks, values.reshape(64, 32))
]
dest = Path(__file__).with_name("gguf_py_mxfp4.json")
dest.write_text(json.dumps(out) + "\n")
print(f"wrote {dest} ({len(out)} blocks)")
