//! lowbit-gpu: the compute layer of lowbit.
//!
//! It knows nothing of HTTP or of model files: it holds tensors and weights, decodes the block
//! formats weights arrive in, and runs the operations a transformer forward needs behind the
//! [`Backend`] trait. The CPU backend ([`cpu::CpuBackend`]) is the reference every later backend
//! (wgpu) is tested against.

pub mod backend;
mod checks;
pub mod cpu;
pub mod draw;
pub mod error;
pub mod kv;
pub mod logprobs;
pub mod quant;
pub mod tensor;
pub mod wgpu;

pub use backend::{
    argmax, read_logits_apart, top_k, AttentionShape, Backend, LogitsReadback, LogitsRequest, Rope,
    RopeStyle, ScatteredRows, SeqSpan, SWIGLU_OAI_ALPHA,
};
pub use draw::{adjusted_rows, draw_row, LogitAdjust, RowDraw};
pub use error::{Error, Result};
pub use kv::{KvDtype, KvPool, KvPoolSpec, DEFAULT_BLOCK_TOKENS, NO_BLOCK};
pub use logprobs::{token_logprobs, LogprobRow, TokenLogprobs};
pub use quant::source::{RawTensor, SourceDType};
pub use quant::{GroupSize, QTensor, QuantFormat};
pub use tensor::{Tensor, Weight};
