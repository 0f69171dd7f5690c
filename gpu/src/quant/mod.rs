//! Weight formats.
//!
//! - [`source`]: the formats weights arrive in (GGUF blocks, f16/bf16), decoded;
//!   [`ggml_blocks`]: the GGUF block formats imported by repacking or requantizing.
//! - [`format`]: lowbit's own formats ([`QuantFormat`]: F32, F16, Q8, Q4, Q4M, and Lut4, 4-bit
//!   codes into a [`Codebook`]: FP4 E2M1 or IQ4_NL's levels).
//! - [`qtensor`]: the planar in-memory layout ([`QTensor`]), lossless GGUF repacking and the
//!   reference dequantizer.
//! - [`quantize`]: quantizers from f32 (round-to-nearest and error-minimising search).

pub mod format;
pub mod ggml_blocks;
pub mod gptq;
pub mod qtensor;
pub mod quantize;
pub mod source;

pub use format::{Codebook, GroupSize, QuantFormat, FORMAT_NAMES, QBLOCK};
pub use qtensor::QTensor;
pub use quantize::{quantize, quantize_raw, QuantMethod, QuantizeOptions};
