//! Generating one sequence: prefill the prompt, then decode token by token.

use super::sampler::{Sampler, SamplingParams};
use super::solo::SoloKv;
use crate::model::{BatchSeq, Llama, ModelError, Result};
use std::time::Instant;

/// Limits and sampling of one generation.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// `max_tokens` were generated.
    Length,
    /// The model's context window is full.
    ContextFull,
    /// The token callback asked to stop.
    Cancelled,
}

/// The outcome of [`generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids, without the final end-of-sequence token.
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    /// Seconds to process the prompt and pick the first token.
    pub prompt_seconds: f64,
    /// Seconds for the tokens after the first.
    pub decode_seconds: f64,
}

/// Generates from `prompt`, calling `on_token` with each new id (return `false` to stop).
/// Generation stops at any id in `eos`.
pub fn generate(
    model: &Llama,
    prompt: &[u32],
    eos: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(ModelError::Tokenizer(
            "the prompt is empty: it must hold at least one token".into(),
        ));
    }
    let ctx = model.config().context_length;
    if prompt.len() >= ctx {
        return Err(ModelError::Tokenizer(format!(
            "the prompt has {} tokens; the model's context holds {ctx}",
            prompt.len()
        )));
    }
    let mut sampler = Sampler::new(opts.sampling.clone());
    let mut kv = SoloKv::new(model, 1, (prompt.len() + opts.max_tokens).min(ctx))?;
    let mut tokens = Vec::new();
    let start = Instant::now();
    let mut prompt_seconds = 0.0;
    let mut input: Vec<u32> = prompt.to_vec();
    let mut pos = 0;
    let stop = loop {
        if tokens.len() >= opts.max_tokens {
            break StopReason::Length;
        }
        if pos + input.len() > ctx {
            break StopReason::ContextFull;
        }
        let seq = BatchSeq {
            tokens: &input,
            pos_start: pos,
            blocks: &kv.tables[0],
            window_blocks: &[],
            logits: input.len() - 1..input.len(),
        };
        let next = if sampler.is_greedy() {
            model.forward_argmax(&[seq], &mut kv.pool)?[0]
        } else {
            sampler.sample(model.forward(&[seq], &mut kv.pool)?.row(0))
        };
        pos += input.len();
        if pos == prompt.len() {
            prompt_seconds = start.elapsed().as_secs_f64();
        }
        if eos.contains(&next) {
            break StopReason::Eos;
        }
        tokens.push(next);
        if !on_token(next) {
            break StopReason::Cancelled;
        }
        input = vec![next];
    };
    let total = start.elapsed().as_secs_f64();
    Ok(Generation {
        tokens,
        stop,
        prompt_seconds,
        decode_seconds: (total - prompt_seconds).max(0.0),
    })
}
