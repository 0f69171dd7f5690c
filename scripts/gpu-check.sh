#!/usr/bin/env bash
# The GPU check (issue 8): the wgpu conformance suite on the real adapter, then the speed
# benches, printed as one table with the targets checked. Under 5 minutes on a real GPU.
#
#   scripts/gpu-check.sh          build with cargo, then check (a machine with Rust)
#   scripts/gpu-check.sh pack     build here and put stripped binaries and the Vulkan loader
#                                 packages in .gpu-check/ (git-ignored), for a machine without
#                                 Rust; then on that machine, from the repository root:
#   LOWBIT_PREBUILT=.gpu-check scripts/gpu-check.sh
#
# Environment:
#   LOWBIT_PEAK_GBS         the card's memory bandwidth in GB/s, for the roofline (default: from
#                           the adapter's name, H200 4800, H100 SXM 3350, H100 PCIe 2000; else 4800)
#   LOWBIT_GPU_CHECK_QUICK  1: tiny runs (SmolLM2 shapes only), to test this script on lavapipe
#   LOWBIT_GPU_CHECK_OUT    folder for the log, the JSON lines and the table (default a temp dir)
#   LOWBIT_GPU_CHECK_RUN_TIMEOUT  seconds each bench run may take (default 120; quick: 900)
set -euo pipefail
cd "$(dirname "$0")/.."

PACK=.gpu-check

if [[ "${1:-}" == pack ]]; then
  cargo build --release -p lowbit
  conformance=$(cargo test --release -p lowbit-gpu --test conformance --no-run --message-format=json |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "conformance" and m.get("executable"):
        print(m["executable"])')
  rm -rf "$PACK" && mkdir -p "$PACK/deb" /tmp/amd64/partial
  grep -qx "/$PACK/" .git/info/exclude 2>/dev/null || echo "/$PACK/" >>.git/info/exclude
  strip -o "$PACK/lowbit" target/release/lowbit
  strip -o "$PACK/conformance" "$conformance"
  # The Vulkan loader (the device image has the NVIDIA driver and its ICD, not always the loader).
  apt_opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
  apt-get "${apt_opts[@]}" update -qq
  (cd "$PACK/deb" && apt-get "${apt_opts[@]}" download libvulkan1 >/dev/null)
  du -sh "$PACK"
  echo "carry $PACK and run: LOWBIT_PREBUILT=$PACK scripts/gpu-check.sh"
  exit 0
fi

OUT_DIR=${LOWBIT_GPU_CHECK_OUT:-$(mktemp -d)}
mkdir -p "$OUT_DIR"
LOG=$OUT_DIR/gpu-check.log
RESULTS=$OUT_DIR/gpu-check.jsonl
: >"$LOG"
: >"$RESULTS"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
QUICK=${LOWBIT_GPU_CHECK_QUICK:-0}
# lavapipe (quick mode) is far slower than any GPU.
if [[ $QUICK == 1 ]]; then default_timeout=900; suite_timeout=1800; else default_timeout=120; suite_timeout=300; fi
RUN_TIMEOUT=${LOWBIT_GPU_CHECK_RUN_TIMEOUT:-$default_timeout}

if [[ -n "${LOWBIT_PREBUILT:-}" ]]; then
  LOWBIT=$LOWBIT_PREBUILT/lowbit
  CONFORMANCE=$LOWBIT_PREBUILT/conformance
  if ! ldconfig -p | grep -q libvulkan.so.1 && compgen -G "$LOWBIT_PREBUILT/deb/*.deb" >/dev/null; then
    for f in "$LOWBIT_PREBUILT"/deb/*.deb; do dpkg -x "$f" /; done
    ldconfig
  fi
else
  cargo build --release -p lowbit 2>&1 | tail -1
  LOWBIT=target/release/lowbit
  CONFORMANCE=$(cargo test --release -p lowbit-gpu --test conformance --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "conformance" and m.get("executable"):
        print(m["executable"])')
fi
# NVIDIA's container images mount the ICD here without registering it with the loader.
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [[ -f $nvidia_icd && -z "${VK_DRIVER_FILES:-}" ]]; then
  export VK_DRIVER_FILES=$nvidia_icd
fi

echo "== adapters" | tee -a "$LOG"
adapters=$("$LOWBIT" info --adapters 2>&1 || true)
echo "$adapters" | tee -a "$LOG"
# The roofline's bandwidth: the datasheet figure of the card the adapter names.
case "$adapters" in
  *H200*) card_gbs=4800 ;;
  *H100*PCIe*) card_gbs=2000 ;;
  *H100*) card_gbs=3350 ;;
  *) card_gbs=4800 ;;
esac
PEAK_GBS=${LOWBIT_PEAK_GBS:-$card_gbs}

echo "== conformance suite on the adapter (wgpu, wgpu_portable, wgpu_f32, GPU vs CPU)" | tee -a "$LOG"
conformance_status=0
# The whole suite (its CPU cases take seconds), so the GPU-against-CPU tests run on the card
# too. Bounded, like every run below, so a hang cannot eat a device lease.
timeout "$suite_timeout" "$CONFORMANCE" --test-threads=1 >>"$LOG" 2>&1 || conformance_status=$?
grep -E "^test result" "$LOG" | tail -1

# bench CASE-NAME ENV... -- ARGS...: one `lowbit bench --json` run, tagged, into $RESULTS.
bench() {
  local name=$1
  shift
  local envs=()
  while [[ $1 != -- ]]; do
    envs+=("$1")
    shift
  done
  shift
  echo "== $name: lowbit bench $*" >>"$LOG"
  local line
  if line=$(timeout "$RUN_TIMEOUT" env "${envs[@]}" "$LOWBIT" bench --json "$@" 2>>"$LOG"); then
    python3 -c 'import json,sys; v=json.loads(sys.argv[2]); v["case"]=sys.argv[1]; print(json.dumps(v))' \
      "$name" "$line" >>"$RESULTS"
  else
    echo "{\"case\": \"$name\", \"failed\": true}" >>"$RESULTS"
  fi
}

if [[ $QUICK == 1 ]]; then
  short=(--prompt-tokens 16 --gen-tokens 4 --reps 1)
  bench smollm2-q4m-gpu -- --synthetic smollm2-135m --quant q4m --device gpu "${short[@]}"
  bench smollm2-q4m-gpu-b4 -- --synthetic smollm2-135m --quant q4m --device gpu --batch 4 --prompt-tokens 0 --gen-tokens 4 --reps 1
  bench smollm2-gpu-b4-sampled -- --synthetic smollm2-135m --quant q4m --device gpu --batch 4 --prompt-tokens 0 --gen-tokens 4 --reps 1 --temperature 1 --top-p 0.9
  bench smollm2-q4m-gpu-unfused LOWBIT_WGPU_FUSE_QUANTIZE=0 -- --synthetic smollm2-135m --quant q4m --device gpu "${short[@]}"
  bench smollm2-q4m-gpu-kv-f16 -- --synthetic smollm2-135m --quant q4m --device gpu --kv-cache-dtype f16 "${short[@]}"
  bench smollm2-q4m-cpu -- --synthetic smollm2-135m --quant q4m --device cpu "${short[@]}"
else
  bench llama8b-q4-b1 -- --synthetic llama-8b --quant q4g32 --device gpu --prompt-tokens 512 --gen-tokens 128
  bench llama8b-q4-b1-f32act LOWBIT_WGPU_ACTIVATIONS=f32 -- --synthetic llama-8b --quant q4g32 --device gpu --prompt-tokens 512 --gen-tokens 64
  # What quantizing in RMSNorm/SwiGLU pays: the same bits with a separate quantize kernel.
  bench llama8b-q4-b1-unfused LOWBIT_WGPU_FUSE_QUANTIZE=0 -- --synthetic llama-8b --quant q4g32 --device gpu --prompt-tokens 512 --gen-tokens 64
  # What WebGPU's zeroing of workgroup memory at each workgroup's start would cost (off by default).
  bench llama8b-q4-b1-zeroed LOWBIT_WGPU_ZERO_WORKGROUP=1 -- --synthetic llama-8b --quant q4g32 --device gpu --prompt-tokens 512 --gen-tokens 64
  # Fewer weight rows per decode workgroup: more workgroups in flight (the same bits).
  for rows in 2 4; do
    bench "llama8b-q4-b1-rows$rows" LOWBIT_WGPU_DECODE_ROWS=$rows -- --synthetic llama-8b --quant q4g32 --device gpu --prompt-tokens 0 --gen-tokens 64
  done
  for b in 4 16; do
    bench "llama8b-q4-b$b" -- --synthetic llama-8b --quant q4g32 --device gpu --batch "$b" --prompt-tokens 0 --gen-tokens 64
  done
  # What drawing on the GPU costs: the same decode sampled at OpenAI-style settings.
  bench llama8b-q4-b16-sampled -- --synthetic llama-8b --quant q4g32 --device gpu --batch 16 --prompt-tokens 0 --gen-tokens 64 --temperature 1 --top-p 0.9
  bench llama8b-q8-b1 -- --synthetic llama-8b --quant q8 --device gpu --prompt-tokens 512 --gen-tokens 64
  # Decode at a 2k context, where attention reads as much as the weights: f32 vs f16 pool.
  for kv in f32 f16; do
    bench "llama8b-q4-b4-ctx2k-kv-$kv" -- --synthetic llama-8b --quant q4g32 --device gpu --batch 4 --prompt-tokens 2048 --gen-tokens 32 --kv-cache-dtype "$kv"
  done
  bench llama1b-q4-b1 -- --synthetic llama-1b --quant q4g32 --device gpu --prompt-tokens 512 --gen-tokens 128
  bench smollm2-q4m-gpu -- --synthetic smollm2-135m --quant q4m --device gpu --prompt-tokens 512 --gen-tokens 128
  bench smollm2-q4m-cpu -- --synthetic smollm2-135m --quant q4m --device cpu --prompt-tokens 512 --gen-tokens 128
  # A mixture of experts (17 GB in Q4): one router readback per layer, 8 small experts a token.
  bench qwen3moe-q4-b1 -- --synthetic qwen3-30b-a3b --quant q4g32 --device gpu --prompt-tokens 128 --gen-tokens 32 --reps 1
  # gpt-oss-20b's shapes (sinks, biases, the clamped SwiGLU) in fp4, the format its MXFP4
  # experts load as.
  bench gptoss-fp4-b1 -- --synthetic gpt-oss-20b --quant fp4 --device gpu --prompt-tokens 128 --gen-tokens 32 --reps 1
  # A Lut4 format's table lookups against Q4's plain nibbles (the same bytes read).
  bench llama8b-iq4nl-b1 -- --synthetic llama-8b --quant iq4nl --device gpu --prompt-tokens 0 --gen-tokens 64
  echo "== per-kernel profile, llama-8b q4 decode" >>"$LOG"
  timeout 120 "$LOWBIT" bench --synthetic llama-8b --quant q4g32 --device gpu --prompt-tokens 0 --gen-tokens 16 --reps 1 --profile >>"$LOG" 2>&1 || true
  echo "== per-kernel profile, llama-8b q4 prefill of 512" >>"$LOG"
  timeout 120 "$LOWBIT" bench --synthetic llama-8b --quant q4g32 --device gpu --prompt-tokens 512 --gen-tokens 0 --reps 1 --profile >>"$LOG" 2>&1 || true
fi

python3 - "$RESULTS" "$PEAK_GBS" <<'EOF' | tee "$OUT_DIR/gpu-check.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
peak = float(sys.argv[2])
by = {r["case"]: r for r in rows}
# enc/wait: per decode step, the host's encoding and submission, then its wait for the GPU (µs).
print(f"{'case':<24} {'batch':>5} {'pp tok/s':>10} {'tg tok/s':>10} {'GB/s':>8} {'roofline':>8} {'GPU MB':>8} {'enc µs':>8} {'wait µs':>8}")
for r in rows:
    if r.get("failed"):
        print(f"{r['case']:<24} FAILED (see the log)")
        continue
    gpu = r.get("gpu_memory_bytes") or {}
    gbs = r["weight_gb_per_second"]
    mb = gpu.get("total", 0) / 1e6 if gpu else float("nan")
    step = r.get("gpu_decode_step") or {}
    print(f"{r['case']:<24} {r['batch']:>5} {r['prompt_tokens_per_second']:>10.1f} "
          f"{r['gen_tokens_per_second']:>10.1f} {gbs:>8.1f} {100 * gbs / peak:>7.1f}% {mb:>8.0f} "
          f"{step.get('encode_us', float('nan')):>8.0f} {step.get('wait_us', float('nan')):>8.0f}")
adapter = next((r["gpu_memory_bytes"]["adapter"] for r in rows if r.get("gpu_memory_bytes")), "?")
print(f"adapter: {adapter}; roofline: {peak:.0f} GB/s (LOWBIT_PEAK_GBS)")

def target(name, ok):
    print(f"{'met   ' if ok else 'MISSED'} {name}")
def tg(case):
    return by.get(case, {}).get("gen_tokens_per_second", 0.0)
if "llama8b-q4-b1" in by and not by["llama8b-q4-b1"].get("failed"):
    r = by["llama8b-q4-b1"]
    target(f"llama-8b q4 batch-1 decode at >= 50% of the roofline ({100 * r['weight_gb_per_second'] / peak:.1f}%)",
           r["weight_gb_per_second"] >= 0.5 * peak)
    target(f"prompt processing >= 10x generation ({r['prompt_tokens_per_second'] / max(tg('llama8b-q4-b1'), 1e-9):.1f}x)",
           r["prompt_tokens_per_second"] >= 10 * tg("llama8b-q4-b1"))
    target(f"batched decode scales: b1 {tg('llama8b-q4-b1'):.0f} < b4 {tg('llama8b-q4-b4'):.0f} < b16 {tg('llama8b-q4-b16'):.0f} tok/s",
           tg("llama8b-q4-b1") < tg("llama8b-q4-b4") < tg("llama8b-q4-b16"))
    if "llama8b-q4-b1-f32act" in by:
        print(f"       int8 vs f32 activations, llama-8b q4 batch 1: tg {tg('llama8b-q4-b1'):.1f} vs {tg('llama8b-q4-b1-f32act'):.1f} tok/s, "
              f"pp {r['prompt_tokens_per_second']:.0f} vs {by['llama8b-q4-b1-f32act'].get('prompt_tokens_per_second', 0):.0f} tok/s")
for greedy, sampled in [("llama8b-q4-b16", "llama8b-q4-b16-sampled"), ("smollm2-q4m-gpu-b4", "smollm2-gpu-b4-sampled")]:
    if greedy in by and sampled in by and not by[sampled].get("failed"):
        print(f"       decode greedy vs sampled on the GPU (T=1, top-p 0.9), {greedy}: tg {tg(greedy):.1f} vs {tg(sampled):.1f} tok/s")
rows_cases = [c for c in ("llama8b-q4-b1-rows2", "llama8b-q4-b1-rows4") if c in by and not by[c].get("failed")]
if rows_cases:
    print("       decode rows per workgroup, llama-8b q4 batch 1: 8 (default) "
          + f"{tg('llama8b-q4-b1'):.1f}, " + ", ".join(f"{c[-1]} {tg(c):.1f}" for c in rows_cases) + " tok/s")
if "llama8b-q4-b1-zeroed" in by and not by["llama8b-q4-b1-zeroed"].get("failed"):
    print(f"       workgroup memory left vs zeroed, llama8b-q4-b1: tg {tg('llama8b-q4-b1'):.1f} vs {tg('llama8b-q4-b1-zeroed'):.1f} tok/s, "
          f"pp {by.get('llama8b-q4-b1', {}).get('prompt_tokens_per_second', 0):.0f} vs {by['llama8b-q4-b1-zeroed'].get('prompt_tokens_per_second', 0):.0f} tok/s")
for fused, unfused in [("llama8b-q4-b1", "llama8b-q4-b1-unfused"), ("smollm2-q4m-gpu", "smollm2-q4m-gpu-unfused")]:
    if fused in by and unfused in by and not by[unfused].get("failed"):
        print(f"       quantize fused into RMSNorm/SwiGLU vs separate, {fused}: tg {tg(fused):.1f} vs {tg(unfused):.1f} tok/s, "
              f"pp {by[fused].get('prompt_tokens_per_second', 0):.0f} vs {by[unfused].get('prompt_tokens_per_second', 0):.0f} tok/s")
target(f"SmolLM2 shapes: GPU decode faster than the CPU backend ({tg('smollm2-q4m-gpu'):.1f} vs {tg('smollm2-q4m-cpu'):.1f} tok/s)",
       tg("smollm2-q4m-gpu") > tg("smollm2-q4m-cpu"))
EOF
echo "log, JSON lines and table: $OUT_DIR"
if [[ $conformance_status != 0 ]]; then
  echo "conformance suite FAILED on this adapter (see $LOG)"
  exit 1
fi
