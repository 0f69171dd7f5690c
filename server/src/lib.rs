//! lowbit: a quantized LLM inference server.
//!
//! - [`model`]: model files (GGUF, Hugging Face folders), tokenizer, chat template and the
//!   Llama-family forward pass over a ragged batch.
//! - [`engine`]: the continuous-batching scheduler over a paged KV cache, sampling, generation.
//! - [`api`]: the OpenAI-compatible HTTP API (axum).
//! - [`metrics`]: Prometheus metrics.
//! - [`cli`]: the `lowbit` command line.
//!
//! The numeric work happens in `lowbit-gpu` behind its `Backend` trait.

pub mod api;
pub mod cli;
pub mod engine;
pub mod eval;
pub mod metrics;
pub mod model;
