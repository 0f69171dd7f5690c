"""Renders each template here on a set of conversations exactly as Hugging Face transformers'
`apply_chat_template` does (Jinja2's sandbox, trim_blocks and lstrip_blocks, its own `tojson`,
`raise_exception`, `strftime_now` (a fixed day), `tools` = None when absent), writing `expected.json`, the
fixture `server/tests/chat_templates.rs` compares lowbit's renderer with.

The templates are the models' own, as llama.cpp's `models/templates/` ships them.

    python render.py   # needs jinja2 (3.1)
"""

import datetime
import json
import os

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))

TEMPLATES = {
    "qwen2.5": ("Qwen-Qwen2.5-7B-Instruct.jinja", "", "<|im_end|>"),
    "qwen3": ("Qwen-Qwen3-0.6B.jinja", "", "<|im_end|>"),
    "llama3.1": ("meta-llama-Llama-3.1-8B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    "llama3.2": ("meta-llama-Llama-3.2-3B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    # Hugging Face picks this named template only for a request with tools (it loops over them).
    "hermes3": (
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja",
        "<|begin_of_text|>",
        "<|im_end|>",
    ),
    "r1-distill-qwen": (
        "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
    ),
    "mistral-nemo": ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "<s>", "</s>"),
    "gpt-oss": ("openai-gpt-oss-120b.jinja", "<|startoftext|>", "<|return|>"),
}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city, in °C (<b>now</b> & 'today')",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "a city's name"},
                "days": {"type": "integer"},
                "units": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time now",
        "parameters": {"type": "object", "properties": {}},
    },
}

# Arguments as a mapping: the convention templates are written for (lowbit parses OpenAI's
# JSON string into one before rendering).
CALL = {
    "id": "call12345",
    "type": "function",
    "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}},
}
SECOND_CALL = {
    "id": "call67890",
    "type": "function",
    "function": {"name": "get_time", "arguments": {}},
}

CASES = {
    "plain": ([{"role": "user", "content": "Hi there"}], None),
    "system_multi_turn": (
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "  Say 'bye' & <go>  "},
        ],
        None,
    ),
    "tools": (
        [
            {"role": "system", "content": "Be helpful."},
            {"role": "user", "content": "Weather in Paris?"},
        ],
        [WEATHER, TIME],
    ),
    "tool_results": (
        [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [CALL]},
            {
                "role": "tool",
                "tool_call_id": "call12345",
                "name": "get_weather",
                "content": '{"temp": 18, "sky": "clear"}',
            },
        ],
        [WEATHER, TIME],
    ),
    # A reasoning model's thinking sent back with its call (Qwen3's template shows it).
    "reasoning_tool_loop": (
        [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "reasoning_content": "The user wants the weather; get_weather does that.",
                "tool_calls": [CALL],
            },
            {"role": "tool", "tool_call_id": "call12345", "content": "18 C"},
        ],
        [WEATHER, TIME],
    ),
    "parallel_tool_results": (
        [
            {"role": "user", "content": "Weather and time?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [CALL, SECOND_CALL]},
            {"role": "tool", "tool_call_id": "call12345", "content": "18 C"},
            {"role": "tool", "tool_call_id": "call67890", "content": "12:00"},
            {"role": "assistant", "content": "18 C at noon."},
            {"role": "user", "content": "Thanks"},
        ],
        [WEATHER, TIME],
    ),
}

# What the renderer is given besides messages and tools (a fixed date: Llama 3.x prints today's).
VARIABLES = {"date_string": "07 Dec 2026"}
# The day `strftime_now` says (gpt-oss prints it; the test puts lowbit's today in its place).
TODAY = datetime.date(2026, 12, 7)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' own: Jinja2's escapes HTML characters.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def environment():
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = TODAY.strftime
    return env


def main():
    env = environment()
    out = []
    for name, (file, bos, eos) in TEMPLATES.items():
        with open(os.path.join(HERE, file), encoding="utf-8") as f:
            template = env.from_string(f.read())
        for case, (messages, tools) in CASES.items():
            if name == "hermes3" and tools is None:
                continue
            # gpt-oss's template reads an earlier turn's thinking as `thinking`; lowbit fills it
            # from `reasoning_content` (the fixture keeps the messages as sent).
            shown = [
                dict(m, thinking=m["reasoning_content"])
                if name == "gpt-oss" and "reasoning_content" in m
                else m
                for m in messages
            ]
            for add_generation_prompt in (True, False):
                try:
                    text = template.render(
                        messages=shown,
                        tools=tools,
                        documents=None,
                        add_generation_prompt=add_generation_prompt,
                        bos_token=bos,
                        eos_token=eos,
                        **VARIABLES,
                    )
                    error = None
                except jinja2.exceptions.TemplateError as e:
                    text, error = None, str(e)
                out.append(
                    {
                        "template": name,
                        "file": file,
                        "bos_token": bos,
                        "eos_token": eos,
                        "case": case,
                        "messages": messages,
                        "tools": tools,
                        "variables": VARIABLES,
                        "add_generation_prompt": add_generation_prompt,
                        "text": text,
                        "error": error,
                    }
                )
    with open(os.path.join(HERE, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{len(out)} renders, {sum(o['error'] is not None for o in out)} errors")


if __name__ == "__main__":
    main()
