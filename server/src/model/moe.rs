//! A mixture of experts in place of a block's MLP (Mixtral, Qwen2-MoE, Qwen3-MoE, Granite 3
//! MoE, OLMoE, gpt-oss): a router
//! scores every expert for each token, the `experts_used` best run on it, and their outputs,
//! weighted by the router's probabilities, are added to the residual.
//!
//! The router's scores come back to the host, which chooses each token's experts; each
//! expert then multiplies only the rows routed to it (gathered, multiplied, scattered back by
//! [`Backend::add_scattered`]). A row's result is thus the same whatever else is in its
//! batch — each product is row-independent, and each row adds its experts in expert order —
//! and an expert no token chose costs nothing. On a GPU the readback is one wait per layer
//! (two for Qwen2-MoE, whose shared expert's gate comes back after the router's scores).

use super::config::MoeConfig;
use super::error::Result;
use super::ffn::{load_mlp, together, LoadVector, Mlp};
use super::llama::{LinearInput, Llama, Observer};
use lowbit_gpu::{Backend, QTensor, ScatteredRows, Tensor, Weight};
use std::sync::Arc;

/// A layer's experts and router.
#[derive(Debug)]
pub(super) struct MoeFfn {
    /// One row per expert: the scores are `router · x` (plus `router_bias`, gpt-oss).
    router: Weight,
    router_bias: Option<Tensor>,
    experts: Vec<Mlp>,
    /// The expert every token runs (Qwen2-MoE, Granite MoE Shared).
    shared: Option<Mlp>,
    /// Qwen2-MoE's gate row of the shared expert: `sigmoid(gate · x)` scales its output.
    shared_gate: Option<Weight>,
}

/// Which rows each expert takes, and the weight of its output in each.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Routes {
    pub rows: Vec<usize>,
    pub weights: Vec<f32>,
}

impl MoeFfn {
    /// Loads layer `layer`'s router (with the shared expert's gate row, one product on a GPU),
    /// experts and shared expert; with `biases` (`Some`: gpt-oss), the router's and the
    /// experts' biases.
    pub(super) fn load(
        backend: &Arc<dyn Backend>,
        host_matrix: &mut dyn FnMut(&str, usize, usize) -> Result<QTensor>,
        mut biases: Option<&mut LoadVector<'_>>,
        layer: usize,
        moe: &MoeConfig,
        h: usize,
    ) -> Result<Self> {
        let n = |part: &str| format!("blk.{layer}.{part}.weight");
        let router_bias = match biases.as_mut() {
            Some(vector) => Some(vector(
                &format!("blk.{layer}.ffn_gate_inp.bias"),
                moe.experts,
            )?),
            None => None,
        };
        let router = host_matrix(&n("ffn_gate_inp"), moe.experts, h)?;
        let (router, shared_gate) = if moe.shared_expert_ffn_size > 0 && moe.shared_expert_gated {
            let gate = host_matrix(&n("ffn_gate_inp_shexp"), 1, h)?;
            let [router, gate] = together(backend, vec![router, gate])?;
            (router, Some(gate))
        } else {
            (backend.load_weight(router)?, None)
        };
        let experts = (0..moe.experts)
            .map(|e| {
                load_mlp(
                    backend,
                    host_matrix,
                    biases.as_mut().map(|v| &mut **v as &mut LoadVector<'_>),
                    &n,
                    &format!(".{e}"),
                    moe.expert_ffn_size,
                    h,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let shared = if moe.shared_expert_ffn_size > 0 {
            Some(load_mlp(
                backend,
                host_matrix,
                None,
                &n,
                "_shexp",
                moe.shared_expert_ffn_size,
                h,
            )?)
        } else {
            None
        };
        Ok(Self {
            router,
            router_bias,
            experts,
            shared,
            shared_gate,
        })
    }

    pub(super) fn resident_bytes(&self) -> usize {
        self.router.resident_bytes()
            + self.experts.iter().map(Mlp::resident_bytes).sum::<usize>()
            + self.shared_bytes()
    }

    fn shared_bytes(&self) -> usize {
        self.shared.as_ref().map_or(0, Mlp::resident_bytes)
            + self.shared_gate.as_ref().map_or(0, Weight::resident_bytes)
    }

    /// What one token reads: the router, `used` experts of the average size, the shared
    /// expert.
    pub(super) fn decode_bytes(&self, used: usize) -> usize {
        let experts: usize = self.experts.iter().map(Mlp::resident_bytes).sum();
        self.router.resident_bytes()
            + experts * used / self.experts.len().max(1)
            + self.shared_bytes()
    }
}

/// Each expert's rows and weights from the router's scores (`rows × experts`, row-major): a
/// softmax over every expert, the `used` most probable kept (the lower index first among
/// equals), renormalized to sum to one where `normalize` (clamped as llama.cpp does, so a
/// sum that underflows divides by 2⁻¹⁴).
pub(crate) fn route(scores: &[f32], experts: usize, used: usize, normalize: bool) -> Vec<Routes> {
    let mut routes = vec![Routes::default(); experts];
    if experts == 0 {
        return routes;
    }
    let mut order: Vec<usize> = Vec::with_capacity(experts);
    for (row, s) in scores.chunks_exact(experts).enumerate() {
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // A NaN score (a broken model) counts as probability 0, so it neither wins nor turns
        // the row's weights into NaN; a row with no finite score runs no experts at all.
        let e: Vec<f32> = s
            .iter()
            .map(|&v| (v - max).exp())
            .map(|p| if p.is_finite() { p } else { 0.0 })
            .collect();
        let sum: f32 = e.iter().sum();
        if sum <= 0.0 {
            continue;
        }
        order.clear();
        order.extend(0..experts);
        order.sort_by(|&a, &b| e[b].total_cmp(&e[a]));
        let chosen = &order[..used.min(experts)];
        let probs: Vec<f32> = chosen.iter().map(|&x| e[x] / sum).collect();
        let norm = if normalize {
            probs.iter().sum::<f32>().max(6.103_515_6e-5)
        } else {
            1.0
        };
        for (&x, p) in chosen.iter().zip(probs) {
            routes[x].rows.push(row);
            routes[x].weights.push(p / norm);
        }
    }
    routes
}

impl Llama {
    /// `residual + Σ weight · expert(x)` over each row's chosen experts (plus the shared
    /// expert, scaled by its gate).
    pub(super) fn experts(
        &self,
        layer: usize,
        moe: &MoeFfn,
        x: &Tensor,
        residual: &Tensor,
        observe: &mut Observer<'_>,
    ) -> Result<Tensor> {
        let be = &**self.backend();
        let Some(cfg) = &self.config().moe else {
            return Err(lowbit_gpu::Error::Internal("experts without a MoE config").into());
        };
        let mut gates = vec![&moe.router];
        gates.extend(&moe.shared_gate);
        let mut scores = be.matmul_many(x, &gates)?;
        if let (Some(bias), Some(s)) = (&moe.router_bias, scores.first_mut()) {
            *s = be.add_bias(s, bias)?;
        }
        let mut routes = route(
            &be.download(&scores[0])?,
            cfg.experts,
            cfg.experts_used,
            cfg.normalize,
        );
        // Granite scales the whole branch; as each output's weight, that costs nothing.
        let branch_scale = self.config().gemma.residual_scale.unwrap_or(1.0);
        if branch_scale != 1.0 {
            for r in &mut routes {
                r.weights.iter_mut().for_each(|w| *w *= branch_scale);
            }
        }
        let mut outputs = Vec::new();
        for (e, (expert, route)) in moe.experts.iter().zip(routes).enumerate() {
            if route.rows.is_empty() {
                continue;
            }
            let xe = be.select_rows(x, &route.rows)?;
            observe(layer, LinearInput::Expert(e as u32), &xe);
            let gated = self.gated(expert, &xe)?;
            observe(layer, LinearInput::ExpertDown(e as u32), &gated);
            let mut y = be.matmul(&gated, &expert.down)?;
            if let Some([_, _, down_bias]) = &expert.biases {
                y = be.add_bias(&y, down_bias)?;
            }
            outputs.push((y, route));
        }
        if let Some(expert) = &moe.shared {
            let weights: Vec<f32> = match scores.get(1) {
                Some(gate) => be
                    .download(gate)?
                    .iter()
                    .map(|g| branch_scale / (1.0 + (-g).exp()))
                    .collect(),
                None => vec![branch_scale; x.rows()],
            };
            let gated = self.gated(expert, x)?;
            observe(layer, LinearInput::SharedExpertDown, &gated);
            let route = Routes {
                rows: (0..x.rows()).collect(),
                weights,
            };
            outputs.push((be.matmul(&gated, &expert.down)?, route));
        }
        let parts: Vec<ScatteredRows<'_>> = outputs
            .iter()
            .map(|(y, r)| ScatteredRows {
                x: y,
                rows: &r.rows,
                weights: &r.weights,
            })
            .collect();
        Ok(be.add_scattered(residual, &parts)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The softmax's top `used`, renormalized or not; ties go to the lower index; every row
    /// lands in exactly `used` experts.
    #[test]
    fn routes_keep_the_most_probable_experts() {
        let scores = [
            0.0, 2.0, 1.0, -1.0, // row 0: experts 1, 2
            3.0, 3.0, 0.0, 0.0, // row 1: a tie, experts 0, 1
        ];
        let r = route(&scores, 4, 2, true);
        assert_eq!(r[0].rows, [1]);
        assert_eq!(r[1].rows, [0, 1]);
        assert_eq!(r[2].rows, [0]);
        assert!(r[3].rows.is_empty());
        let e = |v: f32| v.exp();
        let want = e(2.0) / (e(2.0) + e(1.0));
        assert!((r[1].weights[0] - want).abs() < 1e-6);
        assert!((r[0].weights[0] - 0.5).abs() < 1e-6);
        let plain = route(&scores, 4, 2, false);
        let total = e(0.0) + e(2.0) + e(1.0) + e(-1.0);
        assert!((plain[1].weights[0] - e(2.0) / total).abs() < 1e-6);
        let per_row: usize = r.iter().map(|x| x.rows.len()).sum();
        assert_eq!(per_row, 4);
        // A NaN score never wins and leaves the others' weights finite.
        let broken = route(&[f32::NAN, 1.0, 0.0, -1.0], 4, 2, true);
        assert!(broken[0].rows.is_empty());
        assert_eq!((broken[1].rows.len(), broken[2].rows.len()), (1, 1));
        let lost = route(&[f32::NAN; 4], 4, 2, true);
        assert!(
            lost.iter().all(|r| r.rows.is_empty()),
            "a row of NaN runs no expert"
        );
        assert!(broken
            .iter()
            .flat_map(|r| &r.weights)
            .all(|w| w.is_finite()));
    }
}
