//! lowbit: a quantized LLM inference server.
//!
//! - [`model`]: model files (GGUF, Hugging Face folders), tokenizer, chat template and the
//!   Llama-family forward pass over a ragged batch.
//! - [`engine`]: sampling and generation; the continuous-batching scheduler will live here.
//! - [`cli`]: the `lowbit` command line.
//!
//! The numeric work happens in `lowbit-gpu` behind its `Backend` trait.

pub mod cli;
pub mod engine;
pub mod eval;
pub mod model;
