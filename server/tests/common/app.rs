//! The API router on the real default model, in process (no socket; the engine thread is the
//! real one), for the route-level tests: requests, replies and the OpenAI error envelope.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use lowbit::cli::{serve, Cli, Command};
use serde_json::{json, Value};
use tower::ServiceExt;

pub const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

pub struct App {
    pub router: axum::Router,
    pub engine: lowbit::engine::EngineHandle,
}

pub async fn start(extra: &[&str]) -> App {
    start_with(&super::smollm2_path(), extra).await
}

/// [`start`] on another model file.
pub async fn start_with(path: &std::path::Path, extra: &[&str]) -> App {
    let mut argv = vec![
        "lowbit".to_string(),
        "serve".into(),
        "--model".into(),
        path.display().to_string(),
        "--kv-cache-memory".into(),
        "64MiB".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let Command::Serve(args) = Cli::parse_from(argv).command else {
        unreachable!()
    };
    let p = serve::prepare(&args).unwrap();
    p.loaded.await.unwrap().unwrap();
    App {
        router: p.app,
        engine: p.engine,
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    /// Asserts an OpenAI error envelope with exactly these fields.
    pub fn assert_error(&self, status: u16, kind: &str, param: Option<&str>, code: Option<&str>) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        let v = self.json();
        let e = &v["error"];
        assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert_eq!(e["type"], kind, "{v}");
        assert_eq!(e["param"], param.map_or(Value::Null, |p| json!(p)), "{v}");
        assert_eq!(e["code"], code.map_or(Value::Null, |c| json!(c)), "{v}");
    }
}

pub async fn send(
    app: &App,
    method: &str,
    path: &str,
    body: Option<&str>,
    key: Option<&str>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = req
        .header("content-type", "application/json")
        .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// The chunks of a streamed chat.
pub async fn stream_chunks(app: &App, body: String) -> Vec<Value> {
    let r = send(app, "POST", "/v1/chat/completions", Some(&body), None).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    r.text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// The text a streamed chat's chunks carry, joined.
pub fn streamed_content(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// The JSON of a request that must succeed.
pub async fn post(app: &App, path: &str, body: String) -> Value {
    let r = send(app, "POST", path, Some(&body), None).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    r.json()
}

pub fn chat(extra: Value) -> String {
    let mut v = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is 2+2?"}],
        "max_tokens": 4,
        "temperature": 0,
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string()
}

pub fn completion(extra: Value) -> String {
    let mut v = json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 3, "temperature": 0});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string()
}

pub const BAD: &str = "invalid_request_error";
