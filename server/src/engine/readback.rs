//! What a step reads back of each of its logits rows: the argmax alone (greedy rows), the top
//! k (rows whose sampler filters to a top k first, where logits live on a device), or the whole
//! row. The token is the same either way: the logits are the same, and each choice reads only
//! what it keeps. On a GPU this is the difference between a few words and a vocabulary.

use super::sampler::Sampler;
use crate::model::MixedReadback;

/// Most values a sampling row reads back as its top k instead of its whole logits.
pub const TOP_K_READBACK_MAX: usize = 64;

/// What a step reads back of one logits row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowWant {
    Argmax,
    TopK(usize),
    Logits,
}

impl RowWant {
    /// The row of a sequence sampling with `sampler`; `plain` when nothing else reads its
    /// logits (no logprobs, no forks to sample), `top_k_max` 0 where a top k saves nothing.
    pub fn of(sampler: &Sampler, plain: bool, vocab: usize, top_k_max: usize) -> Self {
        if !plain {
            RowWant::Logits
        } else if sampler.is_greedy() {
            RowWant::Argmax
        } else if let Some(k) = sampler.top_k_readback(vocab, top_k_max) {
            RowWant::TopK(k)
        } else {
            RowWant::Logits
        }
    }
}

/// The readback of a step whose logits rows want `wants`, and each row's place among the
/// top-k rows (`None` for the others).
pub fn plan_readback(wants: &[RowWant]) -> (MixedReadback, Vec<Option<usize>>) {
    let mut what = MixedReadback::default();
    let mut top_at = vec![None; wants.len()];
    for (r, want) in wants.iter().enumerate() {
        match *want {
            RowWant::Argmax => {}
            RowWant::TopK(k) => {
                top_at[r] = Some(what.top.len());
                what.top.push(r);
                what.k = what.k.max(k);
            }
            RowWant::Logits => what.full.push(r),
        }
    }
    (what, top_at)
}
