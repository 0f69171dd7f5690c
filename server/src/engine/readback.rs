//! What a step reads back of each of its logits rows: the argmax alone (greedy rows), the top
//! k (rows whose sampler filters to a top k first, where logits live on a device), a token
//! drawn on the device (rows sampling from the whole distribution through top-p and min-p:
//! OpenAI's parameters), or the whole row; a device applies a row's penalties and logit bias
//! first (one change per token). The first two give the token the host would pick from the
//! whole row; a device draw is the same distribution, drawn with the sequence's own random
//! stream (gpu/src/draw.rs). A device also computes a row's logprobs (gpu/src/logprobs.rs)
//! unless the host chooses its token from a top k. On a GPU this is the difference between a
//! few words and a vocabulary.

use super::sampler::{Sampler, TokenHistory};
use crate::model::MixedReadback;
use lowbit_gpu::{LogitAdjust, LogprobRow};

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

/// What one logits row reads back: its choice ([`RowWant`]), the changes its penalties and
/// logit bias make to its logits first (row 0; empty for none), and the number of
/// alternatives whose log-probabilities are computed where the logits live (with the chosen
/// token's, or `given`'s), if the request asked for logprobs and the row is not read back
/// whole.
#[derive(Debug, Clone, PartialEq)]
pub struct RowPlan {
    pub want: RowWant,
    pub adjust: Vec<LogitAdjust>,
    pub logprobs: Option<usize>,
    /// A prompt row's next token, whose log-probability it reports (nothing is chosen).
    pub given: Option<u32>,
}

impl RowPlan {
    /// The row of a prompt position: the log-probability of the prompt's next token and of
    /// `top` alternatives (its argmax comes with every row and is not used).
    pub fn prompt(next_token: u32, top: usize) -> Self {
        RowPlan {
            want: RowWant::Argmax,
            adjust: Vec::new(),
            logprobs: Some(top),
            given: Some(next_token),
        }
    }

    /// A row read back whole, its choice made on the host.
    pub fn whole() -> Self {
        RowPlan {
            want: RowWant::Logits,
            adjust: Vec::new(),
            logprobs: None,
            given: None,
        }
    }

    /// The row of a sequence sampling with `sampler` after `history`. `host_needs_row` when
    /// the host works on the whole row (its logits still seed forks of `n > 1`, or a
    /// structured output's grammar masks it), `logprobs` the alternatives its request wants,
    /// `top_k_max` 0 where a top k saves nothing, `on_device` where logits live on a device
    /// that can change them, draw from them and take their log-probabilities. A device draw
    /// takes its uniform from the sampler's stream now.
    pub fn of(
        sampler: &mut Sampler,
        history: &TokenHistory,
        host_needs_row: bool,
        logprobs: Option<usize>,
        vocab: usize,
        top_k_max: usize,
        on_device: bool,
    ) -> Self {
        let whole = RowPlan::whole();
        let adjusted = sampler.adjusts_logits(history);
        if host_needs_row || ((adjusted || logprobs.is_some()) && !on_device) {
            return whole;
        }
        let want = if sampler.takes_argmax() {
            RowWant::Argmax
        } else if let Some(k) = logprobs
            .is_none()
            .then(|| sampler.top_k_readback(vocab, top_k_max))
            .flatten()
        {
            // (A top-k row's token is chosen on the host: its log-probability needs the row.)
            RowWant::TopK(k)
        } else if let Some((u, inv_t, min_p, top_p)) =
            on_device.then(|| sampler.whole_row_draw(vocab)).flatten()
        {
            RowWant::Draw(u, inv_t, min_p, top_p)
        } else {
            return whole;
        };
        RowPlan {
            want,
            adjust: sampler.logit_adjustments(history),
            logprobs,
            given: None,
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

/// The readback of a step whose logits rows are planned as `plans`, and where each row's
/// answer and its log-probabilities (an index into the readback's) are.
pub fn plan_readback(plans: &[RowPlan]) -> (MixedReadback, Vec<(RowAt, Option<usize>)>) {
    let mut what = MixedReadback::default();
    let mut at = vec![(RowAt::Argmax, None); plans.len()];
    for (r, plan) in plans.iter().enumerate() {
        what.adjust
            .extend(plan.adjust.iter().map(|&c| LogitAdjust { row: r, ..c }));
        if let Some(top) = plan.logprobs {
            at[r].1 = Some(what.logprobs.len());
            what.logprobs.push(LogprobRow {
                token: plan.given,
                ..LogprobRow::chosen(r, top)
            });
        }
        match plan.want {
            RowWant::Argmax => {}
            RowWant::TopK(k) => {
                at[r].0 = RowAt::Top(what.top.len());
                what.top.push(r);
                what.k = what.k.max(k);
            }
            RowWant::Draw(u, inv_temperature, min_weight, top_p) => {
                at[r].0 = RowAt::Drawn(what.draws.len());
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
