//! Each step's tokens: the logits row of each plan entry, the tokens drawn from whole rows
//! (on the thread pool), and the emission of a chosen token (its event, stop strings, the
//! length limit) or of a prompt's log-probabilities.

use super::{EntryRows, Pick, Scheduler};
use crate::engine::grammar::Constraint;
use crate::engine::request::{Event, FinishReason};
use crate::engine::sampler::{Sampler, TokenHistory, TokenLogprobs};
use crate::engine::step::{StepModel, StepRows};
use crate::engine::stop::StopOutput;
use lowbit_gpu::token_logprobs;
use std::time::Instant;

/// For each plan entry, the row of the step's whole logits that is its sampling row, if it
/// has one there: every row of a full step, or the listed rows of a mixed step, in order.
pub(super) fn logits_rows(
    entries: &[EntryRows],
    rows: &StepRows,
    needs_logits: &[bool],
) -> Vec<Option<usize>> {
    // Each logits row's place among the whole rows.
    let mut seen = 0;
    let whole_at: Vec<Option<usize>> = needs_logits
        .iter()
        .map(|&whole| {
            seen += usize::from(whole);
            whole.then(|| seen - 1)
        })
        .collect();
    let mut next = 0;
    entries
        .iter()
        .map(|e| {
            next += e.count();
            // (A speculating entry's rows are checked against its drafts instead.)
            let row = (e.samples && e.drafts == 0).then(|| next - 1)?;
            match rows {
                StepRows::Tokens(_) => None,
                StepRows::Logits(_) => Some(row),
                StepRows::Mixed(..) => whole_at.get(row).copied().flatten(),
            }
        })
        .collect()
}

/// The token `sampler` draws from `logits`, among those `constraint` allows if it has one;
/// `None` if the grammar allows nothing (logged: the choice ends there).
pub(super) fn choose(
    sampler: &mut Sampler,
    history: &TokenHistory,
    constraint: Option<&mut Constraint>,
    logits: &[f32],
) -> Option<u32> {
    let Some(c) = constraint else {
        return Some(sampler.sample_with(logits, history));
    };
    // Most draws are tokens the grammar allows (free text, a JSON string's body): check the
    // one drawn before masking the whole vocabulary (≈ 0.5–1 ms for 49k tokens), where that
    // keeps the masked distribution (`draws_before_masking`), as llama.cpp's sampler does.
    if sampler.draws_before_masking() {
        let drawn = sampler.sample_with(logits, history);
        if c.allows(drawn) {
            return Some(drawn);
        }
    }
    match c.mask(logits) {
        Ok(masked) => Some(sampler.sample_with(masked, history)),
        Err(e) => {
            tracing::warn!("structured output: the grammar allows no next token: {e}");
            None
        }
    }
}

impl<M: StepModel> Scheduler<M> {
    /// The next token (and its logprobs, if asked) of every plan entry with its own logits
    /// row (`logits_at`), by plan position, drawn on the thread pool: at 16 sampled rows a
    /// step's draws (≈ 0.1 ms each) were serial work on the engine thread while the pool's
    /// other threads waited. Each sequence draws from its own random stream, so the tokens
    /// are the ones a serial loop would draw. Rows still to fork (`n > 1`) and rows of a
    /// request that is gone are left to [`Self::sample`].
    pub(super) fn sample_in_parallel(
        &mut self,
        plan: &[(usize, usize)],
        logits_at: &[Option<usize>],
        rows: &StepRows,
    ) -> Vec<Option<Pick>> {
        let mut picks = vec![None; plan.len()];
        let logits = match rows {
            StepRows::Logits(l) => l,
            StepRows::Mixed(m) => &m.logits,
            StepRows::Tokens(_) => return picks,
        };
        // Each running sequence's plan position and logits row, where it has one.
        let mut wanted: Vec<Option<(usize, usize)>> = vec![None; self.running.len()];
        for (p, (&(i, _), r)) in plan.iter().zip(logits_at).enumerate() {
            if let Some(r) = r {
                wanted[i] = Some((p, *r));
            }
        }
        struct Draw<'a> {
            at: usize,
            sampler: &'a mut Sampler,
            constraint: Option<&'a mut Constraint>,
            history: &'a TokenHistory,
            logits: &'a [f32],
            top_logprobs: Option<usize>,
            pick: Option<Pick>,
        }
        let groups = &self.groups;
        let mut draws: Vec<Draw<'_>> = self
            .running
            .iter_mut()
            .zip(wanted)
            .filter_map(|(s, w)| {
                let (at, r) = w.filter(|_| s.forks == 0)?;
                let g = groups.get(&s.group)?;
                Some(Draw {
                    at,
                    sampler: &mut s.sampler,
                    constraint: s.constraint.as_mut(),
                    history: &s.history,
                    logits: logits.row(r),
                    top_logprobs: g.req.logprobs,
                    pick: None,
                })
            })
            .collect();
        lowbit_gpu::cpu::pool::Pool::global().for_each_chunk_mut(&mut draws, 1, |_, d| {
            let d = &mut d[0];
            // A grammar that fails leaves the row to `sample`, which ends the choice.
            d.pick =
                choose(d.sampler, d.history, d.constraint.as_deref_mut(), d.logits).map(|token| {
                    (
                        token,
                        d.top_logprobs.map(|k| token_logprobs(d.logits, token, k)),
                    )
                });
        });
        for d in draws {
            picks[d.at] = d.pick;
        }
        picks
    }

    /// Samples the next token of running sequence `i` from its logits; `Some` if it ended
    /// (also when its grammar allows no token).
    pub(super) fn sample(&mut self, i: usize, row: &[f32]) -> Option<FinishReason> {
        self.groups.get(&self.running[i].group)?;
        let Some((token, lp)) = self.pick(i, row) else {
            return Some(FinishReason::Stop);
        };
        self.emit(i, token, lp)
    }

    /// The token running sequence `i` chooses from its logits `row` (and its logprobs, if
    /// its request asked), not yet emitted; `None` if its grammar allows no token.
    pub(super) fn pick(&mut self, i: usize, row: &[f32]) -> Option<Pick> {
        let s = &mut self.running[i];
        let top = self.groups.get(&s.group).and_then(|g| g.req.logprobs);
        let token = choose(&mut s.sampler, &s.history, s.constraint.as_mut(), row)?;
        Some((token, top.map(|k| token_logprobs(row, token, k))))
    }

    /// Sends running sequence `i`'s prompt log-probabilities once they are all computed.
    pub(super) fn send_prompt_logprobs(&mut self, i: usize) {
        let s = &mut self.running[i];
        let Some(p) = s.prompt_logprobs.take_if(|p| p.got.len() >= p.wanted) else {
            return;
        };
        if let Some(g) = self.groups.get(&s.group) {
            let _ = g.events.send(Event::PromptLogprobs(p.got));
        }
    }

    /// Ends running sequence `i` and the choices still to fork from it at its prompt
    /// (`max_tokens` 0: a request for the prompt's log-probabilities alone).
    pub(super) fn end_at_prompt(&mut self, i: usize) -> FinishReason {
        let s = &mut self.running[i];
        let forks = std::mem::take(&mut s.forks);
        if let Some(g) = self.groups.get_mut(&s.group) {
            for choice in 1..=forks {
                let _ = g.events.send(Event::Finished {
                    choice,
                    reason: FinishReason::Length,
                    text: String::new(),
                });
                g.unfinished -= 1;
            }
        }
        FinishReason::Length
    }

    /// Appends the chosen `token` to running sequence `i` and sends it; `Some` if it ended.
    pub(super) fn emit(
        &mut self,
        i: usize,
        token: u32,
        lp: Option<TokenLogprobs>,
    ) -> Option<FinishReason> {
        let s = &mut self.running[i];
        let g = self.groups.get_mut(&s.group)?;
        let now = Instant::now();
        if !g.first_token {
            g.first_token = true;
            self.metrics
                .time_to_first_token_seconds
                .observe(g.arrived.elapsed().as_secs_f64());
        }
        if let Some(t) = s.last_token_at {
            self.metrics
                .inter_token_latency_seconds
                .observe((now - t).as_secs_f64());
        }
        s.last_token_at = Some(now);
        s.generated += 1;
        self.metrics.generation_tokens_total.inc();
        // A grammar allows the end of sequence only where the output is complete: it ends
        // the choice even under `ignore_eos`.
        let stop_token = g.req.stop_token_ids.contains(&token)
            || ((!g.req.ignore_eos || s.constraint.is_some()) && self.cfg.eos.contains(&token));
        if stop_token {
            if lp.is_some() {
                let _ = g.events.send(Event::Token {
                    choice: s.choice,
                    token,
                    text: String::new(),
                    logprobs: lp,
                });
            }
            return Some(FinishReason::Stop);
        }
        s.tokens.push(token);
        s.history.push(token);
        let complete = s.constraint.as_mut().is_some_and(|c| c.accept(token));
        let text = s.detok.step(&*self.decoder, &s.tokens);
        // Under `min_tokens` no stop string ends the choice (as vLLM: its text is not matched).
        let out = if s.generated < g.req.min_tokens {
            StopOutput {
                text: s.stop.pass(&text),
                stopped: false,
            }
        } else {
            s.stop.push(&text)
        };
        let _ = g.events.send(Event::Token {
            choice: s.choice,
            token,
            text: out.text,
            logprobs: lp,
        });
        if out.stopped {
            s.stopped_by_string = true;
            Some(FinishReason::Stop)
        } else if complete {
            Some(FinishReason::Stop)
        } else if s.generated >= g.req.max_tokens || s.tokens.len() >= self.cfg.max_model_len {
            Some(FinishReason::Length)
        } else {
            None
        }
    }
}
