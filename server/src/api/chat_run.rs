//! One chat request from its checked parameters to its answer, whole or streamed: what
//! `/v1/chat/completions` and `/v1/responses` share. A stream's chunks go to a [`ChunkSink`],
//! so each endpoint writes its own wire format from the same deltas.

use super::chat_prompt::{chat_prompt, ChatPrompt};
use super::chat_reply::{
    chat_logprobs, reply, reply_message, stream_deltas, text_delta, whole_delta,
};
use super::error::ApiError;
use super::generation::{self, Choice, Tagged};
use super::openai::{
    ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChunkChoice, Delta,
    ResponseMessage,
};
use super::params::{self, MAX_TOP_LOGPROBS};
use super::reasoning::ReasoningSplit;
use super::structured;
use super::tool_stream::{self, ToolStream};
use super::tool_syntax::{NativeStream, Thinking, ToolSyntax};
use super::tools::ToolUse;
use super::{unix_now, AppState};
use crate::engine::grammar::OutputFormat;
use crate::engine::sampler::TokenLogprobs;
use crate::engine::{Event, FinishReason, Usage};
use futures_util::StreamExt;

/// Where a streamed chat's chunks go.
pub trait ChunkSink {
    /// One chunk; `false` once the client is gone (the request is then cancelled).
    fn chunk(&mut self, chunk: ChatCompletionChunk) -> bool;
    /// Every choice finished.
    fn finish(&mut self, usage: Usage);
    /// The engine failed the request.
    fn fail(&mut self, error: ApiError);
}

/// A submitted chat request and how its replies are read.
pub struct ChatRun {
    state: AppState,
    events: Tagged,
    n: usize,
    /// Alternatives per token when logprobs were asked for.
    top: Option<usize>,
    /// A reasoning model's thinking is split into `reasoning_content`.
    split: bool,
    opens_thinking: bool,
    /// A native tool syntax (tool_syntax.rs) the replies are read in.
    native: Option<ToolSyntax>,
    /// lowbit's generic tool format (tools.rs).
    generic_tools: bool,
    json_answer: bool,
    pub id: String,
    pub created: u64,
}

/// The `top_logprobs` a request asks for, checked against `logprobs`.
fn top_logprobs(logprobs: Option<bool>, top: Option<i64>) -> Result<Option<usize>, ApiError> {
    match (logprobs.unwrap_or(false), top) {
        (_, Some(k)) if !(0..=MAX_TOP_LOGPROBS).contains(&k) => Err(ApiError::invalid(
            "top_logprobs",
            format!("'top_logprobs' must be between 0 and {MAX_TOP_LOGPROBS}"),
        )),
        (false, Some(_)) => Err(ApiError::invalid(
            "top_logprobs",
            "'top_logprobs' needs 'logprobs': true",
        )),
        (true, k) => Ok(Some(k.unwrap_or(0) as usize)),
        (false, None) => Ok(None),
    }
}

impl ChatRun {
    /// Checks the request, renders its prompt, compiles its grammar and submits it.
    pub async fn start(
        state: &AppState,
        request_id: &str,
        req: &ChatCompletionRequest,
    ) -> Result<Self, ApiError> {
        state.check_model(&req.model)?;
        let tokenizer = &state.model.tokenizer;
        let mut settings = params::settings(&req.sampling, tokenizer.vocab_size())?;
        if settings.user.is_none() {
            settings.user.clone_from(&req.safety_identifier);
        }
        let top = top_logprobs(req.logprobs, req.top_logprobs)?;
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
        let mut kwargs = req.chat_template_kwargs.clone().unwrap_or_default();
        let effort = req.reasoning_effort.as_deref();
        params::reasoning_effort("reasoning_effort", effort, &mut kwargs)?;
        let ChatPrompt {
            ids: prompt,
            opens_thinking,
        } = chat_prompt(state, &req.messages, tool_use.as_ref(), &kwargs)?;
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
                Some(structured::compile(state, "tools", t.output_format(thinking)).await?)
            }
            None => match answer_format {
                Some((param, format)) => Some(structured::compile(state, param, format).await?),
                None => None,
            },
        };
        let json_answer = tool_use.as_ref().is_some_and(ToolUse::json_answer);
        let generic_tools = tool_use.as_ref().is_some_and(|t| !t.syntax().native());
        let native = tool_use
            .as_ref()
            .map(ToolUse::syntax)
            .filter(|s| s.native());
        // A constrained reply follows its format from the first token: no thinking to split
        // (a native tool grammar lets the model think first).
        // A harmony reply is always split: its calls and its answer are its channels.
        let harmony = matches!(native, Some(ToolSyntax::Harmony { .. }));
        let split = harmony || state.model.reasoning && (grammar.is_none() || native.is_some());
        let mut gen = params::request(
            request_id,
            prompt,
            max_tokens,
            &settings,
            top,
            state.request_timeout,
        )?;
        gen.grammar = grammar;
        let stream = state.engine.submit(gen)?;
        Ok(Self {
            state: state.clone(),
            events: generation::merged(vec![stream]),
            n: settings.n,
            top,
            split,
            opens_thinking,
            native,
            generic_tools,
            json_answer,
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            created: unix_now(),
        })
    }

    /// A choice's whole reply as a message and its finish reason.
    fn message(&self, c: Choice) -> (ResponseMessage, Option<&'static str>) {
        if self.generic_tools {
            let (content, tool_calls, finish_reason) = reply(c.text, self.json_answer, c.finish);
            let message = ResponseMessage {
                role: "assistant",
                content,
                reasoning_content: None,
                tool_calls,
            };
            return (message, finish_reason);
        }
        let (split, opens) = (self.split, self.opens_thinking);
        reply_message(self.native, split, opens, c.text, c.finish)
    }

    /// Waits for every choice: the whole completion.
    pub async fn collect(mut self) -> Result<ChatCompletion, ApiError> {
        let events = std::mem::replace(&mut self.events, futures_util::stream::empty().boxed());
        let (choices, usage) = generation::collect(events, 1, self.n).await?;
        let tokenizer = &self.state.model.tokenizer;
        let run = &self;
        let choices = choices
            .into_iter()
            .enumerate()
            .map(|(index, c)| {
                let logprobs = run.top.map(|_| chat_logprobs(tokenizer, &c.logprobs));
                let (message, finish_reason) = run.message(c);
                ChatChoice {
                    index,
                    logprobs,
                    message,
                    finish_reason,
                }
            })
            .collect();
        Ok(ChatCompletion {
            id: self.id.clone(),
            object: "chat.completion",
            created: self.created,
            model: self.state.model_name().to_string(),
            system_fingerprint: self.state.system_fingerprint.clone(),
            choices,
            usage: usage.into(),
        })
    }

    /// Streams the choices' chunks to `sink` as they are generated, until every choice has
    /// finished or the sink is gone.
    pub async fn stream(self, sink: &mut impl ChunkSink) {
        let Self {
            state,
            mut events,
            n,
            top,
            split,
            opens_thinking,
            native,
            generic_tools,
            json_answer,
            id,
            created,
        } = self;
        let chunk = |index, delta, logprobs, finish_reason| ChatCompletionChunk {
            id: id.clone(),
            object: "chat.completion.chunk",
            created,
            model: state.model_name().to_string(),
            system_fingerprint: state.system_fingerprint.clone(),
            choices: vec![ChunkChoice {
                index,
                delta,
                logprobs,
                finish_reason,
            }],
            usage: None,
        };
        for index in 0..n {
            let delta = Delta {
                role: Some("assistant"),
                content: Some(String::new()),
                ..Delta::default()
            };
            if !sink.chunk(chunk(index, delta, None, None)) {
                return;
            }
        }
        let tokenizer = &state.model.tokenizer;
        // With tools a reply is sent as it is read (tool_stream.rs): the answer's text, each
        // call's name, its arguments; logprobs come with the choice's last delta.
        let mut readers = vec![ToolStream::new(json_answer); n];
        let mut natives: Vec<NativeStream> =
            native.map_or(Vec::new(), |s| vec![NativeStream::new(s); n]);
        let harmony = matches!(native, Some(ToolSyntax::Harmony { .. }));
        let mut splits = vec![ReasoningSplit::new(opens_thinking).reading_calls(harmony); n];
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
                            if !sink.chunk(chunk(choice, delta, None, None)) {
                                return;
                            }
                        }
                        continue;
                    }
                    if let Some(r) = natives.get_mut(choice) {
                        r.observe_raw(&text);
                    }
                    let delta = text_delta_of(choice, text, false);
                    let mut deltas = stream_deltas(natives.get_mut(choice), delta, false);
                    let mut lp = logprobs.map(|lp| chat_logprobs(tokenizer, &[lp]));
                    if deltas.is_empty() && lp.is_some() {
                        deltas.push(Delta::default());
                    }
                    deltas
                        .into_iter()
                        .all(|delta| sink.chunk(chunk(choice, delta, lp.take(), None)))
                }
                Event::Finished {
                    choice,
                    reason,
                    text,
                } => {
                    let mut finish = reason.as_str();
                    let mut sent = true;
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
                            sent = sent && sink.chunk(chunk(choice, delta, lp, None));
                        }
                        if let Some(lp) = lp {
                            sent =
                                sent && sink.chunk(chunk(choice, Delta::default(), Some(lp), None));
                        }
                    } else {
                        if let Some(r) = natives.get_mut(choice) {
                            r.observe_raw(&text);
                        }
                        let delta = text_delta_of(choice, text, true);
                        let reader = natives.get_mut(choice);
                        for delta in stream_deltas(reader, delta, true) {
                            sent = sent && sink.chunk(chunk(choice, delta, None, None));
                        }
                        let calls = natives.get(choice).map_or(0, NativeStream::calls);
                        if calls > 0 && reason == FinishReason::Stop {
                            finish = "tool_calls";
                        }
                    }
                    sent && sink.chunk(chunk(choice, Delta::default(), None, Some(finish)))
                }
                // (Never asked for by a chat.)
                Event::PromptLogprobs(_) => true,
                Event::Done(usage) => {
                    sink.finish(usage);
                    return;
                }
                Event::Error(e) => {
                    sink.fail(generation::failure(e));
                    return;
                }
            };
            if !sent {
                return;
            }
        }
    }
}
