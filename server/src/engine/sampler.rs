//! Choosing the next token from logits: penalties and logit bias first, then greedy, or
//! temperature with top-k, top-p and min-p filtering, drawn from a seeded ChaCha8 stream so a
//! seed always gives the same tokens. Also the log-probabilities OpenAI's `logprobs` reports.

use lowbit_gpu::cpu::fastmath::exp_nonpositive;
pub use lowbit_gpu::TokenLogprobs;
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
    pub fn adjusts_logits(&self) -> bool {
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
    /// Tokens generated so far.
    generated: usize,
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
            generated: 0,
        }
    }

    /// Records a generated token.
    pub fn push(&mut self, token: u32) {
        *self.output.entry(token).or_insert(0) += 1;
        self.generated += 1;
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
    scratch: Scratch,
    /// The logits after penalties and bias, rewritten per token (not allocated per token).
    adjusted: Vec<f32>,
    /// The logit bias summed per token, in token order.
    bias: Vec<(u32, f32)>,
    /// Tokens that cannot be drawn before `min_tokens` are generated (vLLM's `min_tokens`:
    /// the end of sequence and the stop tokens), in token order.
    banned: Vec<u32>,
    min_tokens: usize,
}

/// Buffers a sampled token fills, kept between tokens (a vocabulary's worth each).
#[derive(Debug, Clone, Default)]
struct Scratch {
    /// Per-token weights of the last row and their sums per [`CHUNK`].
    weights: Vec<f32>,
    chunks: Vec<f32>,
    /// Candidates being ranked.
    ranked: Vec<(u32, f32)>,
}

/// The index of the largest value (the first one on ties), as llama.cpp's greedy sampler;
/// the rule every backend's `argmax_rows` follows.
pub fn argmax(logits: &[f32]) -> u32 {
    lowbit_gpu::argmax(logits)
}

/// Most likely first, ties by token id.
fn by_logit_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Tokens per partial sum of the weights: a draw finds its chunk from the sums, then walks
/// one chunk's tokens, instead of walking the vocabulary one dependent subtraction at a time.
const CHUNK: usize = 64;

/// The sum of a chunk's weights in eight lanes (so the compiler vectorizes it) added in a
/// fixed order: the same weights always give the same sum.
fn chunk_sum(chunk: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    for part in chunk.chunks(8) {
        for (l, &w) in lanes.iter_mut().zip(part) {
            *l += w;
        }
    }
    lanes.iter().sum()
}

/// The largest finite value (−∞ if none), in eight lanes so the compiler vectorizes it.
fn finite_max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    for part in values.chunks(8) {
        for (l, &v) in lanes.iter_mut().zip(part) {
            let v = if v.is_finite() { v } else { f32::NEG_INFINITY };
            *l = if v > *l { v } else { *l };
        }
    }
    lanes.into_iter().fold(f32::NEG_INFINITY, f32::max)
}

/// One token in this many forms the subset whose k-th largest logit bounds the top k.
const TOP_K_SUBSET_STRIDE: usize = 8;

/// A value at or below the k-th largest finite logit that few others reach: the k-th largest
/// of every [`TOP_K_SUBSET_STRIDE`]-th finite logit (k of them reach it, so the top k do),
/// or −∞ where the subset holds fewer than k. `scratch` is reused.
fn top_k_floor(logits: &[f32], k: usize, scratch: &mut Vec<f32>) -> f32 {
    scratch.clear();
    scratch.extend(
        logits
            .iter()
            .step_by(TOP_K_SUBSET_STRIDE)
            .copied()
            .filter(|v| v.is_finite()),
    );
    if scratch.len() < k {
        return f32::NEG_INFINITY;
    }
    let (_, kth, _) = scratch.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    *kth
}

/// How many candidates the top-p search sorts first (then four times as many, and so on): a
/// language model's nucleus is usually a few dozen tokens, and sorting only those keeps a
/// sampled token at one pass over the vocabulary instead of a sort of it.
const TOP_P_FIRST_SORT: usize = 64;

/// The tokens a draw chooses from, with their unnormalized probabilities.
enum Kept<'a> {
    /// Every token, in token order, with its weight (zero for excluded ones) and the sums of
    /// the weights per [`CHUNK`] tokens.
    Dense {
        weights: &'a [f32],
        chunks: &'a [f32],
    },
    /// These tokens, most likely first, with their weights.
    Ranked(Vec<(u32, f32)>),
}

impl Sampler {
    /// A sampler seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        let mut by_token = std::collections::BTreeMap::new();
        for &(t, b) in &params.logit_bias {
            *by_token.entry(t).or_insert(0.0f32) += b;
        }
        Self {
            params,
            rng,
            scratch: Scratch::default(),
            adjusted: Vec::new(),
            bias: by_token.into_iter().collect(),
            banned: Vec::new(),
            min_tokens: 0,
        }
    }

    /// Bans `tokens` (−∞) until `min_tokens` tokens are generated.
    pub fn with_min_tokens(
        mut self,
        min_tokens: usize,
        tokens: impl IntoIterator<Item = u32>,
    ) -> Self {
        self.banned = tokens.into_iter().collect();
        self.banned.sort_unstable();
        self.banned.dedup();
        self.min_tokens = min_tokens;
        self
    }

    /// Whether the ban of [`Sampler::with_min_tokens`] holds for the next token.
    fn banning(&self, history: &TokenHistory) -> bool {
        history.generated < self.min_tokens && !self.banned.is_empty()
    }

    /// Whether anything changes the logits before the next choice.
    pub fn adjusts_logits(&self, history: &TokenHistory) -> bool {
        self.params.adjusts_logits() || self.banning(history)
    }

    /// Whether the choice is the plain argmax of the model's logits (greedy, nothing
    /// adjusting them), so that the argmax alone is enough.
    pub fn is_greedy(&self) -> bool {
        (self.params.temperature <= 0.0 || self.params.top_k == 1)
            && !self.params.adjusts_logits()
            && self.min_tokens == 0
    }

    /// Whether drawing from the whole row, then redrawing from the row masked to a grammar's
    /// tokens only if the draw is not one of them, picks from the same distribution as
    /// drawing from the masked row: true for the argmax and for temperature alone (a draw
    /// kept has probability p(t), a redraw (1 − P(allowed))·p(t)/P(allowed): p(t)/P(allowed)
    /// in all); not under top-k, top-p or min-p, whose cut depends on the tokens masked.
    pub fn draws_before_masking(&self) -> bool {
        let p = &self.params;
        self.takes_argmax() || (p.top_k == 0 && p.top_p >= 1.0 && p.min_p <= 0.0)
    }

    /// Whether the choice is the argmax of the logits after [`Sampler::logit_adjustments`]
    /// (greedy, or a top-k filter of 1).
    pub fn takes_argmax(&self) -> bool {
        self.params.temperature <= 0.0 || self.params.top_k == 1
    }

    /// `Some(k)` when the choice needs only the top k values of the row after
    /// [`Sampler::logit_adjustments`] ([`Sampler::sample_top`]): sampling whose top-k filter
    /// keeps fewer than the vocabulary's `vocab` tokens, k at most `max`.
    pub fn top_k_readback(&self, vocab: usize, max: usize) -> Option<usize> {
        let p = &self.params;
        (p.temperature > 0.0 && p.top_k > 1 && p.top_k <= max && p.top_k < vocab).then_some(p.top_k)
    }

    /// `Some((u, 1/temperature, min-p, top-p))` when the choice is a draw from the whole
    /// distribution of the row after [`Sampler::logit_adjustments`], through top-p and min-p:
    /// sampling with no top-k filter short of the vocabulary's `vocab` tokens (OpenAI's
    /// parameters), which a device draws from the logits where they live
    /// ([`lowbit_gpu::RowDraw`]: the distribution [`Sampler::sample`] draws from, but for
    /// logits tied at the nucleus's edge, which the device keeps together). `u` is taken from
    /// this sampler's stream, as `sample` would take it.
    pub fn whole_row_draw(&mut self, vocab: usize) -> Option<(f32, f32, f32, f32)> {
        let p = &self.params;
        let whole = p.temperature > 0.0 && p.top_k != 1 && (p.top_k == 0 || p.top_k >= vocab);
        // 24 bits: exact in an f32.
        whole.then(|| {
            let (inv_t, min_p, top_p) = (1.0 / p.temperature, p.min_p, p.top_p);
            (uniform(&mut self.rng) as f32, inv_t, min_p, top_p)
        })
    }

    /// [`Sampler::sample`] from the row's top values alone ([`lowbit_gpu::top_k`] of at least
    /// `top_k`, as [`Sampler::top_k_readback`] allows), `argmax` being the row's: the same
    /// token from the same random stream, because the top-k filter comes first.
    pub fn sample_top(&mut self, top: &[(u32, f32)], argmax: u32) -> u32 {
        let p = &self.params;
        let Some(&(_, max)) = top.first() else {
            // No finite logit: the argmax, as `sample` gives.
            return argmax;
        };
        let ranked = &top[..top.len().min(p.top_k)];
        let kept = filter_ranked(p, ranked, max);
        draw(&Kept::Ranked(kept), uniform(&mut self.rng))
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The penalties and logit bias as one change per token ([`lowbit_gpu::LogitAdjust`], row
    /// 0; empty when nothing adjusts the logits): the repetition penalty r scales the logit of
    /// every token seen once (×1/r if positive, ×r otherwise: Hugging Face's and llama.cpp's
    /// rule), the frequency and presence penalties subtract `frequency·count + presence` from
    /// every output token's, the bias adds (summed per token), and until `min_tokens` the
    /// banned tokens get −∞ ([`Sampler::with_min_tokens`]). A device makes these
    /// changes where the logits live; [`Sampler::sample_with`] makes the same on the host.
    pub fn logit_adjustments(&self, history: &TokenHistory) -> Vec<lowbit_gpu::LogitAdjust> {
        if !self.adjusts_logits(history) {
            return Vec::new();
        }
        let p = &self.params;
        let none = lowbit_gpu::LogitAdjust {
            row: 0,
            token: 0,
            positive_scale: 1.0,
            negative_scale: 1.0,
            subtract: 0.0,
            add: 0.0,
        };
        let fresh = |token: u32| lowbit_gpu::LogitAdjust { token, ..none };
        let mut by_token = std::collections::BTreeMap::new();
        if p.repetition_penalty != 1.0 {
            let r = p.repetition_penalty;
            for &t in history.prompt.iter().chain(history.output.keys()) {
                let a = by_token.entry(t).or_insert_with(|| fresh(t));
                (a.positive_scale, a.negative_scale) = (1.0 / r, r);
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            for (&t, &count) in &history.output {
                let a = by_token.entry(t).or_insert_with(|| fresh(t));
                a.subtract = p.frequency_penalty * count as f32 + p.presence_penalty;
            }
        }
        for &(t, bias) in &self.bias {
            by_token.entry(t).or_insert_with(|| fresh(t)).add = bias;
        }
        if self.banning(history) {
            for &t in &self.banned {
                by_token.entry(t).or_insert_with(|| fresh(t)).add = f32::NEG_INFINITY;
            }
        }
        by_token.into_values().collect()
    }

    /// Picks the next token after applying the penalties and logit bias
    /// ([`Sampler::logit_adjustments`]) to a copy of the logits (the logits themselves stay as
    /// the model gave them, for `logprobs`).
    pub fn sample_with(&mut self, logits: &[f32], history: &TokenHistory) -> u32 {
        if !self.adjusts_logits(history) {
            return self.sample(logits);
        }
        let banning = self.banning(history);
        let Self {
            params: p,
            rng,
            scratch,
            adjusted,
            bias,
            banned,
            ..
        } = self;
        adjusted.clear();
        adjusted.extend_from_slice(logits);
        // `logit_adjustments`' changes, made in place without collecting them (this runs per
        // sampled token): per token the same steps in the same order as `LogitAdjust::apply`
        // (scale, subtract, add; a step that changes nothing skipped), so a device making
        // them picks from the same logits.
        let r = p.repetition_penalty;
        if r != 1.0 {
            let (positive, negative) = (1.0 / r, r);
            let output_only = history
                .output
                .keys()
                .filter(|t| !history.prompt.contains(t));
            for &t in history.prompt.iter().chain(output_only) {
                if let Some(v) = adjusted.get_mut(t as usize) {
                    let scale = if *v > 0.0 { positive } else { negative };
                    if scale != 1.0 {
                        *v *= scale;
                    }
                }
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            for (&t, &count) in &history.output {
                let penalty = p.frequency_penalty * count as f32 + p.presence_penalty;
                if let Some(v) = adjusted.get_mut(t as usize).filter(|_| penalty != 0.0) {
                    *v -= penalty;
                }
            }
        }
        for &(t, b) in bias.iter() {
            if let Some(v) = adjusted.get_mut(t as usize).filter(|_| b != 0.0) {
                *v += b;
            }
        }
        if banning {
            for &t in banned.iter() {
                if let Some(v) = adjusted.get_mut(t as usize) {
                    *v += f32::NEG_INFINITY;
                }
            }
        }
        draw_token(p, rng, scratch, adjusted)
    }

    /// Picks the next token. Filters apply in Hugging Face's order: temperature, top-k, top-p,
    /// min-p; non-finite logits are never chosen. A token's weight is `exp((logit − max) / T)`
    /// (the fast exponential, relative error ≈ 2·10⁻⁷) and the draw walks the kept tokens
    /// most likely first where a filter ranked them, in token order otherwise: either way a
    /// few passes over the vocabulary and a sort of only the candidates a filter keeps, not
    /// a sort of the whole vocabulary per token (which cost ≈ 2 ms a row and halved the
    /// throughput of a server whose clients sample).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        draw_token(&self.params, &mut self.rng, &mut self.scratch, logits)
    }
}

/// [`Sampler::sample`] on the sampler's parts.
fn draw_token(
    p: &SamplingParams,
    rng: &mut ChaCha8Rng,
    scratch: &mut Scratch,
    logits: &[f32],
) -> u32 {
    if p.temperature <= 0.0 || p.top_k == 1 {
        return argmax(logits);
    }
    match kept(p, logits, scratch) {
        None => argmax(logits),
        Some(kept) => draw(&kept, uniform(rng)),
    }
}

/// A uniform draw in `[0, 1)` with 24 bits of resolution.
fn uniform(rng: &mut ChaCha8Rng) -> f64 {
    f64::from(rng.next_u32() >> 8) / f64::from(1u32 << 24)
}

/// The tokens the filters of `p` keep, with their weights; `None` when no logit is finite.
fn kept<'s>(p: &SamplingParams, logits: &[f32], scratch: &'s mut Scratch) -> Option<Kept<'s>> {
    let Scratch {
        weights,
        chunks,
        ranked,
    } = scratch;
    let inv_t = 1.0 / p.temperature;
    let max = finite_max(logits);
    if max == f32::NEG_INFINITY {
        return None;
    }
    let weight = |v: f32| exp_nonpositive((v - max) * inv_t);
    if p.top_k > 0 && p.top_k < logits.len() {
        // Top-k first: only k weights, ranked. Every k-th largest value of a subset is
        // a floor that at least k tokens reach, the true top k among them, so only the
        // tokens at or above it are ranked.
        let floor = top_k_floor(logits, p.top_k, weights);
        ranked.clear();
        ranked.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, &v)| v.is_finite() && v >= floor)
                .map(|(i, &v)| (i as u32, v)),
        );
        // (Fewer candidates than k only where non-finite logits leave fewer tokens.)
        if ranked.len() > p.top_k {
            ranked.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            ranked.truncate(p.top_k);
        }
        ranked.sort_unstable_by(by_logit_desc);
        return Some(Kept::Ranked(filter_ranked(p, ranked, max)));
    }
    // Without top-p, min-p's floor applies here: the most likely token's weight is
    // exactly 1, so the floor is min_p itself. Excluded tokens weigh 0.
    let floor = if p.top_p >= 1.0 { p.min_p } else { 0.0 };
    // Every weight is written below: the buffer is only sized (and zeroed) when the
    // vocabulary changes, not cleared per token.
    weights.resize(logits.len(), 0.0);
    // Branch-free, so the compiler vectorizes it.
    for (w, &v) in weights.iter_mut().zip(logits) {
        let e = weight(v);
        *w = if v.is_finite() & (e >= floor) { e } else { 0.0 };
    }
    chunks.clear();
    chunks.extend(weights.chunks(CHUNK).map(chunk_sum));
    if p.top_p >= 1.0 {
        return Some(Kept::Dense { weights, chunks });
    }
    let total: f64 = chunks.iter().map(|&c| f64::from(c)).sum();
    // No token lighter than (1 − top_p)·total / V is in the nucleus: if one were, it and
    // every token ranked after it (at most V, none heavier) would hold more than the
    // (1 − top_p)·total the nucleus leaves out. Those never need ranking (a long flat
    // tail is most of a vocabulary); the floor sits a little lower against rounding.
    let light = ((1.0 - f64::from(p.top_p)) * total / weights.len() as f64 * 0.999) as f32;
    ranked.clear();
    ranked.extend(
        logits
            .iter()
            .zip(weights.iter())
            .enumerate()
            .filter(|(_, (v, &w))| v.is_finite() && w > 0.0 && w >= light)
            .map(|(i, (&v, _))| (i as u32, v)),
    );
    // Rank a head of the candidates at a time until it holds the nucleus.
    let (mut sorted, mut acc, mut keep) = (0, 0.0f64, ranked.len());
    while sorted < ranked.len() {
        let end = ranked.len().min((4 * sorted).max(TOP_P_FIRST_SORT));
        let rest = &mut ranked[sorted..];
        if end - sorted < rest.len() {
            rest.select_nth_unstable_by(end - sorted - 1, by_logit_desc);
        }
        ranked[sorted..end].sort_unstable_by(by_logit_desc);
        if let Some(n) = ranked[sorted..end].iter().position(|&(i, _)| {
            acc += f64::from(weights[i as usize]);
            acc >= f64::from(p.top_p) * total
        }) {
            keep = sorted + n + 1;
            break;
        }
        sorted = end;
    }
    let mut top: Vec<(u32, f32)> = ranked[..keep]
        .iter()
        .map(|&(i, _)| (i, weights[i as usize]))
        .collect();
    keep_min_p(&mut top, p.min_p);
    Some(Kept::Ranked(top))
}

/// The top-k candidates `ranked` (logits, most likely first; `max` the row's largest finite
/// logit) as weights, through top-p and min-p.
fn filter_ranked(p: &SamplingParams, ranked: &[(u32, f32)], max: f32) -> Vec<(u32, f32)> {
    let inv_t = 1.0 / p.temperature;
    let mut top: Vec<(u32, f32)> = ranked
        .iter()
        .map(|&(i, v)| (i, exp_nonpositive((v - max) * inv_t)))
        .collect();
    let total: f64 = top.iter().map(|c| f64::from(c.1)).sum();
    top.truncate(nucleus(&top, p.top_p, total));
    keep_min_p(&mut top, p.min_p);
    top
}

/// How many of `ranked` (most likely first, weights summing to `total`) the nucleus of
/// `top_p` keeps: the fewest whose mass reaches `top_p` of the whole, at least one.
fn nucleus(ranked: &[(u32, f32)], top_p: f32, total: f64) -> usize {
    if top_p >= 1.0 {
        return ranked.len();
    }
    let mut acc = 0.0f64;
    ranked
        .iter()
        .position(|c| {
            acc += f64::from(c.1);
            acc >= f64::from(top_p) * total
        })
        .map_or(ranked.len(), |n| n + 1)
}

/// Drops the ranked candidates less likely than `min_p` × the first (whose weight is 1); the
/// first always stays.
fn keep_min_p(ranked: &mut Vec<(u32, f32)>, min_p: f32) {
    let mut first = true;
    ranked.retain(|c| std::mem::take(&mut first) || c.1 >= min_p);
}

/// The token at `u` (uniform in `[0, 1)`) of the kept tokens' cumulative weights.
fn draw(kept: &Kept<'_>, u: f64) -> u32 {
    match kept {
        Kept::Dense { weights, chunks } => {
            // Chunk by chunk, then token by token inside the chunk the draw falls in.
            let total: f64 = chunks.iter().map(|&c| f64::from(c)).sum();
            let mut r = u * total;
            let mut landed = None;
            for (j, &c) in chunks.iter().enumerate() {
                if c > 0.0 {
                    landed = Some(j);
                    if r < f64::from(c) {
                        break;
                    }
                    r -= f64::from(c);
                }
            }
            // (`landed` is the last live chunk if rounding carried the draw past the end.)
            let j = landed.unwrap_or(0);
            let start = j * CHUNK;
            let chunk = &weights[start..weights.len().min(start + CHUNK)];
            let mut last = 0;
            for (i, &w) in chunk.iter().enumerate() {
                if w > 0.0 {
                    if r < f64::from(w) {
                        return (start + i) as u32;
                    }
                    r -= f64::from(w);
                    last = i;
                }
            }
            (start + last) as u32
        }
        Kept::Ranked(top) => {
            let total: f64 = top.iter().map(|c| f64::from(c.1)).sum();
            let mut r = u * total;
            for &(i, w) in top {
                if r < f64::from(w) {
                    return i;
                }
                r -= f64::from(w);
            }
            top.last().map_or(0, |c| c.0)
        }
    }
}

#[cfg(test)]
#[path = "sampler_tests.rs"]
mod tests;
