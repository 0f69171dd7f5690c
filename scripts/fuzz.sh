#!/usr/bin/env bash
# Fuzzes the HTTP API of `lowbit serve` (tests/fuzz/README.md):
#   1. .venv-fuzz/ from the pinned tests/fuzz/requirements.txt (Schemathesis; reinstalled only
#      when the pins or the Python version changed), the model, and target/release/lowbit
#      (built only if missing: scripts/test.sh and scripts/e2e.sh build it first);
#   2. a server on a free loopback port (--port 0), with a tiny context so that every
#      generated request finishes in well under a second;
#   3. Schemathesis against the server's own /openapi.json: a fixed seed, a bounded number of
#      examples per operation (about 4,000 cases in all), one worker, a per-request timeout;
#   4. tests/fuzz/raw_http.py: raw junk on the socket that Schemathesis cannot send;
#   5. the server is still ready, has no request running and no KV block in use, and exits 0
#      on SIGTERM.
# Every stage runs even when an earlier one failed; the script exits 1 if any did, after
# printing the server's log tail. Everything it writes goes to target/fuzz/ (server.log,
# schemathesis.txt, junit.xml, har.json: every request and response of the Schemathesis run).
#
#   ./scripts/fuzz.sh                                  # the CI run (~80 s on 2 cores)
#   LOWBIT_FUZZ_SEED=123 ./scripts/fuzz.sh             # another seed
#   LOWBIT_FUZZ_EXAMPLES=1000 ./scripts/fuzz.sh        # a longer hunt (-n per operation)
#   ./scripts/fuzz.sh --include-path /v1/completions   # extra arguments go to `schemathesis run`
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

python="${PYTHON:-python3}"
venv="$root/.venv-fuzz"
requirements="$root/tests/fuzz/requirements.txt"
out="$root/target/fuzz"
seed="${LOWBIT_FUZZ_SEED:-20261202}"
examples="${LOWBIT_FUZZ_EXAMPLES:-300}"
# The id the model is served under; tests/fuzz/schemathesis.toml's `served-model` dictionary
# must name the same.
model_id="lowbit-fuzz"

log() { echo "fuzz: $*" >&2; }

# --- 1. environment -----------------------------------------------------------------------------
want="$(cat "$requirements"; "$python" -c 'import sys; print(sys.version)')"
want="$(printf '%s' "$want" | sha256sum | cut -d' ' -f1)"
stamp="$venv/.lowbit-fuzz-stamp"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  :
else
  log "installing $requirements into .venv-fuzz/"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --require-virtualenv -r "$requirements"
  echo "$want" > "$stamp"
fi

./scripts/fetch-model.sh
model="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
bin="$root/target/release/lowbit"
if [ ! -x "$bin" ]; then
  log "building $bin"
  cargo build --release --bin lowbit
fi

rm -rf "$out"
mkdir -p "$out"

# --- 2. the server ------------------------------------------------------------------------------
# --max-model-len 48: a prompt plus max_tokens over 48 tokens is an immediate 400
#   (context_length_exceeded), and whatever is accepted generates at most ~48 tokens.
# --kv-cache-memory 64MiB: 91 blocks of 16 tokens; the largest request (n=16 choices x 48
#   tokens) needs 48.
# --request-timeout 20: a request still running after 20 s is answered 504, which
#   not_a_server_error reports: on this configuration the slowest legitimate request
#   (n=16 x 48 tokens) took 1.6 s on 2 busy cores, so 20 s means a hang, not a slow machine.
#   Schemathesis's own --request-timeout (30 s) is longer, so the server's 504 comes first.
# --port 0: the kernel picks a free port; the server prints it on its first line.
"$bin" serve --model "$model" --served-model-name "$model_id" --host 127.0.0.1 --port 0 \
  --max-model-len 48 --kv-cache-memory 64MiB --request-timeout 20 --shutdown-timeout 10 \
  > "$out/server.log" 2>&1 &
server_pid=$!

cleanup() {
  if kill -0 "$server_pid" 2> /dev/null; then
    kill -KILL "$server_pid" 2> /dev/null || true
  fi
}
trap cleanup EXIT

failed=()
fail() {
  log "FAILED: $*"
  failed+=("$*")
}
server_tail() {
  echo "---- last 60 lines of $out/server.log ----" >&2
  tail -n 60 "$out/server.log" >&2 || true
  echo "----" >&2
}
http_status() { # URL → the HTTP status, or 000 when there is no answer
  curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$1" || true
}

port=""
for _ in $(seq 1 300); do
  if ! kill -0 "$server_pid" 2> /dev/null; then
    break
  fi
  port="$(sed -n 's|^lowbit: listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$out/server.log" | head -n 1)"
  if [ -n "$port" ] && [ "$(http_status "http://127.0.0.1:$port/ready")" = 200 ]; then
    break
  fi
  port=""
  sleep 0.2
done
if [ -z "$port" ]; then
  log "the server did not become ready within 60 s"
  server_tail
  exit 1
fi
base="http://127.0.0.1:$port"
log "server ready on $base (pid $server_pid); seed $seed, $examples examples per operation"

# --- 3. Schemathesis ----------------------------------------------------------------------------
# Checks, decided from runs of `--checks all --continue-on-failure` against this server:
#   not_a_server_error           the point: no input may get a 5xx (a 500 is always a bug).
#   response_schema_conformance  every JSON answer matches its documented schema; passes.
#   negative_data_rejection      schema-invalid input gets a 4xx; passes (the server is
#                                stricter than the spec, never looser: 4,000+ negative cases).
#   unsupported_method           undocumented methods get a 405; passes.
#   allow_header_conformance     ... with an Allow header naming the documented methods; passes.
# Left out, because they fail on a correct server whose spec is thinner than its validation
# (see tests/fuzz/README.md, "What the spec lacks"):
#   positive_data_acceptance     expects 2xx for any schema-valid body, but the server rightly
#                                rejects schema-valid input the spec cannot express: unknown
#                                fields (the request schemas are an allOf without
#                                additionalProperties: false), ranges given only in prose (n,
#                                top_logprobs, logprobs, temperature, logit_bias), token ids
#                                outside the vocabulary, prompt+max_tokens over the context,
#                                'exactly one of prompt and messages', empty `messages`,
#                                unsupported best_of, and 1.0 for an integer.
#   status_code_conformance      404 model_not_found, 405, 413, 504 (and 401 with --api-key)
#                                are real answers the spec does not list.
#   content_type_conformance     streamed answers are text/event-stream, which the spec does
#                                not list.
#   missing_required_header, ignored_auth, use_after_free, ensure_resource_availability,
#   response_headers_conformance, object_level_authorization: nothing in the spec for them
#                                to test (no security scheme, no documented headers; the only
#                                DELETE, of a stored response, needs an id no generator can know).
# Model ids and chat roles come from the dictionaries in tests/fuzz/schemathesis.toml; the
# `stream`/`max_tokens` mix from tests/fuzz/hooks.py (both explained there).
# Reproducible: --seed, --generation-database none and the [cache]/[phases] settings in
# schemathesis.toml (nothing carried over between runs, nothing taken from answers), and one
# worker: with --workers 2 the order in which the two workers finish operations changes how
# many cases one /tokenize scenario generates (3,738 or 4,021 in all, same seed), with one
# worker two runs send byte-identical requests, in about the same time on 2 cores (the server's
# forward steps are the cost, not the client). Schemathesis runs in target/fuzz/ so its
# .hypothesis/ scratch folder stays out of the work tree.
checks="not_a_server_error,response_schema_conformance,negative_data_rejection"
checks="$checks,unsupported_method,allow_header_conformance"
started=$SECONDS
st_status=0
(
  cd "$out"
  SCHEMATHESIS_HOOKS="$root/tests/fuzz/hooks.py" timeout --kill-after=10 600 \
    "$venv/bin/schemathesis" --config-file "$root/tests/fuzz/schemathesis.toml" run \
    "$base/openapi.json" \
    --checks "$checks" \
    --max-examples "$examples" \
    --seed "$seed" \
    --workers 1 \
    --request-timeout 30 \
    --generation-database none \
    --continue-on-failure \
    --no-color \
    --output-sanitize false \
    --report junit,har \
    --report-junit-path "$out/junit.xml" \
    --report-har-path "$out/har.json" \
    "$@"
) > "$out/schemathesis.txt" 2>&1 || st_status=$?
# The failures (with curl reproductions), the summary and the seed.
sed -n '/^=* FAILURES =*$/,$p' "$out/schemathesis.txt" >&2
if ! grep -q '^=* FAILURES =*$' "$out/schemathesis.txt"; then
  tail -n 30 "$out/schemathesis.txt" >&2
fi
log "schemathesis: exit $st_status in $((SECONDS - started)) s (full output: $out/schemathesis.txt)"
[ "$st_status" = 0 ] || fail "schemathesis (exit $st_status)"

# --- 4. raw junk on the socket ------------------------------------------------------------------
if [ "$(http_status "$base/ready")" != 200 ]; then
  fail "the server is not ready after schemathesis"
fi
started=$SECONDS
raw_status=0
timeout --kill-after=10 300 "$venv/bin/python" "$root/tests/fuzz/raw_http.py" "$port" "$model_id" \
  || raw_status=$?
log "raw-http: exit $raw_status in $((SECONDS - started)) s"
[ "$raw_status" = 0 ] || fail "raw HTTP junk (exit $raw_status)"

# --- 5. the server afterwards -------------------------------------------------------------------
ready="$(http_status "$base/ready")"
[ "$ready" = 200 ] || fail "GET /ready answered $ready at the end"
idle=""
for _ in $(seq 1 50); do
  metrics="$(curl -s --max-time 10 "$base/metrics" || true)"
  if grep -qx 'lowbit:num_requests_running 0' <<< "$metrics" \
    && grep -qx 'lowbit:kv_blocks_in_use 0' <<< "$metrics"; then
    idle=yes
    break
  fi
  sleep 0.2
done
if [ -z "$idle" ]; then
  grep -E '^lowbit:(num_requests_running|num_requests_waiting|kv_blocks_in_use) ' <<< "$metrics" >&2 || true
  fail "requests or KV blocks still held 10 s after the last request"
fi

kill -TERM "$server_pid"
exit_status=0
for _ in $(seq 1 200); do
  kill -0 "$server_pid" 2> /dev/null || break
  sleep 0.2
done
if kill -0 "$server_pid" 2> /dev/null; then
  fail "the server did not exit within 40 s of SIGTERM"
else
  wait "$server_pid" || exit_status=$?
  [ "$exit_status" = 0 ] || fail "the server exited $exit_status after SIGTERM"
fi
if grep -q 'panicked at' "$out/server.log"; then
  fail "the server log has a panic"
  grep -A 2 'panicked at' "$out/server.log" >&2 || true
fi

if [ "${#failed[@]}" -gt 0 ]; then
  server_tail
  log "${#failed[@]} stage(s) failed:"
  printf 'fuzz:   - %s\n' "${failed[@]}" >&2
  log "reproduce: LOWBIT_FUZZ_SEED=$seed LOWBIT_FUZZ_EXAMPLES=$examples ./scripts/fuzz.sh (and the curl lines above)"
  exit 1
fi
log "passed"
