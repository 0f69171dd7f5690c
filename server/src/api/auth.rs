//! API keys: `Authorization: Bearer <key>` on every route but `/health` and `/ready` when
//! keys are set, compared in constant time. Keys are never logged.

use super::error::ApiError;
use super::AppState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

/// Whether `presented` equals one of `keys`, taking the same time whichever (if any) matches.
pub fn key_matches(keys: &[String], presented: &str) -> bool {
    let mut ok = subtle::Choice::from(0);
    for k in keys {
        ok |= k.as_bytes().ct_eq(presented.as_bytes());
    }
    bool::from(ok)
}

/// Middleware: lets the request through with a valid key (or when no keys are set).
pub async fn require_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.api_keys.is_empty() {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        Some(p) if key_matches(&state.api_keys, p) => next.run(req).await,
        _ => ApiError::unauthorized().into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_listed_key_matches_and_nothing_else() {
        let keys = vec!["alpha".to_string(), "beta-2".to_string()];
        assert!(key_matches(&keys, "alpha"));
        assert!(key_matches(&keys, "beta-2"));
        assert!(!key_matches(&keys, "beta"));
        assert!(!key_matches(&keys, ""));
        assert!(!key_matches(&[], "alpha"));
    }
}
