//! The continuous-batching scheduler: one step at a time, every running sequence decodes a
//! token and waiting ones join with chunks of their prompts, within a token budget, as one
//! forward over a ragged batch.
//!
//! A sequence's state is one number: `computed`, how many of its tokens have keys and values
//! in its blocks. Rows to compute are `tokens[computed..]` — a whole prompt, a chunk of it, the
//! last sampled token (decode), or everything again after a preemption — and when a step
//! reaches the last token, its logits choose the next one. Prefill, decode and recompute are
//! the same code. Choosing and sending each step's tokens: scheduler_emit.rs; choosing its
//! rows: scheduler_plan.rs.
//!
//! A request asking for its prompt's log-probabilities (`echo` with `logprobs`) also reads a
//! logits row at each prompt position: a plan entry's logits rows are those positions of its
//! chunk, then the row choosing the next token if the chunk ends its tokens ([`EntryRows`]).

use super::detok::{IncrementalDetok, TextDecoder};
use super::grammar::{Constraint, Grammar};
use super::kv_blocks::{BlockCopies, KvBlocks, PartialHit, SeqBlocks};
use super::readback::{plan_readback, RowAt, RowPlan, RowWant, TOP_K_READBACK_MAX};
use super::request::{EngineFailure, Event, FinishReason, GenerationRequest, Usage};
use super::sampler::{Sampler, SamplingParams, TokenHistory, TokenLogprobs};
use super::speculative::SpeculativeConfig;
use super::step::{StepModel, StepRows};
use super::stop::StopMatcher;
use crate::metrics::Metrics;
use crate::model::BatchSeq;
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// Limits of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Rows (tokens) of one forward step.
    pub max_batch_tokens: usize,
    /// Sequences running at once.
    pub max_concurrent_sequences: usize,
    /// Prompt plus generated tokens of one sequence.
    pub max_model_len: usize,
    /// End-of-sequence ids of the model.
    pub eos: Vec<u32>,
    /// Speculative decoding by prompt lookup (off by default).
    pub speculative: SpeculativeConfig,
}

/// A drawn token and its logprobs (when the request asked for them).
type Pick = (u32, Option<TokenLogprobs>);

/// Bytes of logits a step reads for prompt log-probabilities at most (one vocabulary row per
/// prompt token: 130 rows of Llama 3's 128,256 logits), within the 128 MiB every GPU adapter
/// can bind; a longer prompt takes several steps.
const PROMPT_LOGITS_BYTES_PER_STEP: usize = 64 << 20;

/// A prompt's log-probabilities (OpenAI's `echo` with `logprobs`), gathered as its chunks are
/// computed: `got[j]` is token `j + 1`'s, from the logits at position `j`.
struct PromptLogprobs {
    /// Alternatives per token.
    top: usize,
    /// Prompt tokens after the first: positions whose logits are read.
    wanted: usize,
    got: Vec<TokenLogprobs>,
}

/// One request while the engine works on it.
struct Group {
    req: GenerationRequest,
    events: UnboundedSender<Event>,
    arrived: Instant,
    /// Choices not yet finished.
    unfinished: usize,
    usage: Usage,
    started: bool,
    first_token: bool,
}

/// One choice of a request.
struct Sequence {
    group: u64,
    choice: usize,
    tokens: Vec<u32>,
    computed: usize,
    blocks: SeqBlocks,
    sampler: Sampler,
    history: TokenHistory,
    detok: IncrementalDetok,
    stop: StopMatcher,
    generated: usize,
    /// A stop string ended it: no text follows.
    stopped_by_string: bool,
    last_token_at: Option<Instant>,
    /// Choices still to fork from this one once its prompt is computed (`n > 1`).
    forks: usize,
    /// Until sent, the prompt's log-probabilities, if its request asked (choice 0 only).
    prompt_logprobs: Option<PromptLogprobs>,
    /// Where its output stands in its request's grammar (structured outputs).
    constraint: Option<Constraint>,
    /// Draft tokens at the end of `tokens`, proposed for this step and checked when it has
    /// run (scheduler_speculate.rs); 0 between steps.
    drafts: usize,
    /// Most drafts to propose next, from how its last draft fared (`None`: the configured).
    draft_limit: Option<usize>,
}

impl Sequence {
    /// Choice `choice` of a request, with nothing computed yet and no blocks; `eos` are the
    /// model's end-of-sequence ids.
    fn new(
        group: u64,
        choice: usize,
        req: &GenerationRequest,
        tokens: Vec<u32>,
        eos: &[u32],
    ) -> Self {
        let ends: &[u32] = if req.ignore_eos { &[] } else { eos };
        let banned = ends.iter().chain(&req.stop_token_ids).copied();
        Self {
            group,
            choice,
            tokens,
            computed: 0,
            blocks: SeqBlocks::default(),
            sampler: Sampler::new(choice_sampling(&req.sampling, choice))
                .with_min_tokens(req.min_tokens, banned),
            history: TokenHistory::new(&req.prompt, req.sampling.repetition_penalty != 1.0),
            detok: IncrementalDetok::new(req.prompt.len()),
            stop: StopMatcher::new(&req.stop),
            generated: 0,
            stopped_by_string: false,
            last_token_at: None,
            forks: 0,
            prompt_logprobs: None,
            constraint: req.grammar.as_ref().map(Grammar::start),
            drafts: 0,
            draft_limit: None,
        }
    }

    /// The positions, from the next one to compute on, whose logits its prompt's
    /// log-probabilities still need.
    fn prompt_positions(&self) -> Range<usize> {
        self.prompt_logprobs
            .as_ref()
            .map_or(0..0, |p| p.got.len().max(self.computed)..p.wanted)
    }

    /// `take` tokens of its next chunk, cut so that they need at most `rows` logits rows for
    /// its prompt's log-probabilities, and the rows they need.
    fn limit_prompt_rows(&self, take: usize, rows: usize) -> (usize, usize) {
        let want = self.prompt_positions();
        if want.is_empty() {
            return (take, 0);
        }
        let take = take.min(want.start - self.computed + rows);
        let used = (self.computed + take)
            .min(want.end)
            .saturating_sub(want.start);
        (take, used)
    }
}

/// The scheduler's state: the model, the blocks, the queues.
pub struct Scheduler<M: StepModel> {
    model: M,
    cfg: SchedulerConfig,
    blocks: KvBlocks,
    waiting: VecDeque<Sequence>,
    /// In admission order: the newest last (the first to be preempted).
    running: Vec<Sequence>,
    groups: HashMap<u64, Group>,
    next_group: u64,
    decoder: std::sync::Arc<dyn TextDecoder>,
    metrics: Metrics,
    /// Block copies `(from, to)` to make before the next forward (forks, partial prefix hits).
    copies: BlockCopies,
    /// Blocks referenced only until `copies` are made: the sources of partial prefix hits.
    copy_sources: Vec<PartialHit>,
    /// Logits rows a step reads for prompt log-probabilities at most.
    prompt_rows_per_step: usize,
}

/// What one step did, for the engine loop's bookkeeping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepStats {
    /// Rows computed.
    pub tokens: usize,
    /// Requests that started running this step (they leave the waiting count).
    pub started: usize,
    /// Requests that ended this step while still waiting (cancelled before starting).
    pub dropped_waiting: usize,
    /// Prompt tokens of those.
    pub dropped_waiting_tokens: usize,
    /// Prompt tokens of the requests that started.
    pub started_tokens: usize,
}

/// A chosen batch: `(index in running, rows)` per sequence, and what choosing it did.
#[derive(Debug)]
pub struct Planned {
    plan: Vec<(usize, usize)>,
    pub stats: StepStats,
}

fn choice_sampling(base: &SamplingParams, choice: usize) -> SamplingParams {
    SamplingParams {
        seed: base.seed.wrapping_add(choice as u64),
        ..base.clone()
    }
}

impl<M: StepModel> Scheduler<M> {
    /// A scheduler over `model` whose pool's block ids `blocks` hands out (a
    /// [`super::blocks::BlockManager`] for a pool without a window pool).
    pub fn new(
        model: M,
        cfg: SchedulerConfig,
        blocks: impl Into<KvBlocks>,
        decoder: std::sync::Arc<dyn TextDecoder>,
        metrics: Metrics,
    ) -> Self {
        let blocks = blocks.into();
        metrics.kv_blocks_total.set(blocks.main().total() as i64);
        if let Some(w) = blocks.window() {
            metrics.kv_window_blocks_total.set(w.total() as i64);
        }
        metrics
            .backend_info
            .with_label_values(&[&model.backend_name()])
            .set(1);
        // (At least one, or a prompt whose logprobs are asked would never advance.)
        let prompt_rows_per_step =
            (PROMPT_LOGITS_BYTES_PER_STEP / (4 * model.vocab_size().max(1))).max(1);
        let s = Self {
            model,
            cfg,
            blocks,
            waiting: VecDeque::new(),
            running: Vec::new(),
            groups: HashMap::new(),
            next_group: 0,
            decoder,
            metrics,
            copies: BlockCopies::default(),
            copy_sources: Vec::new(),
            prompt_rows_per_step,
        };
        s.update_gauges();
        s
    }

    /// Whether anything is queued or running.
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Requests not finished.
    pub fn requests(&self) -> usize {
        self.groups.len()
    }

    /// The block managers (tests, metrics).
    pub fn blocks(&self) -> &KvBlocks {
        &self.blocks
    }

    /// Queues a request; its events go to `events`.
    pub fn add(&mut self, req: GenerationRequest, events: UnboundedSender<Event>) {
        let id = self.next_group;
        self.next_group += 1;
        let mut seq = Sequence::new(id, 0, &req, req.prompt.clone(), &self.cfg.eos);
        seq.forks = req.n.saturating_sub(1);
        seq.prompt_logprobs = req.prompt_logprobs.map(|top| PromptLogprobs {
            top,
            wanted: req.prompt.len().saturating_sub(1),
            got: Vec::new(),
        });
        self.groups.insert(
            id,
            Group {
                usage: Usage {
                    prompt_tokens: req.prompt.len(),
                    ..Usage::default()
                },
                unfinished: req.n.max(1),
                req,
                events,
                arrived: Instant::now(),
                started: false,
                first_token: false,
            },
        );
        self.waiting.push_back(seq);
    }

    /// Runs one step: drops cancelled requests, plans a batch, runs it, emits events.
    pub fn step(&mut self) -> StepStats {
        let planned = self.schedule();
        self.execute(planned)
    }

    /// The first half of a step: drops cancelled requests and chooses the batch. The engine
    /// loop updates the waiting counters between the halves, so that admission on the HTTP
    /// side sees a request leave the queue before its first token arrives.
    pub fn schedule(&mut self) -> Planned {
        let mut stats = StepStats::default();
        self.reap(&mut stats);
        let plan = self.plan(&mut stats);
        // Admissions and preemptions show before this step's tokens reach anyone.
        self.update_gauges();
        Planned { plan, stats }
    }

    /// The second half of a step: runs the planned batch and emits its events.
    pub fn execute(&mut self, planned: Planned) -> StepStats {
        let Planned { plan, mut stats } = planned;
        if plan.is_empty() {
            return stats;
        }
        // What each logits row reads back (readback.rs): its argmax, its top k, a token drawn
        // where the logits live or all of it; penalties and bias are applied there first.
        let on_device = self.model.chooses_on_device();
        let top_k_max = if on_device { TOP_K_READBACK_MAX } else { 0 };
        let vocab = self.model.vocab_size();
        let entries: Vec<EntryRows> = plan.iter().map(|&(i, n)| self.entry_rows(i, n)).collect();
        // One per logits row, in the step's order.
        let mut plans: Vec<RowPlan> = Vec::new();
        for (&(i, _), e) in plan.iter().zip(&entries) {
            let groups = &self.groups;
            let s = &mut self.running[i];
            if let Some(p) = &s.prompt_logprobs {
                let next = |r: usize| s.tokens[s.computed + r + 1];
                plans.extend(e.prompt.clone().map(|r| RowPlan::prompt(next(r), p.top)));
            }
            if !e.samples {
                continue;
            }
            let Some(g) = groups.get(&s.group) else {
                // A request that is gone: its rows are read back whole and left unsampled.
                plans.extend(std::iter::repeat_n(RowPlan::whole(), e.drafts + 1));
                continue;
            };
            let row = RowPlan::of(
                &mut s.sampler,
                &s.history,
                s.forks > 0 || s.constraint.is_some(),
                g.req.logprobs,
                vocab,
                top_k_max,
                on_device,
            );
            // A draft's rows read back what its last does (drawn on the host: a device draw
            // is never planned for drafts, scheduler_speculate.rs).
            plans.extend(std::iter::repeat_n(row, e.drafts + 1));
        }
        let needs_logits: Vec<bool> = plans.iter().map(|p| p.want == RowWant::Logits).collect();
        let (mixed, row_at) = plan_readback(&plans);
        let copies = std::mem::take(&mut self.copies);
        let result = if copies.is_empty() {
            Ok(())
        } else {
            self.model.copy_blocks(&copies)
        };
        for source in std::mem::take(&mut self.copy_sources) {
            self.blocks.release_source(&source);
        }
        let result = result.and_then(|()| {
            let batch: Vec<BatchSeq<'_>> = plan
                .iter()
                .zip(&entries)
                .map(|(&(i, n), e)| {
                    let s = &self.running[i];
                    BatchSeq {
                        tokens: &s.tokens[s.computed..s.computed + n],
                        pos_start: s.computed,
                        blocks: &s.blocks.main,
                        window_blocks: &s.blocks.window,
                        logits: e.logits(n),
                    }
                })
                .collect();
            // A panic in the compute layer is a bug, but it fails this step's requests, not
            // the server.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if mixed.full.is_empty()
                    && mixed.top.is_empty()
                    && mixed.draws.is_empty()
                    && mixed.adjust.is_empty()
                    && mixed.logprobs.is_empty()
                {
                    self.model.forward_argmax(&batch).map(StepRows::Tokens)
                } else if mixed.full.len() == needs_logits.len() {
                    self.model.forward(&batch).map(StepRows::Logits)
                } else {
                    self.model
                        .forward_mixed(&batch, &mixed)
                        .map(StepRows::Mixed)
                }
            }))
            .unwrap_or_else(
                |_| Err(lowbit_gpu::Error::Internal("the forward step panicked").into()),
            )
            .and_then(|rows| {
                // Every row asked for, or the loop below would index past them.
                let want: usize = batch.iter().map(|b| b.logits.len()).sum();
                let ok = match &rows {
                    StepRows::Logits(l) => l.rows() == want,
                    StepRows::Tokens(ids) => ids.len() == want,
                    StepRows::Mixed(m) => {
                        m.ids.len() == want
                            && m.logits.rows() == mixed.full.len()
                            && m.top.len() == mixed.top.len()
                            && m.drawn.len() == mixed.draws.len()
                            && m.logprobs.len() == mixed.logprobs.len()
                    }
                };
                if ok {
                    Ok(rows)
                } else {
                    Err(lowbit_gpu::Error::Internal("the step returned the wrong row count").into())
                }
            })
        });
        let rows = match result {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("forward step failed: {e}");
                let mut groups: Vec<u64> =
                    plan.iter().map(|&(i, _)| self.running[i].group).collect();
                groups.sort_unstable();
                groups.dedup();
                for g in groups {
                    self.fail_group(g, EngineFailure::Internal(e.to_string()));
                }
                self.update_gauges();
                return stats;
            }
        };
        stats.tokens = plan.iter().map(|&(_, n)| n).sum();
        let logits_at = emit::logits_rows(&entries, &rows, &needs_logits);
        let mut picks = self.sample_in_parallel(&plan, &logits_at, &rows);
        let mut first_row = 0;
        let mut finished = Vec::new();
        let mut forks = Vec::new();
        for (p, (&(i, n), e)) in plan.iter().zip(&entries).enumerate() {
            let prompt_rows = first_row..first_row + e.prompt.len();
            first_row += e.count();
            if e.drafts > 0 {
                let first = first_row - e.drafts - 1;
                if let Some(reason) = self.verify_drafts(i, &rows, &mixed.full, first) {
                    finished.push((i, reason));
                }
                continue;
            }
            let s = &mut self.running[i];
            s.computed += n;
            self.blocks
                .register_full_blocks(&s.tokens, &s.blocks, s.computed);
            if let (StepRows::Mixed(m), Some(lps)) = (&rows, &mut s.prompt_logprobs) {
                let at = prompt_rows.filter_map(|r| row_at[r].1.and_then(|j| m.logprobs.get(j)));
                lps.got.extend(at.cloned());
            }
            self.send_prompt_logprobs(i);
            let s = &mut self.running[i];
            if s.computed < s.tokens.len() {
                continue;
            }
            if !e.samples {
                // `max_tokens` 0: the prompt alone (its log-probabilities).
                finished.push((i, self.end_at_prompt(i)));
                continue;
            }
            let row = first_row - 1;
            let logits_row = match (&rows, logits_at[p]) {
                (StepRows::Logits(l), Some(r)) => Some(l.row(r)),
                (StepRows::Mixed(m), Some(r)) => Some(m.logits.row(r)),
                _ => None,
            };
            let ended = match (logits_row, &rows, picks[p].take()) {
                // Sampled already, with the other rows (below).
                (Some(_), _, Some((token, lp))) => self.emit(i, token, lp),
                (Some(logits_row), _, None) => {
                    if s.forks > 0 {
                        forks.extend(self.fork(i, logits_row));
                    }
                    self.sample(i, logits_row)
                }
                (None, StepRows::Mixed(m), _) => {
                    let (at, logprobs_at) = row_at[row];
                    let lp = logprobs_at.and_then(|j| m.logprobs.get(j).cloned());
                    match at {
                        RowAt::Top(j) => {
                            let token = s.sampler.sample_top(&m.top[j], m.ids[row]);
                            self.emit(i, token, lp)
                        }
                        RowAt::Drawn(j) => self.emit(i, m.drawn[j], lp),
                        RowAt::Argmax => self.emit(i, m.ids[row], lp),
                    }
                }
                (None, StepRows::Tokens(ids), _) => self.emit(i, ids[row], None),
                (None, StepRows::Logits(_), _) => None,
            };
            if let Some(reason) = ended {
                finished.push((i, reason));
            }
        }
        // Forks joined the running list at its end: their indices follow the plan's.
        let base = self.running.len();
        for (k, (mut seq, token_row)) in forks.into_iter().enumerate() {
            let i = base + k;
            seq.last_token_at = None;
            self.running.push(seq);
            if let Some(reason) = self.sample(i, &token_row) {
                finished.push((i, reason));
            }
        }
        self.finish(finished);
        self.update_gauges();
        stats
    }

    /// Ends requests whose client went away or whose deadline passed.
    fn reap(&mut self, stats: &mut StepStats) {
        let now = Instant::now();
        let dead: Vec<(u64, bool)> = self
            .groups
            .iter()
            .filter_map(|(&id, g)| {
                if g.events.is_closed() {
                    Some((id, false))
                } else if g.req.deadline.is_some_and(|d| now >= d) {
                    Some((id, true))
                } else {
                    None
                }
            })
            .collect();
        for (id, timed_out) in dead {
            if let Some(g) = self.groups.get(&id) {
                if !g.started {
                    stats.dropped_waiting += 1;
                    stats.dropped_waiting_tokens += g.req.prompt.len();
                }
            }
            if timed_out {
                self.fail_group(id, EngineFailure::Timeout);
            } else {
                if let Some(g) = self.groups.get(&id) {
                    tracing::info!(request_id = %g.req.id, "client gone: cancelled");
                }
                self.drop_group(id);
                self.metrics
                    .request_success_total
                    .with_label_values(&["abort"])
                    .inc();
            }
        }
    }

    /// Removes every sequence of a request and frees its blocks.
    fn drop_group(&mut self, id: u64) {
        let blocks = &mut self.blocks;
        let mut keep = |s: &mut Sequence| {
            if s.group == id {
                blocks.release(&mut s.blocks);
            }
            s.group != id
        };
        self.running.retain_mut(&mut keep);
        self.waiting.retain_mut(&mut keep);
        self.groups.remove(&id);
        self.update_gauges();
    }

    fn fail_group(&mut self, id: u64, why: EngineFailure) {
        let Some(events) = self.groups.get(&id).map(|g| {
            tracing::warn!(request_id = %g.req.id, "request failed: {why}");
            g.events.clone()
        }) else {
            return;
        };
        self.drop_group(id);
        self.metrics
            .request_success_total
            .with_label_values(&["abort"])
            .inc();
        let _ = events.send(Event::Error(why));
    }

    /// Ends the given running sequences (indices into `running`), frees their blocks, and
    /// closes requests whose choices have all ended.
    fn finish(&mut self, mut finished: Vec<(usize, FinishReason)>) {
        finished.sort_by_key(|&(i, _)| std::cmp::Reverse(i));
        for (i, reason) in finished {
            let mut s = self.running.remove(i);
            self.blocks.release(&mut s.blocks);
            let Some(g) = self.groups.get_mut(&s.group) else {
                continue;
            };
            // Text still held back (an incomplete character, a possible stop string) is
            // released, unless a stop string ended the choice.
            let mut text = String::new();
            if !s.stopped_by_string {
                let rest = s.detok.finish(&*self.decoder, &s.tokens);
                let out = s.stop.push(&rest);
                text = out.text;
                if !out.stopped {
                    text.push_str(&s.stop.flush());
                }
            }
            let _ = g.events.send(Event::Finished {
                choice: s.choice,
                reason,
                text,
            });
            g.usage.completion_tokens += s.generated;
            g.unfinished -= 1;
            if g.unfinished == 0 {
                let (events, usage, arrived) = (g.events.clone(), g.usage, g.arrived);
                tracing::info!(
                    request_id = %g.req.id,
                    prompt_tokens = usage.prompt_tokens,
                    cached_tokens = usage.cached_tokens,
                    completion_tokens = usage.completion_tokens,
                    seconds = arrived.elapsed().as_secs_f64(),
                    finish_reason = reason.as_str(),
                    "request done"
                );
                // Blocks and gauges are up to date before the client hears it is done.
                self.drop_group(s.group);
                self.metrics
                    .request_success_total
                    .with_label_values(&[reason.as_str()])
                    .inc();
                self.metrics
                    .e2e_request_latency_seconds
                    .observe(arrived.elapsed().as_secs_f64());
                let _ = events.send(Event::Done(usage));
            }
        }
    }

    fn update_gauges(&self) {
        self.metrics
            .num_requests_running
            .set(self.running.len() as i64);
        let main = self.blocks.main();
        self.metrics.kv_blocks_in_use.set(main.in_use() as i64);
        let total = main.total().max(1) as f64;
        self.metrics
            .kv_cache_usage_perc
            .set(main.in_use() as f64 / total);
        if let Some(w) = self.blocks.window() {
            self.metrics.kv_window_blocks_in_use.set(w.in_use() as i64);
        }
        for (kind, bytes) in self.model.device_memory() {
            self.metrics
                .device_memory_bytes
                .with_label_values(&[kind])
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }
}

#[path = "scheduler_emit.rs"]
mod emit;
#[path = "scheduler_plan.rs"]
mod plan;
use plan::EntryRows;
#[path = "scheduler_speculate.rs"]
mod speculate;

#[cfg(test)]
#[path = "scheduler_fake.rs"]
mod fake;
#[cfg(test)]
#[path = "scheduler_grammar_tests.rs"]
mod grammar_tests;
#[cfg(test)]
#[path = "scheduler_min_tokens_tests.rs"]
mod min_tokens_tests;
#[cfg(test)]
#[path = "scheduler_prompt_tests.rs"]
mod prompt_tests;
#[cfg(test)]
#[path = "scheduler_speculate_tests.rs"]
mod speculate_tests;
#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
#[cfg(test)]
#[path = "scheduler_window_tests.rs"]
mod window_tests;
