//! What goes into and comes out of one forward step: each sequence's part of the batch, the
//! logits rows, what a mixed step reads back, and the observer that sees every linear layer's
//! input (calibration).

use lowbit_gpu::Tensor;
use std::ops::Range;

/// One sequence's part of a batch.
#[derive(Debug, Clone)]
pub struct BatchSeq<'a> {
    /// The new tokens.
    pub tokens: &'a [u32],
    /// Position of `tokens[0]`; the pool holds this sequence's `0..pos_start`.
    pub pos_start: usize,
    /// The sequence's block table, covering at least `pos_start + tokens.len()` positions.
    pub blocks: &'a [u32],
    /// Its block table in the sliding-window layers' own pool, where the pool has one
    /// ([`lowbit_gpu::KvPool::window`]; ignored otherwise): as long as `blocks`, its entries
    /// before the first position the new tokens attend to may be [`lowbit_gpu::NO_BLOCK`].
    pub window_blocks: &'a [u32],
    /// Which of the new tokens need logits (relative to `tokens`), e.g. `len-1..len`.
    pub logits: Range<usize>,
}

/// Logits of the rows a batch asked for, in batch order.
#[derive(Debug)]
pub struct Logits {
    pub vocab: usize,
    pub data: Vec<f32>,
}

impl Logits {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.data.len() / self.vocab.max(1)
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }
}

/// Sees the input of every linear layer during a forward (layer, which input, activations).
pub type Observer<'a> = dyn FnMut(usize, LinearInput, &Tensor) + Send + 'a;

/// The distinct inputs of a block's linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinearInput {
    /// Normed hidden state: input of `attn_q`, `attn_k`, `attn_v`.
    Attention,
    /// Attention heads' output: input of `attn_output`.
    AttentionOutput,
    /// Normed hidden state: input of `ffn_gate`, `ffn_up`.
    Mlp,
    /// `silu(gate) * up`: input of `ffn_down`.
    MlpDown,
    /// The final-normed hidden state: input of the output head (observed as layer
    /// `n_layers`, for every row, whether or not its logits are asked for).
    Head,
    /// The rows routed to expert `E`: input of `ffn_gate.E`, `ffn_up.E` (a mixture of
    /// experts; the router and a shared expert read [`Self::Mlp`]).
    Expert(u32),
    /// Expert `E`'s `silu(gate) * up`: input of `ffn_down.E`.
    ExpertDown(u32),
    /// The shared expert's `silu(gate) * up`: input of `ffn_down_shexp` (Qwen2-MoE, Granite
    /// MoE Shared).
    SharedExpertDown,
}

impl LinearInput {
    /// Which input feeds the weight matrix `part` (`attn_q`, `ffn_down`, …) of a block.
    pub fn of(part: &str) -> Option<Self> {
        Some(match part {
            "attn_q" | "attn_k" | "attn_v" => Self::Attention,
            "attn_output" => Self::AttentionOutput,
            "ffn_gate" | "ffn_up" | "ffn_gate_inp" | "ffn_gate_inp_shexp" | "ffn_gate_shexp"
            | "ffn_up_shexp" => Self::Mlp,
            "ffn_down" => Self::MlpDown,
            "ffn_down_shexp" => Self::SharedExpertDown,
            _ => {
                let (proj, expert) = part.split_once('.')?;
                let expert = expert.parse().ok()?;
                match proj {
                    "ffn_gate" | "ffn_up" => Self::Expert(expert),
                    "ffn_down" => Self::ExpertDown(expert),
                    _ => return None,
                }
            }
        })
    }
}

/// What a step mixing greedy and sampling rows reads back besides every logits row's argmax:
/// the whole rows of `full`, and the top `k` values of the rows of `top` (indices among the
/// logits rows, ascending; a row in neither needs only its argmax).
#[derive(Debug, Clone, Default)]
pub struct MixedReadback {
    pub full: Vec<usize>,
    pub top: Vec<usize>,
    pub k: usize,
    /// Rows sampled where the logits live.
    pub draws: Vec<lowbit_gpu::RowDraw>,
    /// Changes to the logits (penalties, bias) before the argmax, the top k and the draws.
    pub adjust: Vec<lowbit_gpu::LogitAdjust>,
    /// Rows whose chosen token's log-probabilities to compute where the logits live.
    pub logprobs: Vec<lowbit_gpu::LogprobRow>,
}

/// What a mixed step gave back (see [`MixedReadback`]).
#[derive(Debug)]
pub struct MixedRows {
    /// Every logits row's argmax.
    pub ids: Vec<u32>,
    /// The rows of `full`, in its order.
    pub logits: Logits,
    /// The top k of each row of `top`, in its order ([`lowbit_gpu::top_k`]).
    pub top: Vec<Vec<(u32, f32)>>,
    /// The token of each draw, in its order ([`lowbit_gpu::draw_row`]).
    pub drawn: Vec<u32>,
    /// The log-probabilities of each row of `logprobs`, in its order.
    pub logprobs: Vec<lowbit_gpu::TokenLogprobs>,
}
