//! The OpenAI-compatible HTTP API (axum): one file per route group, the OpenAI types in
//! [`openai`], errors in [`error`]. Handlers validate, tokenize and submit to the engine; they
//! never compute. See `router` for the routes and layers.

pub mod auth;
pub mod chat;
pub mod chat_prompt;
pub mod chat_reply;
pub mod chat_run;
pub mod completions;
pub mod error;
pub mod generation;
pub mod health;
pub mod http_metrics;
pub mod limits;
pub mod models;
pub mod openai;
pub mod openapi;
pub mod params;
pub mod reasoning;
pub mod responses;
pub mod responses_input;
pub mod responses_store;
pub mod responses_stored;
pub mod responses_stream;
pub mod responses_types;
pub mod structured;
pub mod tokenize;
pub mod tool_harmony;
pub mod tool_stream;
pub mod tool_syntax;
pub mod tools;

use crate::engine::grammar::Grammars;
use crate::engine::EngineHandle;
use crate::metrics::Metrics;
use crate::model::{ChatTemplate, Tokenizer};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderName, Method, Request};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use std::sync::Arc;
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

/// Longest wait for the rest of a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The model as the API presents it.
#[derive(Debug)]
pub struct ServedModel {
    /// Ids a request's `model` may name; the first is listed in `/v1/models`.
    pub names: Vec<String>,
    pub tokenizer: Tokenizer,
    /// `None` when the model has no chat template (chat requests are then a 400).
    pub template: Option<ChatTemplate>,
    /// Compiles structured-output formats over the tokenizer's vocabulary.
    pub grammars: Arc<Grammars>,
    /// Chat replies are split into `reasoning_content` and `content` (reasoning.rs).
    pub reasoning: bool,
    /// How tools are described and calls are read (tool_syntax.rs).
    pub tool_syntax: tool_syntax::ToolSyntax,
    /// Unix time the server started (the models' `created`).
    pub created: u64,
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub engine: EngineHandle,
    pub model: Arc<ServedModel>,
    pub metrics: Metrics,
    pub api_keys: Arc<Vec<String>>,
    pub max_body_bytes: usize,
    pub request_timeout: Option<Duration>,
    /// Identifies the build and the model's formats (OpenAI's `system_fingerprint`).
    pub system_fingerprint: String,
    /// Responses kept for `previous_response_id` (`/v1/responses`).
    pub responses: Arc<responses_store::ResponseStore>,
}

impl AppState {
    /// 404 unless `model` is one of the served names.
    pub fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if self.model.names.iter().any(|n| n == model) {
            Ok(())
        } else {
            Err(ApiError::model_not_found(model))
        }
    }

    /// The name responses carry.
    pub fn model_name(&self) -> &str {
        self.model.names.first().map_or("", String::as_str)
    }
}

/// The request id the id layer set (or the client sent).
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The body, or the envelope for one that is too large or unreadable.
pub fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else {
            ApiError::bad_request(format!("could not read the body: {e}"))
        }
    })
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The router with every route and layer.
pub fn router(state: AppState, cors_origins: &[String]) -> Router {
    let x_request_id = HeaderName::from_static("x-request-id");
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::create))
        .route("/v1/completions", post(completions::create))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses_stored::get_one).delete(responses_stored::delete),
        )
        .route(
            "/v1/responses/{id}/input_items",
            get(responses_stored::input_items),
        )
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::get_one))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::spec))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::check_body,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    let mut app = Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .merge(api)
        .fallback(|req: Request<axum::body::Body>| async move {
            ApiError::route_not_found(req.uri().path())
        })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            http_metrics::record,
        ))
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        // A client that stops sending its body does not hold a connection forever.
        .layer(RequestBodyTimeoutLayer::new(BODY_TIMEOUT))
        .with_state(state);
    if !cors_origins.is_empty() {
        let origins: Vec<_> = cors_origins.iter().filter_map(|o| o.parse().ok()).collect();
        app = app.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers([
                    axum::http::header::AUTHORIZATION,
                    axum::http::header::CONTENT_TYPE,
                ]),
        );
    }
    app.layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(
            TraceLayer::new_for_http()
                // A 503 while loading or draining is the design, not an error worth a log line
                // per probe; engine failures log themselves with the request id.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG))
                .make_span_with(|req: &Request<axum::body::Body>| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
            }),
        )
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
}
