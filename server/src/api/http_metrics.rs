//! Per-route HTTP metrics (`http_requests_total`, `http_request_duration_seconds`): a
//! middleware on every route, labelled by the route's template so that ids in paths
//! (`/v1/responses/{id}`) do not each make a series.

use super::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;

/// Times a request to its response head and counts it by route, method and status class.
pub async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let handler = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "none".to_string(), |p| p.as_str().to_string());
    let method = req.method().clone();
    let response = next.run(req).await;
    state.metrics.observe_http(
        &handler,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
