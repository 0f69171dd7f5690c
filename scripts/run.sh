#!/usr/bin/env bash
# Sets up lowbit (the default model, a release build) and serves it on an OpenAI-compatible API.
# Extra arguments go to `lowbit serve` (e.g. --port 8080, --api-key KEY, --host 0.0.0.0).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/fetch-model.sh
cargo build --release --bin lowbit
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
port=${LOWBIT_PORT:-8000}
for ((i = 1; i <= $#; i++)); do
  if [ "${!i}" = "--port" ]; then j=$((i + 1)); port=${!j}; fi
done
cat <<TXT

Serving $model on http://127.0.0.1:$port (Ctrl-C stops it). Try:

  curl http://127.0.0.1:$port/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "SmolLM2-135M-Instruct.Q4_1", "messages": [{"role": "user", "content": "What is 2+2?"}]}'

TXT
LOWBIT_PORT=$port exec ./target/release/lowbit serve --model "$model" "$@"
