//! Choosing the next token from logits: greedy, or temperature with top-k, top-p and min-p
//! filtering, drawn from a seeded ChaCha8 stream so a seed always gives the same tokens.

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
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 0,
        }
    }
}

/// A sampler with its own random stream.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

/// The index of the largest value (the first one on ties), as llama.cpp's greedy sampler.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    /// A sampler seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// A uniform draw in `[0, 1)` with 24 bits of resolution.
    fn uniform(&mut self) -> f64 {
        f64::from(self.rng.next_u32() >> 8) / f64::from(1u32 << 24)
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
        }
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
