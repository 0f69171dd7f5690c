//! Quantization end to end: policies, in-situ loading, `lowbit quantize` files read back, and
//! bad input (unknown formats, newer file versions).
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use common::tiny_model::{TinyArch, TinyConfig, TinyModel};
use common::{lowbit, stderr};
use lowbit::engine::solo::SoloKv;
use lowbit::model::lowbit_file;
use lowbit::model::{BatchSeq, Llama, ModelSource, QuantPolicy};
use lowbit_gpu::cpu::CpuBackend;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A tiny model with a tokenizer, so that `lowbit quantize` can write a complete file.
fn tiny_gguf(dir: &Path) -> PathBuf {
    tiny_gguf_of(dir, TinyArch::Llama)
}

fn tiny_gguf_of(dir: &Path, arch: TinyArch) -> PathBuf {
    let cfg = TinyConfig {
        arch,
        hidden: 128,
        ffn: 192,
        // SmolLM3's fourth layer is its first without RoPE.
        layers: if matches!(arch, TinyArch::SmolLm3 | TinyArch::Olmo3) {
            4
        } else {
            2
        },
        ..TinyConfig::default()
    };
    let tiny = TinyModel::random(cfg, 21, true);
    let path = dir.join(format!("tiny-{}.gguf", arch.name()));
    std::fs::write(&path, common::with_tokenizer(&tiny.gguf_bytes(), cfg.vocab)).unwrap();
    path
}

/// `lowbit quantize --model gguf --out out --quant quant [extra…]`.
fn quantize(gguf: &Path, out: &Path, quant: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "quantize",
        "--model",
        gguf.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quant",
        quant,
    ];
    args.extend_from_slice(extra);
    lowbit(&args)
}

fn logits(source: &ModelSource, policy: &QuantPolicy) -> Vec<f32> {
    let model = Llama::load(source, Arc::new(CpuBackend::new()), policy).unwrap();
    let tokens = [3u32, 9, 27, 81, 43, 5];
    // Two passes: a prefill and single-token decodes.
    let mut kv = SoloKv::new(&model, 1, tokens.len()).unwrap();
    let seq = BatchSeq {
        tokens: &tokens[..4],
        pos_start: 0,
        blocks: &kv.tables[0],
        window_blocks: &[],
        logits: 0..4,
    };
    let mut out = model.forward(&[seq], &mut kv.pool).unwrap().data;
    for (i, t) in tokens[4..].iter().enumerate() {
        let seq = BatchSeq {
            tokens: std::slice::from_ref(t),
            pos_start: 4 + i,
            blocks: &kv.tables[0],
            window_blocks: &[],
            logits: 0..1,
        };
        out.extend(model.forward(&[seq], &mut kv.pool).unwrap().data);
    }
    out
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let b64: Vec<f64> = b.iter().map(|&v| v as f64).collect();
    common::rel_err(a, &b64)
}

/// Quantization error of the whole forward (weights and, in decode, int8 activations)
/// relative to the f32 model, for a 2-layer random model: measured ≈ 1% (q8), 5–9% (4-bit).
const Q8_FORWARD_REL_TOL: f64 = 0.03;
const Q4_FORWARD_REL_TOL: f64 = 0.2;

#[test]
fn quantized_files_load_back_exactly_as_in_situ_quantization() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_gguf(dir.path());
    let source = ModelSource::open(&gguf).unwrap();
    let reference = logits(&source, &QuantPolicy::parse("f32", None).unwrap());
    for spec in [
        "f32",
        "f16",
        "q8",
        "q4g64",
        "q4mg128,blk.1.*=q8",
        "q4",
        "iq4nl",
        "q8,blk.*.ffn_*=fp4",
    ] {
        let out = dir.path().join(format!(
            "{}.safetensors",
            spec.replace([',', '*', '=', '.'], "_")
        ));
        let o = quantize(&gguf, &out, spec, &[]);
        assert!(o.status.success(), "{spec}: {}", stderr(&o));
        let policy = QuantPolicy::parse(spec, None).unwrap();
        let in_situ = logits(&source, &policy);
        let file = ModelSource::open(&out).unwrap();
        let from_file = logits(&file, &QuantPolicy::as_stored());
        assert_eq!(
            from_file, in_situ,
            "{spec}: the file must hold exactly what in-situ quantization makes"
        );
        let e = rel(&from_file, &reference);
        let tol = match spec {
            "f32" => 1e-6,
            "f16" => 2e-3,
            "q8" => Q8_FORWARD_REL_TOL,
            _ => Q4_FORWARD_REL_TOL,
        };
        assert!(e < tol, "{spec}: forward differs from f32 by {e}");
        // The Lut4 formats came with version 6; files without them keep the older versions.
        let header = lowbit::model::hf::SafetensorsFile::open(&out).unwrap();
        let version = if spec.contains("fp4") || spec.contains("iq4nl") {
            "6"
        } else {
            "1"
        };
        assert_eq!(header.metadata["lowbit.format_version"], version, "{spec}");
        // The file serves on its own: tokenizer and config come from its metadata.
        let t = file.tokenizer().unwrap();
        assert_eq!(
            t.encode("hi", true).unwrap(),
            ModelSource::open(&gguf)
                .unwrap()
                .tokenizer()
                .unwrap()
                .encode("hi", true)
                .unwrap()
        );
    }
}

/// Qwen's extra vectors (Q/K/V biases, Q/K head norms) travel in the file with the matrices
/// and its config keeps them in use.
#[test]
fn qwen_files_keep_their_biases_and_head_norms() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [TinyArch::Qwen2, TinyArch::Qwen3] {
        let gguf = tiny_gguf_of(dir.path(), arch);
        let source = ModelSource::open(&gguf).unwrap();
        let out = dir.path().join(format!("{}.safetensors", arch.name()));
        let o = quantize(&gguf, &out, "q8", &[]);
        assert!(o.status.success(), "{arch:?}: {}", stderr(&o));
        let in_situ = logits(&source, &QuantPolicy::parse("q8", None).unwrap());
        let file = ModelSource::open(&out).unwrap();
        let config = file.config().unwrap();
        assert_eq!(
            (config.attention_bias, config.qk_norm),
            (arch == TinyArch::Qwen2, arch == TinyArch::Qwen3)
        );
        assert_eq!(
            logits(&file, &QuantPolicy::as_stored()),
            in_situ,
            "{arch:?}"
        );
    }
}

/// A Gemma file keeps what Gemma adds (its config, its post-norms) and gives the in-situ
/// quantized model's logits; it is format version 2 (an older lowbit would ignore those
/// fields and run it as Llama), a Llama file still version 1. A Phi file (its fused
/// projections written apart) keeps partial rotary and LongRoPE, a Granite file its residual
/// and logit scales, a SmolLM3 file its layers without RoPE: version 3. A mixture of experts
/// (its experts written apart, the router as stored), YaRN (the tiny Qwen3-MoE's): version 4;
/// gpt-oss (its MXFP4 experts and their biases written apart): version 5.
#[test]
fn gemma_and_phi_files_keep_their_config_and_format_version() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [
        TinyArch::Llama,
        TinyArch::Gemma2,
        TinyArch::Gemma3,
        TinyArch::Phi3,
        TinyArch::Granite,
        TinyArch::SmolLm3,
        TinyArch::Mixtral,
        TinyArch::Qwen2Moe,
        TinyArch::Qwen3Moe,
        TinyArch::GraniteMoe,
        TinyArch::Olmo3,
        TinyArch::Olmoe,
        TinyArch::GptOss,
    ] {
        let gguf = tiny_gguf_of(dir.path(), arch);
        let source = ModelSource::open(&gguf).unwrap();
        let out = dir.path().join(format!("{}.safetensors", arch.name()));
        let o = quantize(&gguf, &out, "q8", &[]);
        assert!(o.status.success(), "{arch:?}: {}", stderr(&o));
        let in_situ = logits(&source, &QuantPolicy::parse("q8", None).unwrap());
        let file = ModelSource::open(&out).unwrap();
        assert_eq!(file.config().unwrap().gemma.post_norms, arch.post_norms());
        assert_eq!(
            file.config().unwrap().gemma.sliding_layers,
            source.config().unwrap().gemma.sliding_layers
        );
        assert_eq!(
            logits(&file, &QuantPolicy::as_stored()),
            in_situ,
            "{arch:?}"
        );
        let header = lowbit::model::hf::SafetensorsFile::open(&out).unwrap();
        assert_eq!(
            file.config().unwrap().rotary_dim,
            source.config().unwrap().rotary_dim
        );
        assert_eq!(file.config().unwrap().gemma, source.config().unwrap().gemma);
        assert_eq!(
            file.config().unwrap().nope_layers,
            source.config().unwrap().nope_layers
        );
        assert_eq!(
            file.config().unwrap().rope_scaling,
            source.config().unwrap().rope_scaling
        );
        assert_eq!(file.config().unwrap().moe, source.config().unwrap().moe);
        assert_eq!(file.config().unwrap().gpt_oss, arch == TinyArch::GptOss);
        let version = match arch {
            TinyArch::GptOss => "5",
            a if a.is_moe() || a == TinyArch::Olmo3 => "4",
            TinyArch::Phi3 | TinyArch::Granite | TinyArch::SmolLm3 => "3",
            a if a.is_gemma() => "2",
            _ => "1",
        };
        assert_eq!(
            header.metadata["lowbit.format_version"], version,
            "{arch:?}"
        );
    }
}

#[test]
fn info_reports_formats_fallbacks_and_bits_per_weight() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_gguf(dir.path());
    let o = lowbit(&[
        "info",
        "--model",
        gguf.to_str().unwrap(),
        "--quant",
        "q4g128",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let plans = v["weight_formats"].as_array().unwrap();
    let find = |n: &str| plans.iter().find(|p| p["name"] == n).unwrap().clone();
    assert_eq!(find("token_embd.weight")["format"], "q8");
    assert_eq!(find("blk.0.ffn_up.weight")["format"], "q4g128");
    // ffn_down rows hold 192 values: 128 does not divide them, 64 does.
    let down = find("blk.0.ffn_down.weight");
    assert_eq!(down["format"], "q4g64");
    assert_eq!(down["fallback_from"], "q4g128");
    let bpw = v["weight_bits_per_weight"].as_f64().unwrap();
    assert!(bpw > 4.1 && bpw < 8.5, "{bpw}");
}

#[test]
fn bad_policies_and_newer_files_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_gguf(dir.path());
    let o = lowbit(&[
        "generate",
        "--model",
        gguf.to_str().unwrap(),
        "--prompt",
        "hi",
        "--quant",
        "q3",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("unknown format or preset 'q3'")
            && err.contains("q4mg64")
            && err.contains("q4m"),
        "{err}"
    );

    let mut meta = HashMap::new();
    meta.insert(
        "lowbit.format_version".to_string(),
        (lowbit_file::FORMAT_VERSION + 1).to_string(),
    );
    let newer = dir.path().join("newer.safetensors");
    lowbit_file::write(&newer, &[], meta).unwrap();
    let e = ModelSource::open(&newer).unwrap_err().to_string();
    assert!(
        e.contains("newer lowbit") && e.contains("newer.safetensors"),
        "{e}"
    );
}

#[test]
fn search_beats_round_to_nearest_on_real_weights() {
    // The default model's layer-0 FFN, requantized from its f32 values to Q4 g32.
    let source = ModelSource::open(&common::smollm2_path()).unwrap();
    let raw = source.tensor("blk.0.ffn_gate.weight").unwrap();
    let x = raw.to_f32();
    let err = |method| {
        let opts = lowbit_gpu::quant::QuantizeOptions {
            method,
            importance: None,
        };
        let q = lowbit_gpu::quant::quantize(
            &x,
            raw.rows,
            raw.cols,
            lowbit_gpu::QuantFormat::Q4(lowbit_gpu::GroupSize::G32),
            &opts,
        )
        .unwrap();
        let d = q.dequantize();
        x.iter()
            .zip(&d)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
    };
    let (rtn, search) = (
        err(lowbit_gpu::quant::QuantMethod::Rtn),
        err(lowbit_gpu::quant::QuantMethod::Search),
    );
    assert!(search < 0.85 * rtn, "search {search} vs rtn {rtn}");
}

#[test]
fn calibrated_gptq_tracks_the_f32_model_better_than_round_to_nearest() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_gguf(dir.path());
    let source = ModelSource::open(&gguf).unwrap();
    let tokenizer = source.tokenizer().unwrap();
    let text =
        "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs! "
            .repeat(30);
    let calibration = lowbit::model::Calibration::gather(&source, &tokenizer, &text, 4).unwrap();
    assert!(calibration.tokens >= 1024);
    assert!(calibration.hessian("blk.1.ffn_down.weight").is_some());
    // The tiny model has its own output head: that gets the final-norm statistics, the
    // embedding (a lookup, not a linear layer) none.
    assert_eq!(calibration.hessian("output.weight").unwrap().dim, 128);
    assert!(calibration.hessian("token_embd.weight").is_none());

    let tokens = tokenizer.encode(&text[..300], false).unwrap();
    let run = |model: &Llama| {
        let mut kv = SoloKv::new(model, 1, tokens.len()).unwrap();
        let seq = BatchSeq {
            tokens: &tokens,
            pos_start: 0,
            blocks: &kv.tables[0],
            window_blocks: &[],
            logits: 0..tokens.len(),
        };
        model.forward(&[seq], &mut kv.pool).unwrap().data
    };
    let backend = || Arc::new(CpuBackend::new());
    let f32_logits = run(&Llama::load(
        &source,
        backend(),
        &QuantPolicy::parse("f32", None).unwrap(),
    )
    .unwrap());
    let q4 = QuantPolicy::parse("q4g32", None).unwrap();
    let rtn = rel(
        &run(&Llama::load(&source, backend(), &q4).unwrap()),
        &f32_logits,
    );
    let gptq_model = Llama::load_calibrated(&source, backend(), &q4, Some(&calibration)).unwrap();
    let gptq = rel(&run(&gptq_model), &f32_logits);
    assert!(gptq < 0.8 * rtn, "GPTQ {gptq} vs RTN {rtn}");
}

#[test]
fn quantizing_twice_writes_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_gguf(dir.path());
    let outs: Vec<Vec<u8>> = (0..2)
        .map(|i| {
            let out = dir.path().join(format!("run{i}.safetensors"));
            let o = quantize(
                &gguf,
                &out,
                "q4g32,blk.0.*=q8",
                &["--quant-method", "search"],
            );
            assert!(o.status.success(), "{}", stderr(&o));
            std::fs::read(out).unwrap()
        })
        .collect();
    assert!(outs[0] == outs[1], "two runs wrote different files");
}
