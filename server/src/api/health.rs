//! `/health` (liveness: the process answers), `/ready` (the model is loaded and the server
//! is not draining) and `/metrics` (Prometheus text).

use super::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Liveness.
#[utoipa::path(get, path = "/health", operation_id = "health", tag = "operations", responses((status = 200, description = "alive")))]
pub async fn health() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// Readiness: 503 while loading and while draining.
#[utoipa::path(get, path = "/ready", operation_id = "ready", tag = "operations", responses((status = 200, description = "ready"), (status = 503, description = "loading or draining")))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let h = state.engine.health();
    let (status, word) = if h.draining {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if h.ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading")
    };
    (
        status,
        Json(serde_json::json!({"status": word, "in_flight": h.in_flight, "waiting": h.waiting})),
    )
        .into_response()
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
