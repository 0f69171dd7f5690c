//! The seam between the model and the hardware.
//!
//! A model forward is written once against [`Backend`]; each backend (CPU now, wgpu later)
//! implements the handful of operations a Llama-family transformer needs. Every operation works
//! on a *ragged batch*: the rows of one activation matrix belong to several sequences
//! ([`SeqSpan`]), each with its own positions and its own block table in the backend's paged
//! [`KvPool`], so that decoding N sequences is one matrix multiply that reads each weight once.

use crate::draw::{adjusted_rows, draw_row, LogitAdjust, RowDraw};
use crate::error::Result;
use crate::kv::{KvPool, KvPoolSpec};
use crate::logprobs::{chosen_token, token_logprobs, LogprobRow, TokenLogprobs};
use crate::quant::QTensor;
use crate::tensor::{Tensor, Weight};

/// The rows of a batch that belong to one sequence, and where its keys and values live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqSpan<'a> {
    /// First row of this sequence in the batch matrices.
    pub row_start: usize,
    /// Number of new tokens (rows).
    pub len: usize,
    /// Position of the first new token; the pool already holds positions `0..pos_start`.
    pub pos_start: usize,
    /// The sequence's block table: position `p` lives in `blocks[p / block_tokens]`, slot
    /// `p % block_tokens`; it covers at least `pos_start + len` positions.
    pub blocks: &'a [u32],
}

/// Head layout of grouped-query attention, and how a layer scores its keys.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape<'a> {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies every query·key score: `1 / sqrt(head_dim)` for most models
    /// ([`AttentionShape::new`]); Gemma 2/3's 27B use `1 / sqrt(hidden / heads)`.
    pub scale: f32,
    /// Gemma 2's soft cap: scaled scores become `softcap · tanh(score / softcap)` before the
    /// softmax; 0 leaves them as they are.
    pub softcap: f32,
    /// A sliding-window layer's width: a query at position `p` sees positions
    /// `p − window + 1 ..= p` only (llama.cpp's standard SWA); 0 sees the whole sequence.
    pub window: usize,
    /// Attention sinks (gpt-oss): one learned logit per query head (a `1 × n_heads` tensor)
    /// that joins each row's softmax as a position with no value, so the weights of the real
    /// positions sum to less than one; `None`: none.
    pub sinks: Option<&'a Tensor>,
}

impl AttentionShape<'_> {
    /// Plain causal attention with the usual `1 / sqrt(head_dim)` scale.
    pub fn new(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Self {
        Self {
            n_heads,
            n_kv_heads,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            softcap: 0.0,
            window: 0,
            sinks: None,
        }
    }

    /// The first position a query at `pos` attends to.
    pub fn first_seen(&self, pos: usize) -> usize {
        if self.window == 0 {
            0
        } else {
            (pos + 1).saturating_sub(self.window)
        }
    }

    /// A raw score (query·key) as the softmax takes it: scaled, then soft-capped.
    #[inline(always)]
    pub fn score(&self, dot: f32) -> f32 {
        let s = dot * self.scale;
        if self.softcap > 0.0 {
            self.softcap * (s / self.softcap).tanh()
        } else {
            s
        }
    }

    /// Width of the query (and attention output) rows.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of the key and value rows.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// The sigmoid's slope in gpt-oss's clamped SwiGLU ([`Backend::swiglu_oai`]), fixed as in
/// llama.cpp and the reference implementation.
pub const SWIGLU_OAI_ALPHA: f32 = 1.702;

/// gpt-oss's clamped SwiGLU of one value pair, as every backend computes it in f32; a NaN
/// passes through, as in ggml (Rust's `min`/`max` would replace it by the limit).
#[inline(always)]
pub fn swiglu_oai(gate: f32, up: f32, limit: f32) -> f32 {
    let g = if gate > limit { limit } else { gate };
    let u = if up > limit {
        limit
    } else if up < -limit {
        -limit
    } else {
        up
    };
    g / (1.0 + (-SWIGLU_OAI_ALPHA * g).exp()) * (u + 1.0)
}

/// Which pairs of a head's dimensions RoPE rotates together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimensions `(2i, 2i+1)`: llama.cpp's "normal" RoPE, which its GGUF conversion of Llama
    /// models expects (it permutes the Q/K rows to match).
    Interleaved,
    /// Dimensions `(i, i + d/2)`: Hugging Face's `rotate_half` ("NeoX") on unpermuted weights.
    HalfSplit,
}

/// Rotary position embedding parameters, with any frequency scaling already folded in.
///
/// RoPE may rotate only the first `2 · inv_freq.len()` dimensions of each head ("partial
/// rotary": Phi-4-mini rotates 96 of 128); the rest pass through unchanged. In the half-split
/// pairing the pairs are then `(i, i + rotated/2)`, as llama.cpp's NEOX RoPE and Hugging
/// Face's `rotate_half` on the rotated slice pair them.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub style: RopeStyle,
    pub head_dim: usize,
    /// Angle per position for each rotated pair, at most `head_dim / 2` entries.
    pub inv_freq: Vec<f32>,
    /// Multiplies the sine and cosine of every rotated pair (LongRoPE's attention factor,
    /// llama.cpp's `attn_factor`); 1 for most models.
    pub attention_factor: f32,
}

impl Rope {
    /// Pairs rotated per head.
    pub fn rotated_pairs(&self) -> usize {
        self.inv_freq.len()
    }

    /// `(sin, cos)` of pair `pair` at `pos`, computed in float64 and scaled by the
    /// attention factor: what every backend's table holds.
    pub fn sin_cos(&self, pos: u32, pair: usize) -> (f32, f32) {
        let (s, c) = (f64::from(pos) * f64::from(self.inv_freq[pair])).sin_cos();
        let m = f64::from(self.attention_factor);
        ((s * m) as f32, (c * m) as f32)
    }

    /// The bits that decide a table's values besides the positions (backends cache tables
    /// by them).
    pub fn table_key(&self) -> Vec<u32> {
        let mut key: Vec<u32> = self.inv_freq.iter().map(|f| f.to_bits()).collect();
        key.push(self.attention_factor.to_bits());
        key
    }
}

/// The index of the largest value, the first one on ties (llama.cpp's greedy rule); NaN is
/// skipped, and a row of NaN alone (or an empty one) gives 0.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in values.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map_or(0, |(i, _)| i as u32)
}

/// The `k` largest finite values with their indices, largest first, equal values by lower
/// index (`f32::total_cmp`'s order, so −0 ranks below +0); fewer where fewer are finite.
pub fn top_k(values: &[f32], k: usize) -> Vec<(u32, f32)> {
    use std::cmp::Ordering::{Greater, Less};
    if k == 0 {
        return Vec::new();
    }
    let by_rank = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if k > TOP_K_BY_INSERTION {
        let mut kept: Vec<(u32, f32)> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, &v)| (i as u32, v))
            .collect();
        if kept.len() > k {
            kept.select_nth_unstable_by(k - 1, by_rank);
            kept.truncate(k);
        }
        kept.sort_unstable_by(by_rank);
        return kept;
    }
    // One pass keeping the best k in order: a value enters only if it beats the last kept
    // (met later, an equal value has the higher index). Blocks of 8 whose largest finite
    // value is below the last kept are skipped whole: after the first few hundred values
    // almost all are, and that test vectorizes.
    let mut kept: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (b, block) in values.chunks(8).enumerate() {
        if kept.len() == k {
            let floor = kept[k - 1].1;
            let largest = block.iter().fold(f32::NEG_INFINITY, |m, &v| {
                if v.is_finite() && v > m {
                    v
                } else {
                    m
                }
            });
            if largest < floor {
                continue;
            }
        }
        for (j, &v) in block.iter().enumerate() {
            if !v.is_finite() || (kept.len() == k && v.total_cmp(&kept[k - 1].1) != Greater) {
                continue;
            }
            let at = kept.partition_point(|&(_, w)| w.total_cmp(&v) != Less);
            kept.insert(at, ((8 * b + j) as u32, v));
            kept.truncate(k);
        }
    }
    kept
}

/// Largest k [`top_k`] finds in one pass of insertions (beyond, it partially sorts).
const TOP_K_BY_INSERTION: usize = 64;

/// What a step reads back of its logits besides every row's argmax ([`Backend::read_logits`]):
/// whole rows, the top `k` of some rows, and rows sampled where they live. Row indices are
/// among the logits rows. `adjust` changes logits (penalties, bias) before the argmax, the
/// top k and the draws; whole rows and log-probabilities are of the logits as the model gave
/// them.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogitsRequest<'a> {
    pub full: &'a [usize],
    pub top: &'a [usize],
    pub k: usize,
    pub draws: &'a [RowDraw],
    pub adjust: &'a [LogitAdjust],
    /// Rows whose chosen (or given) token's log-probability and top few to compute
    /// ([`crate::logprobs`]): a row listed here is chosen by its draw or its argmax.
    pub logprobs: &'a [LogprobRow],
}

impl LogitsRequest<'_> {
    /// An error naming the first draw, change or logprobs row past `rows` logits rows.
    pub fn check_rows(&self, rows: usize) -> Result<()> {
        let past = |what: &str, row: usize| {
            Err(crate::error::shape_err(
                "read_logits",
                format!("{what} row {row} of {rows}"),
            ))
        };
        if let Some(d) = self.draws.iter().find(|d| d.row >= rows) {
            return past("draw from", d.row);
        }
        if let Some(a) = self.adjust.iter().find(|a| a.row >= rows) {
            return past("change to", a.row);
        }
        if let Some(l) = self.logprobs.iter().find(|l| l.row >= rows) {
            return past("logprobs of", l.row);
        }
        Ok(())
    }
}

/// What a step reads back of its logits ([`Backend::read_logits`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogitsReadback {
    /// Every row's [`argmax`].
    pub ids: Vec<u32>,
    /// The rows asked for whole, one after the other.
    pub full: Vec<f32>,
    /// The [`top_k`] of each row asked for.
    pub top: Vec<Vec<(u32, f32)>>,
    /// The token of each draw asked for ([`draw_row`]).
    pub drawn: Vec<u32>,
    /// The log-probabilities of each row of `logprobs` asked for, in its order.
    pub logprobs: Vec<TokenLogprobs>,
}

/// [`Backend::read_logits`] as separate operations, the changes and draws made on the host
/// (the default).
pub fn read_logits_apart<B: Backend + ?Sized>(
    be: &B,
    x: &Tensor,
    want: &LogitsRequest<'_>,
) -> Result<LogitsReadback> {
    want.check_rows(x.rows())?;
    let full = be.download_owned(be.select_rows(x, want.full)?)?;
    let lp_rows: Vec<usize> = want.logprobs.iter().map(|l| l.row).collect();
    // (A device's download is a wait: none for nothing.)
    let raw_rows = if lp_rows.is_empty() {
        Vec::new()
    } else {
        be.download_owned(be.select_rows(x, &lp_rows)?)?
    };
    let adjusted;
    let x = if want.adjust.is_empty() {
        x
    } else {
        let rows = adjusted_rows(&be.download(x)?, x.cols(), want.adjust);
        adjusted = be.upload(x.rows(), x.cols(), rows)?;
        &adjusted
    };
    let ids = be.argmax_rows(x)?;
    let top = if want.top.is_empty() {
        Vec::new()
    } else {
        be.top_k_rows(&be.select_rows(x, want.top)?, want.k)?
    };
    let drawn = if want.draws.is_empty() {
        Vec::new()
    } else {
        let rows: Vec<usize> = want.draws.iter().map(|d| d.row).collect();
        let values = be.download_owned(be.select_rows(x, &rows)?)?;
        values
            .chunks(x.cols().max(1))
            .zip(want.draws)
            .map(|(row, d)| draw_row(row, d))
            .collect()
    };
    // Rows in parallel: a prompt's log-probabilities bring hundreds (≈ 130 µs each for
    // SmolLM2's 49,152 logits).
    let cols = x.cols().max(1);
    let logprobs = crate::cpu::pool::Pool::global().map(want.logprobs.len(), |i| {
        let l = &want.logprobs[i];
        let token = chosen_token(l, &ids, want.draws, &drawn);
        token_logprobs(&raw_rows[i * cols..(i + 1) * cols], token, l.top)
    });
    Ok(LogitsReadback {
        ids,
        full,
        top,
        drawn,
        logprobs,
    })
}

/// Rows to add onto other rows of a sum ([`Backend::add_scattered`]): `weights[i] · x[i]`
/// onto row `rows[i]`.
#[derive(Debug, Clone, Copy)]
pub struct ScatteredRows<'a> {
    pub x: &'a Tensor,
    pub rows: &'a [usize],
    pub weights: &'a [f32],
}

/// Operations a transformer forward needs, on tensors that live in the backend.
///
/// Shapes are `rows × cols`, rows are tokens. Weights are `N × K` and linear layers compute
/// `x · Wᵀ`. Implementations return shape errors instead of panicking.
pub trait Backend: Send + Sync {
    /// A short name for logs (`cpu`, `wgpu:<adapter>`).
    fn name(&self) -> String;

    /// The backend itself, for tools that use what only one backend has (the wgpu
    /// backend's memory counters and kernel profiles).
    fn as_any(&self) -> &dyn std::any::Any;

    /// Runs one forward step (many operations). The default runs it right here; a backend
    /// may move it (the CPU backend runs it on a worker of its thread pool).
    fn run_step(&self, step: &mut (dyn FnMut() + Send)) {
        step()
    }

    /// Moves a weight matrix, already in the format it will be kept in, into this backend.
    fn load_weight(&self, w: QTensor) -> Result<Weight>;

    /// Loads weights that multiply the same input (a layer's Q/K/V, its gate/up), in the
    /// order [`Backend::matmul_many`] will take them. A backend may store them together so
    /// that `matmul_many` over all of them, in that order, is one product (wgpu: one dispatch
    /// instead of one per weight); each weight still works alone. By default each is loaded
    /// on its own.
    fn load_weights_together(&self, ws: Vec<QTensor>) -> Result<Vec<Weight>> {
        ws.into_iter().map(|w| self.load_weight(w)).collect()
    }

    /// Moves host values into an activation tensor (also used for norm vectors, `1 × n`).
    fn upload(&self, rows: usize, cols: usize, data: Vec<f32>) -> Result<Tensor>;

    /// Copies a tensor's values back to the host.
    fn download(&self, x: &Tensor) -> Result<Vec<f32>>;

    /// A tensor's values on the host, consuming it: a host tensor gives its own buffer
    /// (a step's logits are 16 × 49,152 values, not worth copying on the engine thread).
    fn download_owned(&self, x: Tensor) -> Result<Vec<f32>> {
        self.download(&x)
    }

    /// Rows `ids[i]` of the embedding table, one row per token.
    fn embed(&self, table: &Weight, ids: &[u32]) -> Result<Tensor>;

    /// `x / sqrt(mean(x²) + eps) * weight`, row by row; `weight` is `1 × cols`.
    fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor>;

    /// `x · Wᵀ`: `(M × K) · (N × K)ᵀ = M × N`.
    fn matmul(&self, x: &Tensor, w: &Weight) -> Result<Tensor>;

    /// `x · Wᵢᵀ` for several weights that share the input `x` (Q/K/V, gate/up). A backend may
    /// prepare `x` once (the CPU backend quantizes the activations once, not once per weight).
    fn matmul_many(&self, x: &Tensor, ws: &[&Weight]) -> Result<Vec<Tensor>> {
        ws.iter().map(|w| self.matmul(x, w)).collect()
    }

    /// `x · Wᵀ + residual` (the attention output and MLP down projections with their residual
    /// connection), exactly `add(matmul(x, w), residual)`; a backend may add in the product's
    /// epilogue.
    fn matmul_add(&self, x: &Tensor, w: &Weight, residual: &Tensor) -> Result<Tensor> {
        let y = self.matmul(x, w)?;
        self.add(&y, residual)
    }

    /// Element-wise `a + b`.
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;

    /// `x + bias` for every row; `bias` is `1 × cols` (Qwen2's Q/K/V biases).
    fn add_bias(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor>;

    /// `rms_norm(x) + residual` (Gemma's post-norms): exactly the two ops; a backend may skip
    /// work the plain norm does for a product that would read it (wgpu: the int8 form).
    fn rms_norm_add(
        &self,
        x: &Tensor,
        weight: &Tensor,
        eps: f32,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let normed = self.rms_norm(x, weight, eps)?;
        self.add(&normed, residual)
    }

    /// [`Backend::rms_norm`] over each `weight.cols()`-long head of every row on its own
    /// (Qwen3's query and key norms): the rows viewed as one row per head.
    fn rms_norm_heads(&self, x: Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
        let (rows, cols, head) = (x.rows(), x.cols(), weight.cols());
        if head == 0 || !cols.is_multiple_of(head) {
            return Err(crate::error::shape_err(
                "rms_norm_heads",
                format!("heads of {head} in rows of {cols}"),
            ));
        }
        let normed = self.rms_norm(&x.reshape(rows * cols / head, head)?, weight, eps)?;
        normed.reshape(rows, cols)
    }

    /// SwiGLU's gate: `silu(gate) * up`, element-wise.
    fn silu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor>;

    /// GeGLU's gate (Gemma): `gelu(gate) * up`, element-wise, with GELU's tanh form
    /// (PyTorch's `gelu_pytorch_tanh`): `gelu(x) = x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³)))`.
    fn gelu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor>;

    /// gpt-oss's clamped SwiGLU: with `g = min(gate, limit)` and `u = clamp(up, ±limit)`,
    /// `g · σ(α·g) · (u + 1)`, α = [`SWIGLU_OAI_ALPHA`] (llama.cpp's `swiglu_oai`).
    fn swiglu_oai(&self, gate: &Tensor, up: &Tensor, limit: f32) -> Result<Tensor>;

    /// `x · factor`, element-wise (Gemma's embedding scale, `√hidden`).
    fn scale(&self, x: &Tensor, factor: f32) -> Result<Tensor>;

    /// `cap · tanh(x / cap)`, element-wise (Gemma 2's final logit soft cap).
    fn softcap(&self, x: &Tensor, cap: f32) -> Result<Tensor>;

    /// Rotates each head of every row by its position (`positions[row]`).
    fn rope(&self, x: &Tensor, positions: &[u32], rope: &Rope) -> Result<Tensor>;

    /// Each row's [`argmax`]: what a greedy step needs of its logits, so that a device
    /// backend can read back ids instead of whole rows.
    fn argmax_rows(&self, x: &Tensor) -> Result<Vec<u32>> {
        if x.cols() == 0 {
            return Ok(vec![0; x.rows()]);
        }
        let values = self.download(x)?;
        Ok(values.chunks(x.cols()).map(argmax).collect())
    }

    /// Whether tensors live in device memory, so that reading back less (ids, a top k) than
    /// whole logits rows saves a transfer.
    fn logits_stay_on_device(&self) -> bool {
        false
    }

    /// Each row's [`top_k`]: what a sampler whose top-k filter comes first needs of its
    /// logits, so that a device backend can read back k pairs instead of whole rows.
    fn top_k_rows(&self, x: &Tensor, k: usize) -> Result<Vec<Vec<(u32, f32)>>> {
        if x.cols() == 0 {
            return Ok(vec![Vec::new(); x.rows()]);
        }
        let values = self.download(x)?;
        Ok(values.chunks(x.cols()).map(|row| top_k(row, k)).collect())
    }

    /// Keeps only the listed rows, in the given order.
    fn select_rows(&self, x: &Tensor, rows: &[usize]) -> Result<Tensor>;

    /// `base` plus each part's rows, every row `i` of a part scaled by `weights[i]` and added
    /// onto row `rows[i]`, part after part: a mixture of experts' weighted sum of its experts'
    /// outputs, added to the residual. A row appears at most once in a part (a token picks an
    /// expert once), so a device adds a part's rows in parallel.
    fn add_scattered(&self, base: &Tensor, parts: &[ScatteredRows<'_>]) -> Result<Tensor>;

    /// Every logits row's argmax and what `want` asks for: what a step mixing greedy and
    /// sampling rows reads back. A device backend reads all of it back in one transfer and
    /// makes the draws on the device; by default it is [`read_logits_apart`].
    fn read_logits(&self, x: &Tensor, want: &LogitsRequest<'_>) -> Result<LogitsReadback> {
        read_logits_apart(self, x, want)
    }

    /// Allocates the paged KV pool, once, at start-up.
    fn new_kv_pool(&self, spec: KvPoolSpec) -> Result<KvPool>;

    /// The most blocks a pool of `spec`'s shape can have here, whatever the memory (a GPU
    /// binds one layer's keys at once); by default no bound.
    fn max_kv_blocks(&self, spec: &KvPoolSpec) -> usize {
        let _ = spec;
        usize::MAX
    }

    /// Copies blocks `src → dst` (every layer's keys and values), for copy-on-write.
    fn copy_blocks(&self, pool: &mut KvPool, pairs: &[(u32, u32)]) -> Result<()>;

    /// Causal grouped-query attention of layer `layer`.
    ///
    /// `k` and `v` hold the new tokens' keys and values: they are first written into each
    /// sequence's blocks at its positions, then every new query attends to its sequence's
    /// positions `0..=pos` (the last `shape.window` of them in a sliding-window layer). A
    /// row's result depends only on its own sequence, never on the other spans of the batch
    /// or on how its prompt was split into steps.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        seqs: &[SeqSpan<'_>],
        pool: &mut KvPool,
        shape: AttentionShape,
    ) -> Result<Tensor>;

    /// [`Backend::attention`] over `rope(q)` and `rope(k)` at `positions` (one per row):
    /// exactly the two rotations and then attention, which is the default; a backend may
    /// rotate inside its attention kernels (wgpu: two dispatches fewer per layer).
    #[allow(clippy::too_many_arguments)]
    fn rope_attention(
        &self,
        layer: usize,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        positions: &[u32],
        rope: &Rope,
        seqs: &[SeqSpan<'_>],
        pool: &mut KvPool,
        shape: AttentionShape,
    ) -> Result<Tensor> {
        let q = self.rope(q, positions, rope)?;
        let k = self.rope(k, positions, rope)?;
        self.attention(layer, &q, &k, v, seqs, pool, shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `top_k` (one pass of insertions up to k = 64, a partial sort beyond) equals sorting
    /// every finite value, on rows with ties, ±0, NaN and infinities, ascending and
    /// descending runs (the insertions' worst and best cases).
    #[test]
    fn top_k_equals_a_full_sort_of_the_finite_values() {
        let mut state = 12345u32;
        let mut next = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            state >> 8
        };
        let mut rows: Vec<Vec<f32>> = (0..6)
            .map(|_| {
                (0..1000)
                    .map(|_| match next() % 50 {
                        0 => f32::NAN,
                        1 => f32::INFINITY,
                        2 => f32::NEG_INFINITY,
                        3 => 0.0,
                        4 => -0.0,
                        // Few distinct values: many ties.
                        r => (r % 13) as f32 - 6.0 + (next() % 4) as f32 * 0.25,
                    })
                    .collect()
            })
            .collect();
        rows.push((0..500).map(|i| i as f32).collect());
        rows.push((0..500).map(|i| -(i as f32)).collect());
        rows.push(vec![f32::NAN; 9]);
        // −0 kept, then a block whose largest is +0: equal as floats, above in rank.
        let mut zeros = vec![-0.0, -0.0, -0.0, -1.0, -1.0, -1.0, -1.0, -1.0, 0.0];
        zeros.extend([-2.0; 7]);
        rows.push(zeros);
        for row in &rows {
            let mut want: Vec<(u32, f32)> = row
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(i, &v)| (i as u32, v))
                .collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            for k in [1, 2, 3, 5, 20, 63, 64, 65, 200, 2000] {
                let got = top_k(row, k);
                let n = k.min(want.len());
                assert_eq!(got.len(), n, "k {k}");
                for (g, w) in got.iter().zip(&want[..n]) {
                    assert_eq!((g.0, g.1.to_bits()), (w.0, w.1.to_bits()), "k {k}");
                }
            }
        }
    }
}
