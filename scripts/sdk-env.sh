#!/usr/bin/env bash
# Sets up what the SDK end-to-end tests (tests/sdk/) and the client examples need:
#   .venv-sdk/                       a virtualenv with the pinned tests/sdk/requirements.txt
#                                    (the official `openai` Python SDK, pytest, pytest-timeout)
#   client-examples/node/node_modules  `npm ci` of client-examples/node/package-lock.json
#                                    (the official `openai` npm package)
# Idempotent and fast when already set up: each part is reinstalled only when its pin file
# changed since the last successful install (a sha256 stamp inside the installed folder).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

python="${PYTHON:-python3}"
venv="$root/.venv-sdk"
requirements="$root/tests/sdk/requirements.txt"
node_dir="$root/client-examples/node"

digest() { cat "$@" | sha256sum | cut -d' ' -f1; }

# --- Python -------------------------------------------------------------------------------------
want="$(digest "$requirements"; "$python" -c 'import sys; print(sys.version)')"
want="$(printf '%s' "$want" | sha256sum | cut -d' ' -f1)"
stamp="$venv/.lowbit-sdk-stamp"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  :
else
  echo "sdk-env: installing $requirements into .venv-sdk/" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --require-virtualenv -r "$requirements"
  echo "$want" > "$stamp"
fi

# --- Node ---------------------------------------------------------------------------------------
if ! command -v npm > /dev/null; then
  echo "sdk-env: error: npm is not installed (the Node client example needs Node 20+)" >&2
  exit 1
fi
lock="$node_dir/package-lock.json"
modules="$node_dir/node_modules"
if [ ! -f "$lock" ]; then
  # First time only: resolve the pins in package.json into a lockfile to commit.
  echo "sdk-env: creating client-examples/node/package-lock.json" >&2
  (cd "$node_dir" && npm install --no-audit --no-fund --loglevel=error)
fi
want="$(digest "$node_dir/package.json" "$lock"; node --version)"
want="$(printf '%s' "$want" | sha256sum | cut -d' ' -f1)"
stamp="$modules/.lowbit-sdk-stamp"
if [ -d "$modules" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  :
else
  echo "sdk-env: npm ci in client-examples/node/" >&2
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
fi
