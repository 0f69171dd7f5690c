//! What the tiny mixture-of-experts models add to [`TinyModel`]: a router and
//! [`TINY_EXPERTS`] SwiGLU experts per layer in place of the MLP ([`TINY_EXPERTS_USED`] run on
//! each token), Qwen2-MoE's shared expert with its sigmoid gate; stacked per projection in
//! GGUF files (`blk.N.ffn_gate_exps`, ggml dims `[cols, rows, experts]`), one tensor per expert
//! in Hugging Face folders (Mixtral's `block_sparse_moe.experts.E.w1`, Qwen's
//! `mlp.experts.E.gate_proj`); and their float64 forward.

use super::tiny_model::{TinyArch, TinyModel, TinyTensor};
use lowbit::model::gguf::{GgufWriter, MetaValue};

pub const TINY_EXPERTS: usize = 4;
pub const TINY_EXPERTS_USED: usize = 2;
/// Qwen2-MoE's shared expert's intermediate size.
pub const TINY_SHARED_FFN: usize = 64;
/// The tiny Qwen3-MoE runs YaRN (as Qwen3 is served past 32k): a factor of 4 over an original
/// context of 64, the files' 256 positions.
pub const YARN_FACTOR: f64 = 4.0;
pub const YARN_ORIGINAL_CONTEXT: usize = 64;

/// Hugging Face's YaRN (`_compute_yarn_parameters`, default fast and slow betas 32 and 1) for
/// `rotated` dimensions of base `theta`: each pair's frequency divisor, and the attention
/// factor.
pub fn yarn_divisors(rotated: usize, theta: f64) -> (Vec<f64>, f64) {
    let dim = rotated as f64;
    let correction = |turns: f64| {
        dim * (YARN_ORIGINAL_CONTEXT as f64 / (turns * 2.0 * std::f64::consts::PI)).ln()
            / (2.0 * theta.ln())
    };
    let low = correction(32.0).floor().max(0.0);
    let high = correction(1.0).ceil().min(dim - 1.0);
    let divisors = (0..rotated / 2)
        .map(|i| {
            let extrapolate = 1.0 - ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            1.0 / ((1.0 - extrapolate) / YARN_FACTOR + extrapolate)
        })
        .collect();
    (divisors, 0.1 * YARN_FACTOR.ln() + 1.0)
}

impl TinyArch {
    pub fn is_moe(self) -> bool {
        matches!(
            self,
            TinyArch::Mixtral
                | TinyArch::Qwen2Moe
                | TinyArch::Qwen3Moe
                | TinyArch::GraniteMoe
                | TinyArch::Olmoe
                | TinyArch::GptOss
        )
    }

    /// Granite's scales (dense and MoE).
    pub fn is_granite(self) -> bool {
        matches!(self, TinyArch::Granite | TinyArch::GraniteMoe)
    }

    /// Whether the chosen experts' probabilities are renormalized (Mixtral, Qwen3-MoE as
    /// released, Granite MoE; Qwen2-MoE keeps the softmax over all experts).
    pub fn normalizes_experts(self) -> bool {
        matches!(
            self,
            TinyArch::Mixtral | TinyArch::Qwen3Moe | TinyArch::GraniteMoe | TinyArch::GptOss
        )
    }
}

/// `{proj}_exps` stacks of the experts' `{proj}.E` matrices (experts in order).
pub(super) fn stack_experts(tensors: &[TinyTensor]) -> Vec<TinyTensor> {
    let mut out: Vec<TinyTensor> = Vec::new();
    for t in tensors {
        let as_weight = t.name.replace(".bias", ".weight");
        let bias = expert_name(&as_weight).filter(|_| t.name.ends_with(".bias"));
        match (expert_name(&t.name), bias) {
            (Some((layer, proj, _)), _) => append(
                &mut out,
                TinyTensor {
                    name: format!("blk.{layer}.{proj}_exps.weight"),
                    ..t.clone()
                },
            ),
            (None, Some((layer, proj, _))) => append(
                &mut out,
                TinyTensor {
                    name: format!("blk.{layer}.{proj}_exps.bias"),
                    ..t.clone()
                },
            ),
            (None, None) => out.push(t.clone()),
        }
    }
    out
}

/// Granite MoE's Hugging Face stacks: `ffn_gate_up_exps` (each expert's gate rows, then its
/// up rows), `ffn_down_exps`, and the shared expert's `ffn_gate_up_shexp`.
pub(super) fn stack_granite_hf(tensors: &[TinyTensor]) -> Vec<TinyTensor> {
    let find = |name: &str| tensors.iter().find(|t| t.name == name).unwrap();
    let mut out: Vec<TinyTensor> = Vec::new();
    for t in tensors {
        let fused = |name: String, parts: &[&TinyTensor]| TinyTensor {
            name,
            rows: parts.iter().map(|p| p.rows).sum(),
            values: parts.iter().flat_map(|p| p.values.clone()).collect(),
            ..t.clone()
        };
        let Some(rest) = t.name.strip_prefix("blk.") else {
            out.push(t.clone());
            continue;
        };
        let (layer, part) = rest.split_once('.').unwrap();
        let n = |p: &str| format!("blk.{layer}.{p}.weight");
        match expert_name(&t.name) {
            Some((_, "ffn_gate", e)) => {
                let up = find(&n(&format!("ffn_up.{e}")));
                let pair = fused(n("ffn_gate_up_exps"), &[t, up]);
                append(&mut out, pair);
            }
            Some((_, "ffn_down", _)) => append(&mut out, fused(n("ffn_down_exps"), &[t])),
            Some(_) => {}
            None => match part {
                "ffn_gate_shexp.weight" => out.push(fused(
                    n("ffn_gate_up_shexp"),
                    &[t, find(&n("ffn_up_shexp"))],
                )),
                "ffn_up_shexp.weight" => {}
                _ => out.push(t.clone()),
            },
        }
    }
    out
}

/// Appends `t` to the tensor of its name in `out`, or adds it.
fn append(out: &mut Vec<TinyTensor>, t: TinyTensor) {
    match out.iter_mut().find(|s| s.name == t.name) {
        Some(s) => {
            assert_eq!(
                (s.dtype, s.cols),
                (t.dtype, t.cols),
                "{}: one dtype",
                t.name
            );
            s.rows += t.rows;
            s.values.extend_from_slice(&t.values);
        }
        None => out.push(t),
    }
}

/// `(layer, proj, expert)` of `blk.N.{proj}.E.weight`.
fn expert_name(name: &str) -> Option<(usize, &str, usize)> {
    let rest = name.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (layer, part) = rest.split_once('.')?;
    let (proj, expert) = part.split_once('.')?;
    Some((layer.parse().ok()?, proj, expert.parse().ok()?))
}

/// A stacked tensor's ggml dims, else `None`.
pub(super) fn stacked_dims(t: &TinyTensor) -> Option<Vec<u64>> {
    if t.name.ends_with("_exps.bias") {
        return Some(vec![t.cols as u64, TINY_EXPERTS as u64]);
    }
    t.name.ends_with("_exps.weight").then(|| {
        vec![
            t.cols as u64,
            (t.rows / TINY_EXPERTS) as u64,
            TINY_EXPERTS as u64,
        ]
    })
}

impl TinyModel {
    /// The `{arch}.expert_*` keys llama.cpp's converters write.
    pub(super) fn moe_gguf_meta(&self, w: &mut GgufWriter) {
        let arch = self.cfg.arch;
        let key = |k: &str| format!("{}.{k}", arch.gguf_name());
        w.meta(&key("expert_count"), MetaValue::U32(TINY_EXPERTS as u32))
            .meta(
                &key("expert_used_count"),
                MetaValue::U32(TINY_EXPERTS_USED as u32),
            );
        if matches!(
            arch,
            TinyArch::Qwen2Moe | TinyArch::Qwen3Moe | TinyArch::GptOss
        ) {
            w.meta(
                &key("expert_feed_forward_length"),
                MetaValue::U32(self.cfg.ffn as u32),
            );
        }
        if matches!(arch, TinyArch::Qwen3Moe | TinyArch::GptOss) {
            w.meta(&key("rope.scaling.type"), MetaValue::String("yarn".into()))
                .meta(
                    &key("rope.scaling.factor"),
                    MetaValue::F32(YARN_FACTOR as f32),
                )
                .meta(
                    &key("rope.scaling.original_context_length"),
                    MetaValue::U32(YARN_ORIGINAL_CONTEXT as u32),
                );
        }
        if matches!(arch, TinyArch::Qwen2Moe | TinyArch::GraniteMoe) {
            w.meta(
                &key("expert_shared_feed_forward_length"),
                MetaValue::U32(TINY_SHARED_FFN as u32),
            );
        }
    }

    /// `MixtralConfig`'s and `Qwen2MoeConfig`/`Qwen3MoeConfig`'s keys.
    pub(super) fn moe_hf_config(&self, config: &mut serde_json::Value) {
        let arch = self.cfg.arch;
        config["num_experts_per_tok"] = TINY_EXPERTS_USED.into();
        if arch == TinyArch::Mixtral {
            config["num_local_experts"] = TINY_EXPERTS.into();
            config["sliding_window"] = serde_json::Value::Null;
            return;
        }
        if arch == TinyArch::Olmoe {
            config["num_experts"] = TINY_EXPERTS.into();
            return;
        }
        if arch == TinyArch::GraniteMoe {
            config["num_local_experts"] = TINY_EXPERTS.into();
            config["shared_intermediate_size"] = TINY_SHARED_FFN.into();
            return;
        }
        config["num_experts"] = TINY_EXPERTS.into();
        config["moe_intermediate_size"] = self.cfg.ffn.into();
        config["norm_topk_prob"] = arch.normalizes_experts().into();
        if arch == TinyArch::Qwen3Moe {
            config["rope_scaling"] = serde_json::json!({
                "rope_type": "yarn",
                "factor": YARN_FACTOR,
                "original_max_position_embeddings": YARN_ORIGINAL_CONTEXT,
            });
        }
        config["decoder_sparse_step"] = 1.into();
        config["mlp_only_layers"] = serde_json::json!([]);
        if arch == TinyArch::Qwen2Moe {
            config["shared_expert_intermediate_size"] = TINY_SHARED_FFN.into();
        }
    }

    /// Layer `layer`'s mixture of experts on a normed hidden state `x`: the softmax of the
    /// router's scores, the top [`TINY_EXPERTS_USED`] experts' SwiGLU outputs weighted by
    /// their probabilities (renormalized where the architecture does), plus the shared
    /// expert times `sigmoid(gate · x)`.
    pub fn reference_experts(&self, layer: usize, x: &[f64]) -> Vec<f64> {
        let m = |part: &str| self.matrix(&format!("blk.{layer}.{part}.weight"));
        let mut scores = matvec(&m("ffn_gate_inp"), x);
        let gpt_oss = self.cfg.arch == TinyArch::GptOss;
        if gpt_oss {
            add_row(&mut scores, &self.bias(layer, "ffn_gate_inp"));
        }
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        let mut order: Vec<usize> = (0..TINY_EXPERTS).collect();
        order.sort_by(|&a, &b| e[b].total_cmp(&e[a]));
        let chosen = &order[..TINY_EXPERTS_USED];
        let total: f64 = chosen.iter().map(|&c| e[c] / sum).sum();
        let mut out = vec![0.0; x.len()];
        for &c in chosen {
            let mut w = e[c] / sum;
            if self.cfg.arch.normalizes_experts() {
                w /= total;
            }
            let (gate, up, down) = (
                &m(&format!("ffn_gate.{c}")),
                &m(&format!("ffn_up.{c}")),
                &m(&format!("ffn_down.{c}")),
            );
            let y = if gpt_oss {
                self.gpt_oss_expert(layer, c, (gate, up, down), x)
            } else {
                swiglu(gate, up, down, x)
            };
            out.iter_mut().zip(y).for_each(|(o, y)| *o += w * y);
        }
        if matches!(self.cfg.arch, TinyArch::Qwen2Moe | TinyArch::GraniteMoe) {
            // Qwen2-MoE gates its shared expert; Granite adds it as is.
            let w = if self.cfg.arch == TinyArch::Qwen2Moe {
                let g = matvec(&m("ffn_gate_inp_shexp"), x)[0];
                1.0 / (1.0 + (-g).exp())
            } else {
                1.0
            };
            let y = swiglu(
                &m("ffn_gate_shexp"),
                &m("ffn_up_shexp"),
                &m("ffn_down_shexp"),
                x,
            );
            out.iter_mut().zip(y).for_each(|(o, y)| *o += w * y);
        }
        out
    }
}

pub(super) type Matrix = (usize, usize, Vec<f64>);

/// `x += row`.
pub(super) fn add_row(x: &mut [f64], row: &Matrix) {
    x.iter_mut().zip(&row.2).for_each(|(v, b)| *v += b);
}

pub(super) fn matvec(w: &Matrix, x: &[f64]) -> Vec<f64> {
    (0..w.0)
        .map(|r| (0..w.1).map(|k| w.2[r * w.1 + k] * x[k]).sum())
        .collect()
}

/// `down(silu(gate · x) * (up · x))`.
fn swiglu(gate: &Matrix, up: &Matrix, down: &Matrix, x: &[f64]) -> Vec<f64> {
    let act: Vec<f64> = matvec(gate, x)
        .iter()
        .zip(matvec(up, x))
        .map(|(&g, u)| g / (1.0 + (-g).exp()) * u)
        .collect();
    matvec(down, &act)
}
