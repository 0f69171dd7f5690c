//! What the tiny Phi-3 model adds to [`TinyModel`]: fused Q/K/V and gate/up tensors in its
//! files (GGUF `attn_qkv` and a double `ffn_up`; Hugging Face `qkv_proj`, `gate_up_proj`),
//! partial rotary (12 of 16 head dimensions, as Phi-4-mini rotates 96 of 128) and LongRoPE
//! (short and long factor lists, an attention factor) with an original context of 32 in a
//! context of 256, so that the long factors apply, as llama.cpp picks them for its 64-position
//! context too.

use super::tiny_model::{TinyArch, TinyModel, TinyTensor};
use lowbit::model::gguf::{GgufWriter, MetaValue};
use lowbit_gpu::SourceDType;

/// Head dimensions RoPE rotates (of 16).
pub const PHI3_ROTARY_DIM: usize = 12;
/// The context LongRoPE's short factors are for.
pub const PHI3_ORIGINAL_CONTEXT: usize = 32;
/// The context the tiny files declare (`context_length`, `max_position_embeddings`).
pub const TINY_CONTEXT: usize = 256;
pub const PHI3_SHORT_FACTORS: [f32; 6] = [1.0, 1.25, 1.5, 2.0, 3.0, 4.0];
pub const PHI3_LONG_FACTORS: [f32; 6] = [1.0, 1.5, 3.0, 6.0, 12.0, 24.0];

/// Hugging Face's LongRoPE attention factor for the tiny context: `√(1 + ln s / ln original)`.
pub fn phi3_attention_factor() -> f64 {
    let s = TINY_CONTEXT as f64 / PHI3_ORIGINAL_CONTEXT as f64;
    (1.0 + s.ln() / (PHI3_ORIGINAL_CONTEXT as f64).ln()).sqrt()
}

/// How the reference rotates a head: dimensions rotated, each pair's frequency divisor, and
/// the factor on sine and cosine.
pub struct RopeRule {
    pub rotated: usize,
    pub divisors: Vec<f64>,
    pub attention_factor: f64,
}

impl RopeRule {
    /// For sequences of up to `context` positions: LongRoPE's long factors beyond the
    /// original context (Phi-3); YaRN's blend (the tiny Qwen3-MoE, `tiny_moe.rs`, and OLMo
    /// 3's global layers).
    pub fn of(arch: TinyArch, head_dim: usize, theta: f64, context: usize) -> Self {
        if arch == TinyArch::Phi3 {
            let list = if context > PHI3_ORIGINAL_CONTEXT {
                PHI3_LONG_FACTORS
            } else {
                PHI3_SHORT_FACTORS
            };
            Self {
                rotated: PHI3_ROTARY_DIM,
                divisors: list.iter().map(|&f| f64::from(f)).collect(),
                attention_factor: phi3_attention_factor(),
            }
        } else if matches!(
            arch,
            TinyArch::Qwen3Moe | TinyArch::Olmo3 | TinyArch::GptOss
        ) {
            let (divisors, attention_factor) = super::tiny_moe::yarn_divisors(head_dim, theta);
            Self {
                rotated: head_dim,
                divisors,
                attention_factor,
            }
        } else {
            Self {
                rotated: head_dim,
                divisors: vec![1.0; head_dim / 2],
                attention_factor: 1.0,
            }
        }
    }
}

fn fuse(name: String, parts: &[&TinyTensor]) -> TinyTensor {
    let first = parts[0];
    assert!(parts
        .iter()
        .all(|p| p.dtype == first.dtype && p.cols == first.cols));
    TinyTensor {
        name,
        rows: parts.iter().map(|p| p.rows).sum(),
        cols: first.cols,
        dtype: first.dtype,
        values: parts
            .iter()
            .flat_map(|p| p.values.iter().copied())
            .collect(),
    }
}

impl TinyModel {
    /// The tensors as the files store them: Phi-3's projections fused (gate/up under GGUF's
    /// `ffn_up` or Hugging Face's `gate_up_proj`, `ffn_gate_up` canonically) and, in GGUF,
    /// LongRoPE's factor lists; the canonical tensors for every other architecture.
    pub fn stored_tensors(&self, gguf: bool) -> Vec<TinyTensor> {
        if self.cfg.arch.is_moe() && gguf {
            return super::tiny_moe::stack_experts(&self.tensors);
        }
        if self.cfg.arch == TinyArch::GraniteMoe {
            return super::tiny_moe::stack_granite_hf(&self.tensors);
        }
        if self.cfg.arch != TinyArch::Phi3 {
            return self.tensors.clone();
        }
        let mut out = Vec::new();
        for t in &self.tensors {
            let Some(rest) = t.name.strip_prefix("blk.") else {
                out.push(t.clone());
                continue;
            };
            let (layer, part) = rest.split_once('.').unwrap();
            let n = |p: &str| format!("blk.{layer}.{p}.weight");
            match part {
                "attn_q.weight" => out.push(fuse(
                    n("attn_qkv"),
                    &[t, self.get(&n("attn_k")), self.get(&n("attn_v"))],
                )),
                "ffn_gate.weight" => out.push(fuse(
                    n(if gguf { "ffn_up" } else { "ffn_gate_up" }),
                    &[t, self.get(&n("ffn_up"))],
                )),
                "attn_k.weight" | "attn_v.weight" | "ffn_up.weight" => {}
                _ => out.push(t.clone()),
            }
        }
        if gguf {
            for (name, list) in [
                ("rope_factors_long.weight", PHI3_LONG_FACTORS),
                ("rope_factors_short.weight", PHI3_SHORT_FACTORS),
            ] {
                out.push(TinyTensor {
                    name: name.into(),
                    rows: 1,
                    cols: list.len(),
                    dtype: SourceDType::F32,
                    values: list.to_vec(),
                });
            }
        }
        out
    }

    /// Phi-3's GGUF keys, as llama.cpp's converter writes them.
    pub(super) fn phi3_gguf_meta(&self, w: &mut GgufWriter) {
        w.meta(
            "phi3.rope.dimension_count",
            MetaValue::U32(PHI3_ROTARY_DIM as u32),
        )
        .meta(
            "phi3.rope.scaling.original_context_length",
            MetaValue::U32(PHI3_ORIGINAL_CONTEXT as u32),
        )
        .meta(
            "phi3.rope.scaling.attn_factor",
            MetaValue::F32(phi3_attention_factor() as f32),
        )
        // Phi-4's converter writes 0 for "no window".
        .meta("phi3.attention.sliding_window", MetaValue::U32(0));
    }

    /// Phi-3's `config.json` keys (Phi-4-mini's partial rotary, Phi-3-128k's LongRoPE).
    pub(super) fn phi3_hf_config(&self, config: &mut serde_json::Value) {
        config["partial_rotary_factor"] =
            (PHI3_ROTARY_DIM as f64 / self.cfg.head_dim() as f64).into();
        config["original_max_position_embeddings"] = PHI3_ORIGINAL_CONTEXT.into();
        config["rope_scaling"] = serde_json::json!({
            "type": "longrope",
            "short_factor": PHI3_SHORT_FACTORS,
            "long_factor": PHI3_LONG_FACTORS,
        });
        config["sliding_window"] = serde_json::Value::Null;
    }
}
