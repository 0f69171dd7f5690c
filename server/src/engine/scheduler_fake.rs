//! The fake model the scheduler tests run on, and their helpers: a model that reads its
//! tokens back through the block tables.

use super::*;
use crate::engine::blocks::BlockManager;
use crate::engine::detok::tests::Bytes;
use crate::model::{Logits, MixedReadback, MixedRows};
use tokio::sync::mpsc::UnboundedReceiver;

/// A model whose next token is a function of the tokens it reads back from its own fake
/// KV pool through the block tables: wrong tables, a missing copy or a block reused too
/// early all change the output.
pub(super) struct Fake {
    pub(super) kv: HashMap<(u32, usize), u32>,
    pub(super) bt: usize,
    /// With a window pool: the window its rows read there, and that pool's tokens. A row
    /// whose window holds anything but its sequence's tokens outputs a non-letter.
    pub(super) window: usize,
    pub(super) window_kv: HashMap<(u32, usize), u32>,
    pub(super) rows_per_step: Vec<usize>,
    /// Steps that read back only argmax ids (every sampling row greedy).
    pub(super) argmax_steps: usize,
    /// Steps that read back ids and some whole rows (greedy and sampled rows together).
    pub(super) mixed_steps: usize,
    /// Whether choices are made where the logits live (as on a GPU), and how many rows read
    /// back a top k.
    pub(super) on_device: bool,
    pub(super) top_rows: usize,
    /// Rows whose token was drawn where the logits live.
    pub(super) draw_rows: usize,
    /// Logit changes (penalties, bias) made where the logits live.
    pub(super) adjusted_logits: usize,
    /// Rows of mixed steps read back whole, and rows whose logprobs were computed where the
    /// logits live.
    pub(super) full_rows: usize,
    pub(super) logprob_rows: usize,
    /// Per mixed step, rows whose given (prompt) token's logprobs were computed.
    pub(super) prompt_rows_per_step: Vec<usize>,
    /// 0, or a period its output mostly repeats with ([`next_with`]).
    pub(super) period: usize,
}

pub(super) const VOCAB: usize = 128;

/// The next token after `tokens`: a letter, `a..=z`.
pub(super) fn next(tokens: &[u32]) -> u32 {
    next_with(tokens, 0)
}

/// [`next`], or with a `period`, the token `period` back, except at every fifth position
/// (text that prompt lookup mostly predicts).
pub(super) fn next_with(tokens: &[u32], period: usize) -> u32 {
    if period > 0 && tokens.len() >= period && !tokens.len().is_multiple_of(5) {
        return tokens[tokens.len() - period];
    }
    let h: u64 = tokens
        .iter()
        .enumerate()
        .map(|(j, &t)| u64::from(t) * (j as u64 + 1))
        .sum();
    97 + (h % 26) as u32
}

pub(super) fn reference(prompt: &[u32], max_tokens: usize) -> String {
    reference_with(prompt, max_tokens, 0)
}

pub(super) fn reference_with(prompt: &[u32], max_tokens: usize, period: usize) -> String {
    let mut t = prompt.to_vec();
    let mut out = String::new();
    for _ in 0..max_tokens {
        let n = next_with(&t, period);
        t.push(n);
        out.push(n as u8 as char);
    }
    out
}

impl StepModel for Fake {
    fn forward(&mut self, seqs: &[BatchSeq<'_>]) -> crate::model::Result<Logits> {
        self.rows_per_step
            .push(seqs.iter().map(|s| s.tokens.len()).sum());
        for s in seqs {
            for (t, &tok) in s.tokens.iter().enumerate() {
                let pos = s.pos_start + t;
                self.kv
                    .insert((s.blocks[pos / self.bt], pos % self.bt), tok);
                if self.window > 0 {
                    self.window_kv
                        .insert((s.window_blocks[pos / self.bt], pos % self.bt), tok);
                }
            }
        }
        let mut data = Vec::new();
        for s in seqs {
            for r in s.logits.clone() {
                let pos = s.pos_start + r;
                let seen: Vec<u32> = (0..=pos)
                    .map(|p| self.kv[&(s.blocks[p / self.bt], p % self.bt)])
                    .collect();
                let mut row = vec![0.0f32; VOCAB];
                let first = (pos + 1).saturating_sub(self.window);
                let window_ok = self.window == 0
                    || (first..=pos).all(|p| {
                        let at = (s.window_blocks[p / self.bt], p % self.bt);
                        self.window_kv.get(&at) == Some(&seen[p])
                    });
                let token = if window_ok {
                    next_with(&seen, self.period)
                } else {
                    1
                };
                row[token as usize] = 1.0;
                data.extend(row);
            }
        }
        Ok(Logits { vocab: VOCAB, data })
    }

    fn forward_mixed(
        &mut self,
        seqs: &[BatchSeq<'_>],
        what: &MixedReadback,
    ) -> crate::model::Result<MixedRows> {
        self.mixed_steps += 1;
        self.top_rows += what.top.len();
        self.draw_rows += what.draws.len();
        self.adjusted_logits += what.adjust.len();
        self.full_rows += what.full.len();
        self.logprob_rows += what.logprobs.len();
        let given = what.logprobs.iter().filter(|l| l.token.is_some()).count();
        self.prompt_rows_per_step.push(given);
        let logits = self.forward(seqs)?;
        Ok(crate::engine::step::mixed_rows(&logits, what))
    }

    fn chooses_on_device(&self) -> bool {
        self.on_device
    }

    fn vocab_size(&self) -> usize {
        VOCAB
    }

    fn forward_argmax(&mut self, seqs: &[BatchSeq<'_>]) -> crate::model::Result<Vec<u32>> {
        self.argmax_steps += 1;
        let logits = self.forward(seqs)?;
        Ok((0..logits.rows())
            .map(|r| lowbit_gpu::argmax(logits.row(r)))
            .collect())
    }

    fn copy_blocks(&mut self, copies: &BlockCopies) -> crate::model::Result<()> {
        for (pairs, kv) in [
            (&copies.main, &mut self.kv),
            (&copies.window, &mut self.window_kv),
        ] {
            for &(src, dst) in pairs {
                for slot in 0..self.bt {
                    if let Some(&t) = kv.get(&(src, slot)) {
                        kv.insert((dst, slot), t);
                    }
                }
            }
        }
        Ok(())
    }
}

pub(super) fn scheduler(blocks: usize, bt: usize, budget: usize, prefix: bool) -> Scheduler<Fake> {
    windowed_scheduler(blocks, None, bt, budget, prefix)
}

/// [`scheduler`] with, given `(window blocks, window)`, a window pool.
pub(super) fn windowed_scheduler(
    blocks: usize,
    window: Option<(usize, usize)>,
    bt: usize,
    budget: usize,
    prefix: bool,
) -> Scheduler<Fake> {
    let fake = Fake {
        kv: HashMap::new(),
        bt,
        window: window.map_or(0, |(_, w)| w),
        window_kv: HashMap::new(),
        rows_per_step: Vec::new(),
        argmax_steps: 0,
        mixed_steps: 0,
        on_device: false,
        top_rows: 0,
        draw_rows: 0,
        adjusted_logits: 0,
        full_rows: 0,
        logprob_rows: 0,
        prompt_rows_per_step: Vec::new(),
        period: 0,
    };
    let cfg = SchedulerConfig {
        max_batch_tokens: budget,
        max_concurrent_sequences: 64,
        max_model_len: blocks * bt,
        eos: vec![0],
        speculative: SpeculativeConfig::OFF,
    };
    let main = BlockManager::new(blocks, bt, prefix);
    let blocks = match window {
        Some((n, w)) => KvBlocks::with_window(main, BlockManager::new(n, bt, prefix), w),
        None => main.into(),
    };
    Scheduler::new(
        fake,
        cfg,
        blocks,
        std::sync::Arc::new(Bytes),
        Metrics::new(),
    )
}

pub(super) fn request(prompt: &[u32], max_tokens: usize, n: usize) -> GenerationRequest {
    GenerationRequest {
        id: "test".into(),
        prompt: prompt.to_vec(),
        n,
        max_tokens,
        sampling: SamplingParams::default(),
        stop: Vec::new(),
        stop_token_ids: Vec::new(),
        ignore_eos: false,
        min_tokens: 0,
        logprobs: None,
        prompt_logprobs: None,
        deadline: None,
        grammar: None,
    }
}

/// What a request received: each choice's text and finish reason, and the usage.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    pub(super) texts: Vec<String>,
    pub(super) reasons: Vec<Option<FinishReason>>,
    pub(super) usage: Option<Usage>,
    pub(super) error: Option<EngineFailure>,
    pub(super) prompt_logprobs: Option<Vec<TokenLogprobs>>,
}

pub(super) fn collect(rx: &mut UnboundedReceiver<Event>, n: usize) -> Outcome {
    let mut o = Outcome {
        texts: vec![String::new(); n],
        reasons: vec![None; n],
        ..Outcome::default()
    };
    let mut tokens = 0;
    while let Ok(e) = rx.try_recv() {
        match e {
            Event::Token { choice, text, .. } => {
                tokens += 1;
                o.texts[choice].push_str(&text);
            }
            Event::Finished {
                choice,
                reason,
                text,
            } => {
                o.texts[choice].push_str(&text);
                o.reasons[choice] = Some(reason);
            }
            Event::PromptLogprobs(lps) => {
                assert_eq!(tokens, 0, "the prompt's logprobs after a token");
                o.prompt_logprobs = Some(lps);
            }
            Event::Done(u) => o.usage = Some(u),
            Event::Error(e) => o.error = Some(e),
        }
    }
    o
}

/// Each token a request's one choice received, with its logprobs.
pub(super) fn token_events(rx: &mut UnboundedReceiver<Event>) -> Vec<(u32, Option<TokenLogprobs>)> {
    let mut tokens = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if let Event::Token {
            token, logprobs, ..
        } = e
        {
            tokens.push((token, logprobs));
        }
    }
    tokens
}

pub(super) fn run_all(s: &mut Scheduler<Fake>) {
    for _ in 0..10_000 {
        if !s.has_work() {
            return;
        }
        s.step();
    }
    panic!("the scheduler did not finish");
}

pub(super) fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| 1 + (seed * 31 + i * 7) % 90)
        .collect()
}
