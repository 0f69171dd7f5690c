//! What chat and completions share once a request is submitted: collecting a whole answer,
//! merging several requests' events, and the SSE plumbing.
//!
//! A stream's events are produced by a task that owns the engine's [`EventStream`]; when the
//! client goes away, the response body (and with it the channel) is dropped, the task's next
//! send fails, the task ends and drops the stream, and the engine cancels the request.

use super::error::ApiError;
use crate::engine::sampler::TokenLogprobs;
use crate::engine::{EngineFailure, Event, EventStream, FinishReason, Usage};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use std::convert::Infallible;
use std::pin::Pin;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_stream::wrappers::UnboundedReceiverStream;

/// One choice, collected.
#[derive(Debug, Clone, Default)]
pub struct Choice {
    pub text: String,
    pub logprobs: Vec<TokenLogprobs>,
    pub finish: Option<FinishReason>,
    /// Its request's prompt's log-probabilities, if asked (the same for every choice).
    pub prompt_logprobs: Option<Vec<TokenLogprobs>>,
}

/// The API error for an engine failure.
pub fn failure(e: EngineFailure) -> ApiError {
    match e {
        EngineFailure::Timeout => ApiError::timeout(e.to_string()),
        EngineFailure::Internal(_) => ApiError::internal(e.to_string()),
    }
}

/// A request's events tagged with its index among the merged requests.
pub type Tagged = Pin<Box<dyn Stream<Item = (usize, Event)> + Send>>;

/// One stream of the events of several requests, each tagged with its index.
pub fn merged(streams: Vec<EventStream>) -> Tagged {
    let each = streams.into_iter().enumerate().map(|(i, s)| {
        stream::unfold(s, |mut s| async move { s.recv().await.map(|e| (e, s)) })
            .map(move |e| (i, e))
            .boxed()
    });
    stream::select_all(each).boxed()
}

/// Waits for every request to finish; `n` choices each.
pub async fn collect(
    mut events: Tagged,
    requests: usize,
    n: usize,
) -> Result<(Vec<Choice>, Usage), ApiError> {
    let mut choices = vec![Choice::default(); requests * n];
    let mut usage = Usage::default();
    let mut done = 0;
    while let Some((r, e)) = events.next().await {
        match e {
            Event::PromptLogprobs(lps) => {
                for c in &mut choices[r * n..(r + 1) * n] {
                    c.prompt_logprobs = Some(lps.clone());
                }
            }
            Event::Token {
                choice,
                text,
                logprobs,
                ..
            } => {
                let c = &mut choices[r * n + choice];
                c.text.push_str(&text);
                c.logprobs.extend(logprobs);
            }
            Event::Finished {
                choice,
                reason,
                text,
            } => {
                let c = &mut choices[r * n + choice];
                c.text.push_str(&text);
                c.finish = Some(reason);
            }
            Event::Done(u) => {
                usage.add(u);
                done += 1;
            }
            Event::Error(e) => return Err(failure(e)),
        }
    }
    if done < requests {
        return Err(ApiError::internal(
            "the engine ended a request without an answer",
        ));
    }
    Ok((choices, usage))
}

/// An SSE response whose events `produce` sends; it runs as its own task.
pub fn sse<F, Fut>(produce: F) -> Response
where
    F: FnOnce(SseSender) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = unbounded_channel();
    tokio::spawn(produce(SseSender(tx)));
    let body = UnboundedReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The sending half of an SSE response.
pub struct SseSender(UnboundedSender<SseEvent>);

impl SseSender {
    /// Sends one `data:` event of JSON; `false` once the client is gone.
    pub fn json(&self, value: &impl serde::Serialize) -> bool {
        match serde_json::to_string(value) {
            Ok(s) => self.0.send(SseEvent::default().data(s)).is_ok(),
            Err(_) => false,
        }
    }

    /// One named event (`event: name`, then `data:` of JSON), as the Responses API sends
    /// them; `false` once the client is gone.
    pub fn event(&self, name: &str, value: &impl serde::Serialize) -> bool {
        match serde_json::to_string(value) {
            Ok(s) => self.0.send(SseEvent::default().event(name).data(s)).is_ok(),
            Err(_) => false,
        }
    }

    /// `data: [DONE]`.
    pub fn done(&self) {
        let _ = self.0.send(SseEvent::default().data("[DONE]"));
    }

    /// An error envelope as the stream's last event.
    pub fn error(&self, e: &ApiError) {
        self.json(&e.body());
        self.done();
    }
}
