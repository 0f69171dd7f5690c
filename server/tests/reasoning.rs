//! Reasoning replies through the router on the real model: `--chat-template` with a template
//! that opens `<think>` at the assistant's turn unless `enable_thinking` is false (as
//! DeepSeek-R1's and Qwen3's do), `--reasoning-parser`, `chat_template_kwargs`. SmolLM2 does
//! not think, so what it writes after an open `<think>` is all reasoning: exactly the text the
//! same server gives without the parser, streamed or not.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use common::app::{chat, post, send, start, stream_chunks, App, BAD};
use serde_json::{json, Value};

const THINKING_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n{% if enable_thinking is not defined or enable_thinking %}<think>\n{% endif %}";

async fn server(parser: &str) -> App {
    start(&[
        "--chat-template",
        THINKING_TEMPLATE,
        "--reasoning-parser",
        parser,
    ])
    .await
}

fn message(reply: &Value) -> &serde_json::Map<String, Value> {
    reply["choices"][0]["message"].as_object().unwrap()
}

/// Each delta field's pieces joined, over a stream's chunks.
fn joined(chunks: &[Value], field: &str) -> Option<String> {
    let pieces: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["delta"].get(field)?.as_str())
        .collect();
    (!pieces.is_empty()).then(|| pieces.concat())
}

#[tokio::test]
async fn thinking_goes_to_reasoning_content_streamed_or_not() {
    let plain = server("none").await;
    let split = server("deepseek_r1").await;
    let body = chat(json!({"max_tokens": 12}));
    let raw = post(&plain, "/v1/chat/completions", body.clone()).await;
    let raw_text = message(&raw)["content"].as_str().unwrap().to_string();
    assert!(!raw_text.is_empty());
    assert!(!message(&raw).contains_key("reasoning_content"));

    let reply = post(&split, "/v1/chat/completions", body.clone()).await;
    assert_eq!(message(&reply)["reasoning_content"], json!(raw_text));
    assert_eq!(message(&reply)["content"], json!(""));
    assert_eq!(reply["usage"], raw["usage"]);

    let streamed = json!({"max_tokens": 12, "stream": true});
    let chunks = stream_chunks(&split, chat(streamed.clone())).await;
    assert_eq!(joined(&chunks, "reasoning_content"), Some(raw_text.clone()));
    assert_eq!(joined(&chunks, "content").as_deref(), Some(""));
    let chunks = stream_chunks(&plain, chat(streamed)).await;
    assert_eq!(joined(&chunks, "reasoning_content"), None);
    assert_eq!(joined(&chunks, "content"), Some(raw_text));

    // Without thinking the template opens no <think>: the reply is all content, and the
    // prompt is shorter by those tokens (counted alike by /tokenize).
    let kwargs = json!({"enable_thinking": false});
    let off = post(
        &split,
        "/v1/chat/completions",
        chat(json!({"chat_template_kwargs": kwargs})),
    )
    .await;
    assert!(!message(&off).contains_key("reasoning_content"), "{off}");
    assert!(!message(&off)["content"].as_str().unwrap().is_empty());
    let prompt_tokens = |v: &Value| v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens(&off) < prompt_tokens(&reply));
    let counted = post(
        &split,
        "/tokenize",
        json!({"messages": [{"role": "user", "content": "What is 2+2?"}], "chat_template_kwargs": kwargs})
            .to_string(),
    )
    .await;
    assert_eq!(counted["count"].as_u64(), Some(prompt_tokens(&off)));

    // A constrained reply is never split: its format starts at the first token.
    let constrained = post(
        &split,
        "/v1/chat/completions",
        chat(json!({"max_tokens": 12, "guided_choice": ["four", "five"]})),
    )
    .await;
    assert!(!message(&constrained).contains_key("reasoning_content"));
    assert!(["four", "five"].contains(&message(&constrained)["content"].as_str().unwrap()));
}

#[tokio::test]
async fn bad_template_variables_are_400s() {
    let app = server("auto").await;
    for (kwargs, param) in [
        (json!({"messages": []}), Some("chat_template_kwargs")),
        (
            json!({"add_generation_prompt": false}),
            Some("chat_template_kwargs"),
        ),
        (json!("enable_thinking"), None),
    ] {
        let r = send(
            &app,
            "POST",
            "/v1/chat/completions",
            Some(&chat(json!({"chat_template_kwargs": kwargs}))),
            None,
        )
        .await;
        assert_eq!(r.status.as_u16(), 400, "{}", r.text);
        assert_eq!(r.json()["error"]["type"], BAD);
        if let Some(p) = param {
            r.assert_error(400, BAD, Some(p), None);
        }
    }
    let r = send(
        &app,
        "POST",
        "/tokenize",
        Some(&json!({"prompt": "hi", "chat_template_kwargs": {}}).to_string()),
        None,
    )
    .await;
    r.assert_error(400, BAD, Some("chat_template_kwargs"), None);
    // Thinking sent back belongs to an assistant's turn.
    let body = json!({"messages": [{"role": "user", "content": "hi", "reasoning_content": "x"}]});
    send(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(&chat(body)),
        None,
    )
    .await
    .assert_error(400, BAD, Some("messages[0].reasoning_content"), None);
    let back = json!({"messages": [{"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo", "reasoning": "short"},
        {"role": "user", "content": "again"}]});
    post(&app, "/v1/chat/completions", chat(back)).await;
}
