//! Structured outputs through the HTTP API on the real default model: `response_format`
//! (`json_object`, `json_schema`) in chat and completions, vLLM's `guided_json`,
//! `guided_regex` and `guided_choice`, streamed and not, with `n` choices; tool calling (every
//! `tool_choice`, streamed, a round trip); and every bad format or tool a 400 naming its
//! parameter.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use common::app::{
    chat, completion, post, send, start, stream_chunks, streamed_content, App, Reply, BAD,
};
use common::tools::{calls_of, tools};
use serde_json::{json, Value};

/// A person: bounded fields, so that even a wandering sample ends well within max_tokens.
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "likes": {"type": "array", "items": {"enum": ["tea", "cats", "rain"]}, "maxItems": 3}
        },
        "required": ["name", "age", "likes"],
        "additionalProperties": false
    })
}

/// Whether `v` is a person as the schema says.
fn is_person(v: &Value) -> bool {
    let Some(o) = v.as_object() else {
        return false;
    };
    o.len() == 3
        && o["name"].as_str().is_some_and(|n| n.chars().count() <= 12)
        && o["age"]
            .as_f64()
            .is_some_and(|a| a.fract() == 0.0 && (0.0..=120.0).contains(&a))
        && o["likes"].as_array().is_some_and(|l| {
            l.len() <= 3
                && l.iter()
                    .all(|x| ["tea", "cats", "rain"].contains(&x.as_str().unwrap_or("")))
        })
}

/// The reply to a chat with these fields over the default ones, whatever its status.
async fn post_chat(app: &App, extra: Value) -> Reply {
    send(
        app,
        "POST",
        "/v1/chat/completions",
        Some(&chat(extra)),
        None,
    )
    .await
}

#[tokio::test]
async fn outputs_follow_their_format_in_chat_and_completions() {
    let app = start(&[]).await;
    let ask = json!({"role": "user", "content": "Describe Alice, 30, who likes tea, as JSON."});
    let format = json!({"type": "json_schema", "json_schema": {"name": "person", "strict": true, "schema": person_schema()}});
    // Greedy, then three sampled choices: each parses and fits the schema, and ends there.
    let greedy = post(
        &app,
        "/v1/chat/completions",
        chat(json!({"messages": [ask], "max_tokens": 60, "response_format": format})),
    )
    .await;
    let sampled = post(&app, "/v1/chat/completions", chat(json!({"messages": [ask], "max_tokens": 60, "response_format": format, "n": 3, "temperature": 1.0, "seed": 7}))).await;
    for c in greedy["choices"]
        .as_array()
        .unwrap()
        .iter()
        .chain(sampled["choices"].as_array().unwrap())
    {
        let text = c["message"]["content"].as_str().unwrap();
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(is_person(&v), "{text}");
        assert_eq!(c["finish_reason"], "stop", "{text}");
    }
    let greedy_text = greedy["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(greedy_text.contains("\"name\": \"Alice\""), "{greedy_text}");

    // `json_object`: any object, written compactly (", " and ": " only).
    let obj = post(&app, "/v1/chat/completions", chat(json!({"messages": [ask], "max_tokens": 40, "response_format": {"type": "json_object"}}))).await;
    let text = obj["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.starts_with('{') && !text.contains('\n'), "{text}");
    if obj["choices"][0]["finish_reason"] == "stop" {
        assert!(
            serde_json::from_str::<Value>(text).unwrap().is_object(),
            "{text}"
        );
    }

    // Completions: a choice among strings, a regular expression, a schema (vLLM's names).
    let choice = post(&app, "/v1/completions", completion(json!({"prompt": "Is Paris in France? Answer:", "max_tokens": 8, "guided_choice": [" yes", " no"]}))).await;
    let text = choice["choices"][0]["text"].as_str().unwrap();
    assert!(text == " yes" || text == " no", "{text:?}");
    assert_eq!(choice["choices"][0]["finish_reason"], "stop");
    let date = post(&app, "/v1/completions", completion(json!({"prompt": "The date today is", "max_tokens": 12, "guided_regex": " [0-9]{4}-[0-9]{2}-[0-9]{2}"}))).await;
    let text = date["choices"][0]["text"].as_str().unwrap();
    let b = text.as_bytes();
    assert!(
        b.len() == 11
            && b[5] == b'-'
            && b[8] == b'-'
            && text[1..5].bytes().all(|d| d.is_ascii_digit()),
        "{text:?}"
    );
    let json = post(
        &app,
        "/v1/completions",
        completion(
            json!({"prompt": "Alice as JSON:", "max_tokens": 60, "guided_json": person_schema()}),
        ),
    )
    .await;
    let text = json["choices"][0]["text"].as_str().unwrap();
    assert!(is_person(&serde_json::from_str(text).unwrap()), "{text}");
    // vLLM's current field: the same formats, and a Lark grammar; the schema as its text too.
    let completion_text = |extra: Value| {
        let app = &app;
        async move {
            let r = post(app, "/v1/completions", completion(extra)).await;
            assert_eq!(r["choices"][0]["finish_reason"], "stop", "{r}");
            r["choices"][0]["text"].as_str().unwrap().to_string()
        }
    };
    let so =
        |s: Value| json!({"prompt": "Alice as JSON:", "max_tokens": 60, "structured_outputs": s});
    let text = completion_text(so(json!({"json": person_schema().to_string()}))).await;
    assert!(is_person(&serde_json::from_str(&text).unwrap()), "{text}");
    let text = completion_text(so(json!({"choice": ["yes", "no"]}))).await;
    assert!(text == "yes" || text == "no", "{text}");
    let text = completion_text(so(json!({"regex": "[0-9]{3}"}))).await;
    assert!(
        text.len() == 3 && text.bytes().all(|b| b.is_ascii_digit()),
        "{text}"
    );
    let lark = "start: \"(\" item (\", \" item)* \")\"\nitem: /[a-z]+/";
    let text = completion_text(so(json!({ "grammar": lark }))).await;
    assert!(text.starts_with('(') && text.ends_with(')'), "{text}");
    assert!(
        text[1..text.len() - 1]
            .split(", ")
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase())),
        "{text}"
    );

    // Streamed: the deltas join into the same text as the whole response.
    let body =
        json!({"messages": [ask], "max_tokens": 60, "response_format": format, "stream": true});
    let joined = streamed_content(&stream_chunks(&app, chat(body)).await);
    assert_eq!(joined, greedy_text);
}

#[tokio::test]
async fn bad_formats_are_400s_that_name_their_parameter() {
    let app = start(&[]).await;
    let schema = |s: Value| json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": s}}});
    // (format, the parameter the error names)
    for (bad, param) in [
        (
            json!({"response_format": {"type": "xml"}}),
            "response_format.type",
        ),
        (
            json!({"response_format": {"type": "json_schema"}}),
            "response_format.json_schema",
        ),
        (
            json!({"response_format": {"type": "json_object", "extra": 1}}),
            "response_format.extra",
        ),
        (schema(json!({"type": "nope"})), "response_format"),
        (schema(json!(true)), "response_format"),
        (
            schema(json!({"$ref": "#/$defs/missing"})),
            "response_format",
        ),
        (
            schema(json!({"type": "integer", "minimum": 5, "maximum": 1})),
            "response_format",
        ),
    ] {
        post_chat(&app, bad)
            .await
            .assert_error(400, BAD, Some(param), None);
    }
    post_chat(&app, json!({"guided_regex": "("}))
        .await
        .assert_error(400, BAD, Some("guided_regex"), None);
    post_chat(&app, json!({"guided_choice": []}))
        .await
        .assert_error(400, BAD, Some("guided_choice"), None);
    post_chat(&app, json!({"guided_json": 5}))
        .await
        .assert_error(400, BAD, Some("guided_json"), None);
    for bad in [
        json!({}),
        json!({"regex": "a", "choice": ["a"]}),
        json!({"json": "{not json"}),
        json!({"grammar": "start: undefined_rule"}),
        json!({"regex": "(("}),
    ] {
        post_chat(&app, json!({ "structured_outputs": bad }))
            .await
            .assert_error(400, BAD, Some("structured_outputs"), None);
    }
    post_chat(&app, json!({"structured_outputs": {"xml": 1}}))
        .await
        .assert_error(400, BAD, Some("structured_outputs.xml"), None);
    post_chat(
        &app,
        json!({"response_format": {"type": "json_object"}, "guided_regex": "a"}),
    )
    .await
    .assert_error(400, BAD, Some("guided_regex"), None);
    // `text` is no constraint at all.
    let plain = send(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(&chat(json!({"response_format": {"type": "text"}}))),
        None,
    )
    .await;
    assert_eq!(plain.status.as_u16(), 200, "{}", plain.text);
    // Nothing leaked: every block back once the requests are done.
    let m = send(&app, "GET", "/metrics", None, None).await.text;
    assert!(m.contains("lowbit:num_requests_running 0"), "{m}");
}

#[tokio::test]
async fn tool_calls_follow_their_tools_in_openai_shapes() {
    let app = start(&[]).await;
    let ask = json!({"role": "user", "content": "What is the weather in Paris?"});
    let asking = |extra: Value| {
        let mut v = json!({"messages": [ask], "tools": tools(), "max_tokens": 60, "parallel_tool_calls": false});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        chat(v)
    };
    // `required`, one call at most: the weather, in Paris.
    let r = post(
        &app,
        "/v1/chat/completions",
        asking(json!({"tool_choice": "required"})),
    )
    .await;
    let calls = calls_of(&r["choices"][0]);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "get_weather");
    assert_eq!(calls[0].1["city"], "Paris");
    // /tokenize counts the tools' description as the chat did.
    let count = |body: Value| {
        let app = &app;
        async move {
            let r = send(app, "POST", "/tokenize", Some(&body.to_string()), None).await;
            assert_eq!(r.status.as_u16(), 200, "{}", r.text);
            r.json()["count"].clone()
        }
    };
    let with_tools = json!({"messages": [ask], "tools": tools(), "tool_choice": "required", "parallel_tool_calls": false});
    assert_eq!(count(with_tools).await, r["usage"]["prompt_tokens"]);
    let without = count(json!({ "messages": [ask] })).await;
    assert!(
        without.as_u64() < r["usage"]["prompt_tokens"].as_u64(),
        "{without}"
    );
    // `auto` (the default) chooses the same call here; a named function is called whatever
    // the question.
    let r = post(&app, "/v1/chat/completions", asking(json!({}))).await;
    assert_eq!(calls_of(&r["choices"][0]), calls);
    let named = json!({"tool_choice": {"type": "function", "function": {"name": "get_time"}}});
    let r = post(&app, "/v1/chat/completions", asking(named)).await;
    assert_eq!(calls_of(&r["choices"][0])[0].0, "get_time");
    // `none`: a plain reply, no grammar.
    let r = post(
        &app,
        "/v1/chat/completions",
        asking(json!({"tool_choice": "none"})),
    )
    .await;
    assert!(
        r["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|t| !t.starts_with('{')),
        "{r}"
    );
    assert!(r["choices"][0]["message"].get("tool_calls").is_none());

    // Streamed token by token: the call's id, type and name first, then its arguments in
    // pieces that join into the unstreamed call's; then the finish.
    let unstreamed = post(
        &app,
        "/v1/chat/completions",
        asking(json!({"tool_choice": "required"})),
    )
    .await;
    let want = &unstreamed["choices"][0]["message"]["tool_calls"][0]["function"];
    let chunks = stream_chunks(
        &app,
        asking(json!({"tool_choice": "required", "stream": true})),
    )
    .await;
    common::tools::assert_streamed_call(&chunks, want);
    // `auto` answering instead: its text streams token by token, as the unstreamed content.
    let haiku = json!({"messages": [{"role": "user", "content": "Write a haiku about the sea."}]});
    let unstreamed = post(&app, "/v1/chat/completions", asking(haiku.clone())).await;
    let c = &unstreamed["choices"][0];
    assert_eq!(c["finish_reason"], "stop", "{c}");
    let mut streamed = haiku;
    streamed["stream"] = json!(true);
    let chunks = stream_chunks(&app, asking(streamed)).await;
    let texts: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|t| !t.is_empty())
        .collect();
    assert!(texts.len() > 3, "{texts:?}");
    assert_eq!(texts.concat(), c["message"]["content"].as_str().unwrap());
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );

    // A round trip: the call and its result in the history.
    common::tools::a_round_trip(
        &app,
        json!({"max_tokens": 60, "parallel_tool_calls": false}),
    )
    .await;
    let m = send(&app, "GET", "/metrics", None, None).await.text;
    assert!(m.contains("lowbit:num_requests_running 0"), "{m}");
}

#[tokio::test]
async fn tools_with_a_response_format() {
    common::tools::answers_follow_the_response_format(&start(&[]).await).await;
}

#[tokio::test]
async fn bad_tools_are_400s_that_name_their_parameter() {
    let app = start(&[]).await;
    let one = |f: Value| json!({"tools": [{"type": "function", "function": f}]});
    let mut twice = tools();
    twice[1]["function"]["name"] = json!("get_weather");
    let user_calls = json!([{"role": "user", "content": "x", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]);
    let no_id = json!([{"role": "user", "content": "x"}, {"role": "tool", "content": "18"}]);
    for (bad, param) in [
        (
            one(json!({"name": "get weather"})),
            "tools[0].function.name",
        ),
        (one(json!({"name": ""})), "tools[0].function.name"),
        (json!({ "tools": twice }), "tools[1].function.name"),
        (
            json!({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}),
            "tools[0].type",
        ),
        (
            one(json!({"name": "f", "parameters": 5})),
            "tools[0].function.parameters",
        ),
        (
            one(json!({"name": "f", "parameters": {"type": "nope"}})),
            "tools",
        ),
        (
            json!({"tools": tools(), "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"tools": tools(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
        // Only a JSON format can shape an answer beside calls.
        (
            json!({"tools": tools(), "guided_regex": "[a-z]+"}),
            "guided_regex",
        ),
        (json!({ "messages": user_calls }), "messages[0].tool_calls"),
        (json!({ "messages": no_id }), "messages[1].tool_call_id"),
    ] {
        post_chat(&app, bad)
            .await
            .assert_error(400, BAD, Some(param), None);
    }
}
