//! `POST /v1/chat/completions`: the model's own chat template, streaming or not.

use super::error::ApiError;
use super::generation::{self, Choice};
use super::openai::{
    ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatLogprobs,
    ChunkChoice, Delta, DeltaFunction, DeltaToolCall, MessageContent, RequestMessage,
    ResponseMessage, ResponseToolCall, TokenLogprob, TopLogprob, UsageBody,
};
use super::params::{self, CHAT_FIELDS, MAX_TOP_LOGPROBS};
use super::reasoning::{self, Parts, ReasoningSplit};
use super::structured;
use super::tool_stream::{self, ToolStream};
use super::tools::{self, Reply, ToolUse};
use super::{body_bytes, request_id, unix_now, AppState};
use crate::engine::sampler::TokenLogprobs;
use crate::engine::{Event, FinishReason};
use crate::model::{ChatMessage, ChatTemplate, Tokenizer};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;

/// A delta of a split reply: each part that grew.
fn text_delta(parts: Parts) -> Delta {
    Delta {
        content: (!parts.content.is_empty()).then_some(parts.content),
        reasoning_content: (!parts.reasoning.is_empty()).then_some(parts.reasoning),
        ..Delta::default()
    }
}

/// The text of one token, as logprobs report it.
pub fn token_text(tokenizer: &Tokenizer, id: u32) -> String {
    tokenizer.decode(&[id], false).unwrap_or_default()
}

fn chat_logprobs(tokenizer: &Tokenizer, lps: &[TokenLogprobs]) -> ChatLogprobs {
    ChatLogprobs {
        content: lps
            .iter()
            .map(|lp| {
                let token = token_text(tokenizer, lp.token);
                TokenLogprob {
                    bytes: token.as_bytes().to_vec(),
                    token,
                    logprob: lp.logprob,
                    top_logprobs: lp
                        .top
                        .iter()
                        .map(|&(id, logprob)| {
                            let token = token_text(tokenizer, id);
                            TopLogprob {
                                bytes: token.as_bytes().to_vec(),
                                token,
                                logprob,
                            }
                        })
                        .collect(),
                }
            })
            .collect(),
    }
}

/// A choice's message and finish reason: with tools, a complete reply read as tool calls
/// (content null, finish `tool_calls`) or as the answer it holds.
fn reply(
    tools: bool,
    text: String,
    finish: Option<FinishReason>,
) -> (
    Option<String>,
    Option<Vec<ResponseToolCall>>,
    Option<&'static str>,
) {
    let reason = finish.map(FinishReason::as_str);
    if !tools || finish != Some(FinishReason::Stop) {
        return (Some(text), None, reason);
    }
    match tools::read_reply(&text) {
        Reply::Calls(calls) => (None, Some(calls), Some("tool_calls")),
        Reply::Text(answer) => (Some(answer), None, reason),
    }
}

/// A whole reply as one stream delta (a reply the stream reader could not follow).
fn whole_delta(content: Option<String>, calls: Option<Vec<ResponseToolCall>>) -> Delta {
    Delta {
        content,
        tool_calls: calls.map(|calls| {
            calls
                .into_iter()
                .enumerate()
                .map(|(index, c)| DeltaToolCall {
                    index,
                    id: Some(c.id),
                    kind: Some(c.kind),
                    function: DeltaFunction {
                        name: Some(c.function.name),
                        arguments: Some(c.function.arguments),
                    },
                })
                .collect()
        }),
        ..Delta::default()
    }
}

/// The messages as the template sees them.
fn messages(messages: &[RequestMessage]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "'messages' must not be empty",
        ));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "user" | "assistant" => m.role.as_str(),
            // OpenAI's newer name for the system role.
            "developer" => "system",
            // A tool's result is a user turn (tools.rs): every template has one.
            "tool" => "user",
            "function" => {
                return Err(ApiError::unsupported(&format!("messages[{i}].role")));
            }
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role '{other}' (system, developer, user, assistant, tool)"),
                ))
            }
        };
        let content = match &m.content {
            None => String::new(),
            Some(MessageContent::Text(t)) => t.clone(),
            Some(MessageContent::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        ("text", None) => {
                            return Err(ApiError::invalid(
                                format!("messages[{i}].content[{j}].text"),
                                "a text part needs 'text'",
                            ))
                        }
                        (kind, _) => {
                            return Err(ApiError {
                                message: format!("content parts of type '{kind}' are not supported by lowbit (only 'text')"),
                                ..ApiError::unsupported(&format!("messages[{i}].content[{j}].type"))
                            })
                        }
                    }
                }
                text
            }
        };
        let content = tool_turn(i, m, content)?;
        out.push(ChatMessage::new(role, &content));
    }
    Ok(out)
}

/// A message's text with its tool calls or its tool result written as the model writes and
/// reads them (tools.rs).
fn tool_turn(i: usize, m: &RequestMessage, content: String) -> Result<String, ApiError> {
    if m.role == "tool" {
        let Some(id) = &m.tool_call_id else {
            return Err(ApiError::invalid(
                format!("messages[{i}].tool_call_id"),
                "a tool message needs 'tool_call_id'",
            ));
        };
        return Ok(tools::result_as_text(id, m.name.as_deref(), &content));
    }
    if m.tool_call_id.is_some() {
        return Err(ApiError::invalid(
            format!("messages[{i}].tool_call_id"),
            "only tool messages answer a tool call",
        ));
    }
    let Some(calls) = m.tool_calls.as_ref().filter(|c| !c.is_empty()) else {
        return Ok(content);
    };
    if m.role != "assistant" {
        return Err(ApiError::invalid(
            format!("messages[{i}].tool_calls"),
            "only assistant messages call tools",
        ));
    }
    if let Some(j) = calls.iter().position(|c| c.kind != "function") {
        return Err(ApiError::invalid(
            format!("messages[{i}].tool_calls[{j}].type"),
            "only 'function' tool calls",
        ));
    }
    let calls: Vec<(String, String)> = calls
        .iter()
        .map(|c| (c.function.name.clone(), c.function.arguments.clone()))
        .collect();
    let written = tools::calls_as_text(&calls);
    Ok(if content.is_empty() {
        written
    } else {
        format!("{content}\n{written}")
    })
}

/// A conversation rendered for the model.
pub struct ChatPrompt {
    pub ids: Vec<u32>,
    /// The template left the assistant's turn inside an open `<think>` (DeepSeek-R1).
    pub opens_thinking: bool,
}

/// The token ids of a conversation: messages checked, the model's chat template rendered with
/// the assistant's turn opened (and the caller's `chat_template_kwargs`), the text tokenized
/// (the template writes its own special tokens). With `tools`, the system message describes
/// them and the reply's format.
pub fn chat_prompt(
    state: &AppState,
    msgs: &[RequestMessage],
    tools: Option<&ToolUse>,
    kwargs: &serde_json::Map<String, serde_json::Value>,
) -> Result<ChatPrompt, ApiError> {
    if let Some(name) = ChatTemplate::RESERVED
        .iter()
        .find(|n| kwargs.contains_key(**n))
    {
        return Err(ApiError::invalid(
            "chat_template_kwargs",
            format!("'chat_template_kwargs' cannot set '{name}': lowbit sets it"),
        ));
    }
    let mut msgs = messages(msgs)?;
    if let Some(t) = tools {
        match msgs.first_mut().filter(|m| m.role == "system") {
            Some(system) => system.content = format!("{}\n\n{}", system.content, t.instructions()),
            None => msgs.insert(0, ChatMessage::new("system", &t.instructions())),
        }
    }
    let Some(template) = &state.model.template else {
        return Err(ApiError::bad_request(
            "this model has no chat template: use /v1/completions",
        ));
    };
    let text = template
        .render_with(&msgs, None, true, kwargs)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let ids = state
        .model
        .tokenizer
        .encode(&text, false)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    Ok(ChatPrompt {
        ids,
        opens_thinking: reasoning::prompt_opens_thinking(&text),
    })
}

/// Creates a chat completion.
#[utoipa::path(post, path = "/v1/chat/completions", operation_id = "createChatCompletion", tag = "openai", request_body = ChatCompletionRequest,
    responses((status = 200, body = ChatCompletion), (status = 400, body = super::error::ErrorBody),
              (status = 429, body = super::error::ErrorBody), (status = 503, body = super::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body, state.max_body_bytes)?;
    let req: ChatCompletionRequest = params::parse_body(&body, CHAT_FIELDS, true)?;
    state.check_model(&req.model)?;
    let tokenizer = &state.model.tokenizer;
    let settings = params::settings(&req.sampling, tokenizer.vocab_size())?;
    let top = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (_, Some(k)) if !(0..=MAX_TOP_LOGPROBS).contains(&k) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("'top_logprobs' must be between 0 and {MAX_TOP_LOGPROBS}"),
            ))
        }
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "'top_logprobs' needs 'logprobs': true",
            ))
        }
        (true, k) => Some(k.unwrap_or(0) as usize),
        (false, None) => None,
    };
    let tool_use = ToolUse::from_request(
        req.tools.as_deref(),
        req.tool_choice.as_ref(),
        req.parallel_tool_calls,
    )?;
    let kwargs = req.chat_template_kwargs.clone().unwrap_or_default();
    let ChatPrompt {
        ids: prompt,
        opens_thinking,
    } = chat_prompt(&state, &req.messages, tool_use.as_ref(), &kwargs)?;
    let limit = state.engine.max_model_len();
    let default_max = limit.saturating_sub(prompt.len()).max(1);
    let max_tokens = match req.max_completion_tokens {
        Some(_) => params::max_tokens(
            "max_completion_tokens",
            req.max_completion_tokens,
            default_max,
        )?,
        None => params::max_tokens("max_tokens", req.max_tokens, default_max)?,
    };
    let grammar = match &tool_use {
        Some(t) => {
            if structured::output_format(&req.sampling)?.is_some() {
                return Err(ApiError::invalid(
                    "tools",
                    "tools cannot be combined with response_format, structured_outputs or guided_* yet",
                ));
            }
            Some(structured::compile(&state, "tools", t.output_format()).await?)
        }
        None => structured::grammar(&state, &req.sampling).await?,
    };
    let tools = tool_use.is_some();
    // A constrained reply follows its format from the first token: no thinking to split.
    let split = state.model.reasoning && grammar.is_none();
    let id = request_id(&headers);
    let n = settings.n;
    let mut gen = params::request(
        &id,
        prompt,
        max_tokens,
        &settings,
        top,
        state.request_timeout,
    )?;
    gen.grammar = grammar;
    let stream = state.engine.submit(gen)?;
    let events = generation::merged(vec![stream]);
    let created = unix_now();
    let chat_id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    if !req.stream.unwrap_or(false) {
        let (choices, usage) = generation::collect(events, 1, n).await?;
        let choices = choices
            .into_iter()
            .enumerate()
            .map(|(index, c): (usize, Choice)| {
                let (mut content, tool_calls, finish_reason) = reply(tools, c.text, c.finish);
                let mut reasoning_content = None;
                if let (true, Some(text)) = (split, &content) {
                    let (thought, answer) = ReasoningSplit::split(opens_thinking, text);
                    (reasoning_content, content) = (thought, Some(answer));
                }
                ChatChoice {
                    index,
                    logprobs: top.map(|_| chat_logprobs(tokenizer, &c.logprobs)),
                    message: ResponseMessage {
                        role: "assistant",
                        content,
                        reasoning_content,
                        tool_calls,
                    },
                    finish_reason,
                }
            })
            .collect();
        return Ok(Json(ChatCompletion {
            id: chat_id,
            object: "chat.completion",
            created,
            model: state.model_name().to_string(),
            system_fingerprint: state.system_fingerprint.clone(),
            choices,
            usage: usage.into(),
        })
        .into_response());
    }
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    Ok(generation::sse(move |tx| async move {
        let mut events = events;
        let chunk = |choices: Vec<ChunkChoice>, usage: Option<UsageBody>| ChatCompletionChunk {
            id: chat_id.clone(),
            object: "chat.completion.chunk",
            created,
            model: state.model_name().to_string(),
            system_fingerprint: state.system_fingerprint.clone(),
            choices,
            usage: include_usage.then_some(usage),
        };
        let one = |index, delta, logprobs, finish_reason| {
            vec![ChunkChoice {
                index,
                delta,
                logprobs,
                finish_reason,
            }]
        };
        for index in 0..n {
            let delta = Delta {
                role: Some("assistant"),
                content: Some(String::new()),
                ..Delta::default()
            };
            if !tx.json(&chunk(one(index, delta, None, None), None)) {
                return;
            }
        }
        let tokenizer = &state.model.tokenizer;
        // With tools a reply is sent as it is read (tool_stream.rs): the answer's text, each
        // call's name, its arguments; logprobs come with the choice's last delta.
        let mut readers = vec![ToolStream::default(); n];
        let mut splits = vec![ReasoningSplit::new(opens_thinking); n];
        // A piece of a choice's text as a delta: split into thinking and answer, or as it is.
        let mut text_delta_of = |choice: usize, text: String, last: bool| {
            if !split {
                return Delta {
                    content: (!text.is_empty()).then_some(text),
                    ..Delta::default()
                };
            }
            let s = &mut splits[choice];
            text_delta(if last {
                s.push_last(&text)
            } else {
                s.push(&text)
            })
        };
        let mut held: Vec<Vec<TokenLogprobs>> = vec![Vec::new(); n];
        while let Some((_, e)) = events.next().await {
            let sent = match e {
                Event::Token {
                    choice,
                    text,
                    logprobs,
                    ..
                } => {
                    if tools {
                        held[choice].extend(logprobs);
                        for delta in tool_stream::deltas(readers[choice].push(&text)) {
                            if !tx.json(&chunk(one(choice, delta, None, None), None)) {
                                return;
                            }
                        }
                        continue;
                    }
                    let delta = text_delta_of(choice, text, false);
                    if delta.content.is_none()
                        && delta.reasoning_content.is_none()
                        && logprobs.is_none()
                    {
                        continue;
                    }
                    let lp = logprobs.map(|lp| chat_logprobs(tokenizer, &[lp]));
                    tx.json(&chunk(one(choice, delta, lp, None), None))
                }
                Event::Finished {
                    choice,
                    reason,
                    text,
                } => {
                    let mut finish = reason.as_str();
                    if tools {
                        let r = &mut readers[choice];
                        let mut deltas = tool_stream::deltas(r.push(&text));
                        if r.unsent() {
                            // Nothing could be read as it grew: the whole reply, as unstreamed.
                            let (content, calls, why) =
                                reply(true, r.text().to_string(), Some(reason));
                            finish = why.unwrap_or(finish);
                            deltas = vec![whole_delta(content, calls)];
                        } else if r.done() && r.calls() > 0 && reason == FinishReason::Stop {
                            finish = "tool_calls";
                        }
                        let lps = std::mem::take(&mut held[choice]);
                        let mut lp = top.map(|_| chat_logprobs(tokenizer, &lps));
                        let last = deltas.len().saturating_sub(1);
                        for (k, delta) in deltas.into_iter().enumerate() {
                            let lp = if k == last { lp.take() } else { None };
                            tx.json(&chunk(one(choice, delta, lp, None), None));
                        }
                        if let Some(lp) = lp {
                            tx.json(&chunk(one(choice, Delta::default(), Some(lp), None), None));
                        }
                    } else {
                        let delta = text_delta_of(choice, text, true);
                        if delta.content.is_some() || delta.reasoning_content.is_some() {
                            tx.json(&chunk(one(choice, delta, None, None), None));
                        }
                    }
                    tx.json(&chunk(
                        one(choice, Delta::default(), None, Some(finish)),
                        None,
                    ))
                }
                // (Never asked for by a chat.)
                Event::PromptLogprobs(_) => true,
                Event::Done(usage) => {
                    if include_usage {
                        tx.json(&chunk(Vec::new(), Some(usage.into())));
                    }
                    tx.done();
                    return;
                }
                Event::Error(e) => {
                    tx.error(&generation::failure(e));
                    return;
                }
            };
            if !sent {
                return;
            }
        }
    }))
}
