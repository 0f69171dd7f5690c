//! gpt-oss as a tiny random GGUF model (`common/tiny_gpt_oss.rs`): attention sinks, biased
//! Q/K/V and output projections, every other layer in a sliding window, YaRN, and a mixture
//! of experts stored in MXFP4 with biases and the clamped SwiGLU — against the float64 forward
//! on the CPU and the GPU; what lowbit reads from the file; bad files named. llama.cpp's
//! logits for the same file: `architectures.rs`.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use common::tiny_checks::{cpu, gpu, matches_reference_from_gguf};
use common::tiny_model::{all_logits, flat};
use common::tiny_model::{TinyArch, TinyConfig, TinyModel};
use common::tiny_moe::{TINY_EXPERTS, TINY_EXPERTS_USED};
use lowbit::model::config::Activation;
use lowbit::model::{Llama, ModelSource, QuantPolicy};
use std::path::{Path, PathBuf};

const TOKENS: [u32; 11] = [5, 17, 99, 0, 42, 42, 7, 63, 1, 88, 30];

fn tiny(seed: u64) -> TinyModel {
    let cfg = TinyConfig {
        arch: TinyArch::GptOss,
        ffn: 32,
        layers: 3,
        ..TinyConfig::default()
    };
    TinyModel::random(cfg, seed, false)
}

fn write_gguf(dir: &Path, model: &TinyModel) -> PathBuf {
    let path = dir.join("tiny.gguf");
    std::fs::write(&path, model.gguf_bytes()).unwrap();
    path
}

/// Every expert as stored (MXFP4 as Q8) with int8 activations, against float64: measured
/// 0.024 on both backends — the tiny experts' gates and ups are made wide, so that the clamp
/// bites, and every layer is quantized (the other tiny models quantize layer 0 only).
const STORED_REL_TOL: f64 = 4e-2;
/// The GPU as stored against the CPU as stored: the same integer products (measured 6.9e-7).
const BACKENDS_REL_TOL: f64 = 1e-5;

/// GGUF on the CPU (whole and in pieces that cross the window's edge), on the GPU in f32 and
/// as stored; and as stored, the GPU's logits the CPU's.
#[test]
fn gpt_oss_matches_float64_reference_on_the_cpu_and_the_gpu() {
    let model = tiny(60);
    let gpu = gpu();
    let pieces = [3, 1, 5, 1, 1];
    matches_reference_from_gguf(&model, &TOKENS, &pieces, &gpu, STORED_REL_TOL, "gpt-oss");
    let dir = tempfile::tempdir().unwrap();
    let source = ModelSource::open(&write_gguf(dir.path(), &model)).unwrap();
    let stored = |backend| Llama::load(&source, backend, &QuantPolicy::as_stored()).unwrap();
    let on_cpu: Vec<f64> = all_logits(&stored(cpu()), &TOKENS)
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    let e = common::rel_err(&all_logits(&stored(gpu), &TOKENS), &on_cpu);
    assert!(e < BACKENDS_REL_TOL, "gpu against cpu, as stored: {e}");
    let want = flat(model.reference_logits(&TOKENS));
    assert!(common::rel_err(&all_logits(&stored(cpu()), &TOKENS), &want) < STORED_REL_TOL);
}

/// What lowbit reads from a gpt-oss file: llama.cpp's layout and defaults (even layers slide,
/// half-split RoPE with YaRN on every layer, the renormalized softmax of the chosen experts).
#[test]
fn the_config_is_read_as_llama_cpp_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(61);
    let c = ModelSource::open(&write_gguf(dir.path(), &model))
        .unwrap()
        .config()
        .unwrap();
    assert!(c.gpt_oss && c.attention_bias);
    assert_eq!(c.gemma.activation, Activation::SwigluOai);
    assert_eq!(c.gemma.sliding_layers, [true, false, true]);
    assert_eq!(c.gemma.sliding_window, common::tiny_model::TINY_WINDOW);
    assert_eq!(c.gemma.sliding_rope_theta, None);
    assert_eq!(c.rope_style, lowbit_gpu::RopeStyle::HalfSplit);
    assert!(matches!(
        c.rope_scaling,
        lowbit::model::config::RopeScaling::Yarn { .. }
    ));
    let moe = c.moe.unwrap();
    assert_eq!(
        (moe.experts, moe.experts_used, moe.expert_ffn_size),
        (TINY_EXPERTS, TINY_EXPERTS_USED, 32)
    );
    assert!(moe.normalize);
}

/// A file without a piece gpt-oss needs is refused naming the piece and the file.
#[test]
fn bad_gpt_oss_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let exact = |name: &'static str| move |t: &str| t == name;
    type Dropped<'a> = &'a dyn Fn(&str) -> bool;
    let cases: [(Dropped<'_>, &str); 5] = [
        (&exact("blk.1.attn_sinks.weight"), "blk.1.attn_sinks.weight"),
        (&exact("blk.0.attn_output.bias"), "blk.0.attn_output.bias"),
        (
            &|t: &str| t.starts_with("blk.2.ffn_up.") && t.ends_with(".bias"),
            "blk.2.ffn_up_exps.bias",
        ),
        (&exact("blk.0.ffn_gate_inp.bias"), "blk.0.ffn_gate_inp.bias"),
        (
            &exact("blk.1.post_attention_norm.weight"),
            "blk.1.post_attention_norm.weight",
        ),
    ];
    for (dropped, named) in cases {
        let mut model = tiny(62);
        model.tensors.retain(|t| !dropped(&t.name));
        let source = ModelSource::open(&write_gguf(dir.path(), &model)).unwrap();
        let err = Llama::load(&source, cpu(), &QuantPolicy::as_stored())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(named) && err.contains("tiny.gguf"),
            "{named}: {err}"
        );
    }
    let bytes = common::without_meta(&tiny(62).gguf_bytes(), "gpt-oss.attention.sliding_window");
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, bytes).unwrap();
    let err = ModelSource::open(&path)
        .and_then(|s| s.config())
        .unwrap_err()
        .to_string();
    assert!(err.contains("gpt-oss.attention.sliding_window"), "{err}");
}
