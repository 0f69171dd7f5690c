//! Mixtures of experts (Mixtral, Qwen2-MoE with its gated shared expert, Qwen3-MoE, Granite
//! MoE Shared with Granite's scales and an ungated shared expert) as tiny random models
//! (`common/tiny_moe.rs`): GGUF files stacking each projection's experts, Hugging Face
//! folders with one tensor per expert (Granite's: 3-D stacks of gate and up), against the
//! float64 forward on the CPU and the GPU; a row's experts and output independent of its
//! batch; the router left unquantized; bad files named. llama.cpp's logits for the same files: `architectures.rs`.
#![allow(clippy::unwrap_used)] // test code: a failed step should stop the test there

mod common;

use common::tiny_checks::{cpu, gpu, load, matches_reference_on_every_path};
use common::tiny_model::{TinyArch, TinyConfig, TinyModel};
use common::tiny_moe::{TINY_EXPERTS, TINY_EXPERTS_USED};
use lowbit::engine::solo::SoloKv;
use lowbit::model::gguf::MetaValue;
use lowbit::model::{BatchSeq, Llama, ModelSource, QuantPolicy};
use std::path::{Path, PathBuf};

const MOES: [TinyArch; 5] = [
    TinyArch::Mixtral,
    TinyArch::Qwen2Moe,
    TinyArch::Qwen3Moe,
    TinyArch::GraniteMoe,
    TinyArch::Olmoe,
];
const TOKENS: [u32; 11] = [5, 17, 99, 0, 42, 42, 7, 63, 1, 88, 30];

fn tiny(arch: TinyArch, seed: u64, quantized: bool) -> TinyModel {
    let mut cfg = TinyConfig {
        arch,
        ffn: 32,
        ..TinyConfig::default()
    };
    if arch == TinyArch::Olmoe {
        cfg.kv_heads = cfg.heads;
    }
    TinyModel::random(cfg, seed, quantized)
}

fn write_gguf(dir: &Path, model: &TinyModel) -> PathBuf {
    let path = dir.join("tiny.gguf");
    std::fs::write(&path, model.gguf_bytes()).unwrap();
    path
}

/// Every path of `tiny_checks.rs`: GGUF on the CPU (whole and in pieces), the Hugging Face
/// folder, the GPU in f32 and as stored (layer 0's experts in Q4_1/Q8_0).
#[test]
fn moe_models_match_float64_reference_on_every_path() {
    let gpu = gpu();
    for (i, arch) in MOES.into_iter().enumerate() {
        let model = tiny(arch, 40 + i as u64, true);
        matches_reference_on_every_path(
            &model,
            &TOKENS,
            &[3, 1, 5, 1, 1],
            &gpu,
            &format!("{arch:?}"),
        );
    }
}

/// What each file declares, read alike from GGUF and Hugging Face.
#[test]
fn moe_configs_read_alike_from_both_formats() {
    for arch in MOES {
        let model = tiny(arch, 3, false);
        let dir = tempfile::tempdir().unwrap();
        let gguf = ModelSource::open(&write_gguf(dir.path(), &model))
            .unwrap()
            .config()
            .unwrap();
        model.write_hf_folder(&dir.path().join("hf"), 1);
        let hf = ModelSource::open(&dir.path().join("hf"))
            .unwrap()
            .config()
            .unwrap();
        let moe = gguf.moe.clone().unwrap();
        assert_eq!(gguf.moe, hf.moe, "{arch:?}");
        assert_eq!(
            (moe.experts, moe.experts_used, moe.expert_ffn_size),
            (TINY_EXPERTS, TINY_EXPERTS_USED, 32)
        );
        assert_eq!(moe.normalize, arch.normalizes_experts(), "{arch:?}");
        assert_eq!(
            moe.shared_expert_ffn_size > 0,
            matches!(arch, TinyArch::Qwen2Moe | TinyArch::GraniteMoe)
        );
        assert_eq!(moe.shared_expert_gated, arch == TinyArch::Qwen2Moe);
    }
}

/// Logits of each sequence of `seqs`, all in one step from position 0.
fn batch_logits(model: &Llama, seqs: &[&[u32]]) -> Vec<Vec<f32>> {
    let longest = seqs.iter().map(|s| s.len()).max().unwrap();
    let mut kv = SoloKv::new(model, seqs.len(), longest).unwrap();
    let batch: Vec<BatchSeq<'_>> = seqs
        .iter()
        .zip(&kv.tables)
        .map(|(tokens, table)| BatchSeq {
            tokens,
            pos_start: 0,
            blocks: table,
            window_blocks: &[],
            logits: 0..tokens.len(),
        })
        .collect();
    let logits = model.forward(&batch, &mut kv.pool).unwrap();
    let vocab = logits.vocab;
    let mut rows = logits.data.chunks(vocab);
    seqs.iter()
        .map(|s| rows.by_ref().take(s.len()).flatten().copied().collect())
        .collect()
}

/// A sequence's logits are the same bits alone and beside others whose tokens route to other
/// experts (so each expert multiplies a different set of rows), on the CPU and the GPU; with
/// Qwen2-MoE's gated shared expert and gpt-oss's sinks, biases and sliding layers too.
#[test]
fn a_sequences_logits_do_not_depend_on_its_batch() {
    let gpu = gpu();
    for (arch, backend, quant) in [
        (TinyArch::Qwen3Moe, cpu(), "q4"),
        (TinyArch::Qwen3Moe, gpu.clone(), "as-stored"),
        (TinyArch::Qwen2Moe, cpu(), "q4"),
        (TinyArch::Qwen2Moe, gpu.clone(), "as-stored"),
        (TinyArch::GptOss, cpu(), "q4"),
        (TinyArch::GptOss, gpu.clone(), "as-stored"),
    ] {
        let model = tiny(arch, 9, true);
        let dir = tempfile::tempdir().unwrap();
        let gguf = write_gguf(dir.path(), &model);
        let m = if quant == "as-stored" {
            let source = ModelSource::open(&gguf).unwrap();
            Llama::load(&source, backend, &QuantPolicy::as_stored()).unwrap()
        } else {
            load(&gguf, backend, quant)
        };
        let alone = batch_logits(&m, &[&TOKENS]);
        let others: [u32; 6] = [60, 2, 33, 71, 8, 95];
        let together = batch_logits(&m, &[&others, &TOKENS, &TOKENS[..4]]);
        assert_eq!(alone[0], together[1], "{arch:?} {quant}: beside others");
        assert_eq!(
            alone[0][..4 * 100],
            together[2][..],
            "{arch:?} {quant}: a prefix"
        );
    }
}

/// A 4-bit policy leaves the router as stored (f32), quantizes the experts; a rule naming the
/// router still applies.
#[test]
fn the_router_is_not_quantized_unless_a_rule_names_it() {
    let model = tiny(TinyArch::Mixtral, 4, false);
    let dir = tempfile::tempdir().unwrap();
    let source = ModelSource::open(&write_gguf(dir.path(), &model)).unwrap();
    let plan = |name: &str, policy: &str| {
        source
            .plan(name, &QuantPolicy::parse(policy, None).unwrap())
            .unwrap()
            .format
    };
    assert_eq!(plan("blk.1.ffn_gate_inp.weight", "q4"), "f32");
    assert_eq!(plan("blk.1.ffn_up.3.weight", "q4"), "q4mg32");
    assert_eq!(
        plan("blk.1.ffn_gate_inp.weight", "q4,*.ffn_gate_inp=q8"),
        "q8"
    );
}

/// A file without one expert's stack, or declaring more experts used than it has, is refused,
/// naming the tensor or the key and the file.
#[test]
fn bad_moe_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny(TinyArch::Qwen3Moe, 5, false);
    model
        .tensors
        .retain(|t| !t.name.starts_with("blk.1.ffn_down."));
    let source = ModelSource::open(&write_gguf(dir.path(), &model)).unwrap();
    let err = Llama::load(&source, cpu(), &QuantPolicy::as_stored())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blk.1.ffn_down_exps.weight")
            && err.contains("blk.1.ffn_down.0.weight")
            && err.contains("tiny.gguf"),
        "{err}"
    );

    // Experts used: none; more than the stacks hold; the stacks hold more than declared.
    let model = tiny(TinyArch::Qwen2Moe, 5, false);
    for (key, value, named) in [
        ("qwen2moe.expert_used_count", 0, "expert_used_count"),
        ("qwen2moe.expert_count", 5, "holds 4 experts, the config 5"),
        ("qwen2moe.expert_count", 3, "holds 4 experts, the config 3"),
        ("qwen2moe.expert_count", 1 << 20, "expert_count"),
    ] {
        let bytes = common::with_meta(&model.gguf_bytes(), key, MetaValue::U32(value));
        let path = dir.path().join("bad.gguf");
        std::fs::write(&path, bytes).unwrap();
        let err = ModelSource::open(&path)
            .and_then(|s| Llama::load(&s, cpu(), &QuantPolicy::as_stored()).map(|_| ()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(named) && err.contains("bad.gguf"),
            "{key} {value}: {err}"
        );
    }

    // Hugging Face configs with one key changed: the key is named.
    for (arch, key, value, named) in [
        (
            TinyArch::Mixtral,
            "num_experts_per_tok",
            serde_json::json!(TINY_EXPERTS + 1),
            "expert_used_count",
        ),
        (
            TinyArch::Qwen3Moe,
            "mlp_only_layers",
            serde_json::json!([1]),
            "mlp_only_layers",
        ),
    ] {
        let folder = dir.path().join(arch.name());
        tiny(arch, 5, false).write_hf_folder(&folder, 1);
        let config = folder.join("config.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        json[key] = value;
        std::fs::write(&config, json.to_string()).unwrap();
        let err = ModelSource::open(&folder)
            .unwrap()
            .config()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(named) && err.contains("config.json"),
            "{key}: {err}"
        );
    }
}

/// `lowbit info` describes the experts and counts the parameters a token runs through.
#[test]
fn info_describes_the_experts() {
    let model = tiny(TinyArch::Qwen2Moe, 6, false);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, common::with_tokenizer(&model.gguf_bytes(), 100)).unwrap();
    let o = common::lowbit(&["info", "--model", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        text.contains("experts     4 per layer, 2 per token (softmax weights), FFN 32 each; a shared expert of FFN 64"),
        "{text}"
    );
    let o = common::lowbit(&["info", "--model", path.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (all, active) = (
        v["parameters"].as_u64().unwrap(),
        v["active_parameters"].as_u64().unwrap(),
    );
    // Two layers, two idle experts each of 3 matrices of 64 × 32.
    assert_eq!(all - active, 2 * 2 * 3 * 64 * 32);
    assert_eq!(v["config"]["moe"]["experts_used"], 2);
}

/// A decode step of one sequence reads the router and `experts_used` experts of each layer:
/// what `lowbit bench` divides by for its weight bandwidth.
#[test]
fn a_decode_step_counts_only_the_experts_a_token_runs() {
    let model = tiny(TinyArch::Qwen3Moe, 8, false);
    let dir = tempfile::tempdir().unwrap();
    let m = load(&write_gguf(dir.path(), &model), cpu(), "f32");
    let c = &model.cfg;
    let idle_experts = c.layers * (TINY_EXPERTS - TINY_EXPERTS_USED) * 3 * c.hidden * c.ffn * 4;
    let embedding = c.vocab * c.hidden * 4;
    assert_eq!(
        m.weight_bytes() - m.decode_weight_bytes(),
        embedding + idle_experts
    );
}

/// Calibration sees each expert's own rows (its statistics for its three matrices), the
/// shared expert's input and the router's; a GPTQ-quantized model loads from them.
#[test]
fn calibration_gathers_statistics_per_expert() {
    let model = tiny(TinyArch::Qwen2Moe, 10, false);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, common::with_tokenizer(&model.gguf_bytes(), 100)).unwrap();
    let source = ModelSource::open(&path).unwrap();
    let tokenizer = source.tokenizer().unwrap();
    let text = "pack my box with five dozen liquor jugs; the quick brown fox! ".repeat(20);
    let calibration = lowbit::model::Calibration::gather(&source, &tokenizer, &text, 2).unwrap();
    let dim = |name: &str| calibration.hessian(name).map(|h| h.dim);
    for e in 0..TINY_EXPERTS {
        assert_eq!(
            dim(&format!("blk.1.ffn_up.{e}.weight")),
            Some(64),
            "expert {e}"
        );
        assert_eq!(
            dim(&format!("blk.1.ffn_down.{e}.weight")),
            Some(32),
            "expert {e}"
        );
    }
    assert_eq!(dim("blk.0.ffn_gate_inp.weight"), Some(64));
    assert_eq!(dim("blk.0.ffn_down_shexp.weight"), Some(64));
    let q4 = QuantPolicy::parse("q4g32", None).unwrap();
    Llama::load_calibrated(&source, cpu(), &q4, Some(&calibration)).unwrap();
}
