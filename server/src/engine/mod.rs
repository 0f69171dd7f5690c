//! The engine: one thread owns the model and its paged KV pool and runs the
//! continuous-batching scheduler; the HTTP side holds an [`EngineHandle`].
//!
//! - [`handle`]: the engine thread, admission control, the handle and event streams;
//! - [`scheduler`]: the step loop (batching, chunked prefill, preemption, forks, emission);
//! - [`step`]: what the scheduler needs of a model (the forward, the greedy head, copies);
//! - [`blocks`]: block ids, reference counts, the prefix cache;
//! - [`kv_blocks`]: a sequence's tables in the main pool and a sliding-window pool;
//! - [`kv_sizing`]: the server's KV budget as pools;
//! - [`sampler`], [`stop`], [`detok`]: choosing tokens, stop strings, incremental text;
//! - [`speculative`]: draft tokens by prompt lookup, checked in one step with the token before;
//! - [`generate`], [`solo`]: the single-sequence loop and trivial pool of the CLI tools.

pub mod blocks;
pub mod detok;
pub mod generate;
pub mod grammar;
pub mod handle;
pub mod kv_blocks;
pub mod kv_sizing;
pub mod readback;
pub mod request;
pub mod sampler;
pub mod scheduler;
pub mod solo;
pub mod speculative;
pub mod step;
pub mod stop;

pub use generate::{generate, GenerateOptions, Generation, StopReason};
pub use handle::{AdmissionLimits, EngineHandle, EventStream, Health, Loaded, SubmitError};
pub use request::{EngineFailure, Event, FinishReason, GenerationRequest, Usage};
pub use sampler::{Sampler, SamplingParams};
pub use scheduler::{Scheduler, SchedulerConfig};
pub use step::{LlamaStep, StepModel};
