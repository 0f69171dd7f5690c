//! `/v1/responses`: OpenAI's Responses API over the same chat path as `/v1/chat/completions`.
//!
//! A request is read as a chat request (instructions, the stored conversation of
//! `previous_response_id`, then `input`'s items as messages; `text.format` as the response
//! format; flat function tools) and run by [`ChatRun`]; its answer is written as output items
//! (reasoning, message, function calls), whole or as Responses stream events
//! (responses_stream.rs). Stored responses (responses_store.rs) are continued here and
//! fetched, listed and deleted in responses_stored.rs.

use super::chat_run::ChatRun;
use super::error::ApiError;
use super::generation;
use super::openai::{
    ChatCompletionRequest, FunctionDef, JsonSchemaFormat, NamedFunction, NamedToolChoice,
    ResponseFormat, SamplingFields, Tool, ToolChoice, UsageBody,
};
use super::params;
use super::responses_input::Conversation;
use super::responses_store::ChainError;
use super::responses_stream::ResponsesSse;
use super::responses_types::{
    InputTokensDetails, OutputItem, OutputTokensDetails, ReasoningConfig, ResponseObject,
    ResponseUsage, ResponsesInput, ResponsesRequest, ResponsesToolChoice, TextConfig, TextFormat,
};
use super::{body_bytes, request_id, AppState};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// Request fields of OpenAI's that lowbit does not implement: a 400 naming them.
const UNSUPPORTED: &[&str] = &[
    "background",
    "conversation",
    "prompt",
    "service_tier",
    "max_tool_calls",
];

/// A new item id: OpenAI's prefix and 48 hex digits.
pub fn item_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// What a response echoes of its request.
#[derive(Debug, Clone)]
pub struct Echo {
    pub model: String,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    pub store: bool,
    pub temperature: f64,
    pub top_p: f64,
    pub top_logprobs: i64,
    pub text: TextConfig,
    pub tool_choice: ResponsesToolChoice,
    pub tools: Vec<super::responses_types::FunctionTool>,
    pub user: Option<String>,
    pub prompt_cache_key: Option<String>,
    pub safety_identifier: Option<String>,
    pub metadata: std::collections::BTreeMap<String, String>,
    /// `output_text.logprobs` were asked for.
    pub logprobs: bool,
    pub reasoning: ReasoningConfig,
    /// Reasoning items carry `encrypted_content` (`include`).
    pub sealed_reasoning: bool,
}

impl Echo {
    /// A request's defaults, for unit tests.
    #[cfg(test)]
    pub fn for_tests() -> Self {
        let req: ResponsesRequest = serde_json::from_value(json!({"model": "m", "input": "hi"}))
            .unwrap_or_else(|e| panic!("{e}"));
        Self::of(&req, "m")
    }

    fn of(req: &ResponsesRequest, model: &str) -> Self {
        Self {
            model: model.to_string(),
            instructions: req.instructions.clone(),
            max_output_tokens: req.max_output_tokens,
            parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
            previous_response_id: req.previous_response_id.clone(),
            store: req.store.unwrap_or(true),
            temperature: req.temperature.unwrap_or(1.0),
            top_p: req.top_p.unwrap_or(1.0),
            top_logprobs: req.top_logprobs.unwrap_or(0),
            text: req.text.clone().unwrap_or(TextConfig {
                format: Some(TextFormat::Text {}),
                verbosity: None,
            }),
            tool_choice: req
                .tool_choice
                .clone()
                .unwrap_or(ResponsesToolChoice::Mode("auto".to_string())),
            tools: req.tools.clone().unwrap_or_default(),
            user: req.user.clone(),
            prompt_cache_key: req.prompt_cache_key.clone(),
            safety_identifier: req.safety_identifier.clone(),
            metadata: req.metadata.clone().unwrap_or_default(),
            logprobs: wants_logprobs(req),
            reasoning: req.reasoning.clone().unwrap_or_default(),
            sealed_reasoning: includes(req, ENCRYPTED_REASONING),
        }
    }

    /// The response object with these settings.
    pub fn object(
        &self,
        id: &str,
        created_at: u64,
        status: &'static str,
        output: Vec<OutputItem>,
        usage: Option<ResponseUsage>,
    ) -> ResponseObject {
        ResponseObject {
            id: id.to_string(),
            object: "response",
            created_at,
            status,
            error: None,
            incomplete_details: (status == "incomplete").then_some(
                super::responses_types::IncompleteDetails {
                    reason: "max_output_tokens",
                },
            ),
            instructions: self.instructions.clone(),
            max_output_tokens: self.max_output_tokens,
            model: self.model.clone(),
            output,
            parallel_tool_calls: self.parallel_tool_calls,
            previous_response_id: self.previous_response_id.clone(),
            reasoning: self.reasoning.clone(),
            store: self.store,
            temperature: self.temperature,
            text: self.text.clone(),
            tool_choice: self.tool_choice.clone(),
            tools: self.tools.clone(),
            top_logprobs: self.top_logprobs,
            top_p: self.top_p,
            truncation: "disabled",
            usage,
            user: self.user.clone(),
            prompt_cache_key: self.prompt_cache_key.clone(),
            safety_identifier: self.safety_identifier.clone(),
            metadata: self.metadata.clone(),
            background: false,
        }
    }
}

/// `include` values: each token's log-probabilities, reasoning as opaque content.
const OUTPUT_LOGPROBS: &str = "message.output_text.logprobs";
const ENCRYPTED_REASONING: &str = "reasoning.encrypted_content";

fn includes(req: &ResponsesRequest, what: &str) -> bool {
    req.include.iter().flatten().any(|i| i == what)
}

fn wants_logprobs(req: &ResponsesRequest) -> bool {
    includes(req, OUTPUT_LOGPROBS) || req.top_logprobs.is_some()
}

/// The usage of a response whose thinking was `reasoning` (re-tokenized to count it).
pub fn usage_of(state: &AppState, u: UsageBody, reasoning: &str) -> ResponseUsage {
    let reasoning_tokens = if reasoning.is_empty() {
        0
    } else {
        let ids = state.model.tokenizer.encode(reasoning, false);
        ids.map_or(0, |ids| ids.len().min(u.completion_tokens))
    };
    ResponseUsage {
        input_tokens: u.prompt_tokens,
        input_tokens_details: InputTokensDetails {
            cached_tokens: u.prompt_tokens_details.cached_tokens,
        },
        output_tokens: u.completion_tokens,
        output_tokens_details: OutputTokensDetails { reasoning_tokens },
        total_tokens: u.prompt_tokens + u.completion_tokens,
    }
}

/// An error about a chat field, renamed to the Responses field it came from.
fn renamed(mut e: ApiError) -> ApiError {
    const NAMES: &[(&str, &str)] = &[
        ("max_completion_tokens", "max_output_tokens"),
        ("response_format.json_schema", "text.format"),
        ("response_format", "text.format"),
        (".function.", "."),
        ("messages", "input"),
        ("reasoning_effort", "reasoning.effort"),
    ];
    let Some(original) = e.param.clone() else {
        return e;
    };
    // Each name the parameter holds is renamed in it, and in the message (in order, longest
    // first: `response_format.json_schema` before `response_format`).
    for (from, to) in NAMES.iter().filter(|(from, _)| original.contains(from)) {
        if let Some(p) = &e.param {
            e.param = Some(p.replacen(from, to, 1));
        }
        e.message = e.message.replace(from, to);
    }
    e
}

/// The stored conversation `previous_response_id` continues.
fn earlier_items(state: &AppState, id: &str) -> Result<Vec<Value>, ApiError> {
    state.responses.conversation(id).map_err(|e| match e {
        ChainError::NotFound(id) => ApiError {
            status: StatusCode::NOT_FOUND,
            code: Some("previous_response_not_found"),
            ..ApiError::invalid(
                "previous_response_id",
                format!("Previous response with id '{id}' not found."),
            )
        },
        ChainError::Broken(at) => ApiError::invalid(
            "previous_response_id",
            format!("an earlier response of this conversation ('{at}') is no longer stored (deleted, or dropped for room: --responses-store-memory)"),
        ),
    })
}

/// The request's input items as sent, each given an id, references replaced by the items
/// they name: what the conversation is built from, what `input_items` lists, and what a
/// follow-up's conversation is made of.
fn input_with_ids(state: &AppState, input: &ResponsesInput) -> Result<Vec<Value>, ApiError> {
    let items = match input {
        ResponsesInput::Text(text) => vec![json!({"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": text}]})],
        ResponsesInput::Items(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let stored = referenced(state, item, &format!("input[{i}]"))?;
                Ok(stored.unwrap_or_else(|| item.clone()))
            })
            .collect::<Result<_, ApiError>>()?,
    };
    Ok(items
        .into_iter()
        .map(|mut item| {
            if let Some(obj) = item.as_object_mut() {
                // A message listed as OpenAI lists one: typed, its text as a part.
                if obj.contains_key("role") && !obj.contains_key("type") {
                    obj.insert("type".to_string(), json!("message"));
                }
                let assistant = obj.get("role").and_then(Value::as_str) == Some("assistant");
                if let Some(Value::String(text)) = obj.get("content") {
                    let kind = if assistant {
                        "output_text"
                    } else {
                        "input_text"
                    };
                    let part = json!([{"type": kind, "text": text}]);
                    obj.insert("content".to_string(), part);
                }
                if !obj.contains_key("id") {
                    let prefix = match obj.get("type").and_then(Value::as_str) {
                        Some("function_call") => "fc",
                        Some("function_call_output") => "fco",
                        Some("reasoning") => "rs",
                        _ => "msg",
                    };
                    obj.insert("id".to_string(), Value::String(item_id(prefix)));
                }
            }
            item
        })
        .collect())
}

/// The stored item an `item_reference` names (`None` for any other item).
fn referenced(state: &AppState, item: &Value, at: &str) -> Result<Option<Value>, ApiError> {
    if item.get("type").and_then(Value::as_str) != Some("item_reference") {
        return Ok(None);
    }
    let Some(obj) = item.as_object() else {
        return Ok(None);
    };
    if let Some(field) = obj.keys().find(|k| *k != "type" && *k != "id") {
        let param = format!("{at}.{field}");
        return Err(ApiError {
            code: Some("unknown_parameter"),
            ..ApiError::invalid(&param, format!("unknown parameter '{param}'"))
        });
    }
    let param = format!("{at}.id");
    let Some(id) = obj.get("id").and_then(Value::as_str) else {
        return Err(ApiError::invalid(
            &param,
            format!("'{param}' must be a string"),
        ));
    };
    match state.responses.find_item(id) {
        Some(stored) => Ok(Some(stored)),
        None => Err(ApiError::invalid(
            &param,
            format!("no stored item '{id}' (items of stored responses, input or output, can be referenced)"),
        )),
    }
}

/// The chat request a Responses request means; `input` is its items as
/// [`input_with_ids`] made them.
fn chat_request(
    state: &AppState,
    req: &ResponsesRequest,
    input: &[Value],
) -> Result<ChatCompletionRequest, ApiError> {
    let mut conversation = Conversation::default();
    if let Some(text) = &req.instructions {
        conversation.push(&json!({"role": "system", "content": text}), "instructions")?;
    }
    if let Some(id) = &req.previous_response_id {
        for (i, item) in earlier_items(state, id)?.iter().enumerate() {
            conversation.push(item, &format!("previous_response_id({id})[{i}]"))?;
        }
    }
    for (i, item) in input.iter().enumerate() {
        conversation.push(item, &format!("input[{i}]"))?;
    }
    let tools = req.tools.as_ref().map(|tools| {
        tools
            .iter()
            .map(|t| Tool {
                kind: t.kind.clone(),
                function: FunctionDef {
                    name: t.name.clone(),
                    description: t.description.clone(),
                    parameters: t.parameters.clone(),
                    strict: t.strict,
                },
            })
            .collect()
    });
    let tool_choice = req.tool_choice.as_ref().map(|c| match c {
        ResponsesToolChoice::Mode(m) => ToolChoice::Mode(m.clone()),
        ResponsesToolChoice::Function(f) => ToolChoice::Named(NamedToolChoice {
            kind: f.kind.clone(),
            function: NamedFunction {
                name: f.name.clone(),
            },
        }),
    });
    let response_format = req
        .text
        .as_ref()
        .and_then(|t| t.format.clone())
        .map(|f| match f {
            TextFormat::Text {} => ResponseFormat::Text {},
            TextFormat::JsonObject {} => ResponseFormat::JsonObject {},
            TextFormat::JsonSchema {
                name,
                description,
                schema,
                strict,
            } => ResponseFormat::JsonSchema {
                json_schema: JsonSchemaFormat {
                    name,
                    description,
                    schema: Some(schema),
                    strict,
                },
            },
        });
    let logprobs = wants_logprobs(req);
    Ok(ChatCompletionRequest {
        model: req.model.clone(),
        messages: conversation.messages,
        max_tokens: None,
        max_completion_tokens: req.max_output_tokens,
        stream: None,
        stream_options: None,
        logprobs: Some(logprobs),
        top_logprobs: if logprobs { req.top_logprobs } else { None },
        tools,
        tool_choice,
        parallel_tool_calls: req.parallel_tool_calls,
        chat_template_kwargs: req.chat_template_kwargs.clone(),
        reasoning_effort: req.reasoning.as_ref().and_then(|r| r.effort.clone()),
        prompt_cache_key: req.prompt_cache_key.clone(),
        safety_identifier: req.safety_identifier.clone(),
        sampling: SamplingFields {
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k,
            min_p: req.min_p,
            repetition_penalty: req.repetition_penalty,
            seed: req.seed,
            user: req.user.clone(),
            response_format,
            ..SamplingFields::default()
        },
    })
}

/// Reads the body: unknown and unimplemented fields are 400s naming them.
fn parse(body: &[u8]) -> Result<ResponsesRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let Some(obj) = value.as_object() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    // Sent at their defaults (generic clients send every field), they ask for nothing.
    let harmless = |key: &str, v: &Value| {
        v.is_null()
            || (key == "background" && *v == json!(false))
            || (key == "service_tier" && (*v == json!("auto") || *v == json!("default")))
    };
    let unsupported = obj
        .iter()
        .find(|(k, v)| UNSUPPORTED.contains(&k.as_str()) && !harmless(k, v));
    if let Some((key, _)) = unsupported {
        return Err(ApiError::unsupported(key));
    }
    let mut value = value;
    if let Some(obj) = value.as_object_mut() {
        obj.retain(|k, _| !UNSUPPORTED.contains(&k.as_str()));
    }
    let Some(obj) = value.as_object() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    // Only a function is named; `allowed_tools` and hosted tools are not implemented.
    if let Some(kind) = obj.get("tool_choice").and_then(|c| c.get("type")) {
        if kind != "function" {
            return Err(ApiError::unsupported("tool_choice.type"));
        }
    }
    // Hosted tools (web_search, file_search, …) before their fields fail the function shape.
    if let Some(Value::Array(tools)) = obj.get("tools") {
        for (i, t) in tools.iter().enumerate() {
            match t.get("type").and_then(Value::as_str) {
                Some("function") | None => {}
                Some(_) => return Err(ApiError::unsupported(&format!("tools[{i}].type"))),
            }
        }
    }
    match obj.get("input") {
        Some(Value::String(_) | Value::Array(_)) => {}
        Some(_) => {
            return Err(ApiError::invalid(
                "input",
                "'input' must be a string or an array of items",
            ))
        }
        None => return Err(ApiError::invalid("input", "'input' is required")),
    }
    let req: ResponsesRequest = params::typed(value)?;
    let known = [OUTPUT_LOGPROBS, ENCRYPTED_REASONING];
    if let Some(inc) = req
        .include
        .iter()
        .flatten()
        .find(|i| !known.contains(&i.as_str()))
    {
        return Err(ApiError::invalid(
            "include",
            format!(
                "'include' can hold '{OUTPUT_LOGPROBS}' and '{ENCRYPTED_REASONING}', got '{inc}'"
            ),
        ));
    }
    if let Some(r) = &req.reasoning {
        let summary = r.summary.as_ref().or(r.generate_summary.as_ref());
        if let Some(s) = summary.filter(|s| !["auto", "concise", "detailed"].contains(&s.as_str()))
        {
            return Err(ApiError::invalid(
                "reasoning.summary",
                format!("'reasoning.summary' must be auto, concise or detailed, got '{s}'"),
            ));
        }
    }
    if let Some(t) = req.truncation.as_deref().filter(|t| *t != "disabled") {
        return Err(ApiError::invalid(
            "truncation",
            format!("'truncation' can only be 'disabled' (a conversation longer than the context is a 400), got '{t}'"),
        ));
    }
    Ok(req)
}

/// Creates a model response.
#[utoipa::path(post, path = "/v1/responses", operation_id = "createResponse", tag = "openai", request_body = ResponsesRequest,
    responses((status = 200, body = ResponseObject), (status = 400, body = super::error::ErrorBody),
              (status = 404, body = super::error::ErrorBody), (status = 429, body = super::error::ErrorBody),
              (status = 503, body = super::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body, state.max_body_bytes)?;
    let req = parse(&body)?;
    let input = input_with_ids(&state, &req.input)?;
    let chat = chat_request(&state, &req, &input).map_err(renamed)?;
    let run = ChatRun::start(&state, &request_id(&headers), &chat)
        .await
        .map_err(renamed)?;
    let echo = Echo::of(&req, state.model_name());
    let id = item_id("resp");
    let created_at = run.created;
    if req.stream.unwrap_or(false) {
        return Ok(generation::sse(move |tx| async move {
            let mut sink = ResponsesSse::new(Some(tx), state, echo, id, created_at, input);
            sink.start();
            run.stream(&mut sink).await;
        }));
    }
    // Unstreamed, the same events are made and only their sum is sent.
    let mut sink = ResponsesSse::new(None, state, echo, id, created_at, input);
    sink.start();
    run.stream(&mut sink).await;
    Ok(Json(sink.into_result()?).into_response())
}
