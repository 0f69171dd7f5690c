"""What the Responses API's wire format costs over chat's: the same conversation streamed through
/v1/chat/completions and /v1/responses (greedy, so both write the same tokens), alternated, for
the time to the first text, the time per text event after it, and the bytes each sends.

    lowbit serve --model M --port 8000 &
    python3 scripts/bench/responses-vs-chat.py http://127.0.0.1:8000 [ROUNDS]
"""

import json
import statistics
import sys
import time
import urllib.request

URL = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
ASK = "Write a long story about a ship at sea."
TOKENS = 200


def post(path, body):
    req = urllib.request.Request(URL + path, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    return urllib.request.urlopen(req)


def stream(path, body, is_text):
    """(ms to the first text, ms per text event after it, events with text, bytes received)."""
    start = time.perf_counter()
    times, size = [], 0
    with post(path, body) as r:
        for line in r:
            size += len(line)
            if is_text(line):
                times.append(time.perf_counter())
    first = (times[0] - start) * 1000
    per = (times[-1] - times[0]) / (len(times) - 1) * 1000
    return first, per, len(times), size


def main():
    model = json.load(urllib.request.urlopen(URL + "/v1/models"))["data"][0]["id"]
    chat = {"model": model, "messages": [{"role": "user", "content": ASK}], "max_tokens": TOKENS,
            "temperature": 0, "stream": True}
    responses = {"model": model, "input": ASK, "max_output_tokens": TOKENS, "temperature": 0,
                 "stream": True, "store": False}
    runs = {"chat": [], "responses": []}
    chat_text = lambda l: l.startswith(b"data: {") and b'"content":"' in l and b'"content":""' not in l
    responses_text = lambda l: l.startswith(b"data: {") and b'"response.output_text.delta"' in l
    for k in range(ROUNDS):
        pair = [("chat", "/v1/chat/completions", chat, chat_text),
                ("responses", "/v1/responses", responses, responses_text)]
        # Each goes first in every other round.
        for name, path, body, is_text in pair[::-1] if k % 2 else pair:
            runs[name].append(stream(path, body, is_text))
    for name, rs in runs.items():
        first = statistics.median(r[0] for r in rs)
        per = statistics.median(r[1] for r in rs)
        print(f"{name:9s} first text {first:6.2f} ms, {per:5.2f} ms per text event "
              f"({rs[0][2]} events, {rs[0][3]} bytes), median of {len(rs)}: "
              f"per-event runs {', '.join(f'{r[1]:.2f}' for r in rs)}")


if __name__ == "__main__":
    main()
