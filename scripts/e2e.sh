#!/usr/bin/env bash
# lowbit's SDK end-to-end tests: sets up .venv-sdk/ and the Node example (scripts/sdk-env.sh),
# makes sure the model and the release binaries (lowbit, lowbit-chat) are there, then runs
# tests/sdk with pytest against real `lowbit serve` processes.
#
#   ./scripts/e2e.sh                 # the whole suite
#   ./scripts/e2e.sh -k stream -x    # extra arguments go to pytest
#
# LOWBIT_E2E_TIMEOUT (seconds, default 900) bounds the whole pytest run; each test is bounded
# by pytest-timeout (tests/sdk/pytest.ini).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/sdk-env.sh
./scripts/fetch-model.sh
cargo build --release --bin lowbit --bin lowbit-chat

timeout --kill-after=30 "${LOWBIT_E2E_TIMEOUT:-900}" \
  .venv-sdk/bin/python -m pytest tests/sdk -q "$@"
