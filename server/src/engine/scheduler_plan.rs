//! The scheduler's choice of rows for a step: running sequences first (preempting the newest
//! when the pool runs dry), then waiting ones within the token budget, each admitted with
//! its prefix-cache hit (whole blocks shared, the head of a partial match copied); and the
//! forks of `n > 1` requests once their prompt is computed.

use super::{Scheduler, Sequence, StepStats};
use crate::engine::step::StepModel;
use std::ops::Range;

/// The logits rows of a plan entry `(i, n)`: positions of its chunk (relative to it) whose
/// next prompt token's log-probability is wanted, then, if `samples`, the last row, which
/// chooses the sequence's next token. The first range ends where the last row is, so the
/// rows are one range of the chunk. A speculating entry's chunk ends with `drafts` draft
/// tokens, and each of its last `drafts + 1` rows chooses a token (no prompt rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EntryRows {
    pub(super) prompt: Range<usize>,
    pub(super) samples: bool,
    pub(super) drafts: usize,
}

impl EntryRows {
    pub(super) fn count(&self) -> usize {
        self.prompt.len() + usize::from(self.samples) + self.drafts
    }

    /// The rows of a chunk of `n` tokens, as [`BatchSeq::logits`] wants them.
    pub(super) fn logits(&self, n: usize) -> Range<usize> {
        match (self.samples, self.prompt.is_empty()) {
            (true, true) => n - 1 - self.drafts..n,
            (true, false) => self.prompt.start..n,
            (false, _) => self.prompt.clone(),
        }
    }
}

impl<M: StepModel> Scheduler<M> {
    /// Chooses this step's rows: `(index in running, rows)`.
    pub(super) fn plan(&mut self, stats: &mut StepStats) -> Vec<(usize, usize)> {
        let mut budget = self.cfg.max_batch_tokens.max(1);
        // Logits rows left for prompt log-probabilities.
        let mut prompt_rows = self.prompt_rows_per_step;
        let mut plan = Vec::new();
        let speculating = self.cfg.speculative.enabled()
            && self.running.len() <= self.cfg.speculative.max_running;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let s = &self.running[i];
            let (take, rows) =
                s.limit_prompt_rows((s.tokens.len() - s.computed).min(budget), prompt_rows);
            if take == 0 {
                // Its prompt's next rows wait for the next step.
                i += 1;
                continue;
            }
            let (computed, target) = (s.computed, s.computed + take);
            // Window blocks its rows no longer see go back before it grows.
            self.blocks.slide(&mut self.running[i].blocks, computed);
            let mut scheduled = true;
            while !self.blocks.grow(&mut self.running[i].blocks, target) {
                // Out of blocks: preempt the newest sequence, possibly this one.
                let victim = self.running.len() - 1;
                self.preempt(victim);
                if victim == i {
                    scheduled = false;
                    break;
                }
            }
            if !scheduled {
                break;
            }
            plan.push((i, take));
            budget -= take;
            prompt_rows -= rows;
            i += 1;
        }
        while budget > 0 && self.running.len() < self.cfg.max_concurrent_sequences.max(1) {
            let Some(front) = self.waiting.front() else {
                break;
            };
            let take_for = |s: &Sequence| {
                s.limit_prompt_rows((s.tokens.len() - s.computed).min(budget), prompt_rows)
            };
            if take_for(front).0 == 0 {
                break;
            }
            // Enough blocks for its first chunk even without a prefix hit, or wait.
            let first = (front.tokens.len() - front.computed).min(budget) + front.computed;
            if !self.blocks.can_admit(&front.blocks, front.computed, first) {
                break;
            }
            let Some(mut s) = self.waiting.pop_front() else {
                break;
            };
            let bt = self.blocks.block_tokens();
            // A prompt whose log-probabilities are wanted computes every position's logits.
            let (looked_up, mut partial) = (
                s.blocks.is_empty() && s.computed == 0 && s.prompt_logprobs.is_none(),
                None,
            );
            if looked_up {
                let hit = self.blocks.lookup_prefix(&s.tokens);
                s.computed = hit.positions(bt);
                s.blocks = hit.blocks;
                partial = hit.partial;
            }
            let shared_blocks = s.blocks.len();
            let target = s.computed + take_for(&s).0;
            let mut grown = self.blocks.grow(&mut s.blocks, target);
            if !grown {
                if let Some(p) = partial.take() {
                    // The partial hit's source is a block the pool cannot hand out meanwhile:
                    // a request that needs every block would wait for ever. Compute those
                    // tokens instead.
                    self.blocks.release_source(&p);
                    self.blocks.uncount_lookup(0, p.tokens);
                    s.computed = shared_blocks * bt;
                    let target = s.computed + take_for(&s).0;
                    grown = self.blocks.grow(&mut s.blocks, target);
                }
            }
            if !grown {
                self.blocks.release(&mut s.blocks);
                if looked_up {
                    // Looked up again when it is retried: counted then.
                    self.blocks.uncount_lookup(s.tokens.len(), s.computed);
                }
                s.computed = 0;
                self.waiting.push_front(s);
                break;
            }
            let (take, rows) = take_for(&s);
            prompt_rows -= rows;
            if let Some(p) = partial {
                // The block after the shared ones (just allocated: at least one token of it
                // is computed now) starts as a copy of the cached block's head.
                self.copies
                    .main
                    .push((p.source, s.blocks.main[shared_blocks]));
                if let Some(ws) = p.window_source {
                    self.copies
                        .window
                        .push((ws, s.blocks.window[shared_blocks]));
                }
                self.copy_sources.push(p);
            }
            if let Some(g) = self.groups.get_mut(&s.group) {
                if !g.started {
                    g.started = true;
                    g.usage.cached_tokens = s.computed;
                    stats.started += 1;
                    stats.started_tokens += g.req.prompt.len();
                    self.metrics
                        .request_queue_time_seconds
                        .observe(g.arrived.elapsed().as_secs_f64());
                    self.metrics
                        .prompt_tokens_total
                        .inc_by(g.req.prompt.len() as u64);
                }
            }
            self.running.push(s);
            plan.push((self.running.len() - 1, take));
            budget -= take;
        }
        // Drafts last, from what the step has left: rows no decode or prompt chunk wanted and
        // free blocks, so that speculation never delays, preempts or evicts anything.
        if speculating {
            for entry in &mut plan {
                if budget == 0 {
                    break;
                }
                if entry.1 == 1 {
                    let drafts = self.speculate(entry.0, budget);
                    entry.1 += drafts;
                    budget -= drafts;
                }
            }
        }
        let p = self.blocks.stats();
        self.metrics
            .prefix_cache_queries_total
            .inc_by(p.queried_tokens - self.metrics.prefix_cache_queries_total.get());
        self.metrics
            .prefix_cache_hits_total
            .inc_by(p.hit_tokens - self.metrics.prefix_cache_hits_total.get());
        plan
    }

    /// The logits rows of plan entry `(i, n)` (see [`EntryRows`]).
    pub(super) fn entry_rows(&self, i: usize, n: usize) -> EntryRows {
        let s = &self.running[i];
        let want = s.prompt_positions();
        let end = want.end.min(s.computed + n);
        let prompt = if want.start < end {
            want.start - s.computed..end - s.computed
        } else {
            0..0
        };
        // (A request that is gone still gets its row, read back whole and left unsampled.)
        let samples = s.computed + n == s.tokens.len()
            && self
                .groups
                .get(&s.group)
                .is_none_or(|g| g.req.max_tokens > 0);
        debug_assert!(!samples || prompt.is_empty() || prompt.end == n - 1);
        debug_assert!(s.drafts == 0 || (samples && prompt.is_empty()));
        EntryRows {
            prompt,
            samples,
            drafts: s.drafts,
        }
    }

    /// Frees a running sequence's blocks and puts it first in the queue, to be recomputed.
    pub(super) fn preempt(&mut self, i: usize) {
        let mut s = self.running.remove(i);
        s.tokens
            .truncate(s.tokens.len() - std::mem::take(&mut s.drafts));
        tracing::info!(
            request_id = %self.groups.get(&s.group).map_or("", |g| g.req.id.as_str()),
            tokens = s.tokens.len(),
            "preempted: out of KV blocks"
        );
        self.blocks.release(&mut s.blocks);
        s.computed = 0;
        self.metrics.num_preemptions_total.inc();
        self.waiting.push_front(s);
    }

    /// The other choices of sequence `i`, whose prompt has just been computed: full blocks
    /// shared, the partial last block copied (or the prompt recomputed if no block is free).
    pub(super) fn fork(&mut self, i: usize, logits_row: &[f32]) -> Vec<(Sequence, Vec<f32>)> {
        let n = std::mem::take(&mut self.running[i].forks);
        let bt = self.blocks.block_tokens();
        let mut out = Vec::new();
        let mut queued = Vec::new();
        for c in 1..=n {
            let (group, tokens, computed, parent_blocks) = {
                let s = &self.running[i];
                (s.group, s.tokens.clone(), s.computed, s.blocks.clone())
            };
            let Some(g) = self.groups.get(&group) else {
                break;
            };
            let full = computed / bt;
            let mut seq = Sequence::new(group, c, &g.req, tokens, &self.cfg.eos);
            // The partial last block is copied; without a free block for the copy the fork
            // waits holding nothing and recomputes its prompt (or finds it in the prefix
            // cache). A waiting fork that held the shared blocks could deadlock the pool: the
            // queue's head waits for blocks that the forks behind it hold.
            let copy = if computed % bt != 0 {
                match self.blocks.allocate() {
                    Some(copy) => Some(copy),
                    None => {
                        queued.push(seq);
                        continue;
                    }
                }
            } else {
                None
            };
            let mut blocks = self.blocks.share(&parent_blocks, full);
            if let Some((copy, window_copy)) = copy {
                self.copies.main.push((parent_blocks.main[full], copy));
                blocks.main.push(copy);
                if let Some(w) = window_copy {
                    self.copies.window.push((parent_blocks.window[full], w));
                    blocks.window.push(w);
                }
            }
            seq.computed = computed;
            seq.blocks = blocks;
            out.push((seq, logits_row.to_vec()));
        }
        for s in queued.into_iter().rev() {
            self.waiting.push_front(s);
        }
        out
    }
}
