//! Gemmas and mixtures of experts served end to end: tiny random Gemma 2 and Gemma 3 GGUF
//! files (sliding windows of 4 positions, far shorter than the prompts), Mixtral and
//! Qwen3-MoE ones (each token routed to 2 of 4 experts), with a small byte-level tokenizer,
//! through the real router and engine. A reply does not depend on what else is in its batch
//! (a batch's tokens route to different experts), a repeated prompt is served from the prefix
//! cache (blocks of positions that every sliding layer has left behind stay readable to the
//! global ones) with the same answer, and a stream carries the same text.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use common::app::{post, send, start_with};
use common::tiny_model::{TinyArch, TinyConfig, TinyModel};
use serde_json::{json, Value};

const NAME: &str = "tiny";

const PROMPTS: [&str; 3] = [
    "hi there, hello world: the quick brown fox jumps over the lazy dog",
    "one two three four five six seven eight nine ten eleven",
    "hihihi hi hi hi abc abc abc xyz",
];

fn completion(prompt: &str, extra: Value) -> String {
    let mut v = json!({
        "model": NAME,
        "prompt": prompt,
        "max_tokens": 8,
        "temperature": 0,
        "ignore_eos": true,
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string()
}

fn text(reply: &Value) -> String {
    reply["choices"][0]["text"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemma_and_moe_models_serve_batched_cached_and_streamed_alike() {
    for (arch, layers) in [
        (TinyArch::Gemma2, 2),
        (TinyArch::Gemma3, 6),
        (TinyArch::Mixtral, 2),
        (TinyArch::Qwen3Moe, 2),
    ] {
        let cfg = TinyConfig {
            arch,
            layers,
            tied: true,
            ffn: if arch.is_moe() { 32 } else { 96 },
            ..TinyConfig::default()
        };
        let model = TinyModel::random(cfg, 40, true);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        std::fs::write(
            &path,
            common::with_tokenizer(&model.gguf_bytes(), cfg.vocab),
        )
        .unwrap();
        let app = start_with(
            &path,
            &["--served-model-name", NAME, "--max-batch-tokens", "64"],
        )
        .await;

        let mut alone = Vec::new();
        for p in PROMPTS {
            let r = post(&app, "/v1/completions", completion(p, json!({}))).await;
            assert_eq!(r["usage"]["completion_tokens"], 8, "{arch:?}: {r}");
            alone.push(text(&r));
        }
        // The same prompt again: its blocks come from the prefix cache.
        let again = post(&app, "/v1/completions", completion(PROMPTS[0], json!({}))).await;
        assert_eq!(text(&again), alone[0], "{arch:?}: cached prefix");
        let cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
        assert!(cached > 0, "{arch:?}: {again}");
        // All three at once, batched.
        let (a, b, c) = tokio::join!(
            post(&app, "/v1/completions", completion(PROMPTS[0], json!({}))),
            post(&app, "/v1/completions", completion(PROMPTS[1], json!({}))),
            post(&app, "/v1/completions", completion(PROMPTS[2], json!({}))),
        );
        assert_eq!(
            [text(&a), text(&b), text(&c)].to_vec(),
            alone,
            "{arch:?}: batched"
        );
        // Streamed.
        let body = completion(PROMPTS[1], json!({"stream": true}));
        let r = send(&app, "POST", "/v1/completions", Some(&body), None).await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.text);
        let streamed: String = r
            .text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .filter_map(|d| {
                let v: Value = serde_json::from_str(d).unwrap();
                v["choices"][0]["text"].as_str().map(str::to_string)
            })
            .collect();
        assert_eq!(streamed, alone[1], "{arch:?}: streamed");
        // Every KV block back.
        let metrics = send(&app, "GET", "/metrics", None, None).await.text;
        let in_use = metrics
            .lines()
            .find_map(|l| l.strip_prefix("lowbit:kv_blocks_in_use "))
            .unwrap();
        assert_eq!(in_use, "0", "{arch:?}");
        // The Gemmas' sliding layers keep their own pool (README), given back too.
        let gauge = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&format!("lowbit:{name} ")))
                .unwrap()
                .to_string()
        };
        assert_eq!(gauge("kv_window_blocks_in_use"), "0", "{arch:?}");
        let window_pool = gauge("kv_window_blocks_total") != "0";
        assert_eq!(window_pool, !arch.is_moe(), "{arch:?}");
    }
}
