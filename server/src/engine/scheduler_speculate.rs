//! Speculative decoding in the scheduler (speculative.rs): a sequence in decode proposes
//! drafts when it is planned, and after the step its rows choose tokens one after another,
//! as plain decoding would, until a choice differs from the draft it predicts.
//!
//! A row's choice is made exactly as in plain decoding: the same sampler, drawing the same
//! next number of its random stream, after the same history (penalties), grammar state and
//! `min_tokens` count, because the tokens before it are emitted first. So a sampled
//! sequence's tokens are plain decoding's too — seeded, the same tokens; not only the same
//! distribution — and a draft is accepted with the probability the model gives it. Where
//! choices are made on a device (a GPU, readback.rs), only greedy sequences speculate: their
//! rows need only their argmax, while a device draw takes its random number when planned.

use super::{Scheduler, Sequence};
use crate::engine::request::FinishReason;
use crate::engine::speculative::propose;
use crate::engine::step::{StepModel, StepRows};

/// Logits row `r` of a step where the step brought it back whole (`whole`: a mixed step's
/// whole rows, in order).
fn whole_row<'a>(rows: &'a StepRows, whole: &[usize], r: usize) -> Option<&'a [f32]> {
    match rows {
        StepRows::Logits(l) => Some(l.row(r)),
        StepRows::Mixed(m) => whole.binary_search(&r).ok().map(|j| m.logits.row(j)),
        StepRows::Tokens(_) => None,
    }
}

/// The argmax of logits row `r` of a step, in whatever form the step gave it.
fn argmax_of(rows: &StepRows, r: usize) -> u32 {
    match rows {
        StepRows::Tokens(ids) => ids[r],
        StepRows::Mixed(m) => m.ids[r],
        StepRows::Logits(l) => lowbit_gpu::argmax(l.row(r)),
    }
}

impl<M: StepModel> Scheduler<M> {
    /// Whether sequence `s` may speculate: no forks or prompt log-probabilities still to
    /// come; where choices are made on a device, only a plain greedy choice (its argmax) with
    /// no logprobs or grammar (module doc).
    fn may_speculate(&self, s: &Sequence) -> bool {
        let Some(g) = self.groups.get(&s.group) else {
            return false;
        };
        s.forks == 0
            && s.prompt_logprobs.is_none()
            && (!self.model.chooses_on_device()
                || (s.sampler.is_greedy() && s.constraint.is_none() && g.req.logprobs.is_none()))
    }

    /// Gives running sequence `i`, planned to decode one token, up to `spare_rows` drafts if
    /// it may speculate, finds a match and free blocks for them (never a block another
    /// sequence or the prefix cache could use): pushes them onto its tokens and returns how
    /// many (0: it decodes as planned).
    pub(super) fn speculate(&mut self, i: usize, spare_rows: usize) -> usize {
        let s = &self.running[i];
        if s.tokens.len() != s.computed + 1 || !self.may_speculate(s) {
            return 0;
        }
        let Some(g) = self.groups.get(&s.group) else {
            return 0;
        };
        // Every draft accepted brings one more token: at most what the request and the
        // model's length still allow, less that one.
        let left = g
            .req
            .max_tokens
            .saturating_sub(s.generated)
            .min(self.cfg.max_model_len.saturating_sub(s.tokens.len()));
        let max = self
            .cfg
            .speculative
            .tokens
            .min(s.draft_limit.unwrap_or(usize::MAX))
            .min(spare_rows)
            .min(left.saturating_sub(1));
        let drafts = propose(&s.tokens, &self.cfg.speculative, max);
        if drafts.is_empty() {
            return 0;
        }
        let s = &mut self.running[i];
        if !self
            .blocks
            .grow_from_free(&mut s.blocks, s.computed + 1 + drafts.len())
        {
            return 0;
        }
        s.drafts = drafts.len();
        s.tokens.extend(drafts);
        s.drafts
    }

    /// Checks running sequence `i`'s drafts against rows `first..=first + drafts` of this
    /// step (`whole`: the rows a mixed step brought back whole), emitting each row's choice
    /// until one differs from its draft (or the choice ends); `Some` if it ended. Kept
    /// drafts keep their keys and values; the blocks past the sequence's tokens go back to
    /// the pool.
    pub(super) fn verify_drafts(
        &mut self,
        i: usize,
        rows: &StepRows,
        whole: &[usize],
        first: usize,
    ) -> Option<FinishReason> {
        let s = &mut self.running[i];
        let count = std::mem::take(&mut s.drafts);
        let drafts = s.tokens.split_off(s.tokens.len() - count);
        // The last token's keys and values are written: it is computed, as in any decode.
        s.computed += 1;
        let mut accepted = 0;
        let mut ended = None;
        for (j, draft) in drafts.iter().map(Some).chain([None]).enumerate() {
            let (token, lp) = match whole_row(rows, whole, first + j) {
                Some(row) => {
                    let Some(pick) = self.pick(i, row) else {
                        // The grammar allows nothing: the choice ends, as `sample` ends it.
                        ended = Some(FinishReason::Stop);
                        break;
                    };
                    pick
                }
                None => (argmax_of(rows, first + j), None),
            };
            let before = self.running[i].tokens.len();
            ended = self.emit(i, token, lp);
            // (Counted as vLLM counts it: the model chose the draft, even where that choice
            // ended the sequence.)
            if draft == Some(&token) {
                self.metrics
                    .spec_decode_num_accepted_tokens_per_pos_total
                    .with_label_values(&[&j.to_string()])
                    .inc();
                accepted += 1;
            }
            if ended.is_some() || self.running[i].tokens.len() == before || draft != Some(&token) {
                break;
            }
            // The row after it was computed from this very token: its keys and values hold.
            self.running[i].computed += 1;
        }
        self.metrics.spec_decode_num_drafts_total.inc();
        self.metrics
            .spec_decode_num_draft_tokens_total
            .inc_by(count as u64);
        self.metrics
            .spec_decode_num_accepted_tokens_total
            .inc_by(accepted);
        let s = &mut self.running[i];
        // The next draft is as long as this one's accepted run, plus one to probe; twice as
        // long after a draft accepted whole. Rejected rows are the price of speculation, and
        // a sequence that has stopped copying pays for one row a step, not for every draft.
        s.draft_limit = Some(if accepted == count as u64 {
            2 * count
        } else {
            accepted as usize + 1
        });
        self.blocks
            .register_full_blocks(&s.tokens, &s.blocks, s.computed);
        self.blocks.truncate(&mut s.blocks, s.tokens.len());
        ended
    }
}
