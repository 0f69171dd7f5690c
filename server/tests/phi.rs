//! Phi-3 / Phi-4 (`phi3`): Llama's block with Q/K/V and gate/up fused in the files, partial
//! rotary (Phi-4-mini rotates 96 of 128 head dimensions) and LongRoPE (Phi-3-128k, Phi-3.5,
//! Phi-4-mini), as a tiny random model written by the test (`common/tiny_phi.rs`). It must
//! match the naive float64 forward from GGUF and a Hugging Face folder, on the CPU and the
//! wgpu backend; llama.cpp's own logits for the GGUF file are checked with the other
//! architectures' (`architectures.rs`).
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use common::rel_err;
use common::tiny_checks::{cpu, gpu, load, matches_reference_on_every_path, LOGITS_REL_TOL};
use common::tiny_model::{all_logits, flat, TinyArch, TinyConfig, TinyModel};
use common::tiny_phi::{phi3_attention_factor, PHI3_ORIGINAL_CONTEXT, PHI3_ROTARY_DIM};
use lowbit::model::config::RopeScaling;
use lowbit::model::ModelSource;
const TOKENS: [u32; 11] = [5, 17, 99, 0, 42, 42, 7, 63, 1, 88, 30];

fn tiny_phi(seed: u64, tied: bool, quantized: bool) -> TinyModel {
    let cfg = TinyConfig {
        arch: TinyArch::Phi3,
        tied,
        ..TinyConfig::default()
    };
    TinyModel::random(cfg, seed, quantized)
}

/// GGUF (layer 0 quantized, fused) and Hugging Face folders (fused `qkv_proj`, `gate_up_proj`)
/// against the float64 reference on every path (`tiny_checks.rs`).
#[test]
fn phi3_files_match_float64_reference_on_the_cpu_and_the_gpu() {
    let gpu = gpu();
    for (seed, tied) in [(40, false), (41, true)] {
        let model = tiny_phi(seed, tied, true);
        matches_reference_on_every_path(&model, &TOKENS, &[4, 1, 6], &gpu, &format!("tied {tied}"));
    }
}

/// Served within the original context, LongRoPE takes its short factors (on both backends'
/// shared path: the model's RoPE); the long ones otherwise — and the two differ, so the
/// choice shows.
#[test]
fn long_rope_follows_the_served_context() {
    let model = tiny_phi(42, true, false);
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    std::fs::write(&gguf, model.gguf_bytes()).unwrap();
    let mut llama = load(&gguf, cpu(), "f32");
    let long = all_logits(&llama, &TOKENS);
    llama.set_max_positions(PHI3_ORIGINAL_CONTEXT);
    let short = all_logits(&llama, &TOKENS);
    let want_short = flat(model.reference_logits_within(&TOKENS, PHI3_ORIGINAL_CONTEXT));
    let e = rel_err(&short, &want_short);
    assert!(e < LOGITS_REL_TOL, "short factors: {e}");
    let want_long = flat(model.reference_logits(&TOKENS));
    assert!(rel_err(&long, &want_long) < LOGITS_REL_TOL);
    assert!(
        rel_err(&short, &want_long) > 100.0 * LOGITS_REL_TOL,
        "the factor lists should matter"
    );
}

/// What a Phi file says, read alike from GGUF and Hugging Face: 12 rotated dimensions, the
/// LongRoPE lists, original context and attention factor; no window (Phi-4's 0, a null);
/// Phi-3-mini's window on every layer; the fused parts are tensors of their own.
#[test]
fn phi3_configs_and_fused_parts_read_alike_from_both_formats() {
    let model = tiny_phi(43, false, false);
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    std::fs::write(&gguf, model.gguf_bytes()).unwrap();
    let hf = dir.path().join("hf");
    model.write_hf_folder(&hf, 1);
    for path in [&gguf, &hf] {
        let source = ModelSource::open(path).unwrap();
        let c = source.config().unwrap();
        assert_eq!(c.rotary_dim, Some(PHI3_ROTARY_DIM), "{path:?}");
        let RopeScaling::LongRope {
            short_factor,
            long_factor,
            original_max_position,
            attention_factor,
        } = &c.rope_scaling
        else {
            panic!("{path:?}: {:?}", c.rope_scaling)
        };
        assert_eq!((short_factor.len(), long_factor.len()), (6, 6));
        assert_eq!(*original_max_position, PHI3_ORIGINAL_CONTEXT);
        assert!((attention_factor - phi3_attention_factor()).abs() < 1e-6);
        assert_eq!(c.gemma.sliding_window, 0, "{path:?}");
        for (name, rows) in [
            ("blk.1.attn_q.weight", 64),
            ("blk.1.attn_k.weight", 32),
            ("blk.1.attn_v.weight", 32),
            ("blk.1.ffn_gate.weight", 96),
            ("blk.1.ffn_up.weight", 96),
        ] {
            assert!(source.has_tensor(name), "{path:?} {name}");
            assert_eq!(source.tensor_shape(name).unwrap(), (rows, 64), "{name}");
            let values = source.tensor(name).unwrap().to_f32();
            assert_eq!(values, model.get(name).values, "{path:?} {name}");
            // Read as a vector too (GGUF's fused `ffn_up` shares the part's name).
            assert_eq!(source.vector(name).unwrap(), values, "{path:?} {name}");
        }
    }
    // Phi-3-mini-4k's 2,047: every layer slides (Hugging Face does; llama.cpp disables it).
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    config["sliding_window"] = 4.into();
    std::fs::write(hf.join("config.json"), config.to_string()).unwrap();
    let c = ModelSource::open(&hf).unwrap().config().unwrap();
    assert_eq!(c.gemma.sliding_window, 4);
    assert_eq!(c.gemma.sliding_layers, vec![true, true]);
    assert!(c.layer_attention(1).window == 4);
}

/// Factor lists of the wrong length name their field (a missing fused tensor is named in
/// `architectures.rs`).
#[test]
fn bad_factor_lists_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    tiny_phi(44, true, false).write_hf_folder(&hf, 1);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    config["rope_scaling"]["long_factor"] = serde_json::json!([1.0, 2.0]);
    std::fs::write(hf.join("config.json"), config.to_string()).unwrap();
    let err = ModelSource::open(&hf)
        .unwrap()
        .config()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("long_factor") && err.contains("config.json"),
        "{err}"
    );
}
