//! A block's feed-forward: one gated MLP (`down(act(gate(x)) * up(x))`), or a mixture of
//! experts of them (`moe.rs`); and how their matrices load.

use super::error::Result;
use super::moe::MoeFfn;
use lowbit_gpu::{Backend, QTensor, Tensor, Weight};
use std::sync::Arc;

/// Loads a norm weight or bias by canonical name and length, onto the backend.
pub(super) type LoadVector<'a> = dyn FnMut(&str, usize) -> Result<Tensor> + 'a;

/// Gated feed-forward: `down(act(gate(x)) * up(x))`, SiLU, GELU or gpt-oss's clamped SiLU.
#[derive(Debug)]
pub(super) struct Mlp {
    pub(super) gate: Weight,
    pub(super) up: Weight,
    pub(super) down: Weight,
    /// Biases of the gate, up and down products (gpt-oss's experts).
    pub(super) biases: Option<[Tensor; 3]>,
}

impl Mlp {
    pub(super) fn resident_bytes(&self) -> usize {
        [&self.gate, &self.up, &self.down]
            .iter()
            .map(|w| w.resident_bytes())
            .sum()
    }
}

/// A block's feed-forward: one MLP, or a mixture of experts (`moe.rs`).
#[derive(Debug)]
pub(super) enum Ffn {
    Dense(Box<Mlp>),
    Experts(Box<MoeFfn>),
}

/// Loads an MLP's matrices `blk.N.ffn_{gate,up,down}{suffix}` (`n` names a part of layer N),
/// gate and up together; where `vector` is given, their biases too (`….bias`).
pub(super) fn load_mlp(
    backend: &Arc<dyn Backend>,
    host_matrix: &mut dyn FnMut(&str, usize, usize) -> Result<QTensor>,
    vector: Option<&mut LoadVector<'_>>,
    n: &dyn Fn(&str) -> String,
    suffix: &str,
    ffn: usize,
    h: usize,
) -> Result<Mlp> {
    let name = |part: &str| n(&format!("{part}{suffix}"));
    let biases = match vector {
        Some(vector) => {
            let bias = |part: &str| {
                let weight = name(part);
                format!("{}.bias", weight.strip_suffix(".weight").unwrap_or(&weight))
            };
            Some([
                vector(&bias("ffn_gate"), ffn)?,
                vector(&bias("ffn_up"), ffn)?,
                vector(&bias("ffn_down"), h)?,
            ])
        }
        None => None,
    };
    let [gate, up] = together(
        backend,
        vec![
            host_matrix(&name("ffn_gate"), ffn, h)?,
            host_matrix(&name("ffn_up"), ffn, h)?,
        ],
    )?;
    let down = backend.load_weight(host_matrix(&name("ffn_down"), h, ffn)?)?;
    Ok(Mlp {
        gate,
        up,
        down,
        biases,
    })
}

/// Loads `N` weights through [`Backend::load_weights_together`].
pub(super) fn together<const N: usize>(
    backend: &Arc<dyn Backend>,
    ws: Vec<QTensor>,
) -> Result<[Weight; N]> {
    backend.load_weights_together(ws)?.try_into().map_err(|_| {
        lowbit_gpu::Error::Internal("load_weights_together returned the wrong count").into()
    })
}
