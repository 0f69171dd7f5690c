"""Inter-token time of a 200-token streamed completion with and without the `auto` tool grammar
(hermes: any text without `<tool_call>`, then calls), on the same prompt: a chat with one tool as
the server renders it (/tokenize), sent to /v1/completions with and without `guided_grammar`,
greedy and at temperature 1, three alternated rounds.

    lowbit serve --model M --chat-template Qwen-Qwen2.5-7B-Instruct.jinja --port 8000 &
    python3 scripts/bench/tool-grammar-itl.py http://127.0.0.1:8000
"""

import json
import sys
import time
import urllib.request

URL = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
GRAMMAR = (
    'start: TEXT | lead "\\n" %json {"type": "object"} "\\n</tool_call>"\n'
    "TEXT: /(.|\\n)*/ & ~/(.|\\n)*<tool_call>(.|\\n)*/\n"
    "lead[lazy]: /(.|\\n)*<tool_call>/\n"
)


def post(path, body):
    req = urllib.request.Request(URL + path, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    return urllib.request.urlopen(req)


def main():
    model = json.load(urllib.request.urlopen(URL + "/v1/models"))["data"][0]["id"]
    ask = [{"role": "user", "content": "Write a long story about a ship at sea."}]
    ids = json.load(post("/tokenize", {"messages": ask, "tools": TOOLS}))["tokens"]

    def run(grammar, temperature):
        body = {"model": model, "prompt": ids, "max_tokens": 200, "temperature": temperature,
                "seed": 1, "stream": True}
        if grammar:
            body["guided_grammar"] = GRAMMAR
        times = []
        with post("/v1/completions", body) as r:
            for line in r:
                if line.startswith(b"data: {") and b'"text":"' in line:
                    times.append(time.perf_counter())
        return (times[-1] - times[0]) / (len(times) - 1) * 1000

    print(f"prompt tokens {len(ids)}")
    for rnd in range(3):
        for temperature in (0, 1):
            plain, constrained = run(False, temperature), run(True, temperature)
            print(f"round {rnd} temperature {temperature}: no grammar {plain:.2f} ms/token, "
                  f"auto tool grammar {constrained:.2f} ms/token")


if __name__ == "__main__":
    main()
