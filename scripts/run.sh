#!/usr/bin/env bash
# Sets up lowbit (the default model, a release build) and runs it on the default model.
# Extra arguments go to `lowbit generate` (default: a chat prompt).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/fetch-model.sh
cargo build --release --bin lowbit
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ "$#" -eq 0 ]; then
  # REFERENCE.md's chat check: lowbit's answer matches llama.cpp's on this model.
  set -- --chat --prompt "What is 2+2?"
fi
exec ./target/release/lowbit generate --model "$model" "$@"
