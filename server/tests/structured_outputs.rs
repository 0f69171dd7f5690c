//! Structured outputs through the HTTP API on the real default model: `response_format`
//! (`json_object`, `json_schema`) in chat and completions, vLLM's `guided_json`,
//! `guided_regex` and `guided_choice`, streamed and not, with `n` choices; and every bad
//! format a 400 naming its parameter.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use common::app::{chat, completion, send, start, App, BAD};
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

async fn post(app: &App, path: &str, body: String) -> Value {
    let r = send(app, "POST", path, Some(&body), None).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    r.json()
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

    // Streamed: the deltas join into the same text as the whole response.
    let streamed = send(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(&chat(
            json!({"messages": [ask], "max_tokens": 60, "response_format": format, "stream": true}),
        )),
        None,
    )
    .await;
    let joined: String = streamed
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(joined, greedy_text);
}

#[tokio::test]
async fn bad_formats_are_400s_that_name_their_parameter() {
    let app = start(&[]).await;
    let chat_error = |extra: Value| {
        let app = &app;
        async move {
            send(
                app,
                "POST",
                "/v1/chat/completions",
                Some(&chat(extra)),
                None,
            )
            .await
        }
    };
    let schema = |s: Value| json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": s}}});
    // (format, the parameter the error names)
    for (bad, param) in [
        (
            json!({"response_format": {"type": "xml"}}),
            "response_format.type",
        ),
        (
            json!({"response_format": {"type": "json_schema"}}),
            "response_format",
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
        chat_error(bad)
            .await
            .assert_error(400, BAD, Some(param), None);
    }
    chat_error(json!({"guided_regex": "("})).await.assert_error(
        400,
        BAD,
        Some("guided_regex"),
        None,
    );
    chat_error(json!({"guided_choice": []})).await.assert_error(
        400,
        BAD,
        Some("guided_choice"),
        None,
    );
    chat_error(json!({"guided_json": 5}))
        .await
        .assert_error(400, BAD, Some("guided_json"), None);
    chat_error(json!({"response_format": {"type": "json_object"}, "guided_regex": "a"}))
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
