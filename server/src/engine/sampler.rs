//! Choosing the next token from logits: penalties and logit bias first, then greedy, or
//! temperature with top-k, top-p and min-p filtering, drawn from a seeded ChaCha8 stream so a
//! seed always gives the same tokens. Also the log-probabilities OpenAI's `logprobs` reports.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How to pick tokens. A temperature of 0 (or below) means greedy.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p ×` the most likely one; 0 keeps all.
    pub min_p: f32,
    pub seed: u64,
    /// OpenAI's: subtracted once per earlier occurrence of a token in the output.
    pub frequency_penalty: f32,
    /// OpenAI's: subtracted once from every token already in the output.
    pub presence_penalty: f32,
    /// Hugging Face's / llama.cpp's: logits of tokens seen in the prompt or output are divided
    /// by it (multiplied when negative); 1 disables.
    pub repetition_penalty: f32,
    /// Added to the logits of the given tokens.
    pub logit_bias: Vec<(u32, f32)>,
}

impl SamplingParams {
    /// Whether anything changes the logits before the choice.
    fn adjusts_logits(&self) -> bool {
        self.frequency_penalty != 0.0
            || self.presence_penalty != 0.0
            || self.repetition_penalty != 1.0
            || !self.logit_bias.is_empty()
    }
}

/// The tokens a sequence has seen, for the penalties.
#[derive(Debug, Clone, Default)]
pub struct TokenHistory {
    /// Occurrences of each token in the output so far.
    output: std::collections::HashMap<u32, u32>,
    /// Tokens of the prompt (only kept when a repetition penalty asks for them).
    prompt: std::collections::HashSet<u32>,
}

impl TokenHistory {
    /// A history for a prompt; `keep_prompt` when the repetition penalty needs it.
    pub fn new(prompt: &[u32], keep_prompt: bool) -> Self {
        Self {
            output: Default::default(),
            prompt: if keep_prompt {
                prompt.iter().copied().collect()
            } else {
                Default::default()
            },
        }
    }

    /// Records a generated token.
    pub fn push(&mut self, token: u32) {
        *self.output.entry(token).or_insert(0) += 1;
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: Vec::new(),
        }
    }
}

/// A sampler with its own random stream.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

/// The index of the largest value (the first one on ties), as llama.cpp's greedy sampler;
/// the rule every backend's `argmax_rows` follows.
pub fn argmax(logits: &[f32]) -> u32 {
    lowbit_gpu::argmax(logits)
}

impl Sampler {
    /// A sampler seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    /// Whether the choice is the plain argmax of the model's logits (greedy, nothing
    /// adjusting them), so that the argmax alone is enough.
    pub fn is_greedy(&self) -> bool {
        (self.params.temperature <= 0.0 || self.params.top_k == 1) && !self.params.adjusts_logits()
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// A uniform draw in `[0, 1)` with 24 bits of resolution.
    fn uniform(&mut self) -> f64 {
        f64::from(self.rng.next_u32() >> 8) / f64::from(1u32 << 24)
    }

    /// Picks the next token after applying the penalties and logit bias to a copy of the
    /// logits (the logits themselves stay as the model gave them, for `logprobs`).
    pub fn sample_with(&mut self, logits: &[f32], history: &TokenHistory) -> u32 {
        if !self.params.adjusts_logits() {
            return self.sample(logits);
        }
        let p = &self.params;
        let mut adjusted = logits.to_vec();
        if p.repetition_penalty != 1.0 {
            let r = p.repetition_penalty;
            for &t in history.prompt.iter().chain(history.output.keys()) {
                if let Some(v) = adjusted.get_mut(t as usize) {
                    *v = if *v > 0.0 { *v / r } else { *v * r };
                }
            }
        }
        for (&t, &count) in &history.output {
            if let Some(v) = adjusted.get_mut(t as usize) {
                *v -= p.frequency_penalty * count as f32 + p.presence_penalty;
            }
        }
        for &(t, bias) in &p.logit_bias {
            if let Some(v) = adjusted.get_mut(t as usize) {
                *v += bias;
            }
        }
        self.sample(&adjusted)
    }

    /// Picks the next token. Filters apply in Hugging Face's order: temperature, top-k, top-p,
    /// min-p.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature <= 0.0 || p.top_k == 1 {
            return argmax(logits);
        }
        let t = f64::from(p.temperature);
        let mut cand: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, &v)| (i as u32, f64::from(v) / t))
            .collect();
        if cand.is_empty() {
            return argmax(logits);
        }
        let by_logit_desc =
            |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            cand.truncate(p.top_k);
        }
        cand.sort_unstable_by(by_logit_desc);
        let max = cand[0].1;
        let mut sum = 0.0;
        for c in &mut cand {
            c.1 = (c.1 - max).exp();
            sum += c.1;
        }
        for c in &mut cand {
            c.1 /= sum;
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = cand.len();
            for (i, c) in cand.iter().enumerate() {
                acc += c.1;
                if acc >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            let floor = cand[0].1 * f64::from(p.min_p);
            cand.retain(|c| c.1 >= floor);
        }
        let total: f64 = cand.iter().map(|c| c.1).sum();
        let mut r = self.uniform() * total;
        for c in &cand {
            if r < c.1 {
                return c.0;
            }
            r -= c.1;
        }
        cand[cand.len() - 1].0
    }
}

/// Log-probabilities of a logits row: the chosen token's and the `top` most likely ones.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    /// Most likely first (ties by id).
    pub top: Vec<(u32, f32)>,
}

/// `log softmax(logits)` at `token`, with the `top` most likely alternatives, in float64.
pub fn logprobs(logits: &[f32], token: u32, top: usize) -> TokenLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let max = f64::from(max);
    let log_sum = logits
        .iter()
        .map(|&v| (f64::from(v) - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    let lp = |v: f32| (f64::from(v) - log_sum) as f32;
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let top = top.min(idx.len());
    if top > 0 && top < idx.len() {
        idx.select_nth_unstable_by(top - 1, by_logit);
    }
    idx.truncate(top);
    idx.sort_unstable_by(by_logit);
    TokenLogprobs {
        token,
        logprob: logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |&v| lp(v)),
        top: idx
            .into_iter()
            .map(|i| (i, lp(logits[i as usize])))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32, min_p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            seed,
            ..SamplingParams::default()
        }
    }

    #[test]
    fn penalties_and_bias_steer_greedy_choice() {
        let logits = [1.0f32, 3.0, 2.9, 0.5];
        let mut history = TokenHistory::new(&[0], true);
        history.push(1);
        let mut plain = Sampler::new(SamplingParams::default());
        assert_eq!(plain.sample_with(&logits, &history), 1);
        let mut presence = Sampler::new(SamplingParams {
            presence_penalty: 0.2,
            ..SamplingParams::default()
        });
        assert_eq!(presence.sample_with(&logits, &history), 2);
        history.push(1);
        let mut freq = Sampler::new(SamplingParams {
            frequency_penalty: 0.06,
            ..SamplingParams::default()
        });
        assert_eq!(freq.sample_with(&logits, &history), 2);
        let mut rep = Sampler::new(SamplingParams {
            repetition_penalty: 1.1,
            ..SamplingParams::default()
        });
        assert_eq!(rep.sample_with(&logits, &history), 2);
        let mut bias = Sampler::new(SamplingParams {
            logit_bias: vec![(3, 100.0), (99, 5.0)],
            ..SamplingParams::default()
        });
        assert_eq!(bias.sample_with(&logits, &history), 3);
    }

    #[test]
    fn logprobs_are_a_normalized_log_softmax_with_sorted_alternatives() {
        let logits = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY];
        let lp = logprobs(&logits, 0, 2);
        assert!((lp.logprob - 0.25f32.ln()).abs() < 1e-6);
        assert_eq!(lp.top.len(), 2);
        assert_eq!(lp.top[0].0, 1);
        assert!((lp.top[0].1 - 0.75f32.ln()).abs() < 1e-6);
        assert_eq!(lp.top[1].0, 0);
        assert_eq!(logprobs(&logits, 2, 0).logprob, f32::NEG_INFINITY);
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_other_seed_differs() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(1.0, 0, 1.0, 0.0, seed));
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn top_k_top_p_and_min_p_only_return_allowed_tokens() {
        // Probabilities after softmax at T=1: token 3 ≈ 0.64, 2 ≈ 0.24, 1 ≈ 0.09, 0 ≈ 0.03.
        let logits = [0.0f32, 1.0, 2.0, 3.0];
        let mut k2 = Sampler::new(params(1.0, 2, 1.0, 0.0, 1));
        let mut p70 = Sampler::new(params(1.0, 0, 0.7, 0.0, 2));
        let mut m30 = Sampler::new(params(1.0, 0, 1.0, 0.3, 3));
        let mut seen_k = std::collections::HashSet::new();
        for _ in 0..400 {
            seen_k.insert(k2.sample(&logits));
            assert!([2, 3].contains(&p70.sample(&logits)));
            assert!([2, 3].contains(&m30.sample(&logits)));
        }
        assert_eq!(seen_k, [2u32, 3].into_iter().collect());
    }

    #[test]
    fn sampling_frequencies_follow_the_softmax() {
        let logits = [0.0f32, (3.0f32).ln()]; // probabilities 1/4 and 3/4
        let mut s = Sampler::new(params(1.0, 0, 1.0, 0.0, 9));
        let n = 20_000;
        let ones = (0..n).filter(|_| s.sample(&logits) == 1).count();
        let freq = ones as f64 / n as f64;
        assert!((freq - 0.75).abs() < 0.02, "{freq}");
    }
}
