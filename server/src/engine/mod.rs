//! Turning logits into text: sampling and the generation loop. The continuous-batching
//! scheduler will live here too.

pub mod generate;
pub mod sampler;
pub mod solo;

pub use generate::{generate, GenerateOptions, Generation, StopReason};
pub use sampler::{Sampler, SamplingParams};
