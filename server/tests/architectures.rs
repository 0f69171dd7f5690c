//! Llama's relatives: Qwen2 (Q/K/V biases), Qwen3 (per-head Q/K norms, heads wider than
//! `hidden / heads`) and Gemma 1/2/3 (GeGLU, scaled embeddings, post-norms, soft caps, sliding
//! windows), Granite (scaled embeddings, scores, residual branches and logits) and SmolLM3
//! (every fourth layer without RoPE), as tiny random models written by the test (Phi-3's own
//! checks: `phi.rs`; the mixtures of experts': `moe.rs`). Each must match the naive float64
//! forward of `common::tiny_reference` from GGUF (and, Qwen, from a Hugging Face folder), on
//! the CPU and the wgpu backend; and the GGUF files must give llama.cpp's own logits
//! (`data/llama_cpp_logits.json`, made by `data/llama_cpp_logits.py` from the files the ignored
//! test `write_llama_cpp_fixture_models` writes), so that lowbit reads these architectures as
//! llama.cpp does, not only as this test's reference does.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use common::rel_err;
use common::tiny_checks::{
    cpu, gpu, load, matches_reference_on_every_path, GPU_REL_TOL, LOGITS_REL_TOL,
};
use common::tiny_model::{all_logits, flat, TinyArch, TinyConfig, TinyModel};
use lowbit::model::{Llama, ModelSource, QuantPolicy};
use std::path::Path;

/// The same against llama.cpp's f32 CPU path (its own f32 sums, f32 KV cache): measured
/// 1.6e-7 for Llama, Qwen2 and Qwen3, 2.0e-7 for Phi-3 (fused projections, 12 of 16
/// dimensions rotated, LongRoPE's long factors and attention factor), 1.1e-7 for Granite,
/// 1.3e-7 to 2.3e-7 for the mixtures of experts (Mixtral, Qwen2-MoE, Qwen3-MoE with YaRN,
/// Granite MoE Shared, OLMoE), 5.5e-7 for OLMo 3.
const LLAMA_CPP_REL_TOL: f64 = 1e-5;
/// Gemma against llama.cpp: its CPU GELU rounds each input to f16 and reads an f16 table
/// (ggml's `GGML_GELU_FP16`), where lowbit and the float64 reference compute GELU's tanh form
/// in full; measured 9.0e-6 (Gemma), 1.0e-4 (Gemma 2), 1.3e-4 (Gemma 3), where a wrong
/// window or sliding RoPE base gives 2e-2 to 2e-1.
const LLAMA_CPP_GEMMA_REL_TOL: f64 = 1e-3;

const TOKENS: [u32; 11] = [5, 17, 99, 0, 42, 42, 7, 63, 1, 88, 30];

/// The fixture models: architecture and seed (F32 tensors: llama.cpp computes them in f32,
/// so its logits are a tight reference).
const LLAMA_CPP_MODELS: [(TinyArch, u64); 16] = [
    (TinyArch::Llama, 21),
    (TinyArch::Qwen2, 22),
    (TinyArch::Qwen3, 23),
    (TinyArch::Gemma, 24),
    (TinyArch::Gemma2, 25),
    (TinyArch::Gemma3, 26),
    (TinyArch::Phi3, 27),
    (TinyArch::Granite, 28),
    (TinyArch::SmolLm3, 29),
    (TinyArch::Mixtral, 50),
    (TinyArch::Qwen2Moe, 51),
    (TinyArch::Qwen3Moe, 52),
    (TinyArch::GraniteMoe, 53),
    (TinyArch::Olmo3, 55),
    (TinyArch::Olmoe, 56),
    (TinyArch::GptOss, 57),
];

const GEMMAS: [TinyArch; 3] = [TinyArch::Gemma, TinyArch::Gemma2, TinyArch::Gemma3];

/// A tiny model; Gemma 3's has six layers (five sliding, one global) and a global RoPE base
/// of 1,000,000, so that its sliding layers' own base (10,000) shows.
fn tiny(arch: TinyArch, seed: u64, tied: bool, quantized: bool) -> TinyModel {
    let mut cfg = TinyConfig {
        arch,
        tied,
        ..TinyConfig::default()
    };
    if arch == TinyArch::Gemma3 {
        cfg.layers = 6;
        cfg.rope_theta = 1_000_000.0;
    }
    if arch == TinyArch::Olmoe {
        // llama.cpp's OLMoE norms keys over the hidden width.
        cfg.kv_heads = cfg.heads;
    }
    if arch == TinyArch::GptOss {
        // Sliding, global, sliding.
        cfg.layers = 3;
    }
    if matches!(arch, TinyArch::SmolLm3 | TinyArch::Olmo3) {
        // Layer 3 attends without RoPE (SmolLM3), globally with YaRN (OLMo 3).
        cfg.layers = 4;
    }
    TinyModel::random(cfg, seed, quantized)
}

/// Gemma 1/2/3 GGUF files (tied, as Gemma is) against the float64 reference on every path
/// (`tiny_checks.rs`): the Hugging Face folder stores norms less one and names Gemma 2/3's
/// four norms of a layer its own way; the prompt's pieces cross the sliding window's edge.
#[test]
fn gemma_gguf_files_match_float64_reference_on_the_cpu_and_the_gpu() {
    let gpu = gpu();
    for (i, arch) in GEMMAS.into_iter().enumerate() {
        let model = tiny(arch, 30 + i as u64, true, true);
        matches_reference_on_every_path(
            &model,
            &TOKENS,
            &[3, 1, 5, 1, 1],
            &gpu,
            &format!("{arch:?}"),
        );
    }
}

/// OLMo 3 (norms after the sub-blocks only, Q/K norms over whole projections, three sliding
/// layers of four with plain RoPE, YaRN on the fourth) against the float64 reference on every
/// path; the prompt's pieces cross the window's edge.
#[test]
fn olmo3_matches_float64_reference_on_the_cpu_and_the_gpu() {
    let model = tiny(TinyArch::Olmo3, 33, false, true);
    matches_reference_on_every_path(&model, &TOKENS, &[3, 1, 5, 1, 1], &gpu(), "Olmo3");
}

/// What each Gemma reads from its file: the window, the soft caps and the sliding layers
/// (llama.cpp's defaults where the file names none), the RoPE of the sliding layers.
#[test]
fn gemma_configs_read_as_llama_cpp_reads_them() {
    let config = |arch| {
        let dir = tempfile::tempdir().unwrap();
        let gguf = dir.path().join("tiny.gguf");
        std::fs::write(&gguf, tiny(arch, 7, true, false).gguf_bytes()).unwrap();
        ModelSource::open(&gguf).unwrap().config().unwrap()
    };
    let g1 = config(TinyArch::Gemma);
    assert!(
        !g1.gemma.post_norms && g1.gemma.sliding_window == 0 && g1.gemma.final_softcap.is_none()
    );
    assert_eq!(g1.gemma.embedding_scale, Some(8.0));
    let g2 = config(TinyArch::Gemma2);
    assert_eq!(
        (
            g2.gemma.attn_softcap,
            g2.gemma.final_softcap,
            g2.gemma.sliding_window
        ),
        (Some(1.5), Some(5.0), 4)
    );
    assert_eq!(g2.gemma.sliding_layers, [true, false]);
    assert!(g2.sliding_rope().is_none());
    let g3 = config(TinyArch::Gemma3);
    assert_eq!(
        g3.gemma.sliding_layers,
        [true, true, true, true, true, false]
    );
    assert!(g3.qk_norm && g3.gemma.attn_softcap.is_none() && g3.gemma.final_softcap.is_none());
    assert_eq!(g3.layer_attention(0).window, 4);
    assert_eq!(g3.layer_attention(5).window, 0);
    assert_eq!(
        g3.sliding_rope().unwrap().inv_freq[1],
        10_000f64.powf(-2.0 / g3.head_dim as f64) as f32
    );
    assert!(g3.gemma.attention_scale.is_none());

    // The 27B models scale scores by 1/√(hidden/heads): llama.cpp tells a GGUF file by its
    // layer count (46 for Gemma 2), Hugging Face by `query_pre_attn_scalar`.
    let mut big = TinyConfig {
        arch: TinyArch::Gemma2,
        tied: true,
        ..TinyConfig::default()
    };
    big.layers = 46;
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    std::fs::write(&gguf, TinyModel::random(big, 8, false).gguf_bytes()).unwrap();
    let c = ModelSource::open(&gguf).unwrap().config().unwrap();
    let per_head = (big.hidden / big.heads) as f32;
    assert_eq!(c.gemma.attention_scale, Some(1.0 / per_head.sqrt()));
    assert_eq!(c.attention_shape().scale, 1.0 / per_head.sqrt());
    let hf = dir.path().join("hf");
    tiny(TinyArch::Gemma2, 9, true, false).write_hf_folder(&hf, 1);
    let path = hf.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["query_pre_attn_scalar"] = 144.into();
    std::fs::write(&path, json.to_string()).unwrap();
    let c = ModelSource::open(&hf).unwrap().config().unwrap();
    assert_eq!(c.attention_shape().scale, 1.0 / 12.0);
    // An explicit exact GELU is refused, naming the key.
    json["hidden_activation"] = "gelu".into();
    std::fs::write(&path, json.to_string()).unwrap();
    let err = ModelSource::open(&hf)
        .unwrap()
        .config()
        .unwrap_err()
        .to_string();
    assert!(err.contains("hidden_activation"), "{err}");
}

#[test]
fn qwen_granite_and_smollm3_gguf_and_hf_folders_match_float64_reference_on_the_cpu() {
    for (arch, seed) in [
        (TinyArch::Qwen2, 1),
        (TinyArch::Qwen3, 2),
        (TinyArch::Granite, 6),
        (TinyArch::SmolLm3, 7),
    ] {
        for tied in [false, true] {
            let model = tiny(arch, seed, tied, true);
            let want = flat(model.reference_logits(&TOKENS));
            let dir = tempfile::tempdir().unwrap();
            let gguf = dir.path().join("tiny.gguf");
            std::fs::write(&gguf, model.gguf_bytes()).unwrap();
            let got = all_logits(&load(&gguf, cpu(), "f32"), &TOKENS);
            let e = rel_err(&got, &want);
            assert!(e < LOGITS_REL_TOL, "{arch:?} tied {tied} gguf: {e}");

            model.write_hf_folder(&dir.path().join("hf"), 2);
            let got = all_logits(&load(&dir.path().join("hf"), cpu(), "f32"), &TOKENS);
            let e = rel_err(&got, &want);
            assert!(e < LOGITS_REL_TOL, "{arch:?} tied {tied} hf: {e}");
        }
    }
}

/// The same models on the wgpu backend (lavapipe in CI): with f32 weights as tight as the CPU;
/// as stored, int8 activations against Q8/Q4 tensors, so a looser bound.
#[test]
fn qwen_granite_and_smollm3_models_match_float64_reference_on_the_gpu() {
    let gpu = gpu();
    for (arch, seed) in [
        (TinyArch::Qwen2, 3),
        (TinyArch::Qwen3, 4),
        (TinyArch::Granite, 8),
        (TinyArch::SmolLm3, 9),
    ] {
        let model = tiny(arch, seed, false, true);
        let want = flat(model.reference_logits(&TOKENS));
        let dir = tempfile::tempdir().unwrap();
        let gguf = dir.path().join("tiny.gguf");
        std::fs::write(&gguf, model.gguf_bytes()).unwrap();
        let source = ModelSource::open(&gguf).unwrap();
        let stored = Llama::load(&source, gpu.clone(), &QuantPolicy::as_stored()).unwrap();
        let got = all_logits(&stored, &TOKENS);
        let e = rel_err(&got, &want);
        assert!(e < GPU_REL_TOL, "{arch:?} as stored: {e}");
        let got = all_logits(&load(&gguf, gpu.clone(), "f32"), &TOKENS);
        let e = rel_err(&got, &want);
        assert!(e < LOGITS_REL_TOL, "{arch:?} f32: {e}");
    }
}

/// A file of these architectures without one of their extra (or fused) tensors is refused,
/// naming it.
#[test]
fn a_missing_bias_or_head_norm_is_named() {
    for (arch, missing) in [
        (TinyArch::Qwen2, "blk.1.attn_v.bias"),
        (TinyArch::Qwen3, "blk.0.attn_k_norm.weight"),
        (TinyArch::Gemma2, "blk.1.post_ffw_norm.weight"),
        (TinyArch::Gemma3, "blk.4.post_attention_norm.weight"),
        (TinyArch::Gemma3, "blk.0.attn_q_norm.weight"),
        // Phi-3 without its fused Q/K/V: the part is named.
        (TinyArch::Phi3, "blk.1.attn_q.weight"),
        (TinyArch::Olmo3, "blk.2.post_ffw_norm.weight"),
    ] {
        let mut model = tiny(arch, 5, true, false);
        model.tensors.retain(|t| t.name != missing);
        let dir = tempfile::tempdir().unwrap();
        let gguf = dir.path().join("tiny.gguf");
        std::fs::write(&gguf, model.gguf_bytes()).unwrap();
        let source = ModelSource::open(&gguf).unwrap();
        let err = Llama::load(&source, cpu(), &QuantPolicy::as_stored())
            .unwrap_err()
            .to_string();
        assert!(err.contains(missing) && err.contains("tiny.gguf"), "{err}");
    }
}

/// One model's logits as llama.cpp computed them (see the module comment).
#[derive(serde::Deserialize)]
struct LlamaCppLogits {
    arch: String,
    seed: u64,
    /// FNV-1a of the GGUF file llama.cpp read: a changed tiny-model generator shows here.
    gguf_fnv1a: String,
    tokens: Vec<u32>,
    /// Every position's logits, row after row.
    logits: Vec<f32>,
}

fn fnv1a(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{h:016x}")
}

/// Every tensor F32 (an untied tiny head is Q8_0, which llama.cpp multiplies with 8-bit
/// activations), so tied; llama.cpp's Qwen2-MoE, OLMo, OLMoE and gpt-oss need their own
/// head, stored F32. gpt-oss's experts too are F32 here, though MXFP4 values (llama.cpp
/// multiplies MXFP4 with 8-bit activations: 2.3e-2 off; lowbit's MXFP4 decoding is checked
/// against gguf-py's in `gguf_quant_types.rs`).
fn fixture_model(arch: TinyArch, seed: u64) -> TinyModel {
    if matches!(
        arch,
        TinyArch::Qwen2Moe | TinyArch::Olmo3 | TinyArch::Olmoe | TinyArch::GptOss
    ) {
        let mut model = tiny(arch, seed, false, false);
        for t in model
            .tensors
            .iter_mut()
            .filter(|t| t.name == "output.weight" || t.dtype == lowbit_gpu::SourceDType::MXFP4)
        {
            t.dtype = lowbit_gpu::SourceDType::F32;
        }
        return model;
    }
    tiny(arch, seed, true, false)
}

#[test]
fn gguf_models_give_llama_cpps_logits() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/llama_cpp_logits.json");
    let fixtures: Vec<LlamaCppLogits> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(fixtures.len(), LLAMA_CPP_MODELS.len());
    for ((arch, seed), fixture) in LLAMA_CPP_MODELS.iter().zip(&fixtures) {
        assert_eq!((arch.name(), *seed), (fixture.arch.as_str(), fixture.seed));
        let model = fixture_model(*arch, *seed);
        let bytes = model.gguf_bytes();
        assert_eq!(
            fnv1a(&bytes),
            fixture.gguf_fnv1a,
            "{arch:?}: the tiny model changed since llama.cpp scored it; rerun the fixture script"
        );
        let dir = tempfile::tempdir().unwrap();
        let gguf = dir.path().join("tiny.gguf");
        std::fs::write(&gguf, &bytes).unwrap();
        let got = all_logits(&load(&gguf, cpu(), "f32"), &fixture.tokens);
        let want: Vec<f64> = fixture.logits.iter().map(|&v| f64::from(v)).collect();
        let tol = if arch.is_gemma() {
            LLAMA_CPP_GEMMA_REL_TOL
        } else {
            LLAMA_CPP_REL_TOL
        };
        let e = rel_err(&got, &want);
        assert!(e < tol, "{arch:?} against llama.cpp: {e}");
        // The float64 reference reads the weights as llama.cpp does, too.
        let reference: Vec<f32> = flat(model.reference_logits(&fixture.tokens))
            .iter()
            .map(|&v| v as f32)
            .collect();
        let e = rel_err(&reference, &want);
        assert!(e < tol, "{arch:?} reference against llama.cpp: {e}");
    }
}

/// Writes the fixture models for `data/llama_cpp_logits.py`:
/// `LOWBIT_FIXTURE_DIR=/tmp/f cargo test --release --test architectures -- --ignored`.
#[test]
#[ignore = "writes files for the fixture script; not a check"]
fn write_llama_cpp_fixture_models() {
    let dir = std::env::var("LOWBIT_FIXTURE_DIR").expect("LOWBIT_FIXTURE_DIR");
    std::fs::create_dir_all(&dir).unwrap();
    let mut index = Vec::new();
    for (arch, seed) in LLAMA_CPP_MODELS {
        let bytes = fixture_model(arch, seed).gguf_bytes();
        let file = format!("tiny-{}-{seed}.gguf", arch.name());
        std::fs::write(Path::new(&dir).join(&file), &bytes).unwrap();
        index.push(serde_json::json!({
            "arch": arch.name(),
            "seed": seed,
            "file": file,
            "gguf_fnv1a": fnv1a(&bytes),
            "tokens": TOKENS,
        }));
    }
    std::fs::write(
        Path::new(&dir).join("index.json"),
        serde_json::to_string_pretty(&index).unwrap(),
    )
    .unwrap();
}
