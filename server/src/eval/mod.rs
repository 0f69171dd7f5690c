//! Perplexity, computed exactly as llama.cpp's `llama-perplexity` does so the figures compare:
//! the text is tokenized whole (no BOS), cut into consecutive windows of `ctx` tokens (the
//! remainder dropped); if the model adds BOS, each window's first token is replaced by BOS;
//! only the second half of each window is scored (predictions at positions `ctx/2 … ctx−2`).

pub mod kl;

use crate::model::{BatchSeq, Llama, ModelError, Result};

/// The outcome of a perplexity run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PerplexityReport {
    pub ctx: usize,
    pub windows: usize,
    pub scored_tokens: usize,
    pub perplexity: f64,
    /// Standard error of the perplexity estimate (as llama.cpp prints it).
    pub perplexity_stderr: f64,
    /// Mean negative log-likelihood, nats per token.
    pub mean_nll: f64,
    pub seconds: f64,
}

/// `log Σ exp(x) − x[target]`, in f64.
pub fn negative_log_likelihood(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    max + sum.ln() - logits[target as usize] as f64
}

/// Scores `tokens` in windows of `ctx`; `bos` replaces each window's first token when given.
/// `max_windows` limits the run (0 = all). `progress` sees (window, running perplexity).
pub fn perplexity(
    model: &Llama,
    tokens: &[u32],
    ctx: usize,
    bos: Option<u32>,
    max_windows: usize,
    progress: impl FnMut(usize, f64),
) -> Result<PerplexityReport> {
    perplexity_with_logits(model, tokens, ctx, bos, max_windows, progress, |_| Ok(()))
}

/// As [`perplexity`], handing every scored row of logits to `each_row`, in order (for KL
/// divergence against a base model).
pub fn perplexity_with_logits(
    model: &Llama,
    tokens: &[u32],
    ctx: usize,
    bos: Option<u32>,
    max_windows: usize,
    mut progress: impl FnMut(usize, f64),
    mut each_row: impl FnMut(&[f32]) -> Result<()>,
) -> Result<PerplexityReport> {
    if ctx < 4 {
        return Err(ModelError::Tokenizer(format!(
            "--ctx {ctx} is too small (at least 4)"
        )));
    }
    let mut windows = tokens.len() / ctx;
    if max_windows > 0 {
        windows = windows.min(max_windows);
    }
    if windows == 0 {
        return Err(ModelError::Tokenizer(format!(
            "the text has {} tokens, fewer than one window of {ctx}",
            tokens.len()
        )));
    }
    let start = std::time::Instant::now();
    let first = ctx / 2;
    // One sequence's blocks, rewritten by every window (each starts at position 0).
    let mut kv = crate::engine::solo::SoloKv::new(model, 1, ctx)?;
    let (mut nll_sum, mut nll2_sum, mut count) = (0.0f64, 0.0f64, 0usize);
    for w in 0..windows {
        let mut window = tokens[w * ctx..(w + 1) * ctx].to_vec();
        if let Some(b) = bos {
            window[0] = b;
        }
        let seq = BatchSeq {
            tokens: &window,
            pos_start: 0,
            blocks: &kv.tables[0],
            window_blocks: &[],
            logits: first..ctx - 1,
        };
        let logits = model.forward(&[seq], &mut kv.pool)?;
        for (i, pos) in (first..ctx - 1).enumerate() {
            each_row(logits.row(i))?;
            let nll = negative_log_likelihood(logits.row(i), window[pos + 1]);
            nll_sum += nll;
            nll2_sum += nll * nll;
            count += 1;
        }
        progress(w + 1, (nll_sum / count as f64).exp());
    }
    let mean = nll_sum / count as f64;
    let var = (nll2_sum / count as f64 - mean * mean).max(0.0);
    let ppl = mean.exp();
    Ok(PerplexityReport {
        ctx,
        windows,
        scored_tokens: count,
        perplexity: ppl,
        perplexity_stderr: ppl * (var / (count as f64 - 1.0).max(1.0)).sqrt(),
        mean_nll: mean,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_of_uniform_logits_is_log_vocab() {
        let v = negative_log_likelihood(&[0.5; 8], 3);
        assert!((v - 8f64.ln()).abs() < 1e-12);
    }
}
