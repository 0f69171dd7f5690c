//! `POST /v1/chat/completions`: the model's own chat template, streaming or not.

use super::chat_prompt::{chat_prompt, ChatPrompt};
use super::error::ApiError;
use super::generation::{self, Choice};
use super::openai::{
    ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatLogprobs,
    ChunkChoice, Delta, DeltaFunction, DeltaToolCall, ResponseMessage, ResponseToolCall,
    TokenLogprob, TopLogprob, UsageBody,
};
use super::params::{self, CHAT_FIELDS, MAX_TOP_LOGPROBS};
use super::reasoning::{Parts, ReasoningSplit};
use super::structured;
use super::tool_stream::{self, Piece, ToolStream};
use super::tool_syntax::{self, NativePiece, NativeStream, Thinking};
use super::tools::{self, Reply, ToolUse};
use super::{body_bytes, request_id, unix_now, AppState};
use crate::engine::grammar::OutputFormat;
use crate::engine::sampler::TokenLogprobs;
use crate::engine::{Event, FinishReason};
use crate::model::Tokenizer;
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

/// A choice's message and finish reason in the generic tool format: a complete reply read as
/// tool calls (content null, finish `tool_calls`) or as the answer it holds.
fn reply(
    text: String,
    json_answer: bool,
    finish: Option<FinishReason>,
) -> (
    Option<String>,
    Option<Vec<ResponseToolCall>>,
    Option<&'static str>,
) {
    let reason = finish.map(FinishReason::as_str);
    if finish != Some(FinishReason::Stop) {
        return (Some(text), None, reason);
    }
    match tools::read_reply(&text, json_answer) {
        Reply::Calls(calls) => (None, Some(calls), Some("tool_calls")),
        Reply::Text(answer) => (Some(answer), None, reason),
    }
}

/// A choice's whole text as a message (any reply but the generic tool format's): a reasoning
/// model's thinking split off, and with a native tool syntax, a complete answer read as text
/// and tool calls (finish `tool_calls`).
fn reply_message(
    syntax: Option<tool_syntax::ToolSyntax>,
    split: bool,
    opens_thinking: bool,
    text: String,
    finish: Option<FinishReason>,
) -> (ResponseMessage, Option<&'static str>) {
    let mut reason = finish.map(FinishReason::as_str);
    let (reasoning_content, answer) = if split {
        ReasoningSplit::split(opens_thinking, &text)
    } else {
        (None, text)
    };
    let mut message = ResponseMessage {
        role: "assistant",
        content: Some(answer),
        reasoning_content,
        tool_calls: None,
    };
    if let (Some(syntax), Some(FinishReason::Stop)) = (syntax, finish) {
        let read = tool_syntax::read_reply(syntax, message.content.as_deref().unwrap_or(""));
        if !read.calls.is_empty() {
            message.content = read.content;
            message.tool_calls = Some(
                read.calls
                    .into_iter()
                    .map(|(name, arguments)| ResponseToolCall {
                        id: tools::call_id(),
                        kind: "function",
                        function: super::openai::FunctionCall { name, arguments },
                    })
                    .collect(),
            );
            reason = Some("tool_calls");
        }
    }
    (message, reason)
}

/// A native reply's pieces as stream deltas: a call's id and name, then its arguments, as
/// OpenAI streams them.
fn native_deltas(pieces: Vec<NativePiece>) -> Vec<Delta> {
    let mut out = Vec::new();
    for p in pieces {
        match p {
            NativePiece::Content(text) => out.push(Delta {
                content: Some(text),
                ..Delta::default()
            }),
            NativePiece::Call {
                index,
                name,
                arguments,
            } => out.extend(tool_stream::deltas(vec![
                Piece::Call { index, name },
                Piece::Arguments {
                    index,
                    text: arguments,
                },
            ])),
            NativePiece::CallStart { index, name } => {
                out.extend(tool_stream::deltas(vec![Piece::Call { index, name }]))
            }
            NativePiece::Arguments { index, text } => {
                out.extend(tool_stream::deltas(vec![Piece::Arguments { index, text }]))
            }
        }
    }
    out
}

/// A delta of a reply's text as the deltas a stream sends: as it is, or with a native tool
/// syntax, its answer read by `reader` (text, then whole calls); `last` ends the reply.
fn stream_deltas(reader: Option<&mut NativeStream>, delta: Delta, last: bool) -> Vec<Delta> {
    let Some(reader) = reader else {
        let empty = delta.content.is_none() && delta.reasoning_content.is_none();
        return if empty { Vec::new() } else { vec![delta] };
    };
    let mut out = Vec::new();
    if let Some(thought) = delta.reasoning_content {
        out.push(Delta {
            reasoning_content: Some(thought),
            ..Delta::default()
        });
    }
    let mut pieces = delta.content.map(|c| reader.push(&c)).unwrap_or_default();
    if last {
        pieces.extend(reader.finish());
    }
    out.extend(native_deltas(pieces));
    out
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
    let mut tool_use = ToolUse::from_request(
        req.tools.as_deref(),
        req.tool_choice.as_ref(),
        req.parallel_tool_calls,
        state.model.tool_syntax,
    )?;
    // With tools, a JSON response format shapes the answer when the model does not call.
    let answer_format = structured::output_format(&req.sampling)?;
    if let (Some(t), Some((param, format))) = (&mut tool_use, &answer_format) {
        let OutputFormat::JsonSchema(schema) = format else {
            return Err(ApiError::invalid(
                *param,
                "with tools, an answer's format can only be a JSON schema or object (response_format, guided_json, structured_outputs.json)",
            ));
        };
        t.set_answer_format(schema.clone());
    }
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
            let thinking = match (state.model.reasoning, opens_thinking) {
                (false, _) => Thinking::No,
                (true, false) => Thinking::May,
                (true, true) => Thinking::Open,
            };
            Some(structured::compile(&state, "tools", t.output_format(thinking)).await?)
        }
        None => match answer_format {
            Some((param, format)) => Some(structured::compile(&state, param, format).await?),
            None => None,
        },
    };
    let json_answer = tool_use.as_ref().is_some_and(ToolUse::json_answer);
    // lowbit's generic tool format (tools.rs), or a native syntax (tool_syntax.rs).
    let generic_tools = tool_use.as_ref().is_some_and(|t| !t.syntax().native());
    let native = tool_use
        .as_ref()
        .map(ToolUse::syntax)
        .filter(|s| s.native());
    // A constrained reply follows its format from the first token: no thinking to split (a
    // native tool grammar lets the model think first).
    let split = state.model.reasoning && (grammar.is_none() || native.is_some());
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
                let logprobs = top.map(|_| chat_logprobs(tokenizer, &c.logprobs));
                let (message, finish_reason) = if generic_tools {
                    let (content, tool_calls, finish_reason) = reply(c.text, json_answer, c.finish);
                    let message = ResponseMessage {
                        role: "assistant",
                        content,
                        reasoning_content: None,
                        tool_calls,
                    };
                    (message, finish_reason)
                } else {
                    reply_message(native, split, opens_thinking, c.text, c.finish)
                };
                ChatChoice {
                    index,
                    logprobs,
                    message,
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
        let mut readers = vec![ToolStream::new(json_answer); n];
        let mut natives: Vec<NativeStream> =
            native.map_or(Vec::new(), |s| vec![NativeStream::new(s); n]);
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
                    if generic_tools {
                        held[choice].extend(logprobs);
                        for delta in tool_stream::deltas(readers[choice].push(&text)) {
                            if !tx.json(&chunk(one(choice, delta, None, None), None)) {
                                return;
                            }
                        }
                        continue;
                    }
                    let delta = text_delta_of(choice, text, false);
                    let mut deltas = stream_deltas(natives.get_mut(choice), delta, false);
                    let mut lp = logprobs.map(|lp| chat_logprobs(tokenizer, &[lp]));
                    if deltas.is_empty() && lp.is_some() {
                        deltas.push(Delta::default());
                    }
                    deltas
                        .into_iter()
                        .all(|delta| tx.json(&chunk(one(choice, delta, lp.take(), None), None)))
                }
                Event::Finished {
                    choice,
                    reason,
                    text,
                } => {
                    let mut finish = reason.as_str();
                    if generic_tools {
                        let r = &mut readers[choice];
                        let mut pieces = r.push(&text);
                        pieces.extend(r.finish(reason == FinishReason::Stop));
                        let mut deltas = tool_stream::deltas(pieces);
                        if r.unsent() {
                            // Nothing could be read as it grew: the whole reply, as unstreamed.
                            let (content, calls, why) =
                                reply(r.text().to_string(), json_answer, Some(reason));
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
                        let reader = natives.get_mut(choice);
                        for delta in stream_deltas(reader, delta, true) {
                            tx.json(&chunk(one(choice, delta, None, None), None));
                        }
                        let calls = natives.get(choice).map_or(0, NativeStream::calls);
                        if calls > 0 && reason == FinishReason::Stop {
                            finish = "tool_calls";
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
