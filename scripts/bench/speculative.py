"""Speculative decoding by prompt lookup against plain decoding: the same chats sent to two
servers on one model, one with `--speculative-tokens`, alternated, for tokens per second and
the drafts the speculating one accepted. Greedy, or sampled at TEMPERATURE with a fixed seed
per request. The replies must be equal (speculation keeps plain decoding's tokens, seeded
samples included); a difference is reported and fails the run.

    lowbit serve --model M --port 8000 &
    lowbit serve --model M --port 8001 --speculative-tokens 5 &
    python3 scripts/bench/speculative.py http://127.0.0.1:8000 http://127.0.0.1:8001 [ROUNDS] [CLIENTS] [TEMPERATURE]
"""

import json
import re
import statistics
import sys
import threading
import time
import urllib.request

PLAIN, SPEC = sys.argv[1], sys.argv[2]
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
CLIENTS = int(sys.argv[4]) if len(sys.argv) > 4 else 1
TEMPERATURE = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
TOKENS = 160

PARAGRAPH = ("The committee met on Tuesday to review the budget for the coming year. After a long "
             "discussion, the members agreed to increase funding for the library, to repair the "
             "roof of the town hall, and to hire two new teachers for the primary school. The "
             "chair thanked everyone for their patience and closed the meeting at nine o'clock.")
CODE = '''```python
def summarize(orders):
    total = 0
    count = 0
    largest = None
    for order in orders:
        total += order.amount
        count += 1
        if largest is None or order.amount > largest.amount:
            largest = order
    average = total / count if count else 0
    return {"total": total, "count": count, "average": average, "largest": largest}
```'''
WORKLOADS = {
    # Replies that copy their input: what prompt lookup is for.
    "repeat a paragraph": f"Repeat the following text exactly:\n\n{PARAGRAPH}",
    "fix spelling": "Fix the spelling in this text and return it: " + PARAGRAPH.replace(
        "the", "teh").replace("receive", "recieve").replace("library", "libary"),
    "edit code": f"Rename the variable total to subtotal in this code and return the code:\n{CODE}",
    # A reply that copies nothing: what speculation costs where it does not pay.
    "write a story": "Write a long story about a ship at sea.",
}


def post(url, body):
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def metric(url, name):
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    m = re.search(rf"^lowbit:{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def round_trip(url, model, ask):
    """(seconds, completion tokens, texts) of CLIENTS identical chats sent at once."""
    out = [None] * CLIENTS

    def one(k):
        out[k] = post(url, {"model": model, "messages": [{"role": "user", "content": ask}],
                            "max_tokens": TOKENS, "temperature": TEMPERATURE, "seed": k})

    threads = [threading.Thread(target=one, args=(k,)) for k in range(CLIENTS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    tokens = sum(r["usage"]["completion_tokens"] for r in out)
    return seconds, tokens, [r["choices"][0]["message"]["content"] for r in out]


def main():
    model = json.load(urllib.request.urlopen(PLAIN + "/v1/models"))["data"][0]["id"]
    differ = False
    print(f"{CLIENTS} client(s), temperature {TEMPERATURE}, {TOKENS} tokens max, {ROUNDS} rounds "
          "alternated; tok/s medians")
    print(f"{'workload':<20} {'tokens':>6} {'plain':>8} {'spec':>8} {'ratio':>6} {'accepted':>9}")
    for name, ask in WORKLOADS.items():
        runs = {PLAIN: [], SPEC: []}
        texts = {}
        drafted0 = metric(SPEC, "spec_decode_num_draft_tokens_total")
        accepted0 = metric(SPEC, "spec_decode_num_accepted_tokens_total")
        for k in range(ROUNDS):
            order = (PLAIN, SPEC) if k % 2 == 0 else (SPEC, PLAIN)
            for url in order:
                seconds, tokens, t = round_trip(url, model, ask)
                runs[url].append(tokens / seconds)
                texts.setdefault(url, t)
        drafted = metric(SPEC, "spec_decode_num_draft_tokens_total") - drafted0
        accepted = metric(SPEC, "spec_decode_num_accepted_tokens_total") - accepted0
        if texts[PLAIN] != texts[SPEC]:
            differ = True
            print(f"  {name}: the replies differ")
        plain, spec = statistics.median(runs[PLAIN]), statistics.median(runs[SPEC])
        rate = f"{accepted / drafted:.0%}" if drafted else "-"
        print(f"{name:<20} {tokens // CLIENTS:>6} {plain:>8.1f} {spec:>8.1f} {spec / plain:>5.2f}x "
              f"{rate:>9}")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
