#!/usr/bin/env bash
# Streaming chat against lowbit with curl: prints the reply as it streams in (LOWBIT_RAW=1 prints
# the raw server-sent events instead).
#
#   ./client-examples/curl.sh "What is 2+2?"
#
# LOWBIT_URL (default http://127.0.0.1:8000), LOWBIT_API_KEY (if the server has --api-key) and
# LOWBIT_MODEL (default: the first model that /v1/models lists) pick the server and the model.
set -euo pipefail

url="${LOWBIT_URL:-http://127.0.0.1:8000}"
url="${url%/}"
prompt="${1:-What is 2+2?}"

auth=()
if [ -n "${LOWBIT_API_KEY:-}" ]; then
  auth=(-H "Authorization: Bearer $LOWBIT_API_KEY")
fi

model="${LOWBIT_MODEL:-}"
if [ -z "$model" ]; then
  # The first "id" in the model list (no jq needed).
  model="$(curl -fsS "${auth[@]}" "$url/v1/models" | grep -o '"id":"[^"]*"' | head -n 1 | cut -d'"' -f4)"
fi

# JSON-escape the prompt (backslashes, quotes, control characters) with sed alone.
json_prompt="$(printf '%s' "$prompt" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/\\t/g' | sed -e ':a;N;$!ba;s/\n/\\n/g')"

body="{\"model\": \"$model\", \"messages\": [{\"role\": \"user\", \"content\": \"$json_prompt\"}], \"temperature\": 0, \"stream\": true}"

if [ -n "${LOWBIT_RAW:-}" ]; then
  # The raw server-sent events, as the server sends them.
  exec curl -fsS -N "${auth[@]}" "$url/v1/chat/completions" -H "Content-Type: application/json" -d "$body"
fi

# Print each chunk's delta.content as it arrives: lines are `data: {json}` and `data: [DONE]`.
curl -fsS -N "${auth[@]}" "$url/v1/chat/completions" -H "Content-Type: application/json" -d "$body" |
  while IFS= read -r line; do
    line="${line%$'\r'}"
    case "$line" in
      "data: [DONE]") break ;;
      "data: "*)
        content="$(printf '%s' "$line" | sed -nE 's/.*"delta":\{[^}]*"content":"(([^"\\]|\\.)*)".*/\1/p')"
        # Undo the JSON escapes: \" first, then \\, \n, \t, \uXXXX via printf %b.
        printf '%b' "${content//\\\"/\"}"
        ;;
    esac
  done
echo
