//! Route-level tests of the HTTP API on the real default model: every error case with its
//! exact status and envelope, auth, admission, draining, and the good paths' shapes. Requests
//! go through the router in process (no socket); the engine thread is the real one.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::app::{chat, completion, send, start, BAD, MODEL};
use serde_json::{json, Value};
use tower::ServiceExt;

#[tokio::test]
async fn every_bad_chat_request_gets_its_envelope_and_nothing_else_changes() {
    let app = start(&[]).await;
    let post = |b: String| {
        let app = &app;
        async move { send(app, "POST", "/v1/chat/completions", Some(&b), None).await }
    };
    post("{not json".into())
        .await
        .assert_error(400, BAD, None, None);
    post("[1, 2]".into())
        .await
        .assert_error(400, BAD, None, None);
    post(chat(json!({"temperature": "hot"})))
        .await
        .assert_error(400, BAD, Some("temperature"), None);
    // Just past a bound, where an f32 would round back inside it.
    for t in [2.5, -0.1, 2.000_000_01] {
        post(chat(json!({ "temperature": t }))).await.assert_error(
            400,
            BAD,
            Some("temperature"),
            None,
        );
    }
    for p in [0.0, 1.5, 1.000_000_01] {
        post(chat(json!({ "top_p": p })))
            .await
            .assert_error(400, BAD, Some("top_p"), None);
    }
    for m in [0, -5] {
        post(chat(json!({ "max_tokens": m }))).await.assert_error(
            400,
            BAD,
            Some("max_tokens"),
            None,
        );
    }
    post(chat(json!({"max_completion_tokens": 0})))
        .await
        .assert_error(400, BAD, Some("max_completion_tokens"), None);
    for extra in [
        json!({"min_tokens": -1}),
        json!({"min_tokens": 5, "max_tokens": 4}),
    ] {
        post(chat(extra))
            .await
            .assert_error(400, BAD, Some("min_tokens"), None);
    }
    // min_tokens: the end of turn (<|im_end|>, biased to be the best choice) waits for 3
    // tokens, then ends the reply; it counts in the usage.
    let biased = json!({"logit_bias": {"2": 100}, "max_tokens": 8});
    let reply = post(chat(biased.clone())).await.json();
    assert_eq!(reply["usage"]["completion_tokens"], 1, "{reply}");
    let mut held = biased;
    held["min_tokens"] = json!(3);
    let reply = post(chat(held)).await.json();
    assert_eq!(reply["usage"]["completion_tokens"], 4, "{reply}");
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    for n in [0, 17] {
        post(chat(json!({ "n": n })))
            .await
            .assert_error(400, BAD, Some("n"), None);
    }
    post(chat(json!({"stop": ["a", "b", "c", "d", "e"]})))
        .await
        .assert_error(400, BAD, Some("stop"), None);
    post(chat(json!({"messages": []})))
        .await
        .assert_error(400, BAD, Some("messages"), None);
    post(chat(
        json!({"messages": [{"role": "wizard", "content": "x"}]}),
    ))
    .await
    .assert_error(400, BAD, Some("messages[0].role"), None);
    post(chat(json!({"messages": [{"role": "user", "content": 5}]})))
        .await
        .assert_error(400, BAD, Some("messages[0].content"), None);
    // The legacy names of tools (tools' own errors: tests/structured_outputs.rs).
    for param in ["functions", "function_call"] {
        post(chat(json!({ param: [] }))).await.assert_error(
            400,
            BAD,
            Some(param),
            Some("unsupported_parameter"),
        );
    }
    // (Structured outputs' own errors: tests/structured_outputs.rs.)
    post(chat(json!({"response_format": {"type": "xml"}})))
        .await
        .assert_error(400, BAD, Some("response_format.type"), None);
    post(chat(json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})))
        .await
        .assert_error(400, BAD, Some("messages[0].content[0].type"), Some("unsupported_parameter"));
    post(chat(
        json!({"messages": [{"role": "assistant", "content": "x", "function_call": {}}]}),
    ))
    .await
    .assert_error(
        400,
        BAD,
        Some("messages[0].function_call"),
        Some("unsupported_parameter"),
    );
    post(chat(json!({"frobnicate": true}))).await.assert_error(
        400,
        BAD,
        Some("frobnicate"),
        Some("unknown_parameter"),
    );
    post(chat(json!({"logit_bias": {"abc": 1}})))
        .await
        .assert_error(400, BAD, Some("logit_bias"), None);
    post(chat(json!({"logit_bias": {"5": 101}})))
        .await
        .assert_error(400, BAD, Some("logit_bias"), None);
    post(chat(json!({"top_logprobs": 3})))
        .await
        .assert_error(400, BAD, Some("top_logprobs"), None);
    post(chat(json!({"logprobs": true, "top_logprobs": 21})))
        .await
        .assert_error(400, BAD, Some("top_logprobs"), None);
    post(chat(json!({"max_tokens": 100_000})))
        .await
        .assert_error(
            400,
            BAD,
            Some("max_tokens"),
            Some("context_length_exceeded"),
        );
    post(chat(json!({"model": "gpt-4"}))).await.assert_error(
        404,
        BAD,
        Some("model"),
        Some("model_not_found"),
    );

    // The server is untouched: a good request answers and every block is back.
    let ok = post(chat(json!({}))).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert_eq!(
        ok.json()["choices"][0]["message"]["content"],
        "The answer to this"
    );
    let metrics = send(&app, "GET", "/metrics", None, None).await.text;
    assert!(metrics.contains("lowbit:kv_blocks_in_use 0"), "{metrics}");
    assert!(metrics.contains("lowbit:num_requests_running 0"));
    // Where it serves, and what the model holds there.
    assert!(metrics.contains("lowbit:backend_info{backend=\"cpu\"} 1"));
    let bytes = |kind: &str| -> u64 {
        let key = format!("lowbit:device_memory_bytes{{kind=\"{kind}\"}} ");
        let line = metrics.lines().find(|l| l.starts_with(&key));
        line.and_then(|l| l[key.len()..].parse().ok())
            .unwrap_or_else(|| panic!("{key} missing: {metrics}"))
    };
    assert!(bytes("weights") > 0 && bytes("kv_cache") > 0);
}

#[tokio::test]
async fn every_bad_completion_request_gets_its_envelope() {
    let app = start(&[]).await;
    let post = |b: String| {
        let app = &app;
        async move { send(app, "POST", "/v1/completions", Some(&b), None).await }
    };
    post(completion(json!({"prompt": ""})))
        .await
        .assert_error(400, BAD, Some("prompt"), None);
    post(completion(json!({"prompt": []})))
        .await
        .assert_error(400, BAD, Some("prompt"), None);
    post(completion(json!({"prompt": [1, 99999999]})))
        .await
        .assert_error(400, BAD, Some("prompt"), None);
    post(completion(json!({"prompt": {"x": 1}})))
        .await
        .assert_error(400, BAD, Some("prompt"), None);
    // SmolLM2 has no fill-in-the-middle tokens.
    post(completion(json!({"suffix": "x"})))
        .await
        .assert_error(400, BAD, Some("suffix"), None);
    post(completion(json!({"logprobs": 6})))
        .await
        .assert_error(400, BAD, Some("logprobs"), None);
    post(completion(json!({"max_tokens": -1})))
        .await
        .assert_error(400, BAD, Some("max_tokens"), None);
    post(completion(json!({"best_of": 3}))).await.assert_error(
        400,
        BAD,
        Some("best_of"),
        Some("unsupported_parameter"),
    );
    post(completion(json!({"messages": []})))
        .await
        .assert_error(400, BAD, Some("messages"), Some("unknown_parameter"));

    // The good paths: the prompt forms, echo, n, legacy logprobs.
    let r = post(completion(
        json!({"prompt": ["The capital of France is", "Hello"], "n": 2}),
    ))
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["finish_reason"], "length");
    }
    assert_eq!(choices[0]["text"], " Paris.\n");
    assert_eq!(choices[1]["text"], choices[0]["text"]);
    assert_eq!(v["usage"]["completion_tokens"], 12);
    let ids = [504, 3575, 282, 4649, 314];
    let r = post(completion(json!({"prompt": ids, "echo": true}))).await;
    assert_eq!(
        r.json()["choices"][0]["text"],
        "The capital of France is Paris.\n"
    );
    let r = post(completion(json!({"logprobs": 2}))).await;
    let lp = &r.json()["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"], json!([" Paris", ".", "\n"]));
    assert_eq!(lp["text_offset"], json!([0, 6, 7]));
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    assert!(lp["token_logprobs"][0].as_f64().unwrap() < 0.0);

    // echo with logprobs: the prompt's tokens first, the first without a log-probability.
    let r = post(completion(
        json!({"prompt": ids, "echo": true, "logprobs": 2, "max_tokens": 3}),
    ))
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let c = &r.json()["choices"][0];
    assert_eq!(c["text"], "The capital of France is Paris.\n");
    let lp = &c["logprobs"];
    let prompt_tokens = ["The", " capital", " of", " France", " is"];
    let tokens: Vec<&str> = prompt_tokens
        .iter()
        .copied()
        .chain([" Paris", ".", "\n"])
        .collect();
    assert_eq!(lp["tokens"], json!(tokens));
    assert_eq!(lp["text_offset"], json!([0, 3, 11, 14, 21, 24, 30, 31]));
    assert_eq!(lp["token_logprobs"][0], Value::Null);
    assert_eq!(lp["top_logprobs"][0], Value::Null);
    for j in 1..8 {
        assert!(lp["token_logprobs"][j].as_f64().unwrap() < 0.0, "{lp}");
        assert_eq!(lp["top_logprobs"][j].as_object().unwrap().len(), 2, "{lp}");
    }
    // " is" after "The capital of France" is the likeliest token: its own top entry.
    let top = lp["top_logprobs"][4].as_object().unwrap();
    assert_eq!(top[" is"], lp["token_logprobs"][4], "{lp}");
    // max_tokens 0: the prompt alone, the same log-probabilities.
    let r = post(completion(
        json!({"prompt": ids, "echo": true, "logprobs": 2, "max_tokens": 0}),
    ))
    .await;
    let v = r.json();
    assert_eq!(v["choices"][0]["text"], "The capital of France is");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 0);
    let alone = &v["choices"][0]["logprobs"];
    assert_eq!(alone["tokens"], json!(prompt_tokens));
    assert_eq!(
        alone["token_logprobs"],
        json!(lp["token_logprobs"].as_array().unwrap()[..5])
    );
    assert_eq!(
        alone["top_logprobs"],
        json!(lp["top_logprobs"].as_array().unwrap()[..5])
    );
}

#[tokio::test]
async fn routes_methods_and_body_limit() {
    let app = start(&["--max-body-bytes", "1KiB"]).await;
    send(&app, "GET", "/v2/nothing", None, None)
        .await
        .assert_error(404, BAD, None, Some("not_found"));
    send(&app, "DELETE", "/v1/models", None, None)
        .await
        .assert_error(405, BAD, None, Some("method_not_allowed"));
    send(&app, "GET", "/v1/chat/completions", None, None)
        .await
        .assert_error(405, BAD, None, Some("method_not_allowed"));
    let big = chat(json!({"user": "x".repeat(2000)}));
    send(&app, "POST", "/v1/chat/completions", Some(&big), None)
        .await
        .assert_error(413, BAD, None, Some("request_too_large"));
    send(&app, "GET", "/v1/models/nope", None, None)
        .await
        .assert_error(404, BAD, Some("model"), Some("model_not_found"));
    // A declared length over the limit is refused before the body is read.
    let req = Request::post("/v1/chat/completions")
        .header("content-length", "1000000000000")
        .body(Body::from("{\"model\""))
        .unwrap();
    assert_eq!(
        app.router.clone().oneshot(req).await.unwrap().status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    for media in ["application/xml", "multipart/form-data"] {
        let req = Request::post("/tokenize")
            .header("content-type", media)
            .body(Body::from(r#"{"prompt": "hi"}"#))
            .unwrap();
        let resp = app.router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{media}");
    }

    let models = send(&app, "GET", "/v1/models", None, None).await.json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["object"], "model");
    let one = send(&app, "GET", &format!("/v1/models/{MODEL}"), None, None).await;
    assert_eq!(one.json()["id"], MODEL);

    let t = send(
        &app,
        "POST",
        "/tokenize",
        Some(r#"{"prompt": "Hello, world!", "add_special_tokens": false}"#),
        None,
    )
    .await;
    assert_eq!(t.json()["tokens"], json!([19556, 28, 905, 17]));
    let d = send(
        &app,
        "POST",
        "/detokenize",
        Some(r#"{"tokens": [19556, 28, 905, 17]}"#),
        None,
    )
    .await;
    assert_eq!(d.json()["prompt"], "Hello, world!");
    send(
        &app,
        "POST",
        "/detokenize",
        Some(r#"{"tokens": [4000000]}"#),
        None,
    )
    .await
    .assert_error(400, BAD, Some("tokens"), None);

    let spec = send(&app, "GET", "/openapi.json", None, None).await.json();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    // The ranges the server checks are in the schema, exactly (fuzzing relies on them).
    let sampling = &spec["components"]["schemas"]["SamplingFields"]["properties"];
    assert_eq!(sampling["temperature"]["maximum"], 2);
    assert_eq!(sampling["top_p"]["exclusiveMinimum"], 0);
    assert_eq!(sampling["n"]["maximum"], 16);
    let mut ids = std::collections::HashSet::new();
    for (_, item) in spec["paths"].as_object().unwrap() {
        for (_, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap().to_string();
            assert!(ids.insert(id.clone()), "duplicate operationId {id}");
        }
    }
    for p in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/tokenize",
        "/ready",
    ] {
        assert!(spec["paths"][p].is_object(), "{p} missing from the spec");
    }

    // Request ids: made when absent, echoed when sent.
    let r = send(&app, "GET", "/health", None, None).await;
    assert!(!r.headers["x-request-id"].to_str().unwrap().is_empty());
    let req = Request::get("/health")
        .header("x-request-id", "abc-123")
        .body(Body::empty())
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
}

#[tokio::test]
async fn api_keys_guard_every_route_but_health_and_ready() {
    let app = start(&["--api-key", "k1", "--api-key", "k2"]).await;
    for (path, method, body) in [
        ("/v1/models", "GET", None),
        ("/metrics", "GET", None),
        ("/openapi.json", "GET", None),
        ("/v1/chat/completions", "POST", Some(chat(json!({})))),
    ] {
        for key in [None, Some("k3"), Some("")] {
            let r = send(&app, method, path, body.as_deref(), key).await;
            r.assert_error(401, BAD, None, Some("invalid_api_key"));
            assert_eq!(r.headers["www-authenticate"], "Bearer");
        }
    }
    assert_eq!(
        send(&app, "GET", "/v1/models", None, Some("k2"))
            .await
            .status,
        StatusCode::OK
    );
    let ok = send(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(&chat(json!({}))),
        Some("k1"),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(
        send(&app, "GET", "/health", None, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, "GET", "/ready", None, None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after_and_draining_answers_503() {
    let app = start(&["--max-waiting-requests", "0"]).await;
    let r = send(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(&chat(json!({}))),
        None,
    )
    .await;
    r.assert_error(429, "rate_limit_error", None, Some("queue_full"));
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));

    let app2 = start(&["--max-waiting-tokens", "10"]).await;
    let app = app2;
    send(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(&chat(json!({}))),
        None,
    )
    .await
    .assert_error(429, "rate_limit_error", None, Some("queue_full"));
    // A short prompt still fits.
    let r = send(
        &app,
        "POST",
        "/v1/completions",
        Some(&completion(json!({}))),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    app.engine.begin_drain();
    let ready = send(&app, "GET", "/ready", None, None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["status"], "draining");
    send(
        &app,
        "POST",
        "/v1/completions",
        Some(&completion(json!({}))),
        None,
    )
    .await
    .assert_error(503, "service_unavailable", None, Some("draining"));
    assert_eq!(
        send(&app, "GET", "/health", None, None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn streaming_chat_has_openai_chunks_and_a_usage_chunk() {
    let app = start(&[]).await;
    let body = chat(json!({"stream": true, "stream_options": {"include_usage": true}, "n": 2}));
    let r = send(&app, "POST", "/v1/chat/completions", Some(&body), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events: Vec<&str> = r
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    let mut texts = [String::new(), String::new()];
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c["id"], id);
        assert_eq!(c["object"], "chat.completion.chunk");
        if i < 2 {
            assert_eq!(c["choices"][0]["delta"]["role"], "assistant");
            assert_eq!(c["choices"][0]["index"], i);
        }
        if i + 1 < chunks.len() {
            assert!(c["usage"].is_null());
            let ch = &c["choices"][0];
            texts[ch["index"].as_u64().unwrap() as usize]
                .push_str(ch["delta"]["content"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(texts[0], "The answer to this");
    assert_eq!(texts[1], texts[0]);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 8);
    let finishes = chunks
        .iter()
        .filter(|c| c["choices"][0]["finish_reason"] == "length")
        .count();
    assert_eq!(finishes, 2);
}

#[tokio::test]
async fn http_requests_are_counted_by_route_template_method_and_status_class() {
    let app = start(&[]).await;
    for _ in 0..2 {
        let r = send(
            &app,
            "POST",
            "/v1/chat/completions",
            Some(&chat(json!({}))),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let bad = chat(json!({"n": 0}));
    send(&app, "POST", "/v1/chat/completions", Some(&bad), None)
        .await
        .assert_error(400, BAD, Some("n"), None);
    for id in ["resp_a", "resp_b"] {
        let path = format!("/v1/responses/{id}");
        let r = send(&app, "GET", &path, None, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
    let r = send(&app, "GET", "/no/such/route", None, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let metrics = send(&app, "GET", "/metrics", None, None).await.text;
    let count = |labels: &str| -> Option<u64> {
        let key = format!("http_requests_total{{{labels}}} ");
        let line = metrics.lines().find(|l| l.starts_with(&key))?;
        line[key.len()..].parse().ok()
    };
    let chat_route = "handler=\"/v1/chat/completions\",method=\"POST\"";
    assert_eq!(
        count(&format!("{chat_route},status=\"2xx\"")),
        Some(2),
        "{metrics}"
    );
    assert_eq!(count(&format!("{chat_route},status=\"4xx\"")), Some(1));
    // Ids in paths share their route's series; an unknown route is `none`.
    let one = "handler=\"/v1/responses/{id}\",method=\"GET\",status=\"4xx\"";
    assert_eq!(count(one), Some(2));
    assert_eq!(
        count("handler=\"none\",method=\"GET\",status=\"4xx\""),
        Some(1)
    );
    let durations =
        "http_request_duration_seconds_count{handler=\"/v1/chat/completions\",method=\"POST\"} 3";
    assert!(metrics.contains(durations), "{metrics}");
    assert!(metrics.contains("http_request_duration_highr_seconds_count 6"));
}
