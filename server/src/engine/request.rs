//! What crosses the seam between the HTTP side and the engine: a generation request in token
//! ids, and the events that answer it.

use super::grammar::Grammar;
use super::sampler::{SamplingParams, TokenLogprobs};
use std::time::Instant;

/// One request, already tokenized and validated by the API.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// The request id (`x-request-id`), for logs.
    pub id: String,
    pub prompt: Vec<u32>,
    /// Independent choices generated from the prompt (OpenAI's `n`); they share its blocks.
    pub n: usize,
    /// Generated tokens per choice at most.
    pub max_tokens: usize,
    /// Sampling of choice 0; choice `i` draws from seed `seed + i`.
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Ids that end a choice, besides the model's end-of-sequence ids.
    pub stop_token_ids: Vec<u32>,
    /// Keep generating through the model's end-of-sequence ids.
    pub ignore_eos: bool,
    /// The end of sequence (unless `ignore_eos`) and `stop_token_ids` are banned until this
    /// many tokens are generated (vLLM's `min_tokens`).
    pub min_tokens: usize,
    /// Report log-probabilities with this many alternatives per token.
    pub logprobs: Option<usize>,
    /// Report the prompt's log-probabilities with this many alternatives per token (OpenAI's
    /// `echo` with `logprobs`): its logits at every position are computed, so the prefix
    /// cache is not used for it.
    pub prompt_logprobs: Option<usize>,
    /// Give up (an error event) after this moment.
    pub deadline: Option<Instant>,
    /// What each choice's output must match (structured outputs), compiled by the API.
    pub grammar: Option<Grammar>,
}

/// Why a choice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence or stop token, a stop string, or the end of its grammar.
    Stop,
    /// `max_tokens`, or the context is full.
    Length,
}

impl FinishReason {
    /// OpenAI's `finish_reason` (and the metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Over all choices.
    pub completion_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cached_tokens: usize,
}

impl Usage {
    /// Adds another request's counts (a completions call with several prompts).
    pub fn add(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cached_tokens += other.cached_tokens;
    }
}

/// What the engine sends back for a request, in order: the prompt's log-probabilities if
/// asked, tokens and finishes of its choices interleaved, then `Done` (or one `Error`, after
/// which nothing follows).
#[derive(Debug, Clone)]
pub enum Event {
    /// The log-probabilities of the prompt's tokens after the first (the first has none),
    /// once its last token is computed and before any choice's first token.
    PromptLogprobs(Vec<TokenLogprobs>),
    /// A generated token of a choice, with the text it releases (possibly empty: held back
    /// for a stop string, or an incomplete character).
    Token {
        choice: usize,
        token: u32,
        text: String,
        logprobs: Option<TokenLogprobs>,
    },
    /// A choice ended; `text` is any text still held back.
    Finished {
        choice: usize,
        reason: FinishReason,
        text: String,
    },
    /// Every choice ended.
    Done(Usage),
    /// The request failed (a deadline, an internal error); it is over.
    Error(EngineFailure),
}

/// Why a request failed inside the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineFailure {
    /// Its `--request-timeout` passed.
    Timeout,
    /// The engine could not compute it (the message says why); other requests go on.
    Internal(String),
}

impl std::fmt::Display for EngineFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => {
                f.write_str("the request took longer than the server's --request-timeout")
            }
            Self::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}
