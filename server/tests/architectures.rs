//! Llama's relatives: Qwen2 (Q/K/V biases) and Qwen3 (per-head Q/K norms, heads wider than
//! `hidden / heads`), as tiny random models written by the test. Each must match the naive
//! float64 forward of `common::tiny_model` from GGUF and from a Hugging Face folder, on the CPU
//! and the wgpu backend; and the GGUF files must give llama.cpp's own logits
//! (`data/llama_cpp_logits.json`, made by `data/llama_cpp_logits.py` from the files the ignored
//! test `write_llama_cpp_fixture_models` writes), so that lowbit reads these architectures as
//! llama.cpp does, not only as this test's reference does.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use common::rel_err;
use common::tiny_model::{all_logits, flat, TinyArch, TinyConfig, TinyModel};
use lowbit::model::{Llama, ModelSource, QuantPolicy};
use lowbit_gpu::cpu::CpuBackend;
use lowbit_gpu::wgpu::device::AdapterChoice;
use lowbit_gpu::wgpu::{WgpuBackend, WgpuOptions};
use lowbit_gpu::Backend;
use std::path::Path;
use std::sync::Arc;

/// f32 activations and accumulation against a float64 oracle over a 2-layer model.
const LOGITS_REL_TOL: f64 = 1e-4;
/// The same against llama.cpp's f32 CPU path (its own f32 sums, f32 KV cache): measured
/// 1.6e-7 for each of the three.
const LLAMA_CPP_REL_TOL: f64 = 1e-5;
/// The wgpu backend's int8 activations on layer 0's quantized tensors (measured 0.006).
const GPU_REL_TOL: f64 = 2e-2;

const TOKENS: [u32; 11] = [5, 17, 99, 0, 42, 42, 7, 63, 1, 88, 30];

/// The fixture models: architecture and seed (F32 tensors: llama.cpp computes them in f32,
/// so its logits are a tight reference).
const LLAMA_CPP_MODELS: [(TinyArch, u64); 3] = [
    (TinyArch::Llama, 21),
    (TinyArch::Qwen2, 22),
    (TinyArch::Qwen3, 23),
];

fn tiny(arch: TinyArch, seed: u64, tied: bool, quantized: bool) -> TinyModel {
    let cfg = TinyConfig {
        arch,
        tied,
        ..TinyConfig::default()
    };
    TinyModel::random(cfg, seed, quantized)
}

fn load(path: &Path, backend: Arc<dyn Backend>, quant: &str) -> Llama {
    let source = ModelSource::open(path).unwrap();
    Llama::load(&source, backend, &QuantPolicy::parse(quant, None).unwrap()).unwrap()
}

fn cpu() -> Arc<dyn Backend> {
    Arc::new(CpuBackend::new())
}

#[test]
fn qwen_gguf_and_hf_folders_match_float64_reference_on_the_cpu() {
    for (arch, seed) in [(TinyArch::Qwen2, 1), (TinyArch::Qwen3, 2)] {
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
fn qwen_models_match_float64_reference_on_the_gpu() {
    let gpu: Arc<dyn Backend> = Arc::new(
        WgpuBackend::new(AdapterChoice::Any, WgpuOptions::default()).unwrap_or_else(|e| {
            panic!("needs a Vulkan adapter (apt-get install mesa-vulkan-drivers): {e}")
        }),
    );
    for (arch, seed) in [(TinyArch::Qwen2, 3), (TinyArch::Qwen3, 4)] {
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

/// A file of these architectures without one of their extra tensors is refused, naming it.
#[test]
fn a_missing_bias_or_head_norm_is_named() {
    for (arch, missing) in [
        (TinyArch::Qwen2, "blk.1.attn_v.bias"),
        (TinyArch::Qwen3, "blk.0.attn_k_norm.weight"),
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
/// activations), so tied.
fn fixture_model(arch: TinyArch, seed: u64) -> TinyModel {
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
        let e = rel_err(&got, &want);
        assert!(e < LLAMA_CPP_REL_TOL, "{arch:?} against llama.cpp: {e}");
        // The float64 reference reads the weights as llama.cpp does, too.
        let reference: Vec<f32> = flat(model.reference_logits(&fixture.tokens))
            .iter()
            .map(|&v| v as f32)
            .collect();
        let e = rel_err(&reference, &want);
        assert!(
            e < LLAMA_CPP_REL_TOL,
            "{arch:?} reference against llama.cpp: {e}"
        );
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
