//! `/v1/responses` through the router on the real default model: a response says what the
//! same conversation says through `/v1/chat/completions` (greedy, so the texts are equal),
//! stored conversations continue with `previous_response_id`, streams send OpenAI's events in
//! order and add up to the whole response, and bad input is a 400 naming the field.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use axum::http::StatusCode;
use common::app::{chat, post, send, start, App, BAD, MODEL};
use common::tools::tools;
use serde_json::{json, Value};

/// A request body: greedy, short, with `extra`'s fields.
fn body(extra: Value) -> String {
    let mut v =
        json!({"model": MODEL, "input": "What is 2+2?", "max_output_tokens": 12, "temperature": 0});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string()
}

/// The reply text of a chat completion and the status a response has for its finish reason.
async fn chat_reply(app: &App, messages: Value, max_tokens: u32) -> (String, &'static str) {
    let r = post(
        app,
        "/v1/chat/completions",
        chat(json!({"messages": messages, "max_tokens": max_tokens})),
    )
    .await;
    let c = &r["choices"][0];
    let status = match c["finish_reason"].as_str().unwrap() {
        "length" => "incomplete",
        _ => "completed",
    };
    (
        c["message"]["content"].as_str().unwrap().to_string(),
        status,
    )
}

/// The text of a response's message item(s).
fn output_text(r: &Value) -> String {
    r["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap())
        .map(|p| p["text"].as_str().unwrap())
        .collect()
}

/// A stream's events as (event name, data), checking that each names its `type` and that
/// sequence numbers count from 0.
async fn events(app: &App, body: String) -> Vec<(String, Value)> {
    let r = send(app, "POST", "/v1/responses", Some(&body), None).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    let mut out = Vec::new();
    for block in r.text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let name = block
            .lines()
            .find_map(|l| l.strip_prefix("event: "))
            .unwrap();
        let data = block
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap();
        let data: Value = serde_json::from_str(data).unwrap();
        assert_eq!(data["type"], name, "{data}");
        assert_eq!(data["sequence_number"], out.len(), "{data}");
        out.push((name.to_string(), data));
    }
    out
}

fn kv_blocks_free(metrics: &str) {
    assert!(metrics.contains("lowbit:kv_blocks_in_use 0"), "{metrics}");
}

#[tokio::test]
async fn a_response_says_what_the_chat_says_and_conversations_continue() {
    let app = start(&[]).await;
    let first = post(
        &app,
        "/v1/responses",
        body(json!({"instructions": "Answer briefly."})),
    )
    .await;
    assert_eq!(first["object"], "response");
    assert!(first["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(first["model"], MODEL);
    assert_eq!(first["instructions"], "Answer briefly.");
    let item = &first["output"][0];
    assert_eq!(item["type"], "message");
    assert_eq!(item["role"], "assistant");
    assert!(item["id"].as_str().unwrap().starts_with("msg_"));
    let messages = json!([{"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2+2?"}]);
    let (said, status) = chat_reply(&app, messages.clone(), 12).await;
    assert_eq!(output_text(&first), said);
    assert_eq!(first["status"], status, "{first}");
    assert_eq!(item["status"], status);
    let usage = &first["usage"];
    assert_eq!(
        usage["total_tokens"],
        usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap()
    );
    assert!(usage["output_tokens"].as_u64().unwrap() > 0);

    // Continued: the earlier turns (not the instructions) come from the store.
    let second = post(
        &app,
        "/v1/responses",
        body(json!({"input": "And 3+3?", "previous_response_id": first["id"]})),
    )
    .await;
    assert_eq!(second["previous_response_id"], first["id"]);
    let history = json!([{"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": said}, {"role": "user", "content": "And 3+3?"}]);
    let (said, status) = chat_reply(&app, history, 12).await;
    assert_eq!(output_text(&second), said);
    assert_eq!(second["status"], status);

    // Stored: fetched as returned, its input items listed newest first, deleted once.
    let path = format!("/v1/responses/{}", first["id"].as_str().unwrap());
    let got = send(&app, "GET", &path, None, None).await;
    assert_eq!(got.json(), first);
    let items = send(
        &app,
        "GET",
        &format!("{path}/input_items?order=asc"),
        None,
        None,
    )
    .await;
    let items = items.json();
    assert_eq!(items["object"], "list");
    assert_eq!(items["data"].as_array().unwrap().len(), 1);
    assert_eq!(items["data"][0]["content"][0]["text"], "What is 2+2?");
    assert!(items["data"][0]["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(items["first_id"], items["data"][0]["id"]);
    // Stored items referenced by id make the same conversation as `previous_response_id`.
    let refs = json!([{"type": "item_reference", "id": items["data"][0]["id"]},
        {"type": "item_reference", "id": first["output"][0]["id"]},
        {"role": "user", "content": "And 3+3?"}]);
    let by_ref = post(&app, "/v1/responses", body(json!({ "input": refs }))).await;
    assert_eq!(output_text(&by_ref), output_text(&second));
    assert_eq!(
        by_ref["usage"]["input_tokens"],
        second["usage"]["input_tokens"]
    );
    let unknown = json!([{"type": "item_reference", "id": "msg_nope"}]);
    let r = send(
        &app,
        "POST",
        "/v1/responses",
        Some(&body(json!({ "input": unknown }))),
        None,
    )
    .await;
    r.assert_error(400, BAD, Some("input[0].id"), None);
    send(
        &app,
        "GET",
        &format!("{path}/input_items?limit=0"),
        None,
        None,
    )
    .await
    .assert_error(400, BAD, Some("limit"), None);
    // `include[]` repeats, as the SDKs send a list; other keys are named.
    let both = "include[]=message.output_text.logprobs&include[]=reasoning.encrypted_content";
    let listed = send(
        &app,
        "GET",
        &format!("{path}/input_items?{both}"),
        None,
        None,
    )
    .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    assert_eq!(listed.json()["data"], items["data"]);
    for (query, param, code) in [
        ("limit=ten", "limit", None),
        ("include[]=file_search_call.results", "include", None),
        ("colour=red", "colour", Some("unknown_parameter")),
    ] {
        let url = format!("{path}/input_items?{query}");
        send(&app, "GET", &url, None, None)
            .await
            .assert_error(400, BAD, Some(param), code);
    }
    let deleted = send(&app, "DELETE", &path, None, None).await.json();
    assert_eq!(
        deleted,
        json!({"id": first["id"], "object": "response.deleted", "deleted": true})
    );
    send(&app, "GET", &path, None, None).await.assert_error(
        404,
        BAD,
        Some("response_id"),
        Some("response_not_found"),
    );
    // The follow-up's chain is broken now, and says which link is gone.
    let r = send(
        &app,
        "POST",
        "/v1/responses",
        Some(&body(
            json!({"input": "Go on", "previous_response_id": second["id"]}),
        )),
        None,
    )
    .await;
    r.assert_error(400, BAD, Some("previous_response_id"), None);
    assert!(r.text.contains(first["id"].as_str().unwrap()), "{}", r.text);

    // `store: false` keeps nothing.
    let unstored = post(&app, "/v1/responses", body(json!({"store": false}))).await;
    assert_eq!(unstored["store"], false);
    let path = format!("/v1/responses/{}", unstored["id"].as_str().unwrap());
    send(&app, "GET", &path, None, None).await.assert_error(
        404,
        BAD,
        Some("response_id"),
        Some("response_not_found"),
    );
    let metrics = send(&app, "GET", "/metrics", None, None).await.text;
    kv_blocks_free(&metrics);
    // The second and the one by reference; the first was deleted, one was not stored.
    assert!(metrics.contains("lowbit:responses_stored 2"), "{metrics}");
    assert!(metrics.contains("lowbit:responses_evicted_total 0"));
}

#[tokio::test]
async fn a_stream_sends_openai_events_that_add_up_to_the_response() {
    let app = start(&[]).await;
    let whole = post(&app, "/v1/responses", body(json!({"store": false}))).await;
    let ev = events(&app, body(json!({"stream": true}))).await;
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    let deltas = names
        .iter()
        .filter(|n| **n == "response.output_text.delta")
        .count();
    assert!(deltas > 2, "{names:?}");
    let mut want = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    want.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    want.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names, want);
    assert_eq!(ev[0].1["response"]["status"], "in_progress");
    // Announced empty; its part comes with `content_part.added`.
    assert_eq!(ev[2].1["item"]["content"], json!([]));
    assert_eq!(ev[3].1["part"]["text"], "");
    let item_id = ev[2].1["item"]["id"].clone();
    let text: String = ev
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| {
            assert_eq!(d["item_id"], item_id);
            assert_eq!(d["output_index"], 0);
            d["delta"].as_str().unwrap()
        })
        .collect();
    assert_eq!(text, output_text(&whole));
    let done = &ev.last().unwrap().1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(output_text(done), text);
    assert_eq!(done["output"][0]["id"], item_id);
    assert_eq!(
        done["usage"]["output_tokens"],
        whole["usage"]["output_tokens"]
    );
    // Stored when it finished, as the last event has it.
    let path = format!("/v1/responses/{}", done["id"].as_str().unwrap());
    assert_eq!(&send(&app, "GET", &path, None, None).await.json(), done);

    // Cut short: `incomplete` with its reason, streamed and not.
    let short = post(&app, "/v1/responses", body(json!({"max_output_tokens": 2}))).await;
    assert_eq!(short["status"], "incomplete");
    assert_eq!(short["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(short["output"][0]["status"], "incomplete");
    assert_eq!(short["usage"]["output_tokens"], 2);
    let ev = events(&app, body(json!({"max_output_tokens": 2, "stream": true}))).await;
    let (name, last) = ev.last().unwrap();
    assert_eq!(name, "response.incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    assert_eq!(output_text(&last["response"]), output_text(&short));

    // Log-probabilities where asked.
    let lp = post(
        &app,
        "/v1/responses",
        body(json!({"top_logprobs": 2, "include": ["message.output_text.logprobs"], "max_output_tokens": 3})),
    )
    .await;
    let lps = lp["output"][0]["content"][0]["logprobs"]
        .as_array()
        .unwrap();
    assert_eq!(lps.len(), 3, "{lp}");
    assert_eq!(lps[0]["top_logprobs"].as_array().unwrap().len(), 2);
    let joined: String = lps.iter().map(|t| t["token"].as_str().unwrap()).collect();
    assert_eq!(joined, output_text(&lp));
    kv_blocks_free(&send(&app, "GET", "/metrics", None, None).await.text);
}

/// Flat Responses tools: the weather and clock tools of the chat tests.
fn flat_tools() -> Value {
    let tools = tools();
    let flat: Vec<Value> = tools
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let f = &t["function"];
            json!({"type": "function", "name": f["name"], "description": f["description"], "parameters": f["parameters"]})
        })
        .collect();
    json!(flat)
}

/// A required call comes back as a `function_call` item, streamed as OpenAI streams one, and
/// its output sent back as items continues the conversation as the chat's tool messages do.
async fn calls_round_trip(app: &App) {
    let ask = json!({"input": "What is the weather in Paris?", "tools": flat_tools(),
        "tool_choice": "required", "parallel_tool_calls": false, "max_output_tokens": 80});
    let r = post(app, "/v1/responses", body(ask.clone())).await;
    assert_eq!(r["status"], "completed", "{r}");
    let calls: Vec<&Value> = r["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "function_call")
        .collect();
    assert_eq!(calls.len(), 1, "{r}");
    let call = calls[0];
    assert!(call["id"].as_str().unwrap().starts_with("fc_"));
    assert!(call["call_id"].as_str().unwrap().starts_with("call_"));
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string(), "{args}");

    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let ev = events(app, body(streamed)).await;
    let added = ev
        .iter()
        .find(|(n, d)| n == "response.output_item.added" && d["item"]["type"] == "function_call")
        .unwrap();
    assert_eq!(added.1["item"]["name"], call["name"]);
    assert_eq!(added.1["item"]["arguments"], "");
    let pieces: Vec<&str> = ev
        .iter()
        .filter(|(n, _)| n == "response.function_call_arguments.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert!(pieces.len() > 3, "{pieces:?}");
    assert_eq!(pieces.concat(), call["arguments"].as_str().unwrap());
    let done = ev
        .iter()
        .find(|(n, _)| n == "response.function_call_arguments.done")
        .unwrap();
    assert_eq!(done.1["arguments"], call["arguments"]);

    // The call and its output as input items: the same prompt as the chat's tool turn.
    let items = json!([{"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "18 degrees, sunny"}]);
    let r = post(app, "/v1/responses", body(json!({"input": items, "tools": flat_tools(), "tool_choice": "none", "max_output_tokens": 40}))).await;
    let history = json!([{"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"}]);
    let c = post(
        app,
        "/v1/chat/completions",
        chat(
            json!({"messages": history, "tools": tools(), "tool_choice": "none", "max_tokens": 40}),
        ),
    )
    .await;
    assert_eq!(
        output_text(&r),
        c["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(r["usage"]["input_tokens"], c["usage"]["prompt_tokens"]);
}

#[tokio::test]
async fn function_calls_as_items() {
    let app = start(&[]).await;
    calls_round_trip(&app).await;
    // A JSON schema format: the answer is JSON of it.
    let schema = json!({"type": "object", "properties": {"answer": {"type": "integer"}},
        "required": ["answer"], "additionalProperties": false});
    let r = post(
        &app,
        "/v1/responses",
        body(json!({"text": {"format": {"type": "json_schema", "name": "sum", "schema": schema}}})),
    )
    .await;
    assert_eq!(r["status"], "completed", "{r}");
    let v: Value = serde_json::from_str(&output_text(&r)).unwrap();
    assert!(v["answer"].is_i64(), "{v}");
    assert_eq!(r["text"]["format"]["name"], "sum");
    kv_blocks_free(&send(&app, "GET", "/metrics", None, None).await.text);
}

#[tokio::test]
async fn native_calls_as_items() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/chat_templates/Qwen-Qwen2.5-7B-Instruct.jinja");
    let app = start(&["--chat-template", path.to_str().unwrap()]).await;
    calls_round_trip(&app).await;
}

#[tokio::test]
async fn bad_input_is_a_400_naming_the_field() {
    let app = start(&[]).await;
    let bad = |extra: Value| {
        let app = &app;
        async move { send(app, "POST", "/v1/responses", Some(&body(extra)), None).await }
    };
    let unsupported = Some("unsupported_parameter");
    bad(json!({"background": true}))
        .await
        .assert_error(400, BAD, Some("background"), unsupported);
    // At their defaults, as generic clients send them, they ask for nothing.
    let defaults = json!({"background": false, "service_tier": "auto", "prompt": null});
    assert_eq!(bad(defaults).await.status, StatusCode::OK);
    bad(json!({"service_tier": "priority"})).await.assert_error(
        400,
        BAD,
        Some("service_tier"),
        unsupported,
    );
    bad(json!({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}}))
        .await
        .assert_error(400, BAD, Some("tool_choice.type"), unsupported);
    bad(json!({"reasoning": {"effort": "extreme"}}))
        .await
        .assert_error(400, BAD, Some("reasoning.effort"), None);
    bad(json!({"reasoning": {"summary": "long"}}))
        .await
        .assert_error(400, BAD, Some("reasoning.summary"), None);
    let foreign = json!([{"type": "reasoning", "summary": [], "encrypted_content": "gAAAAB"}]);
    bad(json!({ "input": foreign })).await.assert_error(
        400,
        BAD,
        Some("input[0].encrypted_content"),
        None,
    );
    bad(json!({"tools": [{"type": "web_search"}]}))
        .await
        .assert_error(400, BAD, Some("tools[0].type"), unsupported);
    let image =
        json!([{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]);
    bad(json!({"input": image})).await.assert_error(
        400,
        BAD,
        Some("input[0].content[0].type"),
        unsupported,
    );
    bad(json!({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}))
        .await
        .assert_error(400, BAD, Some("input[0].call_id"), None);
    bad(json!({"input": [{"role": "tool", "content": "x"}]}))
        .await
        .assert_error(400, BAD, Some("input[0].role"), None);
    bad(json!({"input": [{"role": "user", "content": "x", "colour": 1}]}))
        .await
        .assert_error(400, BAD, Some("input[0].colour"), Some("unknown_parameter"));
    bad(json!({"max_output_tokens": 0})).await.assert_error(
        400,
        BAD,
        Some("max_output_tokens"),
        None,
    );
    bad(json!({"temperature": 3}))
        .await
        .assert_error(400, BAD, Some("temperature"), None);
    bad(json!({"truncation": "auto"}))
        .await
        .assert_error(400, BAD, Some("truncation"), None);
    bad(json!({"include": ["file_search_call.results"]}))
        .await
        .assert_error(400, BAD, Some("include"), None);
    bad(json!({"frequency_penalty": 1})).await.assert_error(
        400,
        BAD,
        Some("frequency_penalty"),
        Some("unknown_parameter"),
    );
    bad(json!({"previous_response_id": "resp_nope"}))
        .await
        .assert_error(
            404,
            BAD,
            Some("previous_response_id"),
            Some("previous_response_not_found"),
        );
    bad(json!({"model": "gpt-4"})).await.assert_error(
        404,
        BAD,
        Some("model"),
        Some("model_not_found"),
    );
    send(&app, "GET", "/v1/responses/resp_x/input_items", None, None)
        .await
        .assert_error(404, BAD, Some("response_id"), Some("response_not_found"));
    // The server is untouched.
    let ok = post(&app, "/v1/responses", body(json!({}))).await;
    assert_eq!(ok["status"], "completed");
    kv_blocks_free(&send(&app, "GET", "/metrics", None, None).await.text);
}

/// A template that opens `<think>` (tests/reasoning.rs): what SmolLM2 writes is all thinking.
/// It shows earlier thinking and the `reasoning_effort` variable, as gpt-oss's templates do.
const THINKING_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n{% if reasoning_effort is defined %}Reasoning: {{ reasoning_effort }}\n{% endif %}<think>\n";

#[tokio::test]
async fn thinking_is_a_reasoning_item() {
    let plain = start(&[
        "--chat-template",
        THINKING_TEMPLATE,
        "--reasoning-parser",
        "none",
    ])
    .await;
    let split = start(&[
        "--chat-template",
        THINKING_TEMPLATE,
        "--reasoning-parser",
        "deepseek_r1",
    ])
    .await;
    let raw = post(&plain, "/v1/responses", body(json!({}))).await;
    let thought = output_text(&raw);
    assert!(!thought.is_empty());
    let r = post(&split, "/v1/responses", body(json!({}))).await;
    let output = r["output"].as_array().unwrap();
    assert_eq!(output.len(), 1, "{r}");
    assert_eq!(output[0]["type"], "reasoning");
    assert!(output[0]["id"].as_str().unwrap().starts_with("rs_"));
    assert_eq!(
        output[0]["content"],
        json!([{"type": "reasoning_text", "text": thought}])
    );
    let reasoning_tokens = r["usage"]["output_tokens_details"]["reasoning_tokens"]
        .as_u64()
        .unwrap();
    assert!(reasoning_tokens > 0 && reasoning_tokens <= 12, "{r}");

    let ev = events(&split, body(json!({"stream": true}))).await;
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert!(!names.contains(&"response.output_text.delta"), "{names:?}");
    let streamed: String = ev
        .iter()
        .filter(|(n, _)| n == "response.reasoning_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, thought);
    let done = ev
        .iter()
        .find(|(n, _)| n == "response.reasoning_text.done")
        .unwrap();
    assert_eq!(done.1["text"], thought);
    assert_eq!(
        ev.last().unwrap().1["response"]["output"][0]["content"],
        output[0]["content"]
    );

    // Sent back as an item, the thinking is in the next prompt: in the clear, or sealed as a
    // stateless client (`store: false`, `include`) keeps it.
    let sealed = post(
        &split,
        "/v1/responses",
        body(json!({"include": ["reasoning.encrypted_content"], "store": false})),
    )
    .await;
    let opaque = sealed["output"][0]["encrypted_content"].as_str().unwrap();
    assert!(opaque.starts_with("lowbit.reasoning.v1:"), "{sealed}");
    let ev = events(
        &split,
        body(json!({"include": ["reasoning.encrypted_content"], "stream": true})),
    )
    .await;
    let done = ev
        .iter()
        .find(|(n, d)| n == "response.output_item.done" && d["item"]["type"] == "reasoning")
        .unwrap();
    assert_eq!(done.1["item"]["encrypted_content"], opaque);
    let prompt_with = |thinking: Value| {
        let split = &split;
        async move {
            let items = json!([{"role": "user", "content": "What is 2+2?"}, thinking,
                {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]);
            let r = post(
                split,
                "/v1/responses",
                body(json!({"input": items, "max_output_tokens": 1})),
            )
            .await;
            r["usage"]["input_tokens"].as_u64().unwrap()
        }
    };
    let clear = prompt_with(output[0].clone()).await;
    let only_sealed = json!({"type": "reasoning", "summary": [], "encrypted_content": opaque});
    assert_eq!(prompt_with(only_sealed).await, clear);
    let empty = json!({"type": "reasoning", "summary": []});
    assert!(prompt_with(empty).await < clear);

    // `reasoning.effort` is the template's `reasoning_effort`, as chat's `reasoning_effort`.
    let tokens = |kwargs: Value| {
        let split = &split;
        async move {
            let req = json!({"model": MODEL, "messages": [{"role": "user", "content": "What is 2+2?"}],
                "chat_template_kwargs": kwargs});
            let r = send(split, "POST", "/tokenize", Some(&req.to_string()), None).await;
            r.json()["count"].as_u64().unwrap()
        }
    };
    let high = tokens(json!({"reasoning_effort": "high"})).await;
    assert!(high > tokens(json!({})).await);
    let r = post(
        &split,
        "/v1/responses",
        body(json!({"reasoning": {"effort": "high", "summary": "auto"}})),
    )
    .await;
    assert_eq!(r["usage"]["input_tokens"], high);
    assert_eq!(r["reasoning"], json!({"effort": "high", "summary": "auto"}));
    let c = post(
        &split,
        "/v1/chat/completions",
        chat(json!({"reasoning_effort": "high"})),
    )
    .await;
    assert_eq!(c["usage"]["prompt_tokens"], high);
}

#[tokio::test]
async fn a_server_that_stores_nothing_says_so() {
    let app = start(&["--responses-store-memory", "0"]).await;
    for stream in [false, true] {
        let r = if stream {
            let ev = events(&app, body(json!({"stream": true}))).await;
            ev.last().unwrap().1["response"].clone()
        } else {
            post(&app, "/v1/responses", body(json!({}))).await
        };
        assert_eq!(r["store"], false, "{r}");
        let path = format!("/v1/responses/{}", r["id"].as_str().unwrap());
        send(&app, "GET", &path, None, None).await.assert_error(
            404,
            BAD,
            Some("response_id"),
            Some("response_not_found"),
        );
    }
}
