//! The `lowbit` binary end to end: JSON output on the real model, and clear errors (exit code
//! 1, a message naming the problem) for bad input.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use common::tiny_model::{TinyConfig, TinyModel};
use common::{lowbit, stderr};

#[test]
fn generate_json_reports_ids_text_and_timings() {
    let model = common::smollm2_path();
    let out = lowbit(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "8",
        "--quant",
        "f32",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["prompt_tokens"],
        serde_json::json!([504, 3575, 282, 4649, 314])
    );
    assert_eq!(
        v["completion_tokens"],
        serde_json::json!([7042, 30, 198, 198, 504, 2988, 314, 42])
    );
    assert_eq!(v["text"], " Paris.\n\nThe answer is:");
    assert_eq!(v["stop_reason"], "length");
    assert!(v["timings"]["decode_tokens_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn info_json_describes_the_default_model() {
    let model = common::smollm2_path();
    let out = lowbit(&["info", "--model", model.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["config"]["n_layers"], 30);
    assert_eq!(v["config"]["n_kv_heads"], 3);
    assert_eq!(v["config"]["tied_embeddings"], true);
    assert_eq!(v["tensors"].as_array().unwrap().len(), 272);
    assert_eq!(v["chat_template"], true);
    // SmolLM2's template teaches no tool syntax and does not think.
    assert_eq!(v["tool_call_parser"], "generic");
    assert_eq!(v["reasoning"], false);
    assert!(v["device_memory"].is_null());

    // Loaded on a device, it reports what it takes there (the CPU: its weights).
    let out = lowbit(&[
        "info",
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["device_memory"]["device"], "cpu");
    let weights = v["device_memory"]["weights"].as_u64().unwrap();
    assert!((90_000_000..110_000_000).contains(&weights), "{weights}");

    let out = lowbit(&["info", "--adapters", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let adapters: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (i, a) in adapters.as_array().unwrap().iter().enumerate() {
        assert_eq!(a["index"], i);
        assert!(a["name"].as_str().is_some_and(|n| !n.is_empty()));
    }
}

#[test]
fn corrupt_model_file_exits_with_a_message_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    let bytes = TinyModel::random(TinyConfig::default(), 3, false).gguf_bytes();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let out = lowbit(&["info", "--model", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: ") && err.contains("cut.gguf") && err.contains("at byte"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let out = lowbit(&[
        "info",
        "--model",
        dir.path().join("absent.gguf").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("absent.gguf: no such file"),
        "{}",
        stderr(&out)
    );
}

/// A tiny random model with a tiny byte-level vocabulary and no chat template.
fn tiny_model_with_tokenizer(dir: &std::path::Path) -> std::path::PathBuf {
    let cfg = TinyConfig::default();
    let tiny = TinyModel::random(cfg, 8, false);
    let path = dir.join("tiny-tok.gguf");
    std::fs::write(&path, common::with_tokenizer(&tiny.gguf_bytes(), cfg.vocab)).unwrap();
    path
}

#[test]
fn chat_without_a_template_is_a_clear_error_and_plain_prompts_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model_with_tokenizer(dir.path());
    let p = path.to_str().unwrap();
    let out = lowbit(&["generate", "--model", p, "--prompt", "hi", "--chat"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("has no chat template"),
        "{}",
        stderr(&out)
    );

    let out = lowbit(&[
        "generate",
        "--model",
        p,
        "--prompt",
        "hi there",
        "--max-tokens",
        "5",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // BOS (id 0) first, as the file asks; the one merge makes "hi" a token; the rest are
    // single bytes ("Ġ" is the byte-level space).
    let byte = |c: u8| 2 + u64::from(c - 33);
    let (space, hi) = (96, 97);
    let want = [
        0,
        hi,
        space,
        byte(b't'),
        byte(b'h'),
        byte(b'e'),
        byte(b'r'),
        byte(b'e'),
    ];
    assert_eq!(v["prompt_tokens"], serde_json::json!(want));
    assert!(v["completion_tokens"].as_array().unwrap().len() <= 5);
}

#[test]
fn unavailable_device_is_a_clear_error() {
    let model = common::smollm2_path();
    let run = |device: &str, icd: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lowbit"));
        cmd.args(["generate", "--model", model.to_str().unwrap()])
            .args(["--prompt", "x", "--max-tokens", "1", "--device", device]);
        if let Some(icd) = icd {
            // The Vulkan loader then finds no driver at all.
            cmd.env("VK_ICD_FILENAMES", icd);
        }
        cmd.output().unwrap()
    };
    let out = run("gpu", Some("/nonexistent/icd.json"));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("--device gpu") && err.contains("no GPU adapter"),
        "{err}"
    );
    let out = run("gpu:9", None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no gpu:9 adapter"),
        "{}",
        stderr(&out)
    );
}

/// A KV pool larger than the adapter can hold (1024 GiB: more per layer than any adapter binds)
/// is a clear error naming the flag that sets it (the server exits 1 before answering
/// anything), not a panic or a device fault.
#[test]
fn a_kv_pool_beyond_the_adapter_is_a_clear_error() {
    let model = common::smollm2_path();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .args([
            "serve",
            "--model",
            model.to_str().unwrap(),
            "--device",
            "gpu",
        ])
        .args(["--kv-cache-memory", "1024GiB", "--port", "0"])
        .env("XDG_RUNTIME_DIR", "/tmp")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("KV pool") && err.contains("lower --kv-cache-memory"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn auto_without_a_hardware_gpu_runs_on_the_cpu_and_says_so() {
    // In CI the only adapter is lavapipe (software): `auto` leaves it for the CPU backend.
    let model = common::smollm2_path();
    let out = lowbit(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "x",
        "--max-tokens",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let hardware = err.contains("running on the GPU");
    assert!(
        hardware || err.contains("running on the CPU: GPU: no hardware GPU adapter"),
        "{err}"
    );
}

#[test]
fn bench_reports_speed_and_memory_on_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model_with_tokenizer(dir.path());
    let out = lowbit(&[
        "bench",
        "--model",
        path.to_str().unwrap(),
        "--quant",
        "q8",
        "--prompt-tokens",
        "20",
        "--gen-tokens",
        "4",
        "--batch",
        "3",
        "--reps",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["prompt_tokens_per_second"].as_f64().unwrap() > 0.0);
    assert!(v["gen_tokens_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(v["batch"], 3);
    assert!(v["weight_bytes"].as_u64().unwrap() > 0 && v["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!((v["bits_per_weight"].as_f64().unwrap() - 8.5).abs() < 1e-9);

    // Sampled decode, as the server samples; bad settings are refused.
    let sampled = |t: &str, p: &str| {
        lowbit(&[
            "bench",
            "--model",
            path.to_str().unwrap(),
            "--prompt-tokens",
            "0",
            "--gen-tokens",
            "4",
            "--reps",
            "1",
            "--temperature",
            t,
            "--top-p",
            p,
            "--json",
        ])
    };
    let out = sampled("0.8", "0.9");
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["gen_tokens_per_second"].as_f64().unwrap() > 0.0);
    for (field, want) in [("temperature", 0.8), ("top_p", 0.9)] {
        assert!((v[field].as_f64().unwrap() - want).abs() < 1e-6, "{field}");
    }
    let out = sampled("1", "1.5");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--top-p in (0, 1]"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bench_runs_a_synthetic_architecture_and_reports_its_weight_bandwidth() {
    let out = lowbit(&[
        "bench",
        "--synthetic",
        "llama-1b",
        "--device",
        "cpu",
        "--quant",
        "q4g64",
        "--prompt-tokens",
        "4",
        "--gen-tokens",
        "2",
        "--reps",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model"], "synthetic llama-1b");
    // Llama-3.2-1B: 1.236e9 matrix weights at 4.25 bits; its tied head is read every step.
    let bytes = v["weight_bytes"].as_f64().unwrap();
    assert!((bytes / 1.236e9 * 8.0 - 4.25).abs() < 0.01, "{bytes}");
    assert_eq!(v["decode_weight_bytes"], v["weight_bytes"]);
    let tg = v["gen_tokens_per_second"].as_f64().unwrap();
    let gbs = v["weight_gb_per_second"].as_f64().unwrap();
    assert!(tg > 0.0 && (gbs - bytes * tg / 1e9).abs() < 1e-6 * gbs.max(1.0));
    assert!(v["gpu_memory_bytes"].is_null());

    let out = lowbit(&[
        "bench",
        "--synthetic",
        "llama-1b",
        "--quant",
        "q4,output=q8",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("takes one format"),
        "{}",
        stderr(&out)
    );
    let out = lowbit(&["bench", "--gen-tokens", "1"]);
    assert!(
        stderr(&out).contains("--synthetic llama-1b|llama-8b"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn perplexity_compares_with_a_saved_kl_base_in_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model_with_tokenizer(dir.path());
    let text = dir.path().join("text.txt");
    std::fs::write(
        &text,
        "the quick brown fox jumps over the lazy dog. ".repeat(20),
    )
    .unwrap();
    let base = dir.path().join("base.bin");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "perplexity",
            "--model",
            path.to_str().unwrap(),
            "--text",
            text.to_str().unwrap(),
            "--ctx",
            "64",
        ];
        args.extend_from_slice(extra);
        let out = lowbit(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["--quant", "f32", "--save-kl-base", base.to_str().unwrap()]);
    let same = run(&["--quant", "f32", "--kl-base", base.to_str().unwrap()]);
    assert!(
        same.contains("mean KL = 0.000000, top-1 agreement = 100.00%"),
        "{same}"
    );
    let q4 = run(&[
        "--quant",
        "q4g32",
        "--kl-base",
        base.to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&q4).unwrap();
    assert!(v["kl"]["mean_kl"].as_f64().unwrap() > 0.0, "{q4}");
    assert!(v["kl"]["positions"].as_u64().unwrap() > 0);
}
