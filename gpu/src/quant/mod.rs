//! Weight formats.
//!
//! [`source`] decodes the formats weights arrive in from model files (GGUF blocks, f16/bf16
//! safetensors). lowbit's own in-memory quantized formats will live beside it.

pub mod source;
