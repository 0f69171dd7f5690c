//! A response built from chat's deltas, as OpenAI streams one: the events go to the client
//! when it asked for a stream, and the whole response is what they add up to either way, so a
//! response reads the same streamed or not.
//!
//! `response.created` and `response.in_progress` first; then each output item opens
//! (`output_item.added`, and for text a `content_part.added`), grows (`output_text.delta`,
//! `reasoning_text.delta`, `function_call_arguments.delta`) and closes (`….done`,
//! `output_item.done`) before the next one opens; last `response.completed` (or
//! `response.incomplete` at `max_output_tokens`, `response.failed` on an engine failure) with
//! the whole response, which is then stored. Every event carries its `sequence_number`.

use super::chat_run::ChunkSink;
use super::error::ApiError;
use super::generation::SseSender;
use super::openai::{ChatCompletionChunk, TokenLogprob, UsageBody};
use super::responses::{item_id, usage_of, Echo};
use super::responses_input::seal;
use super::responses_store::Stored;
use super::responses_types::{
    OutputItem, OutputText, ReasoningText, ResponseError, ResponseObject,
};
use super::AppState;
use crate::engine::Usage;
use serde_json::{json, Value};

/// The events of one response, and the response they make.
pub struct ResponsesSse {
    /// Where events go; `None` when the client waits for the whole response.
    tx: Option<SseSender>,
    state: AppState,
    echo: Echo,
    id: String,
    created_at: u64,
    /// The request's input items (stored with the response).
    input: Vec<Value>,
    sequence: u64,
    output: Vec<OutputItem>,
    /// The item being written (the last of `output`) is still open.
    open: bool,
    /// Output index of each of the reply's calls, by the chat stream's call index.
    calls: Vec<Option<usize>>,
    finish: Option<&'static str>,
    /// The log-probabilities of the answer's tokens since the last message item closed (when
    /// asked for): the next message item's.
    logprobs: Vec<TokenLogprob>,
    gone: bool,
    /// The finished response, or why there is none.
    result: Option<Result<ResponseObject, ApiError>>,
}

impl ResponsesSse {
    pub fn new(
        tx: Option<SseSender>,
        state: AppState,
        echo: Echo,
        id: String,
        created_at: u64,
        input: Vec<Value>,
    ) -> Self {
        Self {
            tx,
            state,
            echo,
            id,
            created_at,
            input,
            sequence: 0,
            output: Vec::new(),
            open: false,
            calls: Vec::new(),
            finish: None,
            logprobs: Vec::new(),
            gone: false,
            result: None,
        }
    }

    /// The response the events made (after the run has ended).
    pub fn into_result(self) -> Result<ResponseObject, ApiError> {
        self.result.unwrap_or_else(|| {
            Err(ApiError::internal(
                "the engine ended a request without an answer",
            ))
        })
    }

    fn send(&mut self, kind: &str, mut event: Value) {
        if self.gone {
            return;
        }
        event["type"] = json!(kind);
        event["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        if let Some(tx) = &self.tx {
            self.gone = !tx.event(kind, &event);
        }
    }

    /// `response.created` and `response.in_progress`.
    pub fn start(&mut self) {
        let response = self
            .echo
            .object(&self.id, self.created_at, "in_progress", Vec::new(), None);
        self.send("response.created", json!({ "response": response }));
        self.send("response.in_progress", json!({ "response": response }));
    }

    /// Closes the open item, then opens `item`.
    fn open_item(&mut self, item: OutputItem) {
        self.close_item("completed");
        let index = self.output.len();
        let part = match &item {
            OutputItem::Message { .. } => {
                Some(json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []}))
            }
            OutputItem::Reasoning { .. } => Some(json!({"type": "reasoning_text", "text": ""})),
            OutputItem::FunctionCall { .. } => None,
        };
        let id = item.id().to_string();
        // Announced empty, as OpenAI does: the part comes with `content_part.added`.
        self.send(
            "response.output_item.added",
            json!({"output_index": index, "item": item.without_content()}),
        );
        self.output.push(item);
        self.open = true;
        if let Some(part) = part {
            self.send(
                "response.content_part.added",
                json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
            );
        }
    }

    /// Sends the open item's closing events with `status`.
    fn close_item(&mut self, status: &'static str) {
        if !std::mem::take(&mut self.open) {
            return;
        }
        let index = self.output.len() - 1;
        let is_message = matches!(self.output.last(), Some(OutputItem::Message { .. }));
        let logprobs =
            (self.echo.logprobs && is_message).then(|| std::mem::take(&mut self.logprobs));
        let sealed = self.echo.sealed_reasoning;
        let Some(item) = self.output.last_mut() else {
            return;
        };
        item.set_status(status);
        if let (OutputItem::Message { content, .. }, Some(lps)) = (&mut *item, logprobs) {
            if let Some(part) = content.first_mut() {
                part.logprobs = Some(lps);
            }
        }
        if let OutputItem::Reasoning {
            content,
            encrypted_content,
            ..
        } = &mut *item
        {
            if sealed {
                let text: String = content.iter().map(|p| p.text.as_str()).collect();
                *encrypted_content = Some(seal(&text));
            }
        }
        let item = item.clone();
        let id = item.id().to_string();
        match &item {
            OutputItem::Message { content, .. } => {
                let part = content.first().map(|p| json!(p)).unwrap_or(Value::Null);
                let text = part["text"].clone();
                let logprobs = part.get("logprobs").cloned().unwrap_or(json!([]));
                self.send(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": logprobs}),
                );
                self.send(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                );
            }
            OutputItem::Reasoning { content, .. } => {
                let part = content.first().map(|p| json!(p)).unwrap_or(Value::Null);
                self.send(
                    "response.reasoning_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": part["text"]}),
                );
                self.send(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                );
            }
            OutputItem::FunctionCall {
                name, arguments, ..
            } => self.send(
                "response.function_call_arguments.done",
                json!({"item_id": id, "output_index": index, "arguments": arguments, "name": name}),
            ),
        }
        self.send(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
    }

    /// The open text item of this kind (`reasoning` or a message), opened if need be.
    fn text_item(&mut self, reasoning: bool) -> (usize, String) {
        let fits = self.open
            && matches!(
                (self.output.last(), reasoning),
                (Some(OutputItem::Reasoning { .. }), true)
                    | (Some(OutputItem::Message { .. }), false)
            );
        if !fits {
            self.open_item(if reasoning {
                OutputItem::Reasoning {
                    id: item_id("rs"),
                    summary: Vec::new(),
                    encrypted_content: None,
                    content: vec![ReasoningText {
                        text: String::new(),
                    }],
                    status: "in_progress",
                }
            } else {
                OutputItem::Message {
                    id: item_id("msg"),
                    status: "in_progress",
                    role: "assistant",
                    content: vec![OutputText {
                        text: String::new(),
                        annotations: Vec::new(),
                        logprobs: None,
                    }],
                }
            });
        }
        let index = self.output.len() - 1;
        (index, self.output[index].id().to_string())
    }

    /// More text of the reply's thinking or its answer, in the open item of that kind.
    fn text_delta(&mut self, reasoning: bool, text: String, logprobs: Vec<TokenLogprob>) {
        let (index, id) = self.text_item(reasoning);
        if let Some(item) = self.output.last_mut() {
            item.push_text(&text);
        }
        let mut event =
            json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text});
        let kind = if reasoning {
            "response.reasoning_text.delta"
        } else {
            event["logprobs"] = json!(logprobs);
            "response.output_text.delta"
        };
        self.send(kind, event);
    }

    fn call_start(&mut self, index: usize, call_id: String, name: String) {
        self.open_item(OutputItem::FunctionCall {
            id: item_id("fc"),
            call_id,
            name,
            arguments: String::new(),
            status: "in_progress",
        });
        if self.calls.len() <= index {
            self.calls.resize(index + 1, None);
        }
        self.calls[index] = Some(self.output.len() - 1);
    }

    fn call_arguments(&mut self, index: usize, text: String) {
        let Some(Some(at)) = self.calls.get(index).copied() else {
            return;
        };
        let id = self.output[at].id().to_string();
        if let OutputItem::FunctionCall { arguments, .. } = &mut self.output[at] {
            arguments.push_str(&text);
        }
        self.send(
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": at, "delta": text}),
        );
    }

    /// The text of the reply's thinking so far.
    fn reasoning_text(&self) -> String {
        self.output
            .iter()
            .filter_map(|item| match item {
                OutputItem::Reasoning { content, .. } => Some(content),
                _ => None,
            })
            .flatten()
            .map(|p| p.text.as_str())
            .collect()
    }

    /// Stores a finished response if asked; `store` says whether it was (an empty store, or
    /// a response larger than all of it, keeps nothing).
    fn store(&self, response: &mut ResponseObject) {
        if self.echo.store {
            let stored = Stored::new(response.clone(), self.input.clone());
            response.store = self.state.responses.put(stored);
        }
    }
}

impl ChunkSink for ResponsesSse {
    fn chunk(&mut self, chunk: ChatCompletionChunk) -> bool {
        for choice in chunk.choices {
            let delta = choice.delta;
            let logprobs = match choice.logprobs.filter(|_| self.echo.logprobs) {
                Some(lps) => lps.content,
                None => Vec::new(),
            };
            // A thinking token's probability is not the answer's.
            let thinking = delta.content.as_ref().is_none_or(String::is_empty)
                && delta
                    .reasoning_content
                    .as_ref()
                    .is_some_and(|t| !t.is_empty());
            if !thinking {
                self.logprobs.extend(logprobs.iter().cloned());
            }
            if let Some(text) = delta.reasoning_content.filter(|t| !t.is_empty()) {
                self.text_delta(true, text, Vec::new());
            }
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                self.text_delta(false, text, logprobs);
            }
            for call in delta.tool_calls.into_iter().flatten() {
                if let Some(id) = call.id {
                    let name = call.function.name.clone().unwrap_or_default();
                    self.call_start(call.index, id, name);
                }
                if let Some(args) = call.function.arguments.filter(|a| !a.is_empty()) {
                    self.call_arguments(call.index, args);
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.finish = Some(reason);
            }
        }
        !self.gone
    }

    fn finish(&mut self, usage: Usage) {
        if self.output.is_empty() {
            self.text_item(false);
        }
        let status = match self.finish {
            Some("length") => "incomplete",
            _ => "completed",
        };
        self.close_item(status);
        let usage = usage_of(&self.state, UsageBody::from(usage), &self.reasoning_text());
        let mut response = self.echo.object(
            &self.id,
            self.created_at,
            status,
            self.output.clone(),
            Some(usage),
        );
        self.store(&mut response);
        self.send(
            &format!("response.{status}"),
            json!({ "response": response }),
        );
        self.result = Some(Ok(response));
    }

    fn fail(&mut self, error: ApiError) {
        self.close_item("incomplete");
        let mut response = self.echo.object(
            &self.id,
            self.created_at,
            "failed",
            self.output.clone(),
            None,
        );
        response.error = Some(ResponseError {
            code: error.code.unwrap_or("server_error").to_string(),
            message: error.message.clone(),
        });
        self.send("response.failed", json!({ "response": response }));
        // Unstreamed, the failure is the HTTP answer.
        self.result = Some(Err(error));
    }
}
