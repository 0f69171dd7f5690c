//! Checks shared by the architecture tests: loading a tiny model's files on a backend, and
//! comparing every path (GGUF on the CPU, in pieces, a Hugging Face folder, the GPU in f32
//! and as stored) with the float64 forward.

use super::rel_err;
use super::tiny_model::{all_logits, flat, TinyModel};
use lowbit::model::{Llama, ModelSource, QuantPolicy};
use lowbit_gpu::cpu::CpuBackend;
use lowbit_gpu::wgpu::device::AdapterChoice;
use lowbit_gpu::wgpu::{WgpuBackend, WgpuOptions};
use lowbit_gpu::Backend;
use std::path::Path;
use std::sync::Arc;

/// f32 activations and accumulation against a float64 oracle over a tiny model.
pub const LOGITS_REL_TOL: f64 = 1e-4;
/// The wgpu backend's int8 activations on layer 0's quantized tensors (measured 0.006).
pub const GPU_REL_TOL: f64 = 2e-2;

pub fn cpu() -> Arc<dyn Backend> {
    Arc::new(CpuBackend::new())
}

/// The wgpu backend (lavapipe in CI).
pub fn gpu() -> Arc<dyn Backend> {
    Arc::new(
        WgpuBackend::new(AdapterChoice::Any, WgpuOptions::default()).unwrap_or_else(|e| {
            panic!("needs a Vulkan adapter (apt-get install mesa-vulkan-drivers): {e}")
        }),
    )
}

/// The model at `path` on `backend` with the quantization policy `quant`.
pub fn load(path: &Path, backend: Arc<dyn Backend>, quant: &str) -> Llama {
    let source = ModelSource::open(path).unwrap();
    Llama::load(&source, backend, &QuantPolicy::parse(quant, None).unwrap()).unwrap()
}

/// Logits of every position of `tokens` fed in pieces of `pieces` tokens, one step each.
pub fn chunked_logits(model: &Llama, tokens: &[u32], pieces: &[usize]) -> Vec<f32> {
    let mut kv = lowbit::engine::solo::SoloKv::new(model, 1, tokens.len()).unwrap();
    let (mut at, mut out) = (0, Vec::new());
    for &n in pieces {
        let seq = lowbit::model::BatchSeq {
            tokens: &tokens[at..at + n],
            pos_start: at,
            blocks: &kv.tables[0],
            window_blocks: &[],
            logits: 0..n,
        };
        out.extend(model.forward(&[seq], &mut kv.pool).unwrap().data);
        at += n;
    }
    assert_eq!(at, tokens.len());
    out
}

/// `model` against its float64 forward on every path: its GGUF file on the CPU in f32 (and
/// fed in `pieces`, the same bits as one prefill), the GGUF file on `gpu` in f32 and as
/// stored, its Hugging Face folder (two shards) on the CPU.
pub fn matches_reference_on_every_path(
    model: &TinyModel,
    tokens: &[u32],
    pieces: &[usize],
    gpu: &Arc<dyn Backend>,
    label: &str,
) {
    matches_reference_from_gguf(model, tokens, pieces, gpu, GPU_REL_TOL, label);
    let want = flat(model.reference_logits(tokens));
    let dir = tempfile::tempdir().unwrap();
    model.write_hf_folder(&dir.path().join("hf"), 2);
    let got = all_logits(&load(&dir.path().join("hf"), cpu(), "f32"), tokens);
    let e = rel_err(&got, &want);
    assert!(e < LOGITS_REL_TOL, "{label} hf folder: {e}");
}

/// [`matches_reference_on_every_path`] but the Hugging Face folder (gpt-oss: GGUF only);
/// `stored_tol` bounds the GPU's error with the file's formats (int8 activations).
pub fn matches_reference_from_gguf(
    model: &TinyModel,
    tokens: &[u32],
    pieces: &[usize],
    gpu: &Arc<dyn Backend>,
    stored_tol: f64,
    label: &str,
) {
    let want = flat(model.reference_logits(tokens));
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    std::fs::write(&gguf, model.gguf_bytes()).unwrap();
    let on_cpu = load(&gguf, cpu(), "f32");
    let got = all_logits(&on_cpu, tokens);
    let e = rel_err(&got, &want);
    assert!(e < LOGITS_REL_TOL, "{label} cpu: {e}");
    let in_pieces = chunked_logits(&on_cpu, tokens, pieces);
    assert_eq!(got, in_pieces, "{label}: one prefill and pieces differ");

    let got = all_logits(&load(&gguf, gpu.clone(), "f32"), tokens);
    let e = rel_err(&got, &want);
    assert!(e < LOGITS_REL_TOL, "{label} gpu f32: {e}");
    let source = ModelSource::open(&gguf).unwrap();
    let stored = Llama::load(&source, gpu.clone(), &QuantPolicy::as_stored()).unwrap();
    let e = rel_err(&all_logits(&stored, tokens), &want);
    assert!(e < stored_tol, "{label} gpu as stored: {e}");
}
