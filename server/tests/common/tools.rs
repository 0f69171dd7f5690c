//! Tools for the tool-calling tests and the check of a reply's calls.

use super::app::{chat, post, stream_chunks, App};
use serde_json::{json, Value};

/// A weather and a clock tool.
pub fn tools() -> Value {
    let city = json!({"type": "string", "maxLength": 20});
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": city, "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time", "description": "Current time in a city",
            "parameters": {"type": "object", "properties": {"city": city}, "required": ["city"], "additionalProperties": false}}}
    ])
}

/// The calls of a reply that made some: (name, arguments parsed), each checked against its
/// tool's parameters, with an id `call_…` and type `function`.
pub fn calls_of(choice: &Value) -> Vec<(String, Value)> {
    assert_eq!(choice["finish_reason"], "tool_calls", "{choice}");
    assert!(choice["message"]["content"].is_null(), "{choice}");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    calls
        .iter()
        .map(|c| {
            assert!(c["id"].as_str().unwrap().starts_with("call_"), "{c}");
            assert_eq!(c["type"], "function");
            let name = c["function"]["name"].as_str().unwrap().to_string();
            let args: Value =
                serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap();
            let keys: Vec<&str> = args
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            match name.as_str() {
                "get_weather" => {
                    assert_eq!(keys, ["city", "unit"], "{args}");
                    assert!(["celsius", "fahrenheit"].contains(&args["unit"].as_str().unwrap()));
                }
                "get_time" => assert_eq!(keys, ["city"], "{args}"),
                other => panic!("no tool {other}"),
            }
            (name, args)
        })
        .collect()
}

/// A stream's chunks carry one call as OpenAI streams it, equal to the unstreamed `want`
/// (`message.tool_calls[0].function`): its index, id, type and name first, then its arguments
/// in more than three pieces that join into `want`'s, no later id or name; the reply ends
/// with `tool_calls`.
pub fn assert_streamed_call(chunks: &[Value], want: &Value) {
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert!(deltas.len() > 3, "{chunks:?}");
    assert_eq!(deltas[0][0]["index"], 0);
    assert_eq!(deltas[0][0]["type"], "function");
    assert!(deltas[0][0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(deltas[0][0]["function"]["name"], want["name"]);
    let joined: String = deltas
        .iter()
        .map(|d| d[0]["function"]["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(joined, want["arguments"].as_str().unwrap());
    assert!(deltas[1..]
        .iter()
        .all(|d| d[0].get("id").is_none() && d[0]["function"].get("name").is_none()));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

/// A call and its result in the history (`extra`: more of the request): the reply is well
/// formed, an answer or more calls.
pub async fn a_round_trip(app: &App, extra: Value) {
    let history = json!([{"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"}]);
    let mut body = json!({"messages": history, "tools": tools(), "max_tokens": 80});
    for (k, x) in extra.as_object().unwrap() {
        body[k] = x.clone();
    }
    let r = post(app, "/v1/chat/completions", chat(body)).await;
    let c = &r["choices"][0];
    if c["finish_reason"] == "tool_calls" {
        calls_of(c);
    } else {
        assert_eq!(c["finish_reason"], "stop", "{c}");
        assert!(c["message"]["content"].is_string(), "{c}");
    }
}

/// A response format with tools shapes an answer that is not a call: a JSON value of its
/// schema (its text the content), streamed as it grows.
pub async fn answers_follow_the_response_format(app: &App) {
    let schema = json!({"type": "object", "properties": {"answer": {"type": "string", "maxLength": 40},
        "sure": {"type": "boolean"}}, "required": ["answer", "sure"], "additionalProperties": false});
    let body = json!({"messages": [{"role": "user", "content": "Write a haiku about the sea."}],
        "tools": tools(), "max_tokens": 80, "parallel_tool_calls": false,
        "response_format": {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}});
    let r = post(app, "/v1/chat/completions", chat(body.clone())).await;
    let c = &r["choices"][0];
    let content = if c["finish_reason"] == "tool_calls" {
        calls_of(c);
        None
    } else {
        assert_eq!(c["finish_reason"], "stop", "{c}");
        let text = c["message"]["content"].as_str().unwrap().to_string();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["answer", "sure"], "{v}");
        Some(text)
    };
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let chunks = stream_chunks(app, chat(streamed)).await;
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    if let Some(text) = content {
        assert_eq!(joined, text);
    }
}
