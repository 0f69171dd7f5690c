//! How a chat reply's text becomes OpenAI's message and stream deltas: thinking split off,
//! tool calls read in the generic format or a native syntax, logprobs in chat's shape.

use super::openai::{
    ChatLogprobs, Delta, DeltaFunction, DeltaToolCall, ResponseMessage, ResponseToolCall,
    TokenLogprob, TopLogprob,
};
use super::reasoning::{Parts, ReasoningSplit};
use super::tool_stream::{self, Piece};
use super::tool_syntax::{self, NativePiece, NativeStream};
use super::tools::{self, Reply};
use crate::engine::sampler::TokenLogprobs;
use crate::engine::FinishReason;
use crate::model::Tokenizer;

/// A delta of a split reply: each part that grew.
pub fn text_delta(parts: Parts) -> Delta {
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

pub fn chat_logprobs(tokenizer: &Tokenizer, lps: &[TokenLogprobs]) -> ChatLogprobs {
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
pub fn reply(
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
pub fn reply_message(
    syntax: Option<tool_syntax::ToolSyntax>,
    split: bool,
    opens_thinking: bool,
    text: String,
    finish: Option<FinishReason>,
) -> (ResponseMessage, Option<&'static str>) {
    let mut reason = finish.map(FinishReason::as_str);
    // A harmony reply's calls are read from it whole (its split content leaves them out).
    let harmony_calls = match syntax {
        Some(s @ tool_syntax::ToolSyntax::Harmony { .. }) => {
            Some(tool_syntax::read_reply(s, &text))
        }
        _ => None,
    };
    let (reasoning_content, answer) = if split {
        ReasoningSplit::split_reading_calls(opens_thinking, harmony_calls.is_some(), &text)
    } else {
        (None, text)
    };
    let mut message = ResponseMessage {
        role: "assistant",
        content: Some(answer),
        reasoning_content,
        tool_calls: None,
    };
    if let Some(read) = harmony_calls.as_ref().filter(|r| r.calls.is_empty()) {
        // No call read (cut short): what the model addressed to a function, as text.
        let bodies = read.content.clone().unwrap_or_default();
        message
            .content
            .get_or_insert_with(String::new)
            .push_str(&bodies);
    }
    if let (Some(syntax), Some(FinishReason::Stop)) = (syntax, finish) {
        let read = match harmony_calls {
            Some(mut read) => {
                read.content = message.content.clone().filter(|c| !c.trim().is_empty());
                read
            }
            None => tool_syntax::read_reply(syntax, message.content.as_deref().unwrap_or("")),
        };
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
pub fn stream_deltas(reader: Option<&mut NativeStream>, delta: Delta, last: bool) -> Vec<Delta> {
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
pub fn whole_delta(content: Option<String>, calls: Option<Vec<ResponseToolCall>>) -> Delta {
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
