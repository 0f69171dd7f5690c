#!/usr/bin/env python3
"""Soak test of `lowbit serve` (a benchmark, not a CI test): many streaming chats at high
concurrency with random client disconnects, then checks that nothing leaked.

    .venv-sdk/bin/python scripts/soak.py [--requests 300] [--concurrency 64] [--disconnect 0.3]

Starts its own server on a free loopback port (the default model), sends `--requests` streaming
chats from `--concurrency` threads; each request is abandoned after a random number of chunks
with probability `--disconnect`. Reports unexpected errors (anything but a completed stream or a
deliberate disconnect), the metrics afterwards (running, waiting, KV blocks in use: all must be
0), and the server's resident memory after warm-up and at the end. Exits non-zero on a leak or
an unexpected error.
"""
import argparse
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
BIN = os.path.join(ROOT, "target", "release", "lowbit")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def metrics(url: str) -> dict:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(lowbit:[a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--disconnect", type=float, default=0.3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kv-cache-memory", default="128MiB", help="small, so warm-up touches the whole pool")
    args = ap.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The log goes to a file: an unread pipe fills up and blocks the server's logging.
    log = open(os.path.join(ROOT, "target", "soak-server.log"), "wb")
    server = subprocess.Popen(
        [BIN, "serve", "--model", MODEL, "--port", str(port), "--kv-cache-memory", args.kv_cache_memory],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    for _ in range(300):
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    rng = random.Random(args.seed)
    plan = [(i, rng.random() < args.disconnect, rng.randint(1, args.max_tokens - 1)) for i in range(args.requests)]
    lock = threading.Lock()
    counts = {"completed": 0, "disconnected": 0, "errors": 0}
    errors = []
    rss = {}
    next_index = [0]

    def worker():
        with httpx.Client(base_url=url, timeout=300) as client:
            while True:
                with lock:
                    if next_index[0] >= len(plan):
                        return
                    i, drop, after = plan[next_index[0]]
                    next_index[0] += 1
                    if i == args.requests // 3:
                        rss["warm"] = rss_mb(server.pid)
                body = {
                    "model": "SmolLM2-135M-Instruct.Q4_1",
                    "messages": [{"role": "user", "content": f"Tell story number {i} about a river."}],
                    "max_tokens": args.max_tokens,
                    "temperature": 0.7,
                    "seed": i,
                    "ignore_eos": True,
                    "stream": True,
                }
                try:
                    with client.stream("POST", "/v1/chat/completions", json=body) as r:
                        if r.status_code != 200:
                            raise RuntimeError(f"status {r.status_code}: {r.read()[:200]!r}")
                        chunks, done = 0, False
                        for line in r.iter_lines():
                            if line == "data: [DONE]":
                                done = True
                                break
                            if line.startswith("data: "):
                                chunks += 1
                                if drop and chunks >= after:
                                    break
                        with lock:
                            if drop and not done:
                                counts["disconnected"] += 1
                            elif done:
                                counts["completed"] += 1
                            else:
                                raise RuntimeError("stream ended without [DONE]")
                except Exception as e:  # noqa: BLE001 - every failure is counted and shown
                    with lock:
                        counts["errors"] += 1
                        errors.append(f"request {i}: {e}")

    start = time.time()
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.time() - start
    # Blocks of abandoned streams return within a step or two.
    m = {}
    for _ in range(50):
        m = metrics(url)
        if m.get("lowbit:num_requests_running") == 0 and m.get("lowbit:kv_blocks_in_use") == 0 and not m.get("lowbit:kv_window_blocks_in_use"):
            break
        time.sleep(0.1)
    rss["end"] = rss_mb(server.pid)
    server.send_signal(signal.SIGTERM)
    code = server.wait(timeout=60)
    print(f"{args.requests} requests, {args.concurrency} concurrent, {seconds:.1f} s: {counts}")
    for e in errors[:5]:
        print("  ", e)
    keys = ["num_requests_running", "num_requests_waiting", "kv_blocks_in_use", "kv_blocks_total", "kv_window_blocks_in_use", "num_preemptions_total", "generation_tokens_total"]
    print("metrics after:", {k: m.get(f"lowbit:{k}") for k in keys})
    print('aborts counted:', m.get('lowbit:request_success_total{finished_reason="abort"}'))
    print(f"server RSS: {rss.get('warm', 0):.0f} MB after warm-up, {rss['end']:.0f} MB at the end; exit code {code}")
    # (The sliding-window layers' own pool, where the model has one, must be empty too.)
    leaked = m.get("lowbit:kv_blocks_in_use") != 0 or bool(m.get("lowbit:kv_window_blocks_in_use")) or m.get("lowbit:num_requests_running") != 0
    return 1 if counts["errors"] or leaked or code != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
