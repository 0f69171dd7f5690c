//! What a step reads back of each of its logits rows: the argmax alone (greedy rows), the top
//! k (rows whose sampler filters to a top k first, where logits live on a device), a token
//! drawn on the device (rows sampling from the whole distribution through top-p and min-p:
//! OpenAI's parameters), or the whole row; a device applies a row's penalties and logit bias
//! first (one change per token). The first two give the token the host would pick from the
//! whole row; a device draw is the same distribution, drawn with the sequence's own random
//! stream (gpu/src/draw.rs). On a GPU this is the difference between a few words and a
//! vocabulary.

use super::sampler::{Sampler, TokenHistory};
use crate::model::MixedReadback;
use lowbit_gpu::LogitAdjust;

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
    /// The row of a sequence sampling with `sampler` after `history`, and the changes its
    /// penalties and logit bias make to its logits first (row 0; empty for none). `plain` when
    /// nothing else reads its logits (no logprobs, no forks to sample), `top_k_max` 0 where a
    /// top k saves nothing, `on_device` where logits live on a device that can change them
    /// and draw from them. A device draw takes its uniform from the sampler's stream now.
    pub fn of(
        sampler: &mut Sampler,
        history: &TokenHistory,
        plain: bool,
        vocab: usize,
        top_k_max: usize,
        on_device: bool,
    ) -> (Self, Vec<LogitAdjust>) {
        let adjusted = sampler.params().adjusts_logits();
        if !plain || (adjusted && !on_device) {
            return (RowWant::Logits, Vec::new());
        }
        let want = if sampler.takes_argmax() {
            RowWant::Argmax
        } else if let Some(k) = sampler.top_k_readback(vocab, top_k_max) {
            RowWant::TopK(k)
        } else if let Some((u, inv_t, min_p, top_p)) =
            on_device.then(|| sampler.whole_row_draw(vocab)).flatten()
        {
            RowWant::Draw(u, inv_t, min_p, top_p)
        } else {
            return (RowWant::Logits, Vec::new());
        };
        (want, sampler.logit_adjustments(history))
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

/// The readback of a step whose logits rows want `wants` (each with its logit changes), and
/// where each row's answer is.
pub fn plan_readback(wants: &[(RowWant, Vec<LogitAdjust>)]) -> (MixedReadback, Vec<RowAt>) {
    let mut what = MixedReadback::default();
    let mut at = vec![RowAt::Argmax; wants.len()];
    for (r, (want, changes)) in wants.iter().enumerate() {
        what.adjust
            .extend(changes.iter().map(|&c| LogitAdjust { row: r, ..c }));
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
