//! Checks made before a body is read: its declared size (`--max-body-bytes`, so a client that
//! announces a huge body gets 413 at once instead of a connection held open) and its media
//! type (JSON; `text/plain` and curl's default `application/x-www-form-urlencoded` are
//! accepted as well, since `curl -d '{…}'` sends the latter; anything else is 415).

use super::error::ApiError;
use super::AppState;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Media types whose body lowbit reads as JSON.
fn json_like(media: &str) -> bool {
    let media = media.trim().to_ascii_lowercase();
    media == "application/json"
        || media.ends_with("+json")
        || media == "text/plain"
        || media == "application/x-www-form-urlencoded"
}

/// Middleware: 413 for a declared length over the limit, 415 for a non-JSON media type.
pub async fn check_body(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    if let Some(len) = headers.get(header::CONTENT_LENGTH) {
        let len = len.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok());
        if len.is_none_or(|n| n > state.max_body_bytes as u64) {
            return ApiError::too_large(state.max_body_bytes).into_response();
        }
    }
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let media = ct.to_str().ok().map(|v| v.split(';').next().unwrap_or(""));
        if !media.is_some_and(json_like) {
            return ApiError {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code: Some("unsupported_media_type"),
                ..ApiError::bad_request("the body must be JSON (Content-Type: application/json)")
            }
            .into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_curl_defaults_are_accepted_other_types_not() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/vnd.api+json",
            "text/plain",
            "application/x-www-form-urlencoded",
        ] {
            assert!(json_like(ok), "{ok}");
        }
        for bad in ["application/xml", "multipart/form-data", "image/png", ""] {
            assert!(!json_like(bad), "{bad}");
        }
    }
}
