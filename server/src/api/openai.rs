//! OpenAI's request and response types, as lowbit accepts and sends them.
//!
//! Requests reject unknown fields: a parameter lowbit does not implement is a 400 naming it,
//! never silently ignored. Besides OpenAI's own, the extensions vLLM and llama-server users
//! send are accepted: `top_k`, `min_p`, `repetition_penalty`, `ignore_eos`, `stop_token_ids`,
//! `min_tokens`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

impl StopSpec {
    /// The strings.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a last chunk with the usage and no choices.
    #[serde(default)]
    pub include_usage: bool,
}

/// `response_format`: free text, any JSON object, or JSON valid under a schema (structured
/// outputs; the output is constrained token by token, see `engine::grammar`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseFormat {
    // (Empty struct variants, not unit ones: serde lets unknown fields pass a unit variant.)
    Text {},
    JsonObject {},
    JsonSchema { json_schema: JsonSchemaFormat },
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonSchemaFormat {
    /// The schema's name (OpenAI requires it; lowbit does not use it).
    pub name: String,
    pub description: Option<String>,
    /// A JSON schema (an object); absent: any JSON value.
    #[schema(value_type = Object)]
    pub schema: Option<serde_json::Value>,
    /// Accepted: the output always follows the schema, strict or not.
    pub strict: Option<bool>,
}

/// The sampling and stopping parameters chat and completions share.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct SamplingFields {
    // Floats are read as f64 and checked before narrowing, so that the ranges below are exact
    // (an f32 would round 2.0000001 to 2 and accept it).
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    /// Choices per prompt.
    #[schema(minimum = 1, maximum = 16)]
    pub n: Option<i64>,
    pub stop: Option<StopSpec>,
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f64>,
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f64>,
    /// Token id (as a string) → bias in [-100, 100].
    pub logit_bias: Option<BTreeMap<String, f32>>,
    pub seed: Option<i64>,
    pub user: Option<String>,
    /// Extension (vLLM, llama-server): keep the k most likely tokens; 0 or -1 keeps all.
    #[schema(minimum = -1)]
    pub top_k: Option<i64>,
    /// Extension: drop tokens below `min_p ×` the most likely one's probability.
    #[schema(minimum = 0, maximum = 1)]
    pub min_p: Option<f64>,
    /// Extension: Hugging Face's repetition penalty (1 disables).
    #[schema(exclusive_minimum = 0, maximum = 10)]
    pub repetition_penalty: Option<f64>,
    /// Extension: keep generating through end-of-sequence tokens.
    pub ignore_eos: Option<bool>,
    /// Extension: more token ids that end a choice.
    pub stop_token_ids: Option<Vec<u32>>,
    /// Extension (vLLM): the end of sequence and `stop_token_ids` cannot be generated, nor a
    /// stop string end the choice, before this many tokens (at most `max_tokens`).
    #[schema(minimum = 0)]
    pub min_tokens: Option<i64>,
    /// Constrains the output (chat, and completions as vLLM allows).
    pub response_format: Option<ResponseFormat>,
    /// Extension (vLLM): output valid under this JSON schema.
    #[schema(value_type = Object)]
    pub guided_json: Option<serde_json::Value>,
    /// Extension (vLLM): output matching this regular expression.
    pub guided_regex: Option<String>,
    /// Extension (vLLM): output exactly one of these strings.
    pub guided_choice: Option<Vec<String>>,
    /// Extension (vLLM): a context-free grammar (llguidance's Lark syntax).
    pub guided_grammar: Option<String>,
    /// Extension (vLLM 0.12 and later, which replaced the `guided_*` fields with it).
    pub structured_outputs: Option<StructuredOutputs>,
}

/// vLLM's `structured_outputs`: exactly one of its fields.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StructuredOutputs {
    /// A JSON schema (or its text).
    #[schema(value_type = Object)]
    pub json: Option<serde_json::Value>,
    pub regex: Option<String>,
    pub choice: Option<Vec<String>>,
    /// A context-free grammar in llguidance's Lark syntax.
    pub grammar: Option<String>,
}

/// A part of a message's content: only `text` parts are supported (the others are a 400
/// naming them; their own fields are not checked).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ContentPart {
    /// Only `text`.
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// Message content: a string or an array of text parts.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One message of a chat request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    pub content: Option<MessageContent>,
    pub name: Option<String>,
    /// An assistant turn's calls of tools.
    pub tool_calls: Option<Vec<RequestToolCall>>,
    /// A `tool` turn: the call it answers.
    pub tool_call_id: Option<String>,
    /// An assistant turn's thinking, as lowbit (and vLLM) returned it: sent back by clients
    /// that append the returned message; templates that show earlier thinking (Qwen3's, in a
    /// tool loop) read it. vLLM's newer name `reasoning` is taken too.
    #[serde(alias = "reasoning")]
    pub reasoning_content: Option<String>,
}

/// A tool call of an earlier assistant turn.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestToolCall {
    pub id: String,
    /// Only `function`.
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

/// A function call: its name and its arguments as a JSON text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// `tools[]`: a function the model may call.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    /// Only `function`.
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionDef,
}

/// A function's name, description and parameters (a JSON schema).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionDef {
    pub name: String,
    pub description: Option<String>,
    #[schema(value_type = Object)]
    pub parameters: Option<serde_json::Value>,
    /// Accepted: the arguments always follow the parameters' schema.
    pub strict: Option<bool>,
}

/// `tool_choice`: `none`, `auto`, `required`, or one function.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(String),
    Named(NamedToolChoice),
}

/// `tool_choice: {"type": "function", "function": {"name"}}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamedToolChoice {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: NamedFunction,
}

/// The function `tool_choice` names.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamedFunction {
    pub name: String,
}

/// `POST /v1/chat/completions` (unknown fields are rejected by `params::parse_body`: serde
/// cannot deny them next to `flatten`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<RequestMessage>,
    #[schema(minimum = 1)]
    pub max_tokens: Option<i64>,
    /// OpenAI's newer name for `max_tokens`.
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<bool>,
    /// Alternatives per token, with `logprobs: true`.
    #[schema(minimum = 0, maximum = 20)]
    pub top_logprobs: Option<i64>,
    /// Functions the model may call (tool calling: `api/tools.rs`).
    pub tools: Option<Vec<Tool>>,
    pub tool_choice: Option<ToolChoice>,
    /// Several calls in one reply (default true).
    pub parallel_tool_calls: Option<bool>,
    /// More variables for the chat template (vLLM's; e.g. Qwen3's `enable_thinking`).
    #[schema(value_type = Option<Object>)]
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// `none`, `minimal`, `low`, `medium` or `high`: the chat template's `reasoning_effort`
    /// variable (gpt-oss's templates read it; others ignore it), as vLLM passes it.
    pub reasoning_effort: Option<String>,
    /// Accepted: OpenAI routes requests sharing it to the same cache; lowbit's prefix cache
    /// finds a shared prompt prefix by itself.
    pub prompt_cache_key: Option<String>,
    /// An end user's id, logged with the request as `user` is (OpenAI's newer name for it).
    pub safety_identifier: Option<String>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// `prompt`: text, texts, token ids, or lists of token ids.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PromptSpec {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions` (unknown fields: see [`ChatCompletionRequest`]).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptSpec,
    /// Default 16, as OpenAI's.
    #[schema(minimum = 1)]
    pub max_tokens: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Alternatives per token.
    #[schema(minimum = 0, maximum = 5)]
    pub logprobs: Option<i64>,
    /// Put the prompt before the completion.
    pub echo: Option<bool>,
    /// Only `best_of == n` (or 1) is supported.
    pub best_of: Option<i64>,
    /// Fill in the middle: the text that follows the completion (a code model with FIM
    /// tokens, prompted `<prefix> prompt <suffix> suffix <middle>`).
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// Token counts.
#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
pub struct UsageBody {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

impl From<crate::engine::Usage> for UsageBody {
    fn from(u: crate::engine::Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: u.cached_tokens,
            },
        }
    }
}

/// One alternative in chat `logprobs`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// One token in chat `logprobs.content`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

/// Chat `logprobs`.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprob>,
}

/// The assistant's message: its text, or (`content` null) its calls of tools.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResponseMessage {
    pub role: &'static str,
    pub content: Option<String>,
    /// A reasoning model's thinking (`<think>…</think>`, api/reasoning.rs), as vLLM and
    /// llama-server name it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ResponseToolCall>>,
}

/// A call of a tool the model made.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct ResponseToolCall {
    /// `call_…`, for the `tool` message that answers it.
    pub id: String,
    /// `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

/// A tool call in a stream: `index` among the choice's calls; the id, type and name come with
/// its first delta, its arguments' text in pieces after it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeltaToolCall {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: DeltaFunction,
}

/// A piece of a streamed function call.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct DeltaFunction {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// One choice of a chat completion.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ResponseMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// A chat completion.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChatChoice>,
    pub usage: UsageBody,
}

/// A streamed message delta.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<DeltaToolCall>>,
}

/// One choice of a chat chunk.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// A streamed chat chunk.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChunkChoice>,
    /// Present (null until the last chunk) with `stream_options.include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageBody>>,
}

/// The legacy completions `logprobs` object. With `echo` it starts with the prompt's tokens,
/// the first of which has no log-probability (null, as OpenAI's).
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<BTreeMap<String, f32>>>,
    pub text_offset: Vec<usize>,
}

/// One choice of a completion (or of a completion chunk).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// A completion, or a streamed completion chunk (same object).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageBody>>,
}

/// One entry of `/v1/models`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// Longest prompt + completion, in tokens.
    pub max_model_len: usize,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

/// `POST /tokenize`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    /// Text to tokenize (or `messages`, rendered with the chat template).
    pub prompt: Option<String>,
    pub messages: Option<Vec<RequestMessage>>,
    /// Add the model's BOS where it wants one (default true; chat templates add their own).
    pub add_special_tokens: Option<bool>,
    /// With `messages`: the tools a chat would describe (their prompt counts too).
    pub tools: Option<Vec<Tool>>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    /// With `messages`: the chat's template variables.
    #[schema(value_type = Option<Object>)]
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `POST /tokenize`'s answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenizeResponse {
    pub tokens: Vec<u32>,
    pub count: usize,
    pub max_model_len: usize,
}

/// `POST /detokenize`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

/// `POST /detokenize`'s answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DetokenizeResponse {
    pub prompt: String,
}
