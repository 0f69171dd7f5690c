//! What the tiny gpt-oss adds to [`TinyModel`]: a bias on the attention output, a sink logit
//! per head, and experts stored in MXFP4 (as the released files store them) with a bias on
//! each projection, gates and ups wide enough that the clamped SwiGLU's clamps (±7) bite; and
//! the float64 forward of such an expert.

use super::tiny_model::{TinyConfig, TinyModel};
use super::tiny_moe::{add_row, matvec, Matrix};
use lowbit_gpu::SourceDType;
use rand_chacha::ChaCha8Rng;

/// gpt-oss's SwiGLU clamp and sigmoid slope (the released configs' `swiglu_limit`, and the
/// reference implementation's α).
pub const SWIGLU_LIMIT: f64 = 7.0;
pub const SWIGLU_ALPHA: f64 = 1.702;

/// What `TinyModel::random` adds a tensor with: name, rows, cols, dtype, scale, offset.
pub trait AddTensor: FnMut(String, usize, usize, SourceDType, f32, f32, &mut ChaCha8Rng) {}
impl<F: FnMut(String, usize, usize, SourceDType, f32, f32, &mut ChaCha8Rng)> AddTensor for F {}

/// Layer `l`'s attention output bias and sinks (sinks between −1 and 3: below, among and
/// above the tiny model's scores).
pub(super) fn attention_extras(
    add: &mut impl AddTensor,
    l: usize,
    cfg: TinyConfig,
    rng: &mut ChaCha8Rng,
) {
    let f32 = SourceDType::F32;
    add(
        format!("blk.{l}.attn_output.bias"),
        1,
        cfg.hidden,
        f32,
        0.5,
        0.0,
        rng,
    );
    add(
        format!("blk.{l}.attn_sinks.weight"),
        1,
        cfg.heads,
        f32,
        2.0,
        1.0,
        rng,
    );
}

/// Expert `suffix` (`.E`) of layer `l`: gate, up and down in MXFP4, each with an F32 bias;
/// gate and up rows eight times the usual scale, so that a good share of their outputs
/// passes ±7.
pub(super) fn expert(
    add: &mut impl AddTensor,
    l: usize,
    suffix: &str,
    cfg: TinyConfig,
    rng: &mut ChaCha8Rng,
) {
    let (h, ffn) = (cfg.hidden, cfg.ffn);
    let wide = 8.0 / (h as f32).sqrt();
    let w = |p: &str| format!("blk.{l}.{p}{suffix}.weight");
    let b = |p: &str| format!("blk.{l}.{p}{suffix}.bias");
    let (fp4, f32) = (SourceDType::MXFP4, SourceDType::F32);
    add(w("ffn_gate"), ffn, h, fp4, wide, 0.0, rng);
    add(w("ffn_up"), ffn, h, fp4, wide, 0.0, rng);
    add(
        w("ffn_down"),
        h,
        ffn,
        fp4,
        1.0 / (ffn as f32).sqrt(),
        0.0,
        rng,
    );
    add(b("ffn_gate"), 1, ffn, f32, 0.5, 0.0, rng);
    add(b("ffn_up"), 1, ffn, f32, 0.5, 0.0, rng);
    add(b("ffn_down"), 1, h, f32, 0.5, 0.0, rng);
}

/// gpt-oss's SwiGLU of one pair, in float64.
pub fn swiglu_oai(gate: f64, up: f64) -> f64 {
    let g = gate.min(SWIGLU_LIMIT);
    let u = up.clamp(-SWIGLU_LIMIT, SWIGLU_LIMIT);
    g / (1.0 + (-SWIGLU_ALPHA * g).exp()) * (u + 1.0)
}

impl TinyModel {
    /// `blk.{layer}.{part}.bias`.
    pub(super) fn bias(&self, layer: usize, part: &str) -> Matrix {
        self.matrix(&format!("blk.{layer}.{part}.bias"))
    }

    /// Expert `e` of layer `layer` on `x`: `down · swiglu_oai(gate · x + b, up · x + b) + b`.
    pub(super) fn gpt_oss_expert(
        &self,
        layer: usize,
        e: usize,
        (gate, up, down): (&Matrix, &Matrix, &Matrix),
        x: &[f64],
    ) -> Vec<f64> {
        let mut g = matvec(gate, x);
        let mut u = matvec(up, x);
        add_row(&mut g, &self.bias(layer, &format!("ffn_gate.{e}")));
        add_row(&mut u, &self.bias(layer, &format!("ffn_up.{e}")));
        let act: Vec<f64> = g.iter().zip(&u).map(|(&g, &u)| swiglu_oai(g, u)).collect();
        let mut y = matvec(down, &act);
        add_row(&mut y, &self.bias(layer, &format!("ffn_down.{e}")));
        y
    }
}
