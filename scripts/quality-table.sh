#!/usr/bin/env bash
# Measures the quality of quantization policies on a text: perplexity, KL divergence and top-1
# agreement against the unquantized (f32) model, bits per weight and weight bytes. Prints one
# JSON line per policy to stdout (progress on stderr).
#
#   scripts/quality-table.sh TEXT [POLICY[:METHOD] ...]
# METHOD: rtn (default), search, gptq (GPTQ on $CALIBRATION, RTN scales) or gptq-search.
# e.g. scripts/quality-table.sh ../shared/data/botchan-dev.txt q8 q4g32:rtn q4g32:gptq-search
set -euo pipefail
cd "$(dirname "$0")/.."
text="$1"; shift
model="${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
ctx="${CTX:-512}"
calibration="${CALIBRATION:-server/data/calibration/botchan-ix-xi.txt}"
lowbit="${LOWBIT:-./target/release/lowbit}"
base="target/kl-base-$(basename "$model")-$(basename "$text")-$ctx.bin"
if [ ! -f "$base" ]; then
  "$lowbit" eval perplexity --model "$model" --text "$text" --ctx "$ctx" --quant f32 \
    --save-kl-base "$base" --json
fi
for spec in "$@"; do
  policy="${spec%%:*}"
  method=()
  case "$spec" in
    *:gptq) method=(--calibration "$calibration") ;;
    *:gptq-search) method=(--quant-method search --calibration "$calibration") ;;
    *:*) method=(--quant-method "${spec#*:}") ;;
  esac
  "$lowbit" eval perplexity --model "$model" --text "$text" --ctx "$ctx" --quant "$policy" \
    "${method[@]}" --kl-base "$base" --json
done
