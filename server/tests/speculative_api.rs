//! `--speculative-tokens` through the API on SmolLM2: greedy replies, streamed or not, with
//! stop strings and token limits, are a plain server's, and the drafts show in the metrics.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use common::app::{completion, post, send, start, stream_chunks, streamed_content, App};
use serde_json::{json, Value};

/// A prompt SmolLM2 continues by copying its line.
const COPY: &str = "Line: the quick brown fox jumps over the lazy dog near the old river bank.\nLine: the quick brown fox jumps over the lazy dog near the old river bank.\nLine:";

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("lowbit:{name} ")))
        .unwrap_or_else(|| panic!("{name} missing"))
        .parse()
        .unwrap()
}

async fn metrics(app: &App) -> String {
    send(app, "GET", "/metrics", None, None).await.text
}

/// What `app` answers to each request: the text, finish reason and completion tokens.
async fn answers(app: &App, bodies: &[Value]) -> Vec<(Value, Value, Value)> {
    let mut out = Vec::new();
    for b in bodies {
        let r = post(app, "/v1/completions", completion(b.clone())).await;
        let c = &r["choices"][0];
        out.push((
            c["text"].clone(),
            c["finish_reason"].clone(),
            r["usage"]["completion_tokens"].clone(),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn speculating_server_answers_as_a_plain_one() {
    let plain = start(&[]).await;
    let spec = start(&["--speculative-tokens", "5"]).await;
    let bodies = [
        json!({"prompt": COPY, "max_tokens": 40}),
        // Limits that fall inside a draft, a stop string met in one.
        json!({"prompt": COPY, "max_tokens": 9}),
        json!({"prompt": COPY, "max_tokens": 40, "stop": ["river"]}),
        // A chat-like free answer, and a sampled one (which does not speculate).
        json!({"prompt": "Once upon a time", "max_tokens": 30}),
        json!({"prompt": COPY, "max_tokens": 20, "temperature": 0.8, "seed": 3}),
    ];
    let want = answers(&plain, &bodies).await;
    let got = answers(&spec, &bodies).await;
    assert_eq!(want, got);
    assert_eq!(want[2].1, "stop");
    assert_eq!(want[1].2, 9);
    let m = metrics(&spec).await;
    let (drafted, accepted) = (
        metric(&m, "spec_decode_num_draft_tokens_total"),
        metric(&m, "spec_decode_num_accepted_tokens_total"),
    );
    assert!(
        accepted > 10.0 && accepted <= drafted,
        "{accepted} of {drafted}"
    );
    assert!(metric(&m, "spec_decode_num_drafts_total") > 0.0);
    assert!(m.contains("lowbit:spec_decode_num_accepted_tokens_per_pos_total{position=\"0\"}"));
    // Nothing drafted on the plain server; every block back on both.
    assert_eq!(
        metric(&metrics(&plain).await, "spec_decode_num_draft_tokens_total"),
        0.0
    );
    for app in [&plain, &spec] {
        assert_eq!(metric(&metrics(app).await, "kv_blocks_in_use"), 0.0);
    }
    // Streamed: the deltas add up to the unstreamed text, several tokens a step or not.
    let body = json!({
        "model": common::app::MODEL,
        "messages": [{"role": "user", "content": format!("Repeat exactly: {COPY}")}],
        "max_tokens": 40,
        "temperature": 0,
    });
    let whole = post(&spec, "/v1/chat/completions", body.to_string()).await;
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let text = streamed_content(&stream_chunks(&spec, streamed.to_string()).await);
    assert_eq!(text, whole["choices"][0]["message"]["content"]);
    let plain_whole = post(&plain, "/v1/chat/completions", body.to_string()).await;
    assert_eq!(
        plain_whole["choices"][0]["message"],
        whole["choices"][0]["message"]
    );
}

#[test]
fn bad_prompt_lookup_flags_are_refused_naming_them() {
    // (A model that is not there: the flags are checked first, and a broken check fails
    // the test on the model's error instead of serving.)
    let out = common::lowbit(&[
        "serve",
        "--model",
        "/nonexistent/model.gguf",
        "--speculative-tokens",
        "4",
        "--prompt-lookup-min",
        "3",
        "--prompt-lookup-max",
        "2",
        "--port",
        "0",
    ]);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(
        err.contains("--prompt-lookup-min 3 and --prompt-lookup-max 2"),
        "{err}"
    );
}
