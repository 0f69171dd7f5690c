"""The runnable clients in client-examples/ (curl, Python, Node, Rust) against a live server.

Each streams a greedy chat for "What is 2+2?" and must print the model's known answer; each
also honours LOWBIT_API_KEY against a server that requires a key. scripts/e2e.sh builds the Rust
example (target/release/lowbit-chat) and installs the Node one (scripts/sdk-env.sh) first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import MODEL, ROOT

ANSWER = "The answer to this classic math problem is 4."
EXAMPLES = ROOT / "client-examples"
RUST_BIN = ROOT / "target" / "release" / "lowbit-chat"


def command(name: str) -> list[str]:
    if name == "curl":
        assert shutil.which("curl"), "curl is not installed"
        return ["bash", str(EXAMPLES / "curl.sh")]
    if name == "python":
        return [sys.executable, str(EXAMPLES / "python" / "chat.py")]
    if name == "node":
        assert (EXAMPLES / "node" / "node_modules" / "openai").is_dir(), (
            "client-examples/node/node_modules is missing: run scripts/sdk-env.sh"
        )
        return ["node", str(EXAMPLES / "node" / "chat.mjs")]
    if name == "rust":
        assert RUST_BIN.exists(), (
            f"{RUST_BIN} is missing: cargo build --release -p lowbit-client-example"
        )
        return [str(RUST_BIN)]
    raise ValueError(name)


def run_example(name: str, url: str, *args: str, api_key: str | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOWBIT_")}
    env["LOWBIT_URL"] = url
    if api_key is not None:
        env["LOWBIT_API_KEY"] = api_key
    return subprocess.run(
        [*command(name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


EXAMPLE_NAMES = ["curl", "python", "node", "rust"]
# A prompt with quotes, to see that each example passes argv through (and escapes it).
OTHER_PROMPT = 'What is the capital of France? Answer in one word, like "Rome".'


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_default_prompt(server, name):
    r = run_example(name, server.url)
    assert r.returncode == 0, r.stderr
    assert ANSWER in r.stdout, (r.stdout, r.stderr)


@pytest.fixture(scope="module")
def france_answer(server) -> str:
    """The greedy reply to OTHER_PROMPT, as the server gives it without streaming."""
    status, _, data = server.post_json(
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": OTHER_PROMPT}], "temperature": 0},
    )
    assert status == 200, data
    return data["choices"][0]["message"]["content"]


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_prompt_from_argv(server, france_answer, name):
    r = run_example(name, server.url, OTHER_PROMPT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == france_answer.strip(), (r.stdout, r.stderr)
    assert ANSWER not in r.stdout


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_api_key(keyed_server, name):
    r = run_example(name, keyed_server.url, api_key="k2")
    assert r.returncode == 0, r.stderr
    assert ANSWER in r.stdout, (r.stdout, r.stderr)
    # Without the key the server refuses, and the example says so by failing.
    r = run_example(name, keyed_server.url)
    assert r.returncode != 0
    assert ANSWER not in r.stdout


STRUCTURED = {
    "python": [sys.executable, str(EXAMPLES / "python" / "structured.py")],
    "node": ["node", str(EXAMPLES / "node" / "structured.mjs")],
}


@pytest.mark.parametrize("name", sorted(STRUCTURED))
def test_structured_output_examples_print_a_valid_person(server, name):
    """Each SDK's structured-output example prints the person the schema describes: the same
    object from both (the same schema, greedy), with the facts of the prompt in it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOWBIT_")}
    env["LOWBIT_URL"] = server.url
    r = subprocess.run(
        STRUCTURED[name], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert r.returncode == 0, r.stderr
    person = json.loads(r.stdout)
    assert set(person) == {"name", "age", "pets"}, person
    assert person["name"] == "Alice" and person["age"] == 30, person
    assert {"kind": "cat", "name": "Tom"} in person["pets"], person
    for pet in person["pets"]:
        assert set(pet) == {"kind", "name"} and pet["kind"] in ("cat", "dog", "fish"), person


def test_tools_example_calls_the_tool_and_answers(server):
    """The Python tool-calling example: the model's call (valid arguments, the prompt's city)
    is run and its result sent back; then the model answers (whatever a 135M model makes of
    it: the test asks only for an answer)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOWBIT_")}
    env["LOWBIT_URL"] = server.url
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "python" / "tools.py")],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == 'get_weather({"city": "Paris", "unit": "celsius"})', r.stdout
    assert len(lines) >= 2 and lines[1].strip(), r.stdout


RESPONSES = {
    "python": [sys.executable, str(EXAMPLES / "python" / "responses.py")],
    "node": ["node", str(EXAMPLES / "node" / "responses.mjs")],
}


def test_responses_examples_hold_a_conversation(server):
    """Both SDKs' Responses examples print the same two answers (greedy), and they are what
    the chat endpoint answers for the same turns: the server kept the first turn."""
    from openai import OpenAI

    env = {k: v for k, v in os.environ.items() if not k.startswith("LOWBIT_")}
    env["LOWBIT_URL"] = server.url
    outputs = []
    for cmd in RESPONSES.values():
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        outputs.append(r.stdout.splitlines())
    assert outputs[0] == outputs[1], outputs
    client = OpenAI(base_url=server.url + "/v1", api_key="none")
    turns = [{"role": "user", "content": "What is 2+2?"}]
    for line in outputs[0]:
        reply = client.chat.completions.create(model=MODEL, messages=turns, temperature=0, max_tokens=24)
        text = reply.choices[0].message.content
        assert line == text.replace("\n", " "), (line, text)
        turns += [{"role": "assistant", "content": text}, {"role": "user", "content": "And 3+3?"}]
