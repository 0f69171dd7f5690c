//! A tiny random Llama, written by the test as GGUF (llama.cpp's Q/K permutation, some
//! quantized tensors) and as Hugging Face folders: lowbit's logits must equal a naive float64
//! forward within `LOGITS_REL_TOL`, whatever the file, the batch layout or the cache state.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use common::rel_err;
use common::tiny_model::{all_logits, flat, TinyConfig, TinyModel};
use lowbit::engine::solo::SoloKv;
use lowbit::model::{BatchSeq, Llama, ModelSource, QuantPolicy};
use lowbit_gpu::cpu::CpuBackend;
use std::sync::Arc;

/// f32 activations and accumulation against a float64 oracle over a 2-layer model.
const LOGITS_REL_TOL: f64 = 1e-4;

const TOKENS: [u32; 11] = [5, 17, 99, 0, 42, 42, 7, 63, 1, 88, 30];

fn load(path: &std::path::Path) -> Llama {
    let source = ModelSource::open(path).unwrap();
    Llama::load(
        &source,
        Arc::new(CpuBackend::new()),
        &QuantPolicy::parse("f32", None).unwrap(),
    )
    .unwrap()
}

#[test]
fn gguf_with_permuted_qk_and_quantized_tensors_matches_float64_reference() {
    let tiny = TinyModel::random(TinyConfig::default(), 1, true);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, tiny.gguf_bytes()).unwrap();
    let model = load(&path);
    let got = all_logits(&model, &TOKENS);
    let want = flat(tiny.reference_logits(&TOKENS));
    let e = rel_err(&got, &want);
    assert!(e < LOGITS_REL_TOL, "relative error {e}");
}

#[test]
fn hf_folder_single_and_sharded_match_float64_reference() {
    let cfg = TinyConfig {
        tied: true,
        ..TinyConfig::default()
    };
    let tiny = TinyModel::random(cfg, 2, false);
    let want = flat(tiny.reference_logits(&TOKENS));
    for shards in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        tiny.write_hf_folder(dir.path(), shards);
        let got = all_logits(&load(dir.path()), &TOKENS);
        let e = rel_err(&got, &want);
        assert!(e < LOGITS_REL_TOL, "{shards} shard(s): relative error {e}");
    }
}

#[test]
fn gguf_and_hf_copies_of_one_model_agree() {
    let tiny = TinyModel::random(TinyConfig::default(), 3, false);
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("m.gguf");
    std::fs::write(&gguf, tiny.gguf_bytes()).unwrap();
    tiny.write_hf_folder(&dir.path().join("hf"), 1);
    let a = all_logits(&load(&gguf), &TOKENS);
    let b: Vec<f64> = all_logits(&load(&dir.path().join("hf")), &TOKENS)
        .iter()
        .map(|&v| v as f64)
        .collect();
    assert!(rel_err(&a, &b) < LOGITS_REL_TOL);
}

#[test]
fn incremental_decode_and_ragged_batches_equal_one_prefill() {
    let tiny = TinyModel::random(TinyConfig::default(), 4, true);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, tiny.gguf_bytes()).unwrap();
    let model = load(&path);
    let vocab = tiny.cfg.vocab;
    let full = all_logits(&model, &TOKENS);
    let want: Vec<f64> = full.iter().map(|&v| v as f64).collect();

    // Token by token through the pool: every row takes the same numeric path as in the
    // prefill, so the logits are identical, not merely close.
    let mut kv = SoloKv::new(&model, 2, TOKENS.len()).unwrap();
    let mut stepwise = Vec::new();
    for (pos, t) in TOKENS.iter().enumerate() {
        let seq = BatchSeq {
            tokens: std::slice::from_ref(t),
            pos_start: pos,
            blocks: &kv.tables[0],
            window_blocks: &[],
            logits: 0..1,
        };
        stepwise.extend(model.forward(&[seq], &mut kv.pool).unwrap().data);
    }
    assert!(rel_err(&stepwise, &want) < LOGITS_REL_TOL);
    assert_eq!(stepwise, full);

    // One ragged batch: sequence A (table 0) prefills 6 tokens, sequence B (table 1, already
    // holding the first 7) decodes its 8th; then both continue together.
    let (a, b) = (kv.tables[0].clone(), kv.tables[1].clone());
    let seq = BatchSeq {
        tokens: &TOKENS[..7],
        pos_start: 0,
        blocks: &b,
        window_blocks: &[],
        logits: 0..0,
    };
    model.forward(&[seq], &mut kv.pool).unwrap();
    let batch = [
        BatchSeq {
            tokens: &TOKENS[..6],
            pos_start: 0,
            blocks: &a,
            window_blocks: &[],
            logits: 0..6,
        },
        BatchSeq {
            tokens: &TOKENS[7..8],
            pos_start: 7,
            blocks: &b,
            window_blocks: &[],
            logits: 0..1,
        },
    ];
    let out = model.forward(&batch, &mut kv.pool).unwrap();
    assert_eq!(out.rows(), 7);
    assert_eq!(&out.data[..6 * vocab], &full[..6 * vocab]);
    assert_eq!(&out.data[6 * vocab..], &full[7 * vocab..8 * vocab]);
    let batch = [
        BatchSeq {
            tokens: &TOKENS[6..7],
            pos_start: 6,
            blocks: &a,
            window_blocks: &[],
            logits: 0..1,
        },
        BatchSeq {
            tokens: &TOKENS[8..11],
            pos_start: 8,
            blocks: &b,
            window_blocks: &[],
            logits: 2..3,
        },
    ];
    let out = model.forward(&batch, &mut kv.pool).unwrap();
    assert_eq!(out.row(0), &full[6 * vocab..7 * vocab]);
    assert_eq!(out.row(1), &full[10 * vocab..11 * vocab]);
}

#[test]
fn out_of_vocabulary_token_is_an_error_not_a_panic() {
    let tiny = TinyModel::random(TinyConfig::default(), 5, false);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, tiny.gguf_bytes()).unwrap();
    let model = load(&path);
    let mut kv = SoloKv::new(&model, 1, 2).unwrap();
    let seq = BatchSeq {
        tokens: &[3, 100],
        pos_start: 0,
        blocks: &kv.tables[0],
        window_blocks: &[],
        logits: 0..2,
    };
    let err = model.forward(&[seq], &mut kv.pool).unwrap_err().to_string();
    assert!(err.contains("100"), "{err}");
}
