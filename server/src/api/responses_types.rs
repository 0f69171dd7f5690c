//! OpenAI's Responses API types (`/v1/responses`), as lowbit accepts and sends them.
//!
//! The request's `input` items are read by hand (responses_input.rs) so that an error names
//! the item and field; everything else is typed here, unknown fields rejected.

use super::openai::TokenLogprob;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// `input`: a user message's text, or a list of items (messages, function calls and their
/// outputs, reasoning).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ResponsesInput {
    Text(String),
    #[schema(value_type = Vec<Object>)]
    Items(Vec<serde_json::Value>),
}

/// A function the model may call (the Responses shape: flat, no `function` wrapper).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionTool {
    /// Only `function` (hosted tools such as `web_search` are a 400).
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    /// Accepted: the arguments always follow the parameters' schema.
    pub strict: Option<bool>,
}

/// `tool_choice`: `none`, `auto`, `required`, or `{"type": "function", "name"}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ResponsesToolChoice {
    Mode(String),
    Function(FunctionChoice),
}

/// `tool_choice: {"type": "function", "name"}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionChoice {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
}

/// `text.format`: free text, any JSON object, or JSON valid under a schema.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TextFormat {
    Text {},
    JsonObject {},
    JsonSchema {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        #[schema(value_type = Object)]
        schema: serde_json::Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        strict: Option<bool>,
    },
}

/// `text`: the answer's format.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    pub format: Option<TextFormat>,
    /// Accepted and returned; a local model has no verbosity setting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verbosity: Option<String>,
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponsesStreamOptions {
    /// Accepted: obfuscation pads events against length side channels on the open internet;
    /// lowbit sends none.
    pub include_obfuscation: Option<bool>,
}

/// `POST /v1/responses`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponsesRequest {
    pub model: String,
    pub input: ResponsesInput,
    /// A system message before the conversation (not carried to a follow-up response).
    pub instructions: Option<String>,
    #[schema(minimum = 1)]
    pub max_output_tokens: Option<i64>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    /// Alternatives per token in `output_text.logprobs`.
    #[schema(minimum = 0, maximum = 20)]
    pub top_logprobs: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<ResponsesStreamOptions>,
    pub tools: Option<Vec<FunctionTool>>,
    pub tool_choice: Option<ResponsesToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub text: Option<TextConfig>,
    /// Keep the response for `previous_response_id` and `GET /v1/responses/{id}` (default
    /// true, as OpenAI's).
    pub store: Option<bool>,
    /// Continue the conversation of a stored response.
    pub previous_response_id: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub user: Option<String>,
    /// `message.output_text.logprobs` and `reasoning.encrypted_content`.
    pub include: Option<Vec<String>>,
    pub reasoning: Option<ReasoningConfig>,
    /// Only `disabled`: a conversation longer than the context is a 400.
    pub truncation: Option<String>,
    /// Extension (vLLM): keep the k most likely tokens.
    #[schema(minimum = -1)]
    pub top_k: Option<i64>,
    /// Extension: drop tokens below `min_p ×` the most likely one's probability.
    #[schema(minimum = 0, maximum = 1)]
    pub min_p: Option<f64>,
    /// Extension: Hugging Face's repetition penalty.
    #[schema(exclusive_minimum = 0, maximum = 10)]
    pub repetition_penalty: Option<f64>,
    /// Accepted and returned: lowbit's prefix cache finds a shared prefix by itself.
    pub prompt_cache_key: Option<String>,
    /// An end user's id, logged with the request.
    pub safety_identifier: Option<String>,
    /// Extension: a seed for sampling.
    pub seed: Option<i64>,
    /// Extension (vLLM): more variables for the chat template.
    #[schema(value_type = Option<Object>)]
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A part of an output message.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "type", rename = "output_text")]
pub struct OutputText {
    pub text: String,
    /// Always empty: a local model cites nothing.
    #[schema(value_type = Vec<Object>)]
    pub annotations: Vec<serde_json::Value>,
    /// Each token's log-probability, in chat's shape (`token`, `logprob`, `bytes`,
    /// `top_logprobs`), which is also the Responses API's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
}

/// A reasoning item's text.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "type", rename = "reasoning_text")]
pub struct ReasoningText {
    pub text: String,
}

/// An item of a response's `output`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    /// A reasoning model's thinking, in `content` as vLLM returns it (no summaries).
    Reasoning {
        id: String,
        #[schema(value_type = Vec<Object>)]
        summary: Vec<serde_json::Value>,
        content: Vec<ReasoningText>,
        /// With `include: ["reasoning.encrypted_content"]`: the thinking as an opaque string a
        /// stateless client sends back (responses_input.rs; encoded, not encrypted).
        #[serde(skip_serializing_if = "Option::is_none")]
        encrypted_content: Option<String>,
        status: &'static str,
    },
    Message {
        id: String,
        status: &'static str,
        role: &'static str,
        content: Vec<OutputText>,
    },
    FunctionCall {
        id: String,
        /// The id a `function_call_output` item answers.
        call_id: String,
        name: String,
        arguments: String,
        status: &'static str,
    },
}

impl OutputItem {
    pub fn id(&self) -> &str {
        match self {
            Self::Reasoning { id, .. }
            | Self::Message { id, .. }
            | Self::FunctionCall { id, .. } => id,
        }
    }

    /// The item as it is announced before its text (`content` empty).
    pub fn without_content(&self) -> Self {
        let mut item = self.clone();
        match &mut item {
            Self::Reasoning { content, .. } => content.clear(),
            Self::Message { content, .. } => content.clear(),
            Self::FunctionCall { .. } => {}
        }
        item
    }

    /// Appends to a text item's (reasoning or message) text.
    pub fn push_text(&mut self, more: &str) {
        let text = match self {
            Self::Reasoning { content, .. } => content.first_mut().map(|p| &mut p.text),
            Self::Message { content, .. } => content.first_mut().map(|p| &mut p.text),
            Self::FunctionCall { .. } => None,
        };
        if let Some(text) = text {
            text.push_str(more);
        }
    }

    /// Marks the item `completed` or `incomplete`.
    pub fn set_status(&mut self, to: &'static str) {
        match self {
            Self::Reasoning { status, .. }
            | Self::Message { status, .. }
            | Self::FunctionCall { status, .. } => *status = to,
        }
    }
}

/// `usage.input_tokens_details`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct InputTokensDetails {
    pub cached_tokens: usize,
}

/// `usage.output_tokens_details`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct OutputTokensDetails {
    /// Tokens of the thinking (its text re-tokenized).
    pub reasoning_tokens: usize,
}

/// A response's token counts.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct ResponseUsage {
    pub input_tokens: usize,
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: usize,
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: usize,
}

/// Why a response stopped short.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IncompleteDetails {
    /// `max_output_tokens`.
    pub reason: &'static str,
}

/// Why a response failed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResponseError {
    pub code: String,
    pub message: String,
}

/// `reasoning`: the effort goes to the chat template as `reasoning_effort` (gpt-oss's read
/// it); summaries are accepted but none are written (a reasoning item carries the thinking
/// itself).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasoningConfig {
    /// `none`, `minimal`, `low`, `medium` or `high`.
    pub effort: Option<String>,
    /// `auto`, `concise` or `detailed`.
    pub summary: Option<String>,
    /// OpenAI's older name for `summary`.
    #[serde(skip_serializing)]
    pub generate_summary: Option<String>,
}

/// A response: the request's settings and the model's output items.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResponseObject {
    pub id: String,
    pub object: &'static str,
    pub created_at: u64,
    /// `in_progress`, `completed`, `incomplete` or `failed`.
    pub status: &'static str,
    pub error: Option<ResponseError>,
    pub incomplete_details: Option<IncompleteDetails>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub model: String,
    pub output: Vec<OutputItem>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    pub reasoning: ReasoningConfig,
    pub store: bool,
    pub temperature: f64,
    pub text: TextConfig,
    pub tool_choice: ResponsesToolChoice,
    pub tools: Vec<FunctionTool>,
    pub top_logprobs: i64,
    pub top_p: f64,
    pub truncation: &'static str,
    pub usage: Option<ResponseUsage>,
    pub user: Option<String>,
    pub prompt_cache_key: Option<String>,
    pub safety_identifier: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub background: bool,
}

/// `DELETE /v1/responses/{id}`'s answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResponseDeleted {
    pub id: String,
    pub object: &'static str,
    pub deleted: bool,
}

/// `GET /v1/responses/{id}/input_items`'s answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InputItemList {
    pub object: &'static str,
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<serde_json::Value>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}
