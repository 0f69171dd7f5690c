//! `POST /v1/chat/completions`: the model's own chat template, streaming or not.

use super::error::ApiError;
use super::generation::{self, Choice};
use super::openai::{
    ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatLogprobs,
    ChunkChoice, Delta, MessageContent, RequestMessage, ResponseMessage, TokenLogprob, TopLogprob,
    UsageBody,
};
use super::params::{self, CHAT_FIELDS, MAX_TOP_LOGPROBS};
use super::structured;
use super::{body_bytes, request_id, unix_now, AppState};
use crate::engine::sampler::TokenLogprobs;
use crate::engine::Event;
use crate::model::{ChatMessage, Tokenizer};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;

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
            "tool" | "function" => {
                return Err(ApiError::unsupported(&format!("messages[{i}].role")));
            }
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role '{other}' (system, developer, user, assistant)"),
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
        out.push(ChatMessage::new(role, &content));
    }
    Ok(out)
}

/// The token ids of a conversation: messages checked, the model's chat template rendered with
/// the assistant's turn opened, the text tokenized (the template writes its own special tokens).
pub fn chat_prompt(state: &AppState, msgs: &[RequestMessage]) -> Result<Vec<u32>, ApiError> {
    let msgs = messages(msgs)?;
    let Some(template) = &state.model.template else {
        return Err(ApiError::bad_request(
            "this model has no chat template: use /v1/completions",
        ));
    };
    let text = template
        .render(&msgs, true)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    state
        .model
        .tokenizer
        .encode(&text, false)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))
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
    let prompt = chat_prompt(&state, &req.messages)?;
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
    let grammar = structured::grammar(&state, &req.sampling).await?;
    let id = request_id(&headers);
    let n = settings.n;
    let mut gen = params::request(
        &id,
        prompt,
        max_tokens,
        &settings,
        top,
        state.request_timeout,
    );
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
            .map(|(index, c): (usize, Choice)| ChatChoice {
                index,
                logprobs: top.map(|_| chat_logprobs(tokenizer, &c.logprobs)),
                message: ResponseMessage {
                    role: "assistant",
                    content: c.text,
                },
                finish_reason: c.finish.map(|f| f.as_str()),
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
            };
            if !tx.json(&chunk(one(index, delta, None, None), None)) {
                return;
            }
        }
        let tokenizer = &state.model.tokenizer;
        while let Some((_, e)) = events.next().await {
            let sent = match e {
                Event::Token {
                    choice,
                    text,
                    logprobs,
                    ..
                } => {
                    if text.is_empty() && logprobs.is_none() {
                        continue;
                    }
                    let lp = logprobs.map(|lp| chat_logprobs(tokenizer, &[lp]));
                    let delta = Delta {
                        role: None,
                        content: Some(text),
                    };
                    tx.json(&chunk(one(choice, delta, lp, None), None))
                }
                Event::Finished {
                    choice,
                    reason,
                    text,
                } => {
                    if !text.is_empty() {
                        let delta = Delta {
                            role: None,
                            content: Some(text),
                        };
                        tx.json(&chunk(one(choice, delta, None, None), None));
                    }
                    tx.json(&chunk(
                        one(choice, Delta::default(), None, Some(reason.as_str())),
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
