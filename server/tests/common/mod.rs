//! Helpers shared by lowbit's integration tests.
#![allow(dead_code)]

pub mod app;
pub mod tiny_arch;
pub mod tiny_checks;
pub mod tiny_encoding;
pub mod tiny_gpt_oss;
pub mod tiny_granite;
pub mod tiny_model;
pub mod tiny_moe;
pub mod tiny_olmo;
pub mod tiny_phi;
pub mod tiny_reference;
pub mod tools;

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs the `lowbit` binary built for these tests.
pub fn lowbit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .args(args)
        .output()
        .unwrap()
}

/// A run's standard error, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The default model, fetched by `scripts/fetch-model.sh` (the test script runs it first).
pub fn smollm2_path() -> PathBuf {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-model.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// Adds a tiny byte-level BPE vocabulary (`<s>`, `</s>`, printable ASCII, `Ġ`, `hi`, padding
/// up to `vocab`) to a GGUF file, so that tokenizer-needing commands work on tiny models.
pub fn with_tokenizer(gguf: &[u8], vocab: usize) -> Vec<u8> {
    with_tokenizer_and_controls(gguf, vocab, &[])
}

/// The GGUF file `gguf` with metadata `key` set to `value` (added or replaced).
pub fn with_meta(gguf: &[u8], key: &str, value: lowbit::model::gguf::MetaValue) -> Vec<u8> {
    rewrite_meta(gguf, key, Some(value))
}

/// The GGUF file `gguf` without metadata key `key`.
pub fn without_meta(gguf: &[u8], key: &str) -> Vec<u8> {
    rewrite_meta(gguf, key, None)
}

fn rewrite_meta(gguf: &[u8], key: &str, value: Option<lowbit::model::gguf::MetaValue>) -> Vec<u8> {
    use lowbit::model::gguf::{GgufFile, GgufWriter};
    let base = GgufFile::from_bytes(std::path::Path::new("t.gguf"), gguf.to_vec()).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in base.metadata().iter().filter(|(k, _)| k.as_str() != key) {
        w.meta(k, v.clone());
    }
    if let Some(value) = value {
        w.meta(key, value);
    }
    for t in base.tensors() {
        let raw = base.raw_tensor(t).unwrap();
        w.tensor(&t.name, &t.dims, t.dtype, raw.data.to_vec());
    }
    w.to_bytes()
}

/// [`with_tokenizer`] whose last ids are the control tokens `controls` (FIM tokens, …).
pub fn with_tokenizer_and_controls(gguf: &[u8], vocab: usize, controls: &[&str]) -> Vec<u8> {
    use lowbit::model::gguf::{GgufFile, GgufWriter, MetaValue};
    let base = GgufFile::from_bytes(std::path::Path::new("t.gguf"), gguf.to_vec()).unwrap();
    let mut tokens: Vec<String> = vec!["<s>".into(), "</s>".into()];
    tokens.extend((33u8..=126).map(|b| (b as char).to_string()));
    tokens.push("Ġ".into());
    tokens.push("hi".into());
    while tokens.len() < vocab - controls.len() {
        tokens.push(format!("<extra{}>", tokens.len()));
    }
    tokens.extend(controls.iter().map(|c| c.to_string()));
    assert_eq!(
        tokens.len(),
        vocab,
        "a vocabulary of {vocab} has no room for {controls:?}"
    );
    let first_control = vocab - controls.len();
    let types: Vec<MetaValue> = (0..tokens.len())
        .map(|i| MetaValue::I32(if i < 2 || i >= first_control { 3 } else { 1 }))
        .collect();
    let mut w = GgufWriter::new();
    for (k, v) in base.metadata() {
        w.meta(k, v.clone());
    }
    w.meta("tokenizer.ggml.model", MetaValue::String("gpt2".into()))
        .meta("tokenizer.ggml.pre", MetaValue::String("default".into()))
        .meta(
            "tokenizer.ggml.tokens",
            MetaValue::Array(tokens.into_iter().map(MetaValue::String).collect()),
        )
        .meta("tokenizer.ggml.token_type", MetaValue::Array(types))
        .meta(
            "tokenizer.ggml.merges",
            MetaValue::Array(vec![MetaValue::String("h i".into())]),
        )
        .meta("tokenizer.ggml.bos_token_id", MetaValue::U32(0))
        .meta("tokenizer.ggml.eos_token_id", MetaValue::U32(1))
        .meta("tokenizer.ggml.add_bos_token", MetaValue::Bool(true));
    for t in base.tensors() {
        let raw = base.raw_tensor(t).unwrap();
        w.tensor(&t.name, &t.dims, t.dtype, raw.data.to_vec());
    }
    w.to_bytes()
}
