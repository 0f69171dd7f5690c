//! Tool calling in a model's own syntax (api/tool_syntax.rs), through the router on the real
//! default model given the chat templates of models trained on tools (`--chat-template`:
//! Qwen2.5's and Qwen3's `<tool_call>` tags, Llama 3.2's JSON). SmolLM2 speaks ChatML as Qwen
//! does, so its replies are the grammar's doing: what is checked is the prompt (byte for byte
//! Jinja2's render, tests/data/chat_templates), the calls read back in OpenAI's shapes,
//! streamed and not, and that `auto` leaves a plain answer alone.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use common::app::{chat, post, send, start, stream_chunks, streamed_content, App};
use common::tools::{calls_of, tools};
use serde_json::{json, Value};

fn template(file: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/chat_templates")
        .join(file)
        .display()
        .to_string()
}

async fn server(file: &str, extra: &[&str]) -> App {
    let path = template(file);
    let mut args = vec!["--chat-template", path.as_str()];
    args.extend_from_slice(extra);
    start(&args).await
}

/// The BOS text SmolLM2's GGUF names (token 1), which templates print as `bos_token`.
const SMOLLM2_BOS: &str = "<|im_start|>";
/// Its EOS (token 2), the templates' `eos_token`.
const SMOLLM2_EOS: &str = "<|im_end|>";

const QWEN25: &str = "Qwen-Qwen2.5-7B-Instruct.jinja";

async fn tokens(app: &App, body: Value) -> Value {
    let r = send(app, "POST", "/tokenize", Some(&body.to_string()), None).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    r.json()["tokens"].clone()
}

/// Jinja2's renders of the conversations with tools (tests/chat_templates.rs checks the
/// renderer on them; here they come through the API's messages).
fn fixture(template: &str, case: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/chat_templates/expected.json");
    let all: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    all.into_iter()
        .find(|r| {
            r["template"] == template && r["case"] == case && r["add_generation_prompt"] == true
        })
        .unwrap()
}

/// The fixture's messages as an OpenAI client sends them: arguments as JSON text, an
/// assistant's calls with null content where it has none.
fn as_openai(messages: &Value) -> Value {
    let mut messages = messages.clone();
    for m in messages.as_array_mut().unwrap() {
        let Some(calls) = m.get_mut("tool_calls") else {
            continue;
        };
        for c in calls.as_array_mut().unwrap() {
            let args = c["function"]["arguments"].clone();
            c["function"]["arguments"] = json!(args.to_string());
        }
        if m["content"] == "" {
            m["content"] = Value::Null;
        }
    }
    messages
}

#[tokio::test]
async fn prompts_with_tools_and_results_are_the_templates_own() {
    for (name, file) in [
        ("qwen2.5", QWEN25),
        ("qwen3", "Qwen-Qwen3-0.6B.jinja"),
        ("llama3.2", "meta-llama-Llama-3.2-3B-Instruct.jinja"),
        (
            "hermes3",
            "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja",
        ),
        ("mistral-nemo", "mistralai-Mistral-Nemo-Instruct-2407.jinja"),
    ] {
        let app = server(file, &[]).await;
        let cases: &[&str] = if name.starts_with("llama") {
            &["tools", "tool_results", "reasoning_tool_loop"]
        } else {
            &[
                "tools",
                "tool_results",
                "reasoning_tool_loop",
                "parallel_tool_results",
            ]
        };
        for case in cases {
            let f = fixture(name, case);
            let asked = tokens(
                &app,
                json!({"messages": as_openai(&f["messages"]), "tools": f["tools"],
                       "chat_template_kwargs": f["variables"]}),
            )
            .await;
            // The template prints the model's BOS: SmolLM2's here, the fixture's there.
            let text = f["text"].as_str().unwrap();
            let text = match text.strip_prefix(f["bos_token"].as_str().unwrap()) {
                Some(rest) if rest.len() < text.len() => format!("{SMOLLM2_BOS}{rest}"),
                _ => text.to_string(),
            };
            // And its EOS, where the template prints it (Mistral's, after an assistant's calls).
            let source = std::fs::read_to_string(template(file)).unwrap();
            let text = if source.contains("eos_token") {
                text.replace(f["eos_token"].as_str().unwrap(), SMOLLM2_EOS)
            } else {
                text
            };
            let want = tokens(&app, json!({"prompt": text, "add_special_tokens": false})).await;
            if asked != want {
                let a = post(&app, "/detokenize", json!({"tokens": asked}).to_string()).await;
                let w = post(&app, "/detokenize", json!({"tokens": want}).to_string()).await;
                panic!("{name} / {case}:\n{}\n----\n{}", a["prompt"], w["prompt"]);
            }
        }
    }
    // Llama 3.x's template refuses two calls in one turn: a 400 with its words.
    let app = server("meta-llama-Llama-3.2-3B-Instruct.jinja", &[]).await;
    let f = fixture("qwen2.5", "parallel_tool_results");
    let body = json!({"messages": as_openai(&f["messages"]), "tools": f["tools"]});
    let r = send(&app, "POST", "/tokenize", Some(&body.to_string()), None).await;
    assert_eq!(r.status.as_u16(), 400, "{}", r.text);
    assert!(
        r.text.contains("only supports single tool-calls"),
        "{}",
        r.text
    );
}

fn asking(extra: Value) -> String {
    let ask = json!({"role": "user", "content": "What is the weather in Paris?"});
    let mut v = json!({"messages": [ask], "tools": tools(), "max_tokens": 80});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    chat(v)
}

/// A chat that must call a tool (`extra`: more of the request).
async fn required(app: &App, extra: Value) -> Value {
    let mut body = json!({"tool_choice": "required"});
    for (k, x) in extra.as_object().unwrap() {
        body[k] = x.clone();
    }
    post(app, "/v1/chat/completions", asking(body)).await
}

#[tokio::test]
async fn hermes_calls_come_back_in_openai_shapes() {
    let app = server(QWEN25, &[]).await;
    let one_call = json!({"parallel_tool_calls": false});
    let r = required(&app, one_call.clone()).await;
    let calls = calls_of(&r["choices"][0]);
    assert_eq!(calls.len(), 1, "{r}");
    // The template, not lowbit's generic instructions, described the tools.
    let prompt = post(
        &app,
        "/detokenize",
        json!({"tokens": tokens(&app, json!({"messages": [{"role": "user", "content": "What is the weather in Paris?"}], "tools": tools()})).await}).to_string(),
    )
    .await;
    let prompt = prompt["prompt"].as_str().unwrap();
    assert!(
        prompt
            .contains("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\""),
        "{prompt}"
    );
    assert!(!prompt.contains("You can call these tools"), "{prompt}");

    let named = json!({"tool_choice": {"type": "function", "function": {"name": "get_time"}}});
    let r = post(&app, "/v1/chat/completions", asking(named)).await;
    let calls = calls_of(&r["choices"][0]);
    assert!(calls.iter().all(|(name, _)| name == "get_time"), "{r}");

    // Streamed: each call's id and name, then its arguments as they grow; the same calls as
    // unstreamed.
    let mut streamed = one_call.clone();
    streamed["stream"] = json!(true);
    streamed["tool_choice"] = json!("required");
    let unstreamed = required(&app, one_call).await;
    let want = &unstreamed["choices"][0]["message"]["tool_calls"][0]["function"];
    let chunks = stream_chunks(&app, asking(streamed)).await;
    common::tools::assert_streamed_call(&chunks, want);
    assert!(chunks.iter().all(|c| c["choices"][0]["delta"]
        .get("content")
        .is_none_or(|t| t == "")));

    // `auto` answering instead: plain text (the grammar allows any text without the tag),
    // streamed as the unstreamed content.
    let haiku = json!({"messages": [{"role": "user", "content": "Write a haiku about the sea."}]});
    let unstreamed = post(&app, "/v1/chat/completions", asking(haiku.clone())).await;
    let c = &unstreamed["choices"][0];
    assert!(c["message"].get("tool_calls").is_none(), "{c}");
    let text = c["message"]["content"].as_str().unwrap();
    assert!(!text.is_empty() && !text.contains("<tool_call>"), "{c}");
    let mut streamed = haiku;
    streamed["stream"] = json!(true);
    let chunks = stream_chunks(&app, asking(streamed)).await;
    assert_eq!(streamed_content(&chunks), text);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        c["finish_reason"]
    );

    // A round trip through the template.
    common::tools::a_round_trip(&app, json!({})).await;
    // With a response format an answer is JSON of its schema (or the model calls).
    common::tools::answers_follow_the_response_format(&app).await;
    let m = send(&app, "GET", "/metrics", None, None).await.text;
    assert!(m.contains("lowbit:num_requests_running 0"), "{m}");
}

#[tokio::test]
async fn llama_and_qwen3_calls_and_the_generic_override() {
    // Mistral: "[TOOL_CALLS]" (written out: SmolLM2 has no such token) and a list of calls;
    // an OpenAI id in the history reaches the template as its last nine characters.
    let app = server("mistralai-Mistral-Nemo-Instruct-2407.jinja", &[]).await;
    let r = required(&app, json!({})).await;
    let c = &r["choices"][0];
    assert!(!calls_of(c).is_empty(), "{r}");
    let id = c["message"]["tool_calls"][0]["id"].as_str().unwrap();
    let history = json!([{"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [c["message"]["tool_calls"][0]]},
        {"role": "tool", "tool_call_id": id, "content": "18 degrees"}]);
    let ids = tokens(&app, json!({"messages": history, "tools": tools()})).await;
    let prompt = post(&app, "/detokenize", json!({"tokens": ids}).to_string()).await;
    let prompt = prompt["prompt"].as_str().unwrap();
    let nine = &id[id.len() - 9..];
    assert!(
        prompt.contains(&format!("\"call_id\": \"{nine}\"")),
        "{prompt}"
    );
    assert!(prompt.contains(&format!("\"id\": \"{nine}\"")), "{prompt}");

    // Llama 3.2: the whole reply is {"name", "parameters"}.
    let app = server("meta-llama-Llama-3.2-3B-Instruct.jinja", &[]).await;
    let r = required(
        &app,
        json!({"chat_template_kwargs": {"date_string": "07 Dec 2026"}}),
    )
    .await;
    assert_eq!(calls_of(&r["choices"][0]).len(), 1, "{r}");

    // Qwen3 may think first (split off into reasoning_content), then calls.
    let app = server("Qwen-Qwen3-0.6B.jinja", &[]).await;
    let r = required(&app, json!({})).await;
    let c = &r["choices"][0];
    assert!(!calls_of(c).is_empty(), "{r}");
    if let Some(thought) = c["message"].get("reasoning_content") {
        assert!(!thought.as_str().unwrap().contains("<tool_call>"), "{c}");
    }

    // --tool-call-parser generic keeps lowbit's own format with any template.
    let app = server(QWEN25, &["--tool-call-parser", "generic"]).await;
    let ids = tokens(
        &app,
        json!({"messages": [{"role": "user", "content": "Hi"}], "tools": tools()}),
    )
    .await;
    let prompt = post(&app, "/detokenize", json!({"tokens": ids}).to_string()).await;
    let prompt = prompt["prompt"].as_str().unwrap();
    assert!(prompt.contains("You can call these tools"), "{prompt}");
    assert!(!prompt.contains("<tools>"), "{prompt}");
    let r = required(&app, json!({})).await;
    assert!(!calls_of(&r["choices"][0]).is_empty(), "{r}");
}
