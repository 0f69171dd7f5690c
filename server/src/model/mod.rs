//! Models: file formats (GGUF, Hugging Face safetensors folders), configuration, tokenizer,
//! chat template, and the Llama-family forward pass.

mod architecture;
pub mod calibrate;
pub mod chat_template;
pub mod config;
pub mod error;
mod ffn;
mod fused;
mod gemma_params;
pub mod gguf;
mod gguf_vocab;
pub mod hf;
pub mod llama;
pub mod lowbit_file;
mod moe;
pub mod moe_params;
pub mod pyjson;
pub mod quant_policy;
pub mod rope_params;
pub mod source;
mod source_experts;
pub mod step_io;
pub mod synthetic;
pub mod tensor_list;
pub mod tokenizer;

pub use calibrate::Calibration;
pub use chat_template::{ChatMessage, ChatTemplate};
pub use config::LlamaConfig;
pub use error::{ModelError, Result};
pub use llama::{BatchSeq, Llama, Logits, MixedReadback, MixedRows};
pub use quant_policy::{QuantPolicy, TensorPlan};
pub use source::ModelSource;
pub use tokenizer::Tokenizer;
