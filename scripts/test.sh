#!/usr/bin/env bash
# lowbit's test command: installs what the tests need, then runs formatting, lints and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/fetch-model.sh
# The wgpu tests run on lavapipe (Mesa's software Vulkan) where there is no GPU.
if ! ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    libvulkan1 mesa-vulkan-drivers >/dev/null
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
# Release: the tests run the real 135M-parameter model.
cargo test --workspace --release
# End to end: the real binary on loopback ports, through the official Python and Node SDKs,
# curl and the Rust client (installs its virtualenv and npm packages on first use).
./scripts/e2e.sh
# Fuzzing: schemathesis against /openapi.json (a few thousand cases, fixed seed) and raw junk on
# the socket; no 5xx, no hang, every KV block back (tests/fuzz/README.md).
./scripts/fuzz.sh
# Deployment: the image built and run under its own dockerd, the Helm chart and compose files checked (deploy/README.md).
./deploy/test.sh
