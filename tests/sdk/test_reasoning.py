"""Reasoning replies through the Python `openai` SDK: a server whose chat template opens
`<think>` at the assistant's turn (as DeepSeek-R1's does; `enable_thinking: false` leaves it
closed, as Qwen3's does) returns the thinking as `reasoning_content`, a field the SDK keeps
beside `content` on the message and on stream deltas. SmolLM2 does not think, so its whole
reply after the open tag is reasoning: the text the same server gives with the parser off.
"""

from __future__ import annotations

from conftest import MODEL, client_for

THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "<|im_start|>assistant\n{% if enable_thinking is not defined or enable_thinking %}<think>\n{% endif %}"
)
QUESTION = [{"role": "user", "content": "What is 2+2?"}]


def test_thinking_comes_back_as_reasoning_content(server_factory):
    plain = client_for(server_factory("--chat-template", THINKING_TEMPLATE, "--reasoning-parser", "none"))
    split = client_for(server_factory("--chat-template", THINKING_TEMPLATE, "--reasoning-parser", "deepseek_r1"))
    ask = dict(model=MODEL, messages=QUESTION, temperature=0, max_tokens=16)
    raw = plain.chat.completions.create(**ask).choices[0].message
    assert raw.content and getattr(raw, "reasoning_content", None) is None

    message = split.chat.completions.create(**ask).choices[0].message
    assert message.reasoning_content == raw.content
    assert message.content == ""

    chunks = list(split.chat.completions.create(**ask, stream=True))
    thinking = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (thinking, answer) == (raw.content, "")

    off = split.chat.completions.create(**ask, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert off.choices[0].message.content
    assert getattr(off.choices[0].message, "reasoning_content", None) is None

    # The returned message appended as it is (its reasoning_content goes back with it), and
    # the conversation goes on.
    history = QUESTION + [message, {"role": "user", "content": "And 3+3?"}]
    more = split.chat.completions.create(model=MODEL, messages=history, temperature=0, max_tokens=8)
    assert more.choices[0].message.reasoning_content
