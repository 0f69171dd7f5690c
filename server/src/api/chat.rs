//! `POST /v1/chat/completions`: the model's own chat template, streaming or not. The request
//! itself runs in [`chat_run`](super::chat_run); this file writes chat's wire format.

use super::chat_run::{ChatRun, ChunkSink};
use super::error::ApiError;
use super::generation::{self, SseSender};
use super::openai::{ChatCompletion, ChatCompletionChunk, ChatCompletionRequest};
use super::params::{self, CHAT_FIELDS};
use super::{body_bytes, request_id, AppState};
use crate::engine::Usage;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Chat chunks as `data:` events; with `include_usage`, a last chunk with the usage.
struct ChatSse {
    tx: SseSender,
    include_usage: bool,
    /// A chunk with the stream's id, for the usage chunk.
    last: Option<ChatCompletionChunk>,
}

impl ChunkSink for ChatSse {
    fn chunk(&mut self, mut chunk: ChatCompletionChunk) -> bool {
        if self.include_usage {
            chunk.usage = Some(None);
        }
        let sent = self.tx.json(&chunk);
        self.last = Some(chunk);
        sent
    }

    fn finish(&mut self, usage: Usage) {
        if let (true, Some(mut chunk)) = (self.include_usage, self.last.take()) {
            chunk.choices = Vec::new();
            chunk.usage = Some(Some(usage.into()));
            self.tx.json(&chunk);
        }
        self.tx.done();
    }

    fn fail(&mut self, error: ApiError) {
        self.tx.error(&error);
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
    let run = ChatRun::start(&state, &request_id(&headers), &req).await?;
    if !req.stream.unwrap_or(false) {
        return Ok(Json(run.collect().await?).into_response());
    }
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    Ok(generation::sse(move |tx| async move {
        let mut sink = ChatSse {
            tx,
            include_usage,
            last: None,
        };
        run.stream(&mut sink).await;
    }))
}
