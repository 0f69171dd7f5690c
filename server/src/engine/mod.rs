//! Turning logits into text: sampling and the generation loop. The continuous-batching
//! scheduler will live here too.

pub mod blocks;
pub mod detok;
pub mod generate;
pub mod sampler;
pub mod solo;
pub mod stop;

pub use generate::{generate, GenerateOptions, Generation, StopReason};
pub use sampler::{Sampler, SamplingParams};
