//! What a step reads back of each of its logits rows: the argmax alone (greedy rows), the top
//! k (rows whose sampler filters to a top k first, where logits live on a device), a token
//! drawn on the device (rows sampling from the whole distribution through top-p and min-p:
//! OpenAI's parameters), or the whole row. The first two give the token the host would
//! pick from the whole row; a device draw is the same distribution, drawn with the sequence's
//! own random stream (gpu/src/draw.rs). On a GPU this is the difference between a few words
//! and a vocabulary.

use super::sampler::Sampler;
use crate::model::MixedReadback;

/// Most values a sampling row reads back as its top k instead of its whole logits.
pub const TOP_K_READBACK_MAX: usize = 64;

/// What a step reads back of one logits row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RowWant {
    Argmax,
    TopK(usize),
    /// A token drawn where the logits live: `u`, 1/temperature, min-p, top-p.
    Draw(f32, f32, f32, f32),
    Logits,
}

impl RowWant {
    /// The row of a sequence sampling with `sampler`; `plain` when nothing else reads its
    /// logits (no logprobs, no forks to sample), `top_k_max` 0 where a top k saves nothing,
    /// `device_draws` where logits live on a device that can draw from them. A device draw
    /// takes its uniform from the sampler's stream now.
    pub fn of(
        sampler: &mut Sampler,
        plain: bool,
        vocab: usize,
        top_k_max: usize,
        device_draws: bool,
    ) -> Self {
        if !plain {
            RowWant::Logits
        } else if sampler.is_greedy() {
            RowWant::Argmax
        } else if let Some(k) = sampler.top_k_readback(vocab, top_k_max) {
            RowWant::TopK(k)
        } else if let Some((u, inv_t, min_p, top_p)) = device_draws
            .then(|| sampler.whole_row_draw(vocab))
            .flatten()
        {
            RowWant::Draw(u, inv_t, min_p, top_p)
        } else {
            RowWant::Logits
        }
    }
}

/// Where a logits row's answer is in a mixed step's readback, besides its argmax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowAt {
    /// Only the argmax, or the row is among the whole rows.
    Argmax,
    /// The i-th top k.
    Top(usize),
    /// The i-th drawn token.
    Drawn(usize),
}

/// The readback of a step whose logits rows want `wants`, and where each row's answer is.
pub fn plan_readback(wants: &[RowWant]) -> (MixedReadback, Vec<RowAt>) {
    let mut what = MixedReadback::default();
    let mut at = vec![RowAt::Argmax; wants.len()];
    for (r, want) in wants.iter().enumerate() {
        match *want {
            RowWant::Argmax => {}
            RowWant::TopK(k) => {
                at[r] = RowAt::Top(what.top.len());
                what.top.push(r);
                what.k = what.k.max(k);
            }
            RowWant::Draw(u, inv_temperature, min_weight, top_p) => {
                at[r] = RowAt::Drawn(what.draws.len());
                what.draws.push(lowbit_gpu::RowDraw {
                    row: r,
                    u,
                    inv_temperature,
                    min_weight,
                    top_p,
                });
            }
            RowWant::Logits => what.full.push(r),
        }
    }
    (what, at)
}
